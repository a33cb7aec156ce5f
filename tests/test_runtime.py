"""CPU cores are shared out: torch threads per process and DataLoader workers never oversubscribe the machine."""

import pytest
import torch

from chexone import runtime


def test_auto_workers_leave_a_core_for_training(monkeypatch):
    monkeypatch.setattr(runtime, "available_cores", lambda: 2)
    assert runtime.resolve_num_workers(-1, 1) == 1  # 2 cores: one trains, one decodes
    assert runtime.resolve_num_workers(-1, 2) == 0  # 2 DDP ranks on 2 cores: no room for workers
    monkeypatch.setattr(runtime, "available_cores", lambda: 96)
    assert runtime.resolve_num_workers(-1, 8) == 8 and runtime.resolve_num_workers(-1, 32) == 2
    assert runtime.resolve_num_workers(3, 8) == 3  # an explicit count is kept


def test_too_many_workers_are_warned_about(monkeypatch, caplog):
    monkeypatch.setattr(runtime, "available_cores", lambda: 2)
    assert runtime.resolve_num_workers(6, 1) == 6
    assert "data.num_workers=6 but this process has 2 core(s)" in caplog.text


def test_threads_are_the_process_share_unless_omp_num_threads_is_set(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(runtime, "available_cores", lambda: 4)
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert runtime.configure_threads(2) == 2
        torch.set_num_threads(3)
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        assert runtime.configure_threads(4) == 3  # the user's setting wins
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------------ worker start


def _main_module(monkeypatch, tmp_path, source=None, spec=False):
    import sys
    import types

    main = types.ModuleType("__main__")
    if spec:
        main.__spec__ = types.SimpleNamespace(name="chexone.fit")
    if source is not None:
        path = tmp_path / "train.py"
        path.write_text(source)
        main.__file__ = str(path)
    monkeypatch.setitem(sys.modules, "__main__", main)


def test_auto_start_method_forks_only_a_script_that_would_rerun_in_every_worker(monkeypatch, tmp_path):
    assert runtime.worker_start_method("spawn") == "spawn"  # an explicit choice is kept
    _main_module(monkeypatch, tmp_path, spec=True)  # python -m chexone.fit
    assert runtime.worker_start_method("auto") == "forkserver"
    _main_module(monkeypatch, tmp_path)  # python -c / an interactive session: nothing to re-import
    assert runtime.worker_start_method("auto") == "forkserver"
    _main_module(monkeypatch, tmp_path, 'from chexone.training.run import run_fit\nif __name__ == "__main__":\n    run_fit(cfg)\n')
    assert runtime.worker_start_method("auto") == "forkserver"
    _main_module(monkeypatch, tmp_path, "from chexone.training.run import run_fit\nrun_fit(cfg)\n")
    assert runtime.worker_start_method("auto") == "fork"


class _ParentPid(torch.utils.data.IterableDataset):
    def __iter__(self):
        import os

        yield os.getppid()


def test_default_workers_are_not_forked_from_the_training_process():
    """A worker forked from a process that runs threads can deadlock (CPython 3.11's after-fork head lock): the
    default workers' parent is the forkserver, not this process, and they still deliver batches."""
    import os

    runtime.start_worker_server("forkserver", 1)
    loader = torch.utils.data.DataLoader(_ParentPid(), batch_size=None, **runtime.worker_options(1, "forkserver"))
    assert loader.multiprocessing_context.get_start_method() == "forkserver" and loader.persistent_workers
    (parent,) = list(loader)
    assert parent != os.getpid()
    forked = torch.utils.data.DataLoader(_ParentPid(), batch_size=None, **runtime.worker_options(1, "fork"))
    assert list(forked) == [os.getpid()]  # the contrast: fork makes this process the parent
    assert runtime.worker_options(0, "forkserver") == {"num_workers": 0}


KILLED_TRAINER = """
import os, sys, torch
from chexone import runtime

class Pid(torch.utils.data.IterableDataset):
    def __iter__(self):
        while True:
            yield os.getpid()

if __name__ == "__main__":
    loader = torch.utils.data.DataLoader(Pid(), batch_size=None, **runtime.worker_options(1, sys.argv[1]))
    print(next(iter(loader)), flush=True)
    os._exit(9)  # killed: no DataLoader shutdown runs
"""


def _alive(pid):
    import os

    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        os.kill(pid, 0)
        return True


@pytest.mark.slow
def test_workers_exit_when_the_training_process_is_killed(tmp_path):
    """A killed training process leaves no worker behind (a forkserver's worker is not its child, so torch's own
    parent check never fires); the worker would otherwise keep the caller's pipes open forever."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    script = tmp_path / "trainer.py"
    script.write_text(KILLED_TRAINER)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    for method in ("forkserver", "fork"):
        with open(tmp_path / f"{method}.out", "w+") as out:  # a file, not a pipe: a lingering worker cannot block us
            proc = subprocess.run([sys.executable, str(script), method], env=env, stdout=out, stderr=out,
                                  timeout=120)
            out.seek(0)
            text = out.read()
        assert proc.returncode == 9, text
        worker = int(next(line for line in text.splitlines() if line.strip().isdigit()))
        deadline = time.monotonic() + 20
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.2)
        alive = _alive(worker)
        if alive:
            os.kill(worker, 9)
        assert not alive, f"{method}: worker {worker} outlived the killed training process"
