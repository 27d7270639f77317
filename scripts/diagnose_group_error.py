"""Do long merge groups lose acoustic detail? (issue 4's "why", cause: bits per group)

A dynamic codec codes every token with the same bits, so a frame inside a group of L frames
gets 1/L of a token's acoustic bits; the fixed-rate baseline gives every frame 1/2. For the
utterances of a corpus split this decodes each one three ways at the same token rate:
- ``own``: the dynamic model with its own groups at 6.25 Hz (``frame_rate=6.25``, the
  per-utterance threshold search);
- ``pairs``: the same weights, every 2 frames merged (``fixed_group=2``, also 6.25 Hz);
- ``baseline`` (with ``--baseline``): the fixed-rate codec;
and bins every 12.5 Hz frame by the length of its own group: the share of frames, the
acoustic bits each frame gets, each decode's log-mel error on those frames
(codec/eval/group_error.py), and own − pairs / own − baseline on the same frames with 95 %
bootstrap intervals over utterances. If long groups lose detail, own − pairs grows with L.

    python scripts/diagnose_group_error.py --model flexicodec_pretrained/codec \
        --baseline flexicodec_pretrained/codec_fixed_6.25hz --data CORPUS \
        --split test_unseen --max-utts 60 [-o OUT_PREFIX]

Prints a Markdown table; ``-o`` also writes OUT_PREFIX.json and OUT_PREFIX.md. CPU: the
command above takes ~25 s on 2 cores (three decodes per utterance, no RVQ-1 decode).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flexicodec.codec.eval.evaluate import load_utterances, reconstruct  # noqa: E402
from flexicodec.codec.eval.group_error import error_by_length, frame_group_lengths, frame_mel_errors  # noqa: E402
from flexicodec.codec.model import FlexiCodec  # noqa: E402
from flexicodec.common.atomic import write_report_files  # noqa: E402
from flexicodec.common.pretrained import run_reporting_model_errors  # noqa: E402
from flexicodec.common.constants import BASE_FRAME_RATE  # noqa: E402


def diagnose(model, baseline, utts: list[dict], group: int = 2) -> dict:
    """Per-frame errors of the decodes (own groups at the token rate of ``group``-frame
    groups, 12.5 / group Hz; the same weights with fixed groups; the baseline), binned by
    the own groups' lengths."""
    rate = BASE_FRAME_RATE / group
    names = ["own", "pairs"] + (["baseline"] if baseline is not None else [])
    errors = {n: [] for n in names}
    lengths, tokens, frames = [], 0, 0
    for u in tqdm(utts, desc="decoding", leave=False):
        own = reconstruct(model, u["audio"], rate, rvq1=False)
        F = own["frames"]
        lens = frame_group_lengths(own["token_lengths"])
        if len(lens) != F:
            raise AssertionError(f"{u['path']}: group lengths sum to {len(lens)}, not {F}")
        lengths.append(lens)
        tokens += own["tokens"]
        frames += F
        errors["own"].append(frame_mel_errors(u["audio"], own["full"], F))
        pairs = reconstruct(model, u["audio"], None, fixed_group=group, rvq1=False)
        errors["pairs"].append(frame_mel_errors(u["audio"], pairs["full"], F))
        if baseline is not None:
            base = reconstruct(baseline, u["audio"], None, rvq1=False)
            errors["baseline"].append(frame_mel_errors(u["audio"], base["full"], F))
    c = model.config
    rows = error_by_length(lengths, errors, "own", names[1:], c.max_group)
    ac_bits = c.n_q * math.log2(c.rvq_codebook_size)
    for r in rows:
        r["acoustic_bits_per_frame"] = ac_bits / r["length"]
    overall = {f"error_{n}": float(np.concatenate(errors[n]).mean()) for n in names}
    return {"rows": rows, "overall": overall, "rate_hz": tokens / frames * BASE_FRAME_RATE,
            "utterances": len(utts), "frames": frames,
            "pairs_acoustic_bits_per_frame": ac_bits / group}


def markdown(result: dict) -> str:
    has_base = "error_baseline" in result["overall"]
    head = ["own group length", "frames", "share", "acoustic bits / frame", "own", "pairs"]
    if has_base:
        head.append("baseline")
    head.append("own − pairs [95 %]")
    if has_base:
        head.append("own − baseline [95 %]")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def d(r, n):
        lo, hi = r[f"diff_vs_{n}_ci"]
        return f"{r[f'diff_vs_{n}']:+.3f} [{lo:+.3f}, {hi:+.3f}]"
    for r in result["rows"]:
        cells = [str(r["length"]), str(r["frames"]), f"{100 * r['share']:.1f} %",
                 f"{r['acoustic_bits_per_frame']:.0f}", f"{r['error_own']:.3f}",
                 f"{r['error_pairs']:.3f}"]
        if has_base:
            cells.append(f"{r['error_baseline']:.3f}")
        cells.append(d(r, "pairs"))
        if has_base:
            cells.append(d(r, "baseline"))
        lines.append("| " + " | ".join(cells) + " |")
    o = result["overall"]
    cells = ["all", str(result["frames"]), "100 %", "", f"{o['error_own']:.3f}",
             f"{o['error_pairs']:.3f}"]
    if has_base:
        cells.append(f"{o['error_baseline']:.3f}")
    cells.append(f"{o['error_own'] - o['error_pairs']:+.3f}")
    if has_base:
        cells.append(f"{o['error_own'] - o['error_baseline']:+.3f}")
    lines.append("| " + " | ".join(cells) + " |")
    return (f"{result['utterances']} utterances of {result['split']} ({result['data']}), "
            f"model {result['model']} (own groups at {result['rate_hz']:.2f} Hz), "
            f"pairs: {result['pairs_acoustic_bits_per_frame']:.0f} acoustic bits / frame. "
            f"Per-frame log-mel L1 error (80 mels, hop 20 ms).\n\n" + "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="dynamic codec (default: the shipped codec)")
    p.add_argument("--baseline", default=None, help="fixed-rate codec directory (optional)")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test_unseen")
    p.add_argument("--max-utts", type=int, default=60)
    p.add_argument("-o", "--out", default=None, help="output prefix (.json and .md)")
    a = p.parse_args(argv)
    torch.set_grad_enabled(False)
    model = FlexiCodec.from_pretrained(a.model).eval()
    baseline = FlexiCodec.from_pretrained(a.baseline).eval() if a.baseline else None
    if model.config.fixed_group:
        raise ValueError(f"{a.model} is a fixed-rate codec; --model must be a dynamic one")
    if baseline is not None and baseline.config.fixed_group != 2:
        raise ValueError(f"{a.baseline} is not a fixed-pairs codec (fixed_group "
                         f"{baseline.config.fixed_group})")
    utts = load_utterances(a.data, a.split, a.max_utts)
    result = diagnose(model, baseline, utts)
    result.update(model=a.model or "flexicodec_pretrained/codec", baseline=a.baseline,
                  data=a.data, split=a.split)
    md = markdown(result)
    print(md)
    if a.out:
        write_report_files(a.out, result, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_reporting_model_errors("diagnose_group_error", main,
                                                errors=(ValueError, FileNotFoundError)))
