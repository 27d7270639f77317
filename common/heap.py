"""Give the C heap's free memory back to the operating system after CPU training steps.

On a CPU, PyTorch allocates each step's activations and gradients with the C library's
``malloc`` and frees them at the end of the step; glibc keeps freed memory in its heap for
reuse instead of returning it. When the shapes change from step to step (utterances of
different lengths) the kept memory fits the next requests badly and the process holds far
more than it uses. Every trainer's ``--release-memory`` (:func:`release_after_steps`, set by
:func:`flexicodec.common.run_flags.parse_run_args`) makes :func:`after_step` return the free
pages (glibc's ``malloc_trim(0)``) after each CPU step: for the ASR on 4-16-s utterances,
batch 24, on 2 cores, the peak memory fell by 29 % and steps took 12 % longer
(``python -m flexicodec.benchmarks.cpu_train_memory``; ``docs/results/cpu_train_memory.md``).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools

_release = False


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS)."""
    name = ctypes.util.find_library("c")
    try:
        fn = ctypes.CDLL(name or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


def release_free_heap() -> bool:
    """Return the heap's free pages to the OS now; False where the C library cannot."""
    fn = _malloc_trim()
    if fn is None:
        return False
    fn(0)
    return True


def release_after_steps(on: bool = True) -> None:
    """Whether :func:`after_step` releases the free heap after each CPU step (the trainers'
    ``--release-memory``). ValueError where the C library has no ``malloc_trim``."""
    global _release
    if on and _malloc_trim() is None:
        raise ValueError("--release-memory needs glibc's malloc_trim, which this C library "
                         "does not have")
    _release = bool(on)


def after_step(device) -> None:
    """Called by every trainer after each optimizer step with its device (a
    ``torch.device`` or its name): on a CPU, with :func:`release_after_steps` on, the step's
    freed memory goes back to the OS."""
    if _release and str(device).split(":")[0] == "cpu":
        release_free_heap()


__all__ = ["release_free_heap", "release_after_steps", "after_step"]
