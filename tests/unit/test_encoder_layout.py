"""How a worker's encoder shares out the cores: calls side by side, torch threads per call."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import metaguide.embedding.encoder as encoder_module
from metaguide.embedding.encoder import cgroup_cpu_limit, cpu_cores, thread_layout

CPU, GPU = torch.device("cpu"), torch.device("cuda")


def test_auto_on_a_cpu_is_one_single_threaded_call_per_core_up_to_four() -> None:
    assert thread_layout(CPU, 0, cores=1) == (1, 1)
    assert thread_layout(CPU, 0, cores=2) == (2, 1)
    assert thread_layout(CPU, 0, cores=4) == (4, 1)
    assert thread_layout(CPU, 0, cores=16) == (4, 4)


def test_a_given_number_of_streams_shares_the_cores_out() -> None:
    assert thread_layout(CPU, 1, cores=2) == (1, 2)  # the default: one call on every core
    assert thread_layout(CPU, 3, cores=8) == (3, 2)
    assert thread_layout(CPU, 4, cores=2) == (4, 1)  # never below one thread


def test_a_gpu_runs_one_call_at_a_time_and_leaves_torch_threads_alone() -> None:
    assert thread_layout(GPU, 0) == (1, 0)
    assert thread_layout(GPU, 2) == (2, 0)


def test_a_cgroup_cpu_limit_is_read_from_cpu_max(tmp_path: Path) -> None:
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("200000 100000\n")
    assert cgroup_cpu_limit(cpu_max) == 2.0
    cpu_max.write_text("150000 100000\n")
    assert cgroup_cpu_limit(cpu_max) == 1.5
    cpu_max.write_text("max 100000\n")
    assert cgroup_cpu_limit(cpu_max) is None
    assert cgroup_cpu_limit(tmp_path / "absent") is None


def test_the_cores_are_capped_by_the_cgroup_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(encoder_module.os, "sched_getaffinity", lambda pid: set(range(64)))
    monkeypatch.setattr(encoder_module, "cgroup_cpu_limit", lambda: 1.5)
    assert cpu_cores() == 2
    monkeypatch.setattr(encoder_module, "cgroup_cpu_limit", lambda: None)
    assert cpu_cores() == 64
