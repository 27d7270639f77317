"""torch.compile's caches in one portable file (flexicodec.common.compile_cache): written
atomically after a compilation, loaded back as cache hits, unreadable files refused."""
from __future__ import annotations

import pytest
import torch

from flexicodec.common.compile_cache import (CompileCacheError, compile_seconds,
                                             compile_seconds_between,
                                             load_compile_cache, save_compile_cache)


def _compiled_step() -> dict:
    """Compile and run a small forward + backward with the inductor; its cache counters."""
    import torch._dynamo.utils as dynamo_utils

    torch._dynamo.reset()
    dynamo_utils.counters.clear()
    lin = torch.nn.Linear(8, 8)
    f = torch.compile(lambda x: torch.nn.functional.gelu(lin(x)).square().mean(),
                      dynamic=False)
    x = torch.randn(4, 8)
    f(x).backward()
    return dict(dynamo_utils.counters["inductor"])


def test_round_trip_turns_compilation_into_cache_hits(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor_a"))
    assert load_compile_cache(tmp_path / "cache.bin") is None       # a first run
    first = _compiled_step()
    assert first.get("fxgraph_cache_miss", 0) >= 1
    n = save_compile_cache(tmp_path / "cache.bin")
    assert n >= 1 and (tmp_path / "cache.bin").stat().st_size > 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".cache.bin")]  # no temp
    # a "fresh machine": empty local caches, the file loaded before compiling
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor_b"))
    from torch._inductor.codecache import FxGraphCache
    FxGraphCache.clear()
    assert load_compile_cache(tmp_path / "cache.bin") >= 1
    second = _compiled_step()
    assert second.get("fxgraph_cache_hit", 0) >= 1 and not second.get("fxgraph_cache_miss")


def test_unreadable_cache_is_an_error(tmp_path):
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"not a cache")
    with pytest.raises(CompileCacheError, match="delete it to compile afresh"):
        load_compile_cache(bad)


def test_compile_seconds_counts_forward_and_backward_compilation(tmp_path, monkeypatch):
    """compile_seconds grows by the time a compilation takes, backward graph included."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    from torch._dynamo import utils as dynamo_utils

    before = compile_seconds() or 0.0
    _compiled_step()
    after = compile_seconds()
    assert after is not None and after > before
    assert dynamo_utils.compilation_time_metrics.get("compile_fx.<locals>.bw_compiler")


def test_compile_seconds_between_a_fresh_process_and_unknown_names():
    """A first reading before anything compiled (0.0) still yields the compilation time; no
    metrics, or none under the names read (0.0 after compiling), is unknown, not 0 s."""
    assert compile_seconds_between(0.0, 12.5) == 12.5
    assert compile_seconds_between(3.0, 12.5) == 9.5
    assert compile_seconds_between(0.0, 0.0) is None
    assert compile_seconds_between(None, 12.5) is None
    assert compile_seconds_between(0.0, None) is None
