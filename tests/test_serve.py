"""``python -m chexone.serve``: a real server process called over HTTP (urllib and the official ``openai`` client),
plus the batcher and the request rules checked in-process with a stand-in model."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from chexone.inference.engine import Completion, InferenceError
from chexone.inference.openai_api import APIError, ServerLimits, parse_chat_request
from chexone.inference.server import ChexoneHTTPServer

# ------------------------------------------------------------------------------------------------- helpers


def data_url(path: Path, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(Path(path).read_bytes()).decode()


def user(text: str, *urls: str) -> list[dict]:
    parts = [{"type": "image_url", "image_url": {"url": u}} for u in urls]
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


def post(base: str, body, *, ctype="application/json", headers=None, raw: bytes | None = None):
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(f"{base}/v1/chat/completions", data=data,
                                 headers={"Content-Type": ctype, **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def get(base: str, path: str):
    try:
        with urllib.request.urlopen(f"{base}{path}", timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


# ------------------------------------------------------------------------------------ the real server process


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory):
    from webdata.demo import write_demo_images

    root = tmp_path_factory.mktemp("serve-images")
    write_demo_images(str(root), n=4)
    return root


def start_server(*args: str) -> tuple[subprocess.Popen, str, list[str]]:
    proc = subprocess.Popen([sys.executable, "-m", "chexone.serve", "--port", "0", "--device", "cpu", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines: list[str] = []
    deadline = time.time() + 120
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"on (http://127\.0\.0\.1:\d+)/v1", line)
        if m:
            threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
            return proc, m.group(1), lines
    proc.kill()
    raise AssertionError("server did not start:\n" + "".join(lines))


@pytest.fixture(scope="module")
def server(sft_export, demo_files):
    proc, base, lines = start_server("--model", str(sft_export), "--name", "chexone-demo", "--max-request-mb",
                                     "0.5", "--allow-file-root", str(demo_files), "--default-max-tokens", "8")
    yield base, lines
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0  # SIGTERM is a clean shutdown


def test_models_and_health(server):
    base, _ = server
    status, body = get(base, "/v1/models")
    assert status == 200 and [m["id"] for m in body["data"]] == ["chexone-demo"]
    assert get(base, "/health") == (200, {"status": "ok", "model": "chexone-demo"})
    assert get(base, "/v1/models/other")[0] == 404


def test_chat_completion_answers_a_demo_image(server, demo_files):
    base, lines = server
    status, body = post(base, {"model": "chexone-demo", "max_tokens": 5,
                               "messages": user("Describe the findings.",
                                                data_url(demo_files / "demo-test-000000.img0.png"))})
    assert status == 200, body
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["completion_tokens"] <= 5 and usage["prompt_tokens"] > 16  # image tokens counted
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    # the same image as a DICOM data URL and as a file path under the allowed root
    s2, b2 = post(base, {"max_tokens": 5, "messages": user("Describe.", data_url(demo_files / "demo.dcm",
                                                                                 "application/dicom"))})
    s3, b3 = post(base, {"max_tokens": 5, "messages": user("Describe.", str(demo_files / "demo.dcm"))})
    assert s2 == s3 == 200 and b2["choices"][0]["message"] == b3["choices"][0]["message"]
    assert any("POST /v1/chat/completions 200" in line for line in lines)  # one log line per request
    assert not any("base64" in line for line in lines)  # bodies are never logged


def test_the_openai_client_works_streaming_and_not(server, demo_files):
    openai = pytest.importorskip("openai")
    base, _ = server
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list()] == ["chexone-demo"]
    messages = user("Write the findings.", data_url(demo_files / "demo-test-000001.img0.png"))
    full = client.chat.completions.create(model="chexone-demo", messages=messages, max_tokens=12, temperature=0)
    chunks = list(client.chat.completions.create(model="chexone-demo", messages=messages, max_tokens=12,
                                                 temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == full.choices[0].message.content
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [full.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="gpt-4o", messages=messages)


@pytest.mark.parametrize("case", ["not_an_image", "wrong_type", "too_large", "unknown_model", "bad_json",
                                  "remote_url", "outside_root", "n2", "no_messages"])
def test_bad_requests_get_clear_4xx_errors(server, demo_files, tmp_path, case):
    base, _ = server
    png = data_url(demo_files / "demo-test-000000.img0.png")
    if case == "not_an_image":
        status, body = post(base, {"messages": user("x", "data:image/png;base64," + base64.b64encode(b"hi").decode())})
        assert status == 400 and body["error"]["code"] == "not_an_image"
        assert body["error"]["param"] == "messages[0].content[0]"
    elif case == "wrong_type":
        status, body = post(base, None, ctype="text/plain", raw=b"hello")
        assert status == 415 and "application/json" in body["error"]["message"]
    elif case == "too_large":
        status, body = post(base, {"messages": user("x" * 600_000)})
        assert status == 413 and body["error"]["code"] == "request_too_large"
    elif case == "unknown_model":
        status, body = post(base, {"model": "nope", "messages": user("x", png)})
        assert status == 404 and body["error"]["code"] == "model_not_found"
    elif case == "bad_json":
        status, body = post(base, None, raw=b"{not json")
        assert status == 400 and "not valid JSON" in body["error"]["message"]
    elif case == "remote_url":
        status, body = post(base, {"messages": user("x", "https://example.com/a.png")})
        assert status == 400 and "data URL" in body["error"]["message"]
    elif case == "outside_root":
        outside = tmp_path / "x.png"
        outside.write_bytes((demo_files / "demo-test-000000.img0.png").read_bytes())
        status, body = post(base, {"messages": user("x", str(outside))})
        assert status == 403 and "outside the allowed file roots" in body["error"]["message"]
    elif case == "n2":
        status, body = post(base, {"n": 2, "messages": user("x", png)})
        assert status == 400 and body["error"]["param"] == "n"
    else:
        status, body = post(base, {"messages": []})
        assert status == 400 and body["error"]["param"] == "messages"
    # the server is still healthy afterwards
    assert get(base, "/health")[0] == 200


@pytest.mark.slow
def test_binds_localhost_by_default_and_refuses_a_missing_model(tmp_path):
    from chexone import serve

    assert serve.build_parser().parse_args(["--model", "x"]).host == "127.0.0.1"
    proc = subprocess.run([sys.executable, "-m", "chexone.serve", "--model", str(tmp_path / "none"), "--port", "0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Could not load model.path=" in proc.stderr


# ------------------------------------------------------------------------------ in-process, stand-in model


class SlowEcho:
    """Answers "echo:<last text>" after a pause, streaming word by word; records the batch sizes it saw."""

    name = "echo"

    def __init__(self, pause=0.3):
        self.pause = pause
        self.batches: list[int] = []

    def encode(self, conversation):
        text = conversation.messages[-1]["content"][-1]["text"]
        if text == "too long":
            raise InferenceError("the prompt has 9999 tokens, more than the limit of 10")
        return type("E", (), {"input_ids": [0] * len(text)})()

    def generate(self, conversations, settings, *, seed=None, on_text=None, encoded=None):
        self.batches.append(len(conversations))
        time.sleep(self.pause)
        out = []
        for row, c in enumerate(conversations):
            words = ["echo:", *c.messages[-1]["content"][-1]["text"].split()]
            if on_text:
                for w in words:
                    on_text(row, w + " ")
            out.append(Completion(" ".join(words) + " ", len(words), len(words), "stop"))
        return out


@pytest.fixture()
def echo_server():
    model = SlowEcho()
    srv = ChexoneHTTPServer(("127.0.0.1", 0), model, limits=ServerLimits(), api_key="s3cret", batch_wait_ms=100)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", model, srv
    srv.shutdown()
    srv.server_close()


AUTH = {"Authorization": "Bearer s3cret"}


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(echo_server):
    base, model, srv = echo_server
    results: dict[int, tuple] = {}

    def call(i):
        results[i] = post(base, {"messages": user(f"question {i}")}, headers=AUTH)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(6):
        status, body = results[i]
        assert status == 200 and body["choices"][0]["message"]["content"] == f"echo: question {i} "
    assert max(model.batches) > 1 and sum(model.batches) == 6


def test_requests_with_other_settings_are_not_mixed_into_a_batch(echo_server):
    base, model, _ = echo_server
    out = {}
    threads = [threading.Thread(target=lambda i=i: out.setdefault(i, post(
        base, {"messages": user(f"q{i}"), "temperature": 0.5 * (i % 2), "seed": 1}, headers=AUTH)))
        for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(out[i][0] == 200 for i in range(4))
    assert len(model.batches) >= 2  # greedy and sampled requests ran in different batches


def test_api_key_is_required_when_set(echo_server):
    base, _, _ = echo_server
    status, body = post(base, {"messages": user("hi")})
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    assert post(base, {"messages": user("hi")}, headers={"Authorization": "Bearer wrong"})[0] == 401
    assert get(base, "/health")[0] == 200  # health needs no key


def test_a_prompt_that_does_not_fit_fails_alone(echo_server):
    base, model, _ = echo_server
    out = {}
    t1 = threading.Thread(target=lambda: out.setdefault("bad", post(base, {"messages": user("too long")},
                                                                    headers=AUTH)))
    t2 = threading.Thread(target=lambda: out.setdefault("good", post(base, {"messages": user("fine")},
                                                                     headers=AUTH)))
    t1.start(), t2.start(), t1.join(), t2.join()
    assert out["bad"][0] == 400 and "more than the limit" in out["bad"][1]["error"]["message"]
    assert out["good"][0] == 200 and out["good"][1]["choices"][0]["message"]["content"] == "echo: fine "


def test_streaming_sends_server_sent_events_in_order(echo_server):
    base, _, _ = echo_server
    req = urllib.request.Request(f"{base}/v1/chat/completions", headers={"Content-Type": "application/json", **AUTH},
                                 data=json.dumps({"messages": user("a b c"), "stream": True}).encode())
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.headers["Content-Type"] == "text/event-stream"
        events = [line[6:] for line in r.read().decode().splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "echo: a b c "
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "stop"


# ------------------------------------------------------------------------------------------- request rules


def test_request_translation_rules():
    limits = ServerLimits(max_new_tokens=100, default_max_tokens=50)
    r = parse_chat_request({"messages": [{"role": "user", "content": "hi"}]}, model_name="m", limits=limits)
    assert r.settings.max_new_tokens == 50 and not r.settings.do_sample  # greedy by default
    assert r.conversation.messages[0]["role"] == "system"  # the training system prompt is added
    r = parse_chat_request({"messages": [{"role": "user", "content": "hi"}], "temperature": 0.7, "top_p": 0.9,
                            "max_completion_tokens": 10}, model_name="m", limits=limits)
    assert (r.settings.do_sample, r.settings.temperature, r.settings.top_p, r.settings.max_new_tokens) == \
        (True, 0.7, 0.9, 10)
    bad = [({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 101}, "max_tokens"),
           ({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, "temperature"),
           ({"messages": [{"role": "user", "content": "hi"}], "stop": ["x"]}, "stop"),
           ({"messages": [{"role": "user", "content": "hi"}], "frobnicate": 1}, "frobnicate"),
           ({"messages": [{"role": "assistant", "content": "hi"}]}, "messages[0]"),
           ({"messages": [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
                          {"role": "user", "content": "hi"}]}, "messages[0].content[0]")]
    for body, param in bad:
        with pytest.raises(APIError) as err:
            parse_chat_request(body, model_name="m", limits=limits)
        assert err.value.status == 400 and err.value.param == param, (body, err.value.message)
