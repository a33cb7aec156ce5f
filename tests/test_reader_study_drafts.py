"""The ``drafts`` command against a tiny fake OpenAI-compatible server on 127.0.0.1: the request it sends, how the
reply is split into reasoning and report, resuming, and clear errors when the server is down or fails."""

from __future__ import annotations

import base64
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from chexone.reader_study.__main__ import main
from chexone.reader_study.drafts import read_drafts, split_reasoning
from chexone.reader_study.study import load_study
from reader_study_kit import Client, ServerProcess, free_port, make_study


class FakeOpenAI:
    """``GET /v1/models`` and ``POST /v1/chat/completions`` with a canned reasoning reply per request; ``fail_on``:
    the 1-based completion that answers HTTP 500."""

    def __init__(self, fail_on: int | None = None, empty_on: tuple[int, ...] = (), finish: str = "stop"):
        self.requests: list[dict] = []
        self.models_asked = 0
        self.fail_on = fail_on
        self.empty_on = empty_on
        self.finish = finish
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, code: int, obj: dict) -> None:
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path == "/v1/models":
                    fake.models_asked += 1
                    return self._send(200, {"object": "list", "data": [{"id": "served-model", "object": "model"}]})
                self._send(404, {"error": "not found"})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": "not found"})
                fake.requests.append(body)
                n = len(fake.requests)
                if fake.fail_on == n:
                    return self._send(500, {"error": {"message": "CUDA out of memory"}})
                text = (f"**Thinking Process:**\n1. Look at image {n}.\n2. Lungs {{clear}}.\n\n"
                        f"**Final Answer:** \\boxed{{FINDINGS: reply {n}.\nIMPRESSION: normal {{x}}.}}")
                if n in fake.empty_on:
                    text = "\n\n  "
                self._send(200, {"id": f"c{n}", "object": "chat.completion", "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": fake.finish}]})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> "FakeOpenAI":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_split_reasoning():
    text = "1. Look.\n2. See {a}.\n\n**Final Answer:** \\boxed{Effusion {left}.}"
    assert split_reasoning(text) == ("1. Look.\n2. See {a}.", "Effusion {left}.", True)
    assert split_reasoning("a \\boxed{first} b \\boxed{second}") == ("a \\boxed{first} b", "second", True)
    assert split_reasoning("  no box here  ") == ("", "no box here", False)


def test_drafts_asks_the_server_for_every_missing_item_and_resumes(tmp_path, capsys):
    path = make_study(tmp_path, n_draft=2, n_pairwise=1, n_rating=1, drafts=False,
                      extra={"draft_question": "Describe the findings."})
    out = tmp_path / "drafts.jsonl"
    with FakeOpenAI() as fake:
        assert main(["drafts", "--study", str(path), "--server", fake.url, "--max-tokens", "77"]) == 0
        assert fake.models_asked == 1  # no --model: the first one the server lists
        assert len(fake.requests) == 4
        body = fake.requests[0]
        assert body["model"] == "served-model" and body["max_tokens"] == 77 and body["temperature"] == 0
        (msg,) = body["messages"]
        assert msg["role"] == "user" and [c["type"] for c in msg["content"]] == ["image_url", "text"]
        url = msg["content"][0]["image_url"]["url"]
        assert url.startswith("data:image/png;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
        original = Image.open(tmp_path / "images" / "img1.png")
        assert image.size == original.size and list(image.getdata()) == list(original.getdata())
        assert msg["content"][1]["text"] == ("Describe the findings. Please reason step by step and put your final "
                                             "answer within \\boxed{}.")
        rating = next(r for r in fake.requests if len(r["messages"][0]["content"]) == 3)  # two images
        assert rating["messages"][0]["content"][2]["text"].startswith("Question 1: is there an effusion?")
        drafts = read_drafts(out)
        assert sorted(drafts) == ["d1", "d2", "p1", "q1"]
        d = drafts["d1"]
        assert d.answer == "FINDINGS: reply 1.\nIMPRESSION: normal {x}."
        assert d.reasoning == "**Thinking Process:**\n1. Look at image 1.\n2. Lungs {clear}."
        assert d.model == "served-model" and d.boxed and "\\boxed{" in d.raw
        assert "4 new, 0 already there" in capsys.readouterr().out
        # resume: nothing left to ask
        assert main(["drafts", "--study", str(path), "--server", fake.url, "--model", "m"]) == 0
        assert len(fake.requests) == 4
    assert load_study(path).missing_drafts() == []


def test_an_interrupted_run_keeps_finished_items_and_resumes(tmp_path, capsys):
    path = make_study(tmp_path, n_draft=3, n_pairwise=0, n_rating=0, drafts=False)
    out = tmp_path / "drafts.jsonl"
    with FakeOpenAI(fail_on=2) as fake:
        assert main(["drafts", "--study", str(path), "--server", fake.url, "--model", "m"]) == 1
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("error: ") and "chat/completions: HTTP 500" in err and "CUDA out of memory" in err
        assert sorted(read_drafts(out)) == ["d1"]
        with open(out, "a") as f:  # and a half-written line from a killed run
            f.write('{"id": "d2", "ans')
        fake.fail_on = None
        assert main(["drafts", "--study", str(path), "--server", fake.url, "--model", "m"]) == 0
        assert "dropping an incomplete last line" in capsys.readouterr().err
    assert sorted(read_drafts(out)) == ["d1", "d2", "d3"]
    assert len(fake.requests) == 4  # d1, d2 (failed), d2, d3


def test_unreachable_server_is_a_clear_error(tmp_path, capsys):
    path = make_study(tmp_path, drafts=False)
    port = free_port()  # nothing listens there
    assert main(["drafts", "--study", str(path), "--server", f"http://user:pw@127.0.0.1:{port}/v1"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: cannot reach the model server at http://127.0.0.1:{port}/v1")
    assert "pw" not in err and len(err.splitlines()) == 1
    assert not (tmp_path / "drafts.jsonl").exists()
    assert main(["drafts", "--study", str(path), "--server", "ftp://x"]) == 1
    assert "expected an http(s) URL" in capsys.readouterr().err


def test_serve_fills_missing_drafts_at_startup(tmp_path):
    path = make_study(tmp_path, n_draft=1, n_pairwise=1, n_rating=0, drafts=False)
    with FakeOpenAI() as fake:
        with ServerProcess(path, tmp_path / "a.db", "--drafts-server", fake.url, "--model", "m") as server:
            assert len(fake.requests) == 2
            client = Client(server.url)
            status, page = client.login("r1")
            assert status == 200 and ("reply 1." in page or "reply 2." in page)
    assert sorted(read_drafts(tmp_path / "drafts.jsonl")) == ["d1", "p1"]


@pytest.mark.parametrize("reply, expected", [
    ({"choices": []}, "has no choices[0].message.content"),
    ({"nope": 1}, "has no choices[0].message.content"),
])
def test_malformed_replies(tmp_path, capsys, monkeypatch, reply, expected):
    from chexone.reader_study import drafts

    path = make_study(tmp_path, n_draft=1, n_pairwise=0, n_rating=0, drafts=False)
    monkeypatch.setattr(drafts.ChatClient, "_request", lambda self, p, body=None: reply)
    assert main(["drafts", "--study", str(path), "--server", "http://127.0.0.1:9/v1", "--model", "m"]) == 1
    assert expected in capsys.readouterr().err


def test_empty_replies_are_not_stored_and_the_rest_go_on(tmp_path, capsys):
    path = make_study(tmp_path, n_draft=3, n_pairwise=0, n_rating=0, drafts=False)
    out = tmp_path / "drafts.jsonl"
    with FakeOpenAI(empty_on=(2,), finish="length") as fake:
        assert main(["drafts", "--study", str(path), "--server", fake.url, "--model", "m"]) == 1
        err = capsys.readouterr().err
        assert "error: 1 items got an empty reply and were not stored ('d2'); 2 others were" in err
        assert "2 replies stopped at --max-tokens 2048" in err
        assert sorted(read_drafts(out)) == ["d1", "d3"]
        assert main(["drafts", "--study", str(path), "--server", fake.url, "--model", "m"]) == 0
    assert sorted(read_drafts(out)) == ["d1", "d2", "d3"] and len(fake.requests) == 4
