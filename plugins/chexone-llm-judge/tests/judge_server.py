"""A stand-in LLM judge: a real HTTP server (standard library only) speaking the OpenAI chat API on 127.0.0.1.

    python judge_server.py --log requests.jsonl [--model NAME] [--api-key KEY]

prints its port on the first line of stdout, then serves until killed:

* ``GET /v1/models`` lists ``--model``;
* ``POST /v1/chat/completions`` judges the ``<candidate_report>`` against the ``<reference_report>`` of the last
  user message with a fixed rule: the reports are split into findings at ``.``/``;``/new lines (lower-cased);
  findings in both are matched; a candidate finding that is a reference finding with left and right swapped is a
  category (c) error (wrong location); other candidate-only findings are (a) false reports and other reference-only
  findings (b) misses; candidate findings starting with ``incidentally`` are insignificant errors. So tests can work
  out every score by hand;
* ``POST /control`` with a JSON object queues misbehaviour for the next chat requests: ``{"fail": N}`` (HTTP 500),
  ``{"hang": N, "hang_seconds": S}`` (answer only after S seconds), ``{"malformed": N}`` (HTTP 200 with a body that is
  not JSON), ``{"garbage": N}`` (a chat completion whose content is not the JSON asked for), ``{"fenced": true}``
  (judgements wrapped in a Markdown code fence with some prose), ``{"delay": S}`` (every answer takes S seconds, so
  that concurrent requests overlap);
* ``GET /stats`` returns the number of chat requests received and the most that were in flight at once.

Every chat request is appended to ``--log`` (path, model, whether an ``Authorization`` header came, the behaviour).
With ``--api-key``, requests without ``Authorization: Bearer KEY`` get HTTP 401.
"""

from __future__ import annotations

import argparse
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()
STATE = {"chat": 0, "fail": 0, "hang": 0, "hang_seconds": 2.0, "malformed": 0, "garbage": 0, "fenced": False,
         "delay": 0.0, "inflight": 0, "max_inflight": 0}


def findings(text: str) -> list[str]:
    out = []
    for part in re.split(r"[.;\n]+", text.lower()):
        part = " ".join(part.split())
        if part and part not in out:
            out.append(part)
    return out


def swap_sides(finding: str) -> str:
    return re.sub(r"\b(left|right)\b", lambda m: "right" if m.group(1) == "left" else "left", finding)


def judge(user: str) -> dict:
    cand = findings(re.search(r"<candidate_report>\s*(.*?)\s*</candidate_report>", user, re.S).group(1))
    ref = findings(re.search(r"<reference_report>\s*(.*?)\s*</reference_report>", user, re.S).group(1))
    matched = [f for f in cand if f in ref]
    significant, insignificant, located = [], [], set()
    for f in cand:
        if f in ref:
            continue
        if f.startswith("incidentally"):
            insignificant.append(f)
        elif swap_sides(f) in ref and swap_sides(f) != f:
            significant.append({"category": "c", "finding": f})
            located.add(swap_sides(f))
        else:
            significant.append({"category": "a", "finding": f})
    significant += [{"category": "b", "finding": f} for f in ref if f not in cand and f not in located]
    return {"matched_findings": matched, "significant_errors": significant, "insignificant_errors": insignificant}


class Handler(BaseHTTPRequestHandler):
    server_version = "judge-stub/1"

    def log_message(self, *args):
        pass

    def reply(self, code: int, body, ctype: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else (body if isinstance(body, str) else json.dumps(body)).encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def authorised(self) -> bool:
        key = self.server.api_key
        return not key or self.headers.get("Authorization") == f"Bearer {key}"

    def do_GET(self):
        if self.path == "/stats":
            with LOCK:
                return self.reply(200, {"chat": STATE["chat"], "max_inflight": STATE["max_inflight"]})
        if self.path == "/v1/models":
            if not self.authorised():
                return self.reply(401, {"error": {"message": "invalid api key"}})
            return self.reply(200, {"object": "list", "data": [{"id": self.server.model, "object": "model"}]})
        self.reply(404, {"error": "not found"})

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path == "/control":
            with LOCK:
                STATE.update(json.loads(body))
            return self.reply(200, {"ok": True})
        if self.path != "/v1/chat/completions":
            return self.reply(404, {"error": "not found"})
        request = json.loads(body)
        with LOCK:
            STATE["chat"] += 1
            mode = "ok"
            for m in ("fail", "hang", "malformed", "garbage"):
                if STATE[m] > 0:
                    STATE[m] -= 1
                    mode = m
                    break
            fenced, hang_seconds, delay = STATE["fenced"], STATE["hang_seconds"], STATE["delay"]
            STATE["inflight"] += 1
            STATE["max_inflight"] = max(STATE["max_inflight"], STATE["inflight"])
            with open(self.server.log, "a") as f:
                f.write(json.dumps({"path": self.path, "model": request.get("model"), "mode": mode,
                                    "auth": "Authorization" in self.headers}) + "\n")
        # The answer is made first and the request stops counting as in flight before its bytes go out: the client
        # may send its next request the moment it has read this one, and must not be counted twice.
        try:
            time.sleep(delay)
            if not self.authorised():
                answer = (401, {"error": {"message": "invalid api key"}}, "application/json")
            elif mode == "fail":
                answer = (500, {"error": {"message": "internal error"}}, "application/json")
            elif mode == "malformed":
                answer = (200, "<html>upstream proxy error</html>", "text/html")
            else:
                if mode == "hang":
                    time.sleep(hang_seconds)
                content = json.dumps(judge(request["messages"][-1]["content"]))
                if fenced:
                    content = f"Here is my assessment.\n```json\n{content}\n```\n"
                if mode == "garbage":
                    content = "The candidate report looks mostly fine to me."
                answer = (200, {"id": "chatcmpl-1", "object": "chat.completion", "model": request.get("model"),
                                "choices": [{"index": 0, "finish_reason": "stop",
                                             "message": {"role": "assistant", "content": content}}]},
                          "application/json")
        finally:
            with LOCK:
                STATE["inflight"] -= 1
        try:
            self.reply(*answer)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--log", required=True)
    p.add_argument("--model", default="judge-model")
    p.add_argument("--api-key", default="")
    a = p.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.log, server.model, server.api_key = a.log, a.model, a.api_key
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
