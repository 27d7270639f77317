"""Memory of CPU training with utterances of changing lengths, with and without giving the
C heap's free memory back after each step.

    python -m flexicodec.benchmarks.cpu_train_memory -o DIR [--steps 30] [--batch 24]
    python -m flexicodec.benchmarks.cpu_train_memory --quick -o DIR      # seconds, tiny

Each step is the ASR trainer's: a batch of random audio whose lengths are drawn uniformly
in ``[--min-seconds, --max-seconds]`` (the batch padded to its longest), the recognizer
(:class:`flexicodec.codec.asr.model.PhonemeASR`, the ``small`` size of ``configs/asr``;
``--quick``: tiny) forward, CTC loss on random targets, backward, AdamW. Modes, each in a
fresh process so that its memory is its own:

- ``keep``: freed memory stays in the C library's heap (PyTorch's default on a CPU);
- ``release``: :func:`flexicodec.common.heap.release_free_heap` after every step, as every
  trainer's ``--release-memory`` does on a CPU;
- ``mmap_1mib``: glibc's ``MALLOC_MMAP_THRESHOLD_=1048576`` in the environment: every
  allocation of 1 MiB or more is its own mapping, returned to the OS when freed (the
  threshold no longer grows with the sizes freed, as glibc's default does).

Reports seconds per step, the process' resident memory after every tenth step and at the
end, and its peak (``ru_maxrss``). Writes ``cpu_train_memory.json`` and
``cpu_train_memory.md`` under ``-o``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

MODES = ("keep", "release", "mmap_1mib")
#: the environment of each mode's process beyond this one's
MODE_ENV = {"mmap_1mib": {"MALLOC_MMAP_THRESHOLD_": str(1 << 20)}}


def child(mode: str, a: argparse.Namespace) -> dict:
    """Run the steps of ``mode`` in this process; returns its measurements."""
    import numpy as np
    import torch

    from flexicodec.benchmarks.common import _proc_status_kb, _ru_maxrss_mb
    from flexicodec.codec.asr.model import PhonemeASR, PhonemeASRConfig
    from flexicodec.common.heap import release_free_heap

    torch.manual_seed(0)
    torch.set_num_threads(a.threads)
    vocab = ["<blank>", "<unk>", " ", *"abdefhijklmnoprstuvwz"]
    cfg = (PhonemeASRConfig.tiny(vocab) if a.quick else PhonemeASRConfig.small(vocab))
    model = PhonemeASR(cfg)
    opt = torch.optim.AdamW(model.parameters(), 1e-4)
    rng = np.random.default_rng(a.seed)
    rss, t0 = [], time.perf_counter()
    for step in range(1, a.steps + 1):
        lengths = rng.uniform(a.min_seconds, a.max_seconds, a.batch)
        samples = (lengths * 16000).astype(np.int64)
        wav = torch.randn(a.batch, int(samples.max())) * 0.1
        logits, feat_len = model(wav, torch.from_numpy(samples))
        targets = [list(rng.integers(3, len(vocab), max(1, int(s * 8)))) for s in lengths]
        loss = model.ctc_loss(logits, feat_len, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        del wav, logits, feat_len, loss
        if mode == "release" and not release_free_heap():
            raise SystemExit("release: this C library has no malloc_trim")
        if step % 10 == 0 or step == a.steps:
            rss.append([step, round(_proc_status_kb("VmRSS") * 1024 / 1e9, 3)])
    dt = time.perf_counter() - t0
    return {"mode": mode, "steps": a.steps, "s_per_step": dt / a.steps,
            "rss_gb_by_step": rss, "rss_end_gb": rss[-1][1],
            "peak_rss_gb": _ru_maxrss_mb() * 2**20 / 1e9}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flexicodec.benchmarks.cpu_train_memory",
                                 description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--out", default="benchmarks/results")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=24)
    ap.add_argument("--min-seconds", type=float, default=4.0)
    ap.add_argument("--max-seconds", type=float, default=16.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="tiny model, 6 steps, short audio")
    ap.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.quick:
        a.steps, a.batch, a.min_seconds, a.max_seconds = 6, 4, 0.5, 2.0
    if a.steps < 1 or a.batch < 1 or not 0 < a.min_seconds <= a.max_seconds:
        ap.error("--steps and --batch must be >= 1 and 0 < --min-seconds <= --max-seconds")
    if a.child:
        print(json.dumps(child(a.child, a)))
        return 0

    from flexicodec.benchmarks.common import format_table, hardware_info, log, write_json
    from flexicodec.common.atomic import atomic_write_text

    rows = []
    for mode in MODES:
        log(f"{mode}: {a.steps} steps of batch {a.batch}, "
            f"{a.min_seconds:g}-{a.max_seconds:g} s")
        args = [sys.executable, "-m", "flexicodec.benchmarks.cpu_train_memory", "--child", mode,
                "--steps", str(a.steps), "--batch", str(a.batch), "--min-seconds",
                str(a.min_seconds), "--max-seconds", str(a.max_seconds), "--threads",
                str(a.threads), "--seed", str(a.seed)] + (["--quick"] if a.quick else [])
        r = subprocess.run(args, capture_output=True, text=True,
                           env={**os.environ, **MODE_ENV.get(mode, {})})
        if r.returncode != 0:
            raise SystemExit(f"{mode} failed:\n{r.stderr[-2000:]}")
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
    cols = [("mode", "mode"), ("steps", "steps"), ("s_per_step", "s/step"),
            ("rss_end_gb", "RSS at end GB"), ("peak_rss_gb", "peak RSS GB")]
    table = format_table(rows, cols)
    print(table)
    setup = {"steps": a.steps, "batch": a.batch, "seconds": [a.min_seconds, a.max_seconds],
             "model": "PhonemeASR " + ("tiny" if a.quick else "small"), "threads": a.threads}
    out = Path(a.out)
    write_json(out / "cpu_train_memory.json",
               {"hardware": hardware_info("cpu"), "setup": setup, "rows": rows})
    atomic_write_text(out / "cpu_train_memory.md",
        f"CPU training memory ({setup['model']}, batch {a.batch}, lengths "
        f"{a.min_seconds:g}-{a.max_seconds:g} s, {a.steps} steps)\n\n```\n{table}\n```\n")
    log(f"wrote {out / 'cpu_train_memory.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
