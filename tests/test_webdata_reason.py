"""webdata.reason against a real HTTP server process speaking the OpenAI chat API on 127.0.0.1 (a stub started by
the test): acceptance by the task's answer rule, retries on timeouts / 5xx / malformed replies, no retry on 4xx,
bounded concurrency, the per-id cache that makes reruns resume, and per-task acceptance rates."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from chexone.data.sample import Sample
from chexone.data.shards import build_eval_dataset
from webdata import reason as R
from webdata.writer import SHARED_IMAGE_PREFIX, ShardWriter

STUB = textwrap.dedent(r'''
    """Stub OpenAI chat server. Behaviour per request is chosen by a marker in the prompt's question."""
    import json, re, sys, threading, time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    LOG, MAX_REQUESTS = sys.argv[1], int(sys.argv[2])
    lock = threading.Lock()
    state = {"n": 0, "inflight": 0, "max_inflight": 0, "per": {}}

    def trace(answer):
        return ("**Thinking Process:** 1. Inspect the lungs and pleura. 2. Compare with the expected appearance.\n"
                "**Final Answer:** \\boxed{" + answer + "}")

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def reply(self, code, body, ctype="application/json"):
            data = body.encode() if isinstance(body, str) else body
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            user = body["messages"][-1]["content"]
            marker = (re.search(r"\[(\w[\w-]*)\]", user.split("Question:")[1]) or [None, "ok"])[1]
            answer = user.split("Correct answer:\n", 1)[1].strip()
            with lock:
                state["n"] += 1
                state["inflight"] += 1
                state["max_inflight"] = max(state["max_inflight"], state["inflight"])
                k = state["per"][marker] = state["per"].get(marker, 0) + 1
                with open(LOG, "a") as f:
                    f.write(json.dumps({"marker": marker, "k": k, "model": body["model"],
                                        "max_inflight": state["max_inflight"], "path": self.path}) + "\n")
                over = state["n"] > MAX_REQUESTS
            counted = True
            try:
                time.sleep(0.05)  # let requests overlap so concurrency is observable
                if over:
                    return self.reply(503, '{"error": "request budget of the stub exhausted"}')
                if marker == "timeout-once" and k == 1:
                    with lock:  # the client gives up after its timeout: no longer one of its requests in flight
                        state["inflight"] -= 1
                    counted = False
                    time.sleep(1.5)
                if marker == "5xx-twice" and k <= 2:
                    return self.reply(503, '{"error": "overloaded"}')
                if marker == "5xx-always":
                    return self.reply(500, '{"error": "boom"}')
                if marker == "400":
                    return self.reply(400, '{"error": "bad request"}')
                if marker == "malformed-once" and k == 1:
                    return self.reply(200, "<html>not json")
                if marker == "nochoices":
                    return self.reply(200, json.dumps({"object": "chat.completion", "choices": []}))
                content = trace(answer)
                if marker == "wrong" or (marker == "wrong-once" and k == 1):
                    content = trace("(A) Yes")
                if marker == "nobox":
                    content = "The answer is " + answer
                self.reply(200, json.dumps({"id": "x", "object": "chat.completion", "model": body["model"],
                                            "choices": [{"index": 0, "finish_reason": "stop",
                                                         "message": {"role": "assistant", "content": content}}]}))
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout)
            finally:
                if counted:
                    with lock:
                        state["inflight"] -= 1

    server = ThreadingHTTPServer(("127.0.0.1", 0), H)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()
''')


@pytest.fixture()
def stub(tmp_path):
    script = tmp_path / "stub_openai.py"
    script.write_text(STUB)
    log = tmp_path / "requests.jsonl"
    proc = subprocess.Popen([sys.executable, str(script), str(log), "200"], stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        yield f"http://127.0.0.1:{port}/v1", log
    finally:
        proc.kill()
        proc.wait(timeout=10)


def requests_by_marker(log: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in log.read_text().splitlines():
        m = json.loads(line)["marker"]
        out[m] = out.get(m, 0) + 1
    return out


REPORT = "FINDINGS: No pleural effusion. Heart size normal.\nIMPRESSION: No acute process."


def mc(i: int, marker: str, answer: str = "B") -> Sample:
    return Sample(id=f"mc{i}", task="close_vqa", question=f"Is there a pleural effusion? [{marker}]",
                  options=["Yes", "No"], answer=answer, images=[], meta={"report": REPORT})


def make_input(tmp_path: Path) -> Path:
    xray = Image.fromarray(np.full((16, 16), 80, np.uint8), "L")
    own = Image.fromarray(np.full((8, 8), 20, np.uint8), "L")
    group = [mc(0, "ok"), mc(1, "timeout-once"), mc(2, "5xx-twice"), mc(3, "malformed-once"), mc(4, "wrong-once")]
    for s in group:
        s.images = [xray]
    rest = [mc(5, "5xx-always"), mc(6, "400"), mc(7, "wrong"), mc(8, "nobox"), mc(9, "nochoices"),
            Sample(id="nr", task="close_vqa", question="No report here? [ok]", options=["Yes", "No"], answer="A"),
            Sample(id="g0", task="abnormality_grounding", question="Detect cardiomegaly in the given image. [ok]",
                   answer="<|ref|>cardiomegaly<|/ref|><|box|>(30,40),(70,80)<|/box|>", meta={"report": REPORT}),
            Sample(id="f0", task="findings_generation", question="Write the findings. [ok]",
                   answer="No pleural effusion. Heart size normal.")]
    for s in rest:
        s.images = [own]
    out = tmp_path / "in"
    with ShardWriter(out, prefix="in", max_samples_per_shard=6) as w:
        w.write_group(group)
        for s in rest:
            w.write(s)
    return out


def argv(inp: Path, out: Path, endpoint: str, *extra: str) -> list[str]:
    return ["--input", str(inp), "--out", str(out), "--endpoint", endpoint, "--model", "stub-llm", "--concurrency",
            "3", "--timeout", "0.5", "--retries", "3", "--backoff", "0.01", "--max-backoff", "0.05", "--tries", "2",
            "--no-progress", *extra]


def test_reason_against_a_stub_openai_server(tmp_path, stub):
    endpoint, log = stub
    inp, out = make_input(tmp_path), tmp_path / "out"
    assert R.main(argv(inp, out, endpoint)) == 0

    got = {s.id: s for s in build_eval_dataset(str(out), max_skip_fraction=0.0)}
    assert sorted(got) == ["f0", "g0", "mc0", "mc1", "mc2", "mc3", "mc4"]
    assert got["mc1"].reasoning.endswith("\\boxed{(B) No}")  # the task renders the answer as "(B) No"
    assert got["g0"].reasoning.endswith("\\boxed{<|ref|>cardiomegaly<|/ref|><|box|>(30,40),(70,80)<|/box|>}")
    assert got["mc0"].meta["reasoning_source"] == {"model": "stub-llm", "prompt_version": R.PROMPT_VERSION, "tries": 1}
    assert got["mc4"].meta["reasoning_source"]["tries"] == 2  # wrong answer first, accepted on the second try
    assert got["mc0"].images[0].size == (16, 16) and got["f0"].images[0].size == (8, 8)
    # the shared image stays shared (the five accepted mc samples use one stored copy)
    members = [n for p in sorted(out.glob("*.tar")) for n in tarfile.open(p).getnames()]
    assert sum(n.startswith(SHARED_IMAGE_PREFIX) for n in members) == 1

    n = requests_by_marker(log)
    # timeout-once: 1 timed out + 1 ok ; 5xx-twice: 2 + 1 ; malformed-once: 1 + 1 ; wrong-once: 2 tries
    # 5xx-always: 1 + 3 retries, then failed (no second try) ; 400: not retried ; nochoices: malformed 4 times
    # wrong: 2 tries, both wrong ; nobox: 2 tries ; "nr" has no report: never sent
    assert n == {"ok": 3, "timeout-once": 2, "5xx-twice": 3, "malformed-once": 2, "wrong-once": 2, "5xx-always": 4,
                 "400": 1, "nochoices": 4, "wrong": 2, "nobox": 2}
    assert max(json.loads(x)["max_inflight"] for x in log.read_text().splitlines()) == 3  # never more

    report = json.loads((out / "reason_report.json").read_text())["acceptance"]
    close = report["close_vqa"]
    # close_vqa: 11 samples, 1 without report; asked 10: accepted 5, rejected 2 (wrong, nobox), failed 3
    assert (close["samples"], close["no_report"], close["accepted"], close["rejected"], close["failed"]) == \
        (11, 1, 5, 2, 3)
    assert close["acceptance_rate"] == 0.5
    assert close["rejected:wrong_answer"] == 1 and close["rejected:no_box"] == 1
    assert close["failed:http_500"] == 1 and close["failed:http_400"] == 1 and close["failed:malformed"] == 1
    assert report["abnormality_grounding"]["acceptance_rate"] == 1.0
    assert report["findings_generation"]["accepted"] == 1
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["total"] == 7 and manifest["builder"] == "webdata.reason"
    assert manifest["acceptance"] == report and manifest["model"] == "stub-llm"

    # rerun: accepted and rejected samples come from the cache; only the 3 failed ones are asked again
    before = sum(1 for _ in log.open())
    assert R.main(argv(inp, out, endpoint)) == 0
    again = {k: v - n.get(k, 0) for k, v in requests_by_marker(log).items() if v != n.get(k, 0)}
    assert again == {"5xx-always": 4, "400": 1, "nochoices": 4} and sum(1 for _ in log.open()) == before + 9
    assert sorted(s.id for s in build_eval_dataset(str(out))) == sorted(got)

    # the cache belongs to one model / prompt: another model is refused unless --overwrite
    assert R.main(argv(inp, out, endpoint)[:-1] + ["--no-progress", "--temperature", "0.1"]) == 2


def test_check_trace_rules():
    from chexone.tasks import get_task

    s = mc(0, "ok")
    task = get_task("close_vqa")
    good = "**Thinking Process:** 1. Sharp costophrenic angles. **Final Answer:** \\boxed{(B) No}"
    assert R.check_trace(good, s, task) is None
    assert R.check_trace(good.replace("(B) No", "B"), s, task) is None  # letters are what counts
    assert R.check_trace(good.replace("(B) No", "(A) Yes"), s, task) == "wrong_answer"
    assert R.check_trace("\\boxed{(B) No}", s, task) == "no_reasoning"
    assert R.check_trace(good + " \\boxed{(B) No}", s, task) == "several_boxes"
    assert R.check_trace("I think no.", s, task) == "no_box"
    f = Sample(id="f", task="findings_generation", question="q", answer="No effusion.  Heart normal.")
    ft = get_task("findings_generation")
    trace = "**Thinking Process:** the pleura is clear... \\boxed{no effusion. heart normal}"
    assert R.check_trace(trace, f, ft) is None  # report text: case, spacing and final period do not matter
    assert R.reference_report(f, ft) == "No effusion.  Heart normal."
    msgs = R.build_messages("REPORT", "Q?", "(B) No")
    assert msgs[0]["role"] == "system" and "Reference report:\nREPORT" in msgs[1]["content"]
    assert msgs[1]["content"].endswith("Correct answer:\n(B) No") and "\\boxed{ANSWER}" in msgs[1]["content"]


def test_connection_refused_is_retried_then_failed():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    client = R.ChatClient(f"http://127.0.0.1:{port}/v1", "m", timeout=0.5, retries=2, backoff=0.01)
    with pytest.raises(R.TransportError, match="3 attempt"):
        client.complete([{"role": "user", "content": "hi"}])
    assert client.stats["requests"] == 3 and client.stats["connection"] == 3
    with pytest.raises(ValueError, match="http"):
        R.ChatClient("localhost:8000", "m")
