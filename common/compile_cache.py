"""``torch.compile``'s caches in one file that travels between machines.

A compiled training step costs minutes of compilation on a fresh machine (the v2 codec's
about 2 minutes on an H200) before its first step. Inductor keeps what it compiled (FX
graphs, autograd graphs, Triton kernels and their autotuning) in caches that
``torch.compiler.save_cache_artifacts`` serialises into one blob; loading that blob on
another machine with the same torch, Triton and GPU architecture turns the compilation into
cache hits (Dynamo still traces). A blob from another torch or GPU loads without error and
simply does not hit; a file torch cannot read at all (truncated, another serialisation format)
is an error here, not a silent fresh compile.

:func:`compile_seconds` tells how much of a first step was compilation (the rest is Dynamo's
guards, cuDNN autotuning and the step itself), so a carried cache's effect is measurable.
:func:`load_compile_cache` reads the file (before the first compiled call);
:func:`save_compile_cache` writes what this process has compiled so far, atomically.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from flexicodec.common.atomic import atomic_path


class CompileCacheError(ValueError):
    """A compile-cache file that exists but cannot be read as one."""


def _artifact_count(info) -> int:
    return sum(len(v) for v in getattr(info, "artifacts", {}).values())


#: torch's compile-time metrics of a whole graph compilation: Dynamo's tracing with Inductor's
#: forward compilation, and the backward graph's compilation (run lazily at the first backward)
_COMPILE_METRICS = ("_compile.compile_inner", "compile_fx.<locals>.bw_compiler")


def compile_seconds() -> float | None:
    """Seconds this process's ``torch.compile`` has spent compiling graphs so far (forward
    and backward, from torch's own compile-time metrics): 0.0 before anything compiled; None
    when this torch keeps no such metrics. After a compilation, 0.0 means this torch names its
    metrics differently (:func:`compile_seconds_between` reports that as unknown)."""
    from torch._dynamo import utils as dynamo_utils

    metrics = getattr(dynamo_utils, "compilation_time_metrics", None)
    if not isinstance(metrics, dict):
        return None
    return float(sum(sum(metrics.get(k, ())) for k in _COMPILE_METRICS))


def compile_seconds_between(before: float | None, after: float | None) -> float | None:
    """The compilation seconds between two :func:`compile_seconds` readings around code that
    compiled; None when unknown (no metrics, or none under the names this module reads)."""
    if before is None or after is None or after <= 0.0:
        return None
    return after - before


def load_compile_cache(path: str | os.PathLike) -> int | None:
    """Load the compile cache at ``path`` into this process's torch.compile caches; returns
    the number of artifacts it held, or None when ``path`` does not exist (a first run).
    CompileCacheError when the file is not a cache (truncated, another format)."""
    p = Path(path)
    if not p.is_file():
        return None
    try:
        info = torch.compiler.load_cache_artifacts(p.read_bytes())
    except Exception as exc:           # torch raises pickling / format errors of its own
        info, why = None, f" ({type(exc).__name__}: {exc})"
    else:
        why = ""                       # torch logs its reason and returns None
    if info is None:
        raise CompileCacheError(f"{p}: not a torch.compile cache this torch can read{why}; "
                                f"delete it to compile afresh")
    return _artifact_count(info)


def save_compile_cache(path: str | os.PathLike) -> int:
    """Write every artifact this process's torch.compile has produced or loaded so far to
    ``path`` (atomically; an existing file is replaced); returns the number of artifacts,
    0 when there is nothing to save (nothing is written then)."""
    saved = torch.compiler.save_cache_artifacts()
    if saved is None:
        return 0
    blob, info = saved
    n = _artifact_count(info)
    if not n:
        return 0
    with atomic_path(path) as tmp:
        tmp.write_bytes(blob)
    return n
