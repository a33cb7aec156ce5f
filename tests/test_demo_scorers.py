"""The demo report scorers' cache under concurrent builders (DDP ranks, reward threads, runs) and damage.

The real build is replaced by a slow stand-in that writes the same file list one file at a time, so that a reader
looking at a half-written build would see it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from chexone.metrics import demo_scorers
from chexone.metrics.demo_scorers import DEMO_SCORERS_VERSION, REQUIRED_FILES, ensure_demo_scorers

#: A stand-in for ``_build``: every required file but the manifest, slowly, and a line in ``builds.log`` per build.
SLOW_BUILD = '''
import os, time
from pathlib import Path
def slow_build(root, log, delay):
    root = Path(root)
    with open(log, "a") as f:
        f.write(f"{os.getpid()}\\n")
    for name in REQUIRED_FILES:
        if name == "manifest.json":
            continue
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(name)
        time.sleep(delay)
'''


def _slow_build(log: Path, delay: float = 0.02):
    scope = {"REQUIRED_FILES": REQUIRED_FILES}
    exec(SLOW_BUILD, scope)
    return lambda root: scope["slow_build"](root, log, delay)


def test_concurrent_builders_build_once_and_nobody_sees_a_partial_build(tmp_path, monkeypatch):
    directory = tmp_path / "scorers"
    root = directory / f"v{DEMO_SCORERS_VERSION}"
    log = tmp_path / "builds.log"
    monkeypatch.setattr(demo_scorers, "_build", _slow_build(log))

    # two other processes (as two DDP ranks) and two threads of this one (as the main thread and the reward thread)
    script = tmp_path / "builder.py"
    script.write_text(
        "import sys\nfrom chexone.metrics import demo_scorers\nfrom chexone.metrics.demo_scorers import *\n"
        + SLOW_BUILD + "\ndemo_scorers._build = lambda root: slow_build(root, sys.argv[2], 0.02)\n"
        "demo_scorers.ensure_demo_scorers(sys.argv[1])\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [subprocess.Popen([sys.executable, str(script), str(directory), str(log)], env=env) for _ in range(2)]

    seen_partial: list[list[str]] = []
    done = threading.Event()

    def watch():  # whenever the build is visible under its name, every file must be there
        while not done.is_set():
            if root.exists():
                missing = [f for f in REQUIRED_FILES if not (root / f).is_file()]
                if missing:
                    seen_partial.append(missing)
            time.sleep(0.001)

    watcher = threading.Thread(target=watch)
    watcher.start()
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(ensure_demo_scorers(directory))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for p in procs:
        assert p.wait(60) == 0
    done.set()
    watcher.join()

    assert seen_partial == []
    assert results == [root, root]
    assert len(log.read_text().split()) == 1, "built more than once"
    assert json.loads((root / "manifest.json").read_text())["version"] == DEMO_SCORERS_VERSION
    assert sorted(p.name for p in directory.iterdir()) == [f".v{DEMO_SCORERS_VERSION}.lock", root.name]


def test_a_damaged_build_is_replaced_while_a_reader_keeps_its_open_files(tmp_path, monkeypatch):
    directory = tmp_path / "scorers"
    log = tmp_path / "builds.log"
    monkeypatch.setattr(demo_scorers, "_build", _slow_build(log, delay=0))
    root = ensure_demo_scorers(directory)
    reader = open(root / "bert" / "config.json")  # a process that is loading the old build
    (root / "roberta" / "config.json").unlink()  # damage that once surfaced as "roberta has none of config.json"

    assert ensure_demo_scorers(directory) == root
    assert all((root / f).is_file() for f in REQUIRED_FILES)
    assert len(log.read_text().split()) == 2
    assert reader.read() == "bert/config.json"
    reader.close()
    assert sorted(p.name for p in directory.iterdir()) == [f".v{DEMO_SCORERS_VERSION}.lock", root.name]


def test_a_build_that_fails_leaves_nothing_behind_and_the_next_caller_builds(tmp_path, monkeypatch):
    directory = tmp_path / "scorers"
    log = tmp_path / "builds.log"
    slow = _slow_build(log, delay=0)

    def broken(root):
        slow(root)
        raise RuntimeError("disk full")

    monkeypatch.setattr(demo_scorers, "_build", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        ensure_demo_scorers(directory)
    assert [p.name for p in directory.iterdir()] == [f".v{DEMO_SCORERS_VERSION}.lock"]

    # a builder killed mid-way leaves its private directory: the next builder clears it (it holds the lock)
    killed = directory / f".v{DEMO_SCORERS_VERSION}.tmp-1-deadbeef"
    (killed / "roberta").mkdir(parents=True)
    monkeypatch.setattr(demo_scorers, "_build", slow)
    root = ensure_demo_scorers(directory)
    assert not killed.exists()
    assert all((root / f).is_file() for f in REQUIRED_FILES)


def test_an_older_build_without_every_file_is_not_taken_as_complete(tmp_path, monkeypatch):
    """A build of another version, or one whose manifest is there but a model file is not, is rebuilt."""
    directory = tmp_path / "scorers"
    root = directory / f"v{DEMO_SCORERS_VERSION}"
    root.mkdir(parents=True)
    (root / "manifest.json").write_text(json.dumps({"version": DEMO_SCORERS_VERSION}))
    (root / "roberta").mkdir()  # the directories exist, the files do not
    log = tmp_path / "builds.log"
    monkeypatch.setattr(demo_scorers, "_build", _slow_build(log, delay=0))
    ensure_demo_scorers(directory)
    assert len(log.read_text().split()) == 1
    assert all((root / f).is_file() for f in REQUIRED_FILES)
