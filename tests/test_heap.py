"""Giving the C heap's free memory back (flexicodec.common.heap), and its benchmark."""
from __future__ import annotations

import json
import resource
import sys

import pytest
import torch

from flexicodec.common.heap import release_free_heap


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 1e6


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc")
def test_release_returns_freed_tensor_memory():
    """200 MB of freed 100-kB tensors stay in the process until released."""
    blocks = [torch.ones(25_000) for _ in range(2000)]      # 100 kB each: heap, not mmap
    tail = torch.ones(10)                                   # keeps the heap's top in use
    held = _rss_mb()
    del blocks
    assert _rss_mb() > held - 50                            # freed, but kept by the heap
    assert release_free_heap() is True
    assert _rss_mb() < held - 150
    del tail


def test_after_step_releases_on_a_cpu_only_when_asked(monkeypatch):
    from flexicodec.common import heap
    monkeypatch.setattr(heap, "_release", False)
    calls = []
    monkeypatch.setattr(heap, "release_free_heap", lambda: calls.append(1) or True)
    heap.after_step(torch.device("cpu"))
    assert calls == []
    heap.release_after_steps(True)
    heap.after_step(torch.device("cpu"))
    heap.after_step("cpu")
    heap.after_step(torch.device("cuda", 0))
    heap.after_step("cuda:1")
    assert calls == [1, 1]
    heap.release_after_steps(False)
    heap.after_step("cpu")
    assert calls == [1, 1]
    monkeypatch.setattr(heap, "_malloc_trim", lambda: None)     # a C library without it
    with pytest.raises(ValueError, match="malloc_trim"):
        heap.release_after_steps(True)


def test_cpu_train_memory_benchmark(tmp_path):
    from flexicodec.benchmarks.cpu_train_memory import main
    assert main(["--quick", "-o", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "cpu_train_memory.json").read_text())
    rows = {r["mode"]: r for r in res["rows"]}
    assert set(rows) == {"keep", "release", "mmap_1mib"}
    for r in rows.values():
        assert r["steps"] == 6 and r["s_per_step"] > 0
        assert r["peak_rss_gb"] >= r["rss_end_gb"] * 0.9 > 0
    assert "peak RSS GB" in (tmp_path / "cpu_train_memory.md").read_text()
    with pytest.raises(SystemExit):
        main(["--steps", "0", "-o", str(tmp_path)])
