"""The codec's learning curve: held-out metrics against training (GPU) minutes.

    python scripts/codec_learning_curve.py docs/results/gpu/codec_v2_metrics.jsonl \
        -o docs/results/codec_v2_curve [--heldout docs/results/codec_v2_heldout.json] \
        [--state checkpoints/codec_v2]

Reads the evaluation records of a training log (``valid_*`` at each ``eval_every`` step, with
the cumulative ``train_minutes``) and writes OUT.md (a table) and OUT.png (mel distance,
STOI and PESQ-WB against minutes). ``--heldout``: a JSON list of extra points measured on
the held-out test splits (``{"train_minutes", "split", "stoi", "pesq_wb", "wer", ...}``),
added to the table. ``--state``: the run's portable state; each change of its frozen ASR
(``semantic_history``, :func:`flexicodec.codec.portable.rebase_semantic`) is listed under the
table and drawn as a dashed line, since the curve's later points use other semantic features.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flexicodec.common.atomic import atomic_write_text  # noqa: E402
from flexicodec.common.training import read_jsonl  # noqa: E402


def curve_rows(log: list[dict]) -> list[dict]:
    """The evaluation records of a training log, in step order (later runs of a resumed
    training log the same step again: the last record of a step wins)."""
    by_step = {}
    for r in log:
        if any(k.startswith("valid_") for k in r) and "step" in r:
            by_step[int(r["step"])] = r
    return [by_step[s] for s in sorted(by_step)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("log", help="metrics.jsonl of a codec training run")
    ap.add_argument("-o", "--out", required=True, help="output prefix (OUT.md, OUT.png)")
    ap.add_argument("--heldout", default=None, help="JSON list of held-out evaluation points")
    ap.add_argument("--state", default=None,
                    help="the run's portable state: mark its frozen-ASR changes")
    a = ap.parse_args(argv)
    changes = []
    if a.state:
        from flexicodec.codec.portable import PortableStateError, read_portable_info
        try:
            changes = read_portable_info(a.state).get("semantic_history", [])
        except PortableStateError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    rows = curve_rows(read_jsonl(a.log))
    if not rows:
        print(f"{a.log}: no evaluation records", file=sys.stderr)
        return 2
    keys = [k for k in ("valid_mel_12.5Hz", "valid_stoi_12.5Hz", "valid_pesq_12.5Hz",
                        "valid_mel_fixed", "valid_mel_6.25Hz") if k in rows[0]]
    lines = ["| step | GPU-minutes | " + " | ".join(keys) + " |",
             "|---|---|" + "---|" * len(keys)]
    for r in rows:
        lines.append(f"| {r['step']} | {r.get('train_minutes', float('nan')):.1f} | "
                     + " | ".join(f"{r[k]:.3f}" for k in keys) + " |")
    md = ["Valid split (first utterances, 6 s crops), all RVQ stages, from the training log.",
          "", *lines]
    for c in changes:
        md += ["", f"From step {c['step']} ({c['train_seconds'] / 60:.1f} GPU-minutes) the frozen "
                   f"ASR is {c['identity']} ({c['asr']}), before it {c['previous']}."]
    if a.heldout:
        pts = json.loads(Path(a.heldout).read_text())
        cols = ["train_minutes", "split", "condition", "stoi", "pesq_wb", "wer", "mel_distance"]
        md += ["", "Held-out test splits (`flexicodec eval`):", "",
               "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for p in pts:
            md.append("| " + " | ".join(f"{p[c]:.3f}" if isinstance(p.get(c), float)
                                        else str(p.get(c, "-")) for c in cols) + " |")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out.with_suffix(".md"), "\n".join(md) + "\n")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(keys[:3]), figsize=(4 * len(keys[:3]), 3.2))
    axes = axes if hasattr(axes, "__len__") else [axes]
    x = [r.get("train_minutes", 0.0) for r in rows]
    for ax, k in zip(axes, keys[:3]):
        ax.plot(x, [r[k] for r in rows], marker="o")
        for c in changes:
            ax.axvline(c["train_seconds"] / 60, color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel("GPU-minutes (H200)")
        ax.set_title(k.replace("valid_", "valid "))
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
