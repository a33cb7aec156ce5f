"""CPU cores are shared out: torch threads per process and DataLoader workers never oversubscribe the machine."""

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
