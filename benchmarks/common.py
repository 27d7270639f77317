"""Timing, memory and reporting helpers shared by every benchmark in this folder.

One way of doing each thing:

- :func:`resolve_device` — ``"cpu"`` / ``"cuda"`` with a clear error when CUDA is missing.
- :func:`synchronize` — waits for queued CUDA work (no-op on CPU), so wall times are real.
- :func:`time_fn` — warm-up calls, then ``repeats`` timed calls; returns a :class:`Timing`
  whose ``median`` is what every benchmark reports. :func:`time_interleaved` does the same
  for several variants round-robin (robust ratios on a busy machine).
- :func:`measure_peak_memory` — peak memory of one call. GPU: ``torch.cuda.max_memory_allocated``
  above the memory allocated before the call. CPU: the process' peak resident set size
  (``VmHWM`` in ``/proc/self/status``, reset through ``/proc/self/clear_refs``) above the
  resident size before the call — this counts everything torch allocates, unlike
  ``tracemalloc``. When the kernel refuses the reset it falls back to ``ru_maxrss`` deltas and
  says so in the result (``method``). :func:`peak_memory_in_subprocess` measures a first call
  in a fresh spawned process, so memory cached by earlier calls cannot hide the peak.
- :func:`hardware_info` — CPU / GPU / library versions for the JSON report.
- :func:`write_json`, :func:`format_table`, :func:`plot_lines` — outputs (atomic writes,
  matplotlib Agg).
"""
from __future__ import annotations

import gc
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from flexicodec.common.atomic import atomic_path, atomic_write_text
from flexicodec.common.constants import SAMPLE_RATE

# ------------------------------------------------------------------------------ devices
def resolve_device(name: str) -> torch.device:
    """``"cpu"`` or ``"cuda"[:i]`` -> torch.device; raises ValueError if CUDA is unavailable."""
    name = str(name).strip().lower()
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available on this machine "
                             f"(torch {torch.__version__})")
        return torch.device(name)
    if name != "cpu":
        raise ValueError(f"unknown device {name!r}: use 'cpu' or 'cuda'")
    return torch.device("cpu")


def synchronize(device: torch.device | str) -> None:
    """Block until all queued work on ``device`` is done (CUDA); no-op on CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------ timing
@dataclass
class Timing:
    """Wall times (seconds) of the repeated calls; ``median`` is the reported number."""

    times: list[float]
    warmup: int

    @property
    def median(self) -> float:
        return float(statistics.median(self.times))

    @property
    def min(self) -> float:
        return float(min(self.times))

    @property
    def spread(self) -> float:
        """(max - min) / median: how noisy the repeats were."""
        return float((max(self.times) - min(self.times)) / max(self.median, 1e-12))

    def to_dict(self) -> dict:
        return {"median_s": self.median, "min_s": self.min, "spread": self.spread,
                "repeats": len(self.times), "warmup": self.warmup,
                "times_s": [float(t) for t in self.times]}


def time_fn(fn: Callable[[], Any], device: torch.device | str = "cpu", *, warmup: int = 1,
            repeats: int = 3, max_seconds: float | None = None) -> Timing:
    """Call ``fn`` ``warmup`` times untimed, then ``repeats`` times timed (CUDA-synchronised).

    ``max_seconds`` stops repeating early (after at least one timed call) once the timed calls
    have used that much wall time, so a slow configuration cannot blow a time budget.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    for _ in range(warmup):
        fn()
    synchronize(device)
    times: list[float] = []
    spent = 0.0
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        dt = time.perf_counter() - t0
        times.append(dt)
        spent += dt
        if max_seconds is not None and spent >= max_seconds:
            break
    return Timing(times=times, warmup=warmup)


def time_interleaved(fns: dict[Any, Callable[[], Any]], device: torch.device | str = "cpu",
                     *, warmup: int = 1, repeats: int = 3,
                     desc: str | None = None) -> dict[Any, Timing]:
    """Like :func:`time_fn` for several functions, run round-robin: repeat ``r`` times every
    function once before the next repeat. On a shared or thermally throttled machine a load
    spike then hits all variants alike, so their *ratios* stay meaningful."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    from tqdm.auto import tqdm

    times: dict[Any, list[float]] = {k: [] for k in fns}
    for _ in tqdm(range(repeats), desc=desc, disable=desc is None, leave=False):
        for k, fn in fns.items():
            synchronize(device)
            t0 = time.perf_counter()
            fn()
            synchronize(device)
            times[k].append(time.perf_counter() - t0)
    return {k: Timing(times=v, warmup=warmup) for k, v in times.items()}


# ------------------------------------------------------------------------------ memory
def _proc_status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS. False if refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _ru_maxrss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024.0 / (1024.0 if sys.platform == "darwin" else 1.0)


@dataclass
class PeakMemory:
    """Peak memory (MiB) a call needed above what was in use before it."""

    peak_mb: float
    baseline_mb: float
    method: str        # "cuda_max_allocated", "rss_hwm" or "ru_maxrss_delta"

    def to_dict(self) -> dict:
        return asdict(self)


def measure_peak_memory(fn: Callable[[], Any], device: torch.device | str) -> PeakMemory:
    """Run ``fn`` once and report its peak memory above the baseline before it.

    CPU numbers are process-RSS based: they include allocator slack and pages touched for the
    first time; run this on a warmed-up function for steady-state numbers. Memory that the
    allocator keeps cached from earlier calls and reuses is (correctly) not counted again.
    """
    device = torch.device(device)
    gc.collect()
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return PeakMemory((peak - base) / 2**20, base / 2**20, "cuda_max_allocated")
    rss = _proc_status_kb("VmRSS")
    if rss is not None and _reset_peak_rss():
        rss = _proc_status_kb("VmRSS") or rss
        fn()
        hwm = _proc_status_kb("VmHWM")
        if hwm is not None:
            return PeakMemory(max(hwm - rss, 0) / 1024.0, rss / 1024.0, "rss_hwm")
    # no /proc reset: ru_maxrss only grows, so this is a lower bound of the call's peak
    before = _ru_maxrss_mb()
    fn()
    after = _ru_maxrss_mb()
    return PeakMemory(max(after - before, 0.0), before, "ru_maxrss_delta")


def _subprocess_probe(factory: str, args: tuple, threads: int) -> PeakMemory:
    import importlib

    torch.set_num_threads(threads)
    module, name = factory.split(":")
    fn = getattr(importlib.import_module(module), name)(*args)
    return measure_peak_memory(fn, "cpu")


def peak_memory_in_subprocess(factory: str, *args: Any, timeout: float = 900) -> PeakMemory:
    """CPU peak memory of one *first* call in a fresh process (so nothing cached by earlier
    calls hides it). ``factory`` is ``"module:function"``; in a spawned Python,
    ``function(*args)`` builds everything (model, inputs) and returns a zero-argument
    callable, whose peak RSS above the RSS before it is measured (:func:`measure_peak_memory`).
    ``args`` must be picklable."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        res = pool.apply_async(_subprocess_probe, (factory, tuple(args), torch.get_num_threads()))
        out = res.get(timeout=timeout)
    out.method += "_fresh_process"
    return out


# ------------------------------------------------------------------------------ hardware
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware_info(device: torch.device | str) -> dict:
    """A description of the machine and libraries the numbers were measured with."""
    import transformers

    device = torch.device(device)
    info: dict[str, Any] = {
        "device": str(device),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1),
                    cuda=torch.version.cuda, gpu_count=torch.cuda.device_count())
    return info


def dtype_for(device: torch.device, precision: str) -> torch.dtype | None:
    """Autocast dtype for ``precision`` ('bf16' / 'fp32'); bf16 only on CUDA."""
    if precision not in ("bf16", "fp32"):
        raise ValueError(f"precision must be 'bf16' or 'fp32', got {precision!r}")
    if precision == "bf16" and device.type == "cuda":
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` on ``device`` when ``dtype`` is set, else a no-op context."""
    if dtype is None:
        return torch.autocast(device_type=device.type, enabled=False)
    return torch.autocast(device_type=device.type, dtype=dtype)


# ------------------------------------------------------------------------------ outputs
def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (torch.Tensor,)):
        return _jsonable(obj.tolist())
    if hasattr(obj, "item") and callable(obj.item):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: str | os.PathLike, data: dict) -> Path:
    """Write ``data`` as indented JSON atomically (non-finite floats become null)."""
    path = Path(path)
    atomic_write_text(path, json.dumps(_jsonable(data), indent=2) + "\n")
    return path


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "-"
        a = abs(v)
        if a == 0:
            return "0"
        if a >= 1000:
            return f"{v:,.0f}"
        if a >= 10:
            return f"{v:.1f}"
        if a >= 0.01:
            return f"{v:.3f}"
        return f"{v:.2e}"
    return str(v)


def format_table(rows: Sequence[dict], columns: Sequence[tuple[str, str]]) -> str:
    """A plain-text table: ``columns`` is ``[(key, header), ...]``; missing values show '-'."""
    header = [h for _, h in columns]
    body = [[_fmt(r.get(k)) for k, _ in columns] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h)
              for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) for c, w in zip(b, widths)) for b in body]
    return "\n".join(lines)


def plot_lines(path: str | os.PathLike, series: dict[str, tuple[Sequence[float],
               Sequence[float]]], *, xlabel: str, ylabel: str, title: str,
               reference: tuple[Sequence[float], Sequence[float], str] | None = None,
               invert_x: bool = False) -> Path:
    """Line plot of ``series`` (label -> (x, y)) saved as PNG atomically (matplotlib Agg).

    ``reference``: an optional dashed (x, y, label) line, e.g. the ideal linear speedup.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for label, (xs, ys) in series.items():
        ax.plot(list(xs), list(ys), marker="o", label=label)
    if reference is not None:
        ax.plot(list(reference[0]), list(reference[1]), "k--", lw=1, label=reference[2])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if invert_x:
        ax.invert_xaxis()
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def log(msg: str) -> None:
    """Progress message on stderr (stdout carries the tables and the final result line)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ inputs
@dataclass
class Utterance:
    """One benchmark utterance: normalized text and 16 kHz mono audio [T]."""

    text: str
    wav: Any            # np.ndarray float32 [T]
    source: str

    @property
    def duration(self) -> float:
        return float(len(self.wav)) / SAMPLE_RATE


def pick_sentences(n: int, seed: int = 0, min_words: int = 8, max_words: int = 22) -> list[str]:
    """``n`` normalized sentences of ``min_words``..``max_words`` words from the shipped
    sentence list, chosen reproducibly by ``seed``."""
    import random

    from flexicodec.data.text import load_sentences, normalize_text

    pool = [s for s in load_sentences() if min_words <= len(s.split()) <= max_words]
    if len(pool) < n:
        raise ValueError(f"only {len(pool)} sentences of {min_words}-{max_words} words")
    rng = random.Random(seed)
    return [normalize_text(s) for s in rng.sample(pool, n)]


def synthesize_speech(n: int, seed: int = 0, speaker: str | None = None) -> list[Utterance]:
    """``n`` sentences spoken by a local synthesizer (flite slt by default, else the first
    installed voice). Raises RuntimeError naming the fix when no synthesizer is installed."""
    from flexicodec.data.synth import list_speakers, synthesize

    if speaker is None:
        voices = [s.id for s in list_speakers()]
        if not voices:
            raise RuntimeError("no speech synthesizer (flite / festival / espeak-ng) is "
                               "installed: pass --data CORPUS with real speech (codec_speed: "
                               "or --noise), or set FLEXICODEC_SYNTH_PREFIX (data/synth.py)")
        speaker = "flite_slt" if "flite_slt" in voices else voices[0]
    texts = pick_sentences(n, seed)
    log(f"synthesizing {n} sentences with {speaker}")
    wavs = synthesize(texts, speaker)
    return [Utterance(t, w, f"synth:{speaker}") for t, w in zip(texts, wavs)]


def concat_utterances(utts: list[Utterance], seconds: float, gap: float = 0.2
                      ) -> list[Utterance]:
    """Join consecutive utterances (with ``gap`` s of silence) into clips of at least
    ``seconds`` s — paragraph-length inputs, so an LM batch is long enough to be
    compute-bound on a GPU. A trailing remainder shorter than ``seconds`` is dropped."""
    import numpy as np

    if seconds <= 0:
        return list(utts)
    out, wavs, texts = [], [], []
    silence = np.zeros(int(gap * SAMPLE_RATE), dtype=np.float32)
    for u in utts:
        wavs += [u.wav, silence]
        texts.append(u.text)
        if sum(len(w) for w in wavs) >= seconds * SAMPLE_RATE:
            out.append(Utterance(" ".join(texts), np.concatenate(wavs[:-1]), u.source))
            wavs, texts = [], []
    return out


def corpus_speech(path: str | os.PathLike, n: int, seed: int = 0,
                  max_seconds: float = 20.0, split: str = "test") -> list[Utterance]:
    """``n`` utterances (<= ``max_seconds``; fewer when the corpus has fewer) of a corpus
    readable by ``flexicodec.data.loaders.load_corpus``: of ``split`` for our corpus layout
    (held-out speech for the codec benchmark; the LM benchmark, whose LMs are untrained,
    takes the much larger train split), every utterance for other layouts."""
    import numpy as np

    from flexicodec.data.loaders import load_corpus, detect_layout

    path = Path(path)
    split = split if detect_layout(path) == "corpus" else None
    ds = load_corpus(path, split=split, decode=False, check="header", progress=False)
    ds = ds.filter(lambda d: 0.5 <= d <= max_seconds, input_columns="duration")
    if len(ds) == 0:
        raise ValueError(f"{path}: no utterances of 0.5-{max_seconds} s")
    idx = np.random.default_rng(seed).permutation(len(ds))[:n]
    from flexicodec.data.audio import load_audio

    out = []
    for i in idx.tolist():
        row = ds[i]
        wav, _ = load_audio(row["audio"], SAMPLE_RATE)
        out.append(Utterance(row["text"], wav, f"corpus:{path.name}"))
    return out


def load_flexicodec(path: str | os.PathLike | None, device: torch.device, *,
                    allow_random_tiny: bool = False, seed: int = 0):
    """(FlexiCodec, description). ``path`` given: that directory; else the shipped default;
    else, only when ``allow_random_tiny``, a randomly initialised tiny codec (said so in the
    description). Otherwise raises FileNotFoundError naming the options."""
    from flexicodec.codec.model import FlexiCodec

    if path is not None:
        model = FlexiCodec.from_pretrained(path, map_location="cpu")
        return model.to(device).eval(), f"checkpoint:{Path(path).resolve()}"
    from flexicodec.common.models import default_dir
    try:
        shipped = default_dir("codec")
    except FileNotFoundError as exc:
        if not allow_random_tiny:
            raise FileNotFoundError(
                f"no codec: pass --codec DIR (a trained FlexiCodec directory) or ship the "
                f"default one ({exc})") from exc
        from flexicodec.codec.config import FlexiCodecConfig
        torch.manual_seed(seed)
        model = FlexiCodec(FlexiCodecConfig.tiny())
        return model.to(device).eval(), "random-init tiny FlexiCodec (--quick, no trained codec)"
    model = FlexiCodec.from_pretrained(shipped, map_location="cpu")
    return model.to(device).eval(), f"shipped:{shipped}"
