"""Fixtures: a real stand-in judge server process on 127.0.0.1 (tests/judge_server.py), a private judge cache and
chexone cache per test session, and no judge settings leaking in from the environment."""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SERVER = Path(__file__).with_name("judge_server.py")
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class JudgeServer:
    """A running judge_server.py: its URL, request counts and misbehaviour switches."""

    def __init__(self, tmp: Path, *, model: str = "judge-model", api_key: str = ""):
        self.log = tmp / f"requests-{os.urandom(4).hex()}.jsonl"
        self.log.touch()
        args = [sys.executable, str(SERVER), "--log", str(self.log), "--model", model]
        if api_key:
            args += ["--api-key", api_key]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout=30):
            self.stop()
            raise RuntimeError("the judge server did not start within 30 s")
        self.port = int(self.proc.stdout.readline())
        self.root = f"http://127.0.0.1:{self.port}"
        self.url = f"{self.root}/v1"
        self.model = model

    def _call(self, path: str, payload: dict | None = None) -> dict:
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(self.root + path, data=data, method="GET" if data is None else "POST",
                                     headers={"Content-Type": "application/json"})
        with _NO_PROXY.open(req, timeout=10) as resp:
            return json.loads(resp.read())

    def control(self, **switches) -> None:
        self._call("/control", switches)

    @property
    def chat_requests(self) -> int:
        return self._call("/stats")["chat"]

    @property
    def max_inflight(self) -> int:
        return self._call("/stats")["max_inflight"]

    def requests(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        if self.proc.stdout:
            self.proc.stdout.close()


@pytest.fixture(autouse=True)
def _clean_judge_env(monkeypatch, tmp_path):
    """No judge settings from the user's environment; a fresh judge cache per test."""
    for var in ("CHEXONE_JUDGE_BASE_URL", "CHEXONE_JUDGE_MODEL", "CHEXONE_JUDGE_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CHEXONE_JUDGE_CACHE", str(tmp_path / "judge-cache"))


@pytest.fixture()
def judge(tmp_path):
    server = JudgeServer(tmp_path)
    yield server
    server.stop()


@pytest.fixture()
def start_judge(tmp_path):
    """Start a judge server with other settings: ``start_judge(model=..., api_key=...)``."""
    servers = []

    def start(**kw) -> JudgeServer:
        servers.append(JudgeServer(tmp_path, **kw))
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


@pytest.fixture(scope="session")
def chexone_cache(tmp_path_factory):
    """CHEXONE_CACHE in a temp dir (the tiny model is built there), never the user's ~/.cache/chexone."""
    path = tmp_path_factory.mktemp("chexone-cache")
    old = os.environ.get("CHEXONE_CACHE")
    os.environ["CHEXONE_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("CHEXONE_CACHE", None)
    else:
        os.environ["CHEXONE_CACHE"] = old


@pytest.fixture()
def closed_port() -> int:
    """A loopback port nothing listens on."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port
