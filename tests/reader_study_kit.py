"""Shared helpers for the reader-study tests: a small study on tiny generated images, a free port, the real server
in a subprocess, and a cookie-keeping HTTP client that fills forms the way a browser does."""

from __future__ import annotations

import http.client
import http.cookiejar
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

from chexone.testing import tiny_image

REPO = Path(__file__).resolve().parents[1]

MODEL_NAME = "secret-model-v9"  # recorded in drafts.jsonl; must never reach a reader's page


def draft_record(item_id: str, answer: str, reasoning: str = "") -> dict:
    raw = f"{reasoning}\n\\boxed{{{answer}}}"
    return {"id": item_id, "answer": answer, "reasoning": reasoning, "raw": raw, "model": MODEL_NAME}


def make_study(root: Path, *, n_draft: int = 2, n_pairwise: int = 2, n_rating: int = 2, readers=None,
               extra: dict | None = None, drafts: bool = True, name: str = "test-study",
               image_size: int = 32) -> Path:
    """A study directory under ``root``: tiny PNGs, drafts.jsonl (model texts for every item) and study.yaml."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(exist_ok=True)
    items, records = [], []
    k = 0

    def image() -> str:
        nonlocal k
        k += 1
        rel = f"img{k}.png"
        tiny_image(seed=k, size=image_size).save(root / "images" / rel)
        return rel

    for i in range(1, n_draft + 1):
        items.append({"id": f"d{i}", "type": "draft_edit", "images": [image()]})
        records.append(draft_record(f"d{i}", f"Draft report {i}.\nNo pleural effusion.", f"Reasoning for d{i}."))
    for i in range(1, n_pairwise + 1):
        items.append({"id": f"p{i}", "type": "pairwise", "images": [image()],
                      "reference_report": f"Radiologist report {i}: normal chest."})
        records.append(draft_record(f"p{i}", f"Draft findings {i}: small effusion.", f"Reasoning for p{i}."))
    for i in range(1, n_rating + 1):
        items.append({"id": f"q{i}", "type": "reasoning_rating", "images": [image(), image()],
                      "question": f"Question {i}: is there an effusion?"})
        records.append(draft_record(f"q{i}", f"Answer {i}: yes.", f"Step 1 for q{i}.\nStep 2 <b>bold</b>."))
    study = {"study": name, "seed": 7, "images_root": "images", "drafts": "drafts.jsonl",
             "readers": readers if readers is not None else ["r1", "r2"], "items": items}
    study.update(extra or {})
    if drafts:
        with open(root / "drafts.jsonl", "w", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec) + "\n")
    path = root / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False), encoding="utf-8")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen | None = None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


class ServerProcess:
    """``python -m chexone.reader_study serve`` in a subprocess on a free 127.0.0.1 port."""

    def __init__(self, study: Path, db: Path | str, *extra: str, port: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "chexone.reader_study", "serve", "--study", str(study), "--db", str(db),
             "--port", str(self.port), *extra],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_http(self.url + "/healthz", self.proc)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> tuple[str, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.communicate()

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # noqa: ANN002
        return None


class Client:
    """A browser stand-in: keeps cookies, reads the CSRF token from each page, follows redirects when asked."""

    def __init__(self, base: str):
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.follow = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))
        self.nofollow = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar), NoRedirect)
        self.csrf = ""

    def request(self, path: str, data: dict | None = None, *, follow: bool = True) -> tuple[int, str, dict]:
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        opener = self.follow if follow else self.nofollow
        try:
            with opener.open(self.base + path, body, timeout=30) as r:
                status, text, headers = r.status, r.read().decode("utf-8", "replace"), dict(r.headers)
        except urllib.error.HTTPError as e:
            status, text, headers = e.code, e.read().decode("utf-8", "replace"), dict(e.headers)
        m = re.search(r'name="csrf" value="([^"]*)"', text)
        if m:
            self.csrf = m.group(1)
        return status, text, headers

    def login(self, reader: str, password: str = "") -> tuple[int, str]:
        _, page, _ = self.request("/login")
        token = re.search(r'name="login_token" value="([^"]+)"', page).group(1)
        status, text, _ = self.request("/login", {"login_token": token, "reader_id": reader, "password": password})
        return status, text

    def submit(self, item_id: str, fields: dict, *, csrf: str | None = None, follow: bool = False):
        data = {"csrf": self.csrf if csrf is None else csrf, **fields}
        return self.request(f"/task/{item_id}", data, follow=follow)


def current_item(page: str) -> str | None:
    m = re.search(r'action="/task/([^"]+)"', page)
    return m.group(1) if m else None


def answer_fields(page: str, n: int = 0) -> dict:
    """A valid answer for whatever item the page shows (``n`` varies the content)."""
    if 'name="report"' in page:
        return {"report": f"Edited report {n}.\nSecond line.", "active_ms": "1500"}
    if 'name="choice"' in page:
        return {"choice": ["1", "2", "equal"][n % 3], "reason": f"reason {n}"}
    keys = sorted(set(re.findall(r'name="(rate_[a-z_]+)"', page)))
    return {**{k: str(1 + (n + j) % 5) for j, k in enumerate(keys)}, "comment": f"comment {n}"}


def raw_get(base_port: int, path: str, cookie: str = "") -> int:
    """GET a path byte-for-byte (no client-side normalisation of '..'); returns the status."""
    conn = http.client.HTTPConnection("127.0.0.1", base_port, timeout=10)
    conn.putrequest("GET", path, skip_host=False, skip_accept_encoding=True)
    if cookie:
        conn.putheader("Cookie", cookie)
    conn.endheaders()
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp.status
