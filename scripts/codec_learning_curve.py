"""The codec's learning curve: held-out metrics against training (GPU) minutes.

    python scripts/codec_learning_curve.py docs/results/gpu/codec_v2_metrics.jsonl \
        -o docs/results/codec_v2_curve [--state checkpoints/codec_v2] \
        [--heldout REPORT.json=MINUTES ...] [--heldout-ema REPORT.json=MINUTES ...]

Reads the evaluation records of a training log (``valid_*`` at each ``eval_every`` step, with
the cumulative ``train_minutes``; ``unseen_mel_*``: the corpus's held-out voices; ``*_ema``:
the EMA weights; a metric a run did not compute,
e.g. STOI without pystoi, is left empty) and writes OUT.md (a table) and OUT.png (valid mel distance, STOI and PESQ-WB
against minutes). ``--state``: the run's portable state; each change of its frozen ASR
(``semantic_history``, :func:`flexicodec.codec.portable.rebase_semantic`) is listed under the
table and drawn as a dashed line, since the curve's later points use other semantic features;
each growth of its model (``growth_history``, :mod:`flexicodec.codec.grow`) likewise, dotted.
``--heldout``: reports of ``flexicodec eval`` on the held-out test splits, each with the
GPU-minutes of the state it evaluated (``scripts/export_portable.py`` prints them): their
conditions are tabled (WER against the originals', PESQ-WB, STOI, SIM, mel distance) and
their STOI, PESQ-WB and WER drawn per split (named with its number of items: the same split
of corpora of different sizes is a series of its own). ``--heldout-ema``: the same for
exports with the EMA weights (``phase_v2.sh EMA_OUT=1``), tabled as weights ``EMA`` and
drawn dashed.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flexicodec.common.atomic import atomic_write_text  # noqa: E402
from flexicodec.common.atomic import read_jsonl  # noqa: E402


def curve_rows(log: list[dict]) -> list[dict]:
    """The evaluation records of a training log, in step order (later runs of a resumed
    training log the same step again: the last record of a step wins)."""
    by_step = {}
    for r in log:
        if any(k.startswith("valid_") for k in r) and "step" in r:
            by_step[int(r["step"])] = r
    return [by_step[s] for s in sorted(by_step)]


VALID_KEYS = ("valid_mel_12.5Hz", "valid_stoi_12.5Hz", "valid_pesq_12.5Hz",
              "valid_mel_12.5Hz_ema", "valid_stoi_12.5Hz_ema", "valid_pesq_12.5Hz_ema",
              "valid_mel_12.5Hz_q1_ema",
              "unseen_mel_12.5Hz", "unseen_mel_12.5Hz_ema",
              "valid_mel_fixed", "valid_mel_6.25Hz")


def heldout_points(specs: list[str], weights: str = "raw",
                   flag: str = "--heldout") -> list[dict]:
    """One point per condition of each ``REPORT.json=MINUTES`` (a ``flexicodec eval``
    report), marked with ``weights`` ("raw" or "EMA"); ``flag`` names the option in errors."""
    points = []
    for spec in specs:
        path, sep, minutes = spec.rpartition("=")
        try:
            minutes = float(minutes) if sep else None
        except ValueError:
            minutes = None
        if minutes is None or not path:
            raise ValueError(f"{flag} {spec!r}: expected REPORT.json=MINUTES")
        try:
            report = json.loads(Path(path).read_text())
            conditions, split = report["conditions"], report["split"]
            orig_wer = report["original"]["wer"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{flag} {path}: not a flexicodec eval report ({exc})") from None
        if report.get("utterances"):        # a split of another size is a series of its own
            split = f"{split} ({report['utterances']} items)"
        for c in conditions:
            points.append({"train_minutes": minutes, "split": split, "weights": weights,
                           "condition": c["condition"], "wer": c.get("wer"),
                           "original_wer": orig_wer, "pesq_wb": c.get("pesq_wb"),
                           "stoi": c.get("stoi"), "sim": c.get("speaker_similarity"),
                           "mel_distance": c.get("mel_distance")})
    return points


def _cell(value, fmt: str = "{:.3f}") -> str:
    return "–" if value is None else fmt.format(value)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("log", help="metrics.jsonl of a codec training run")
    ap.add_argument("-o", "--out", required=True, help="output prefix (OUT.md, OUT.png)")
    ap.add_argument("--heldout", nargs="+", default=[], metavar="REPORT.json=MINUTES",
                    help="flexicodec eval reports with the GPU-minutes of the state evaluated")
    ap.add_argument("--heldout-ema", nargs="+", default=[], metavar="REPORT.json=MINUTES",
                    help="the same for exports with the EMA weights")
    ap.add_argument("--state", default=None,
                    help="the run's portable state: mark its frozen-ASR changes and growths")
    a = ap.parse_args(argv)
    changes, growths = [], []
    if a.state:
        from flexicodec.codec.portable import (GROWTH_HISTORY, SEMANTIC_HISTORY,
                                               PortableStateError, read_portable_info)
        try:
            info = read_portable_info(a.state)
        except PortableStateError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        changes, growths = info.get(SEMANTIC_HISTORY, []), info.get(GROWTH_HISTORY, [])
    try:
        points = heldout_points(a.heldout) + heldout_points(a.heldout_ema, "EMA",
                                                            "--heldout-ema")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows = curve_rows(read_jsonl(a.log))
    if not rows:
        print(f"{a.log}: no evaluation records", file=sys.stderr)
        return 2
    keys = [k for k in VALID_KEYS if any(k in r for r in rows)]
    lines = ["| step | GPU-minutes | " + " | ".join(keys) + " |",
             "|---|---|" + "---|" * len(keys)]
    for r in rows:
        lines.append(f"| {r['step']} | {r.get('train_minutes', float('nan')):.1f} | "
                     + " | ".join(_cell(r.get(k)) for k in keys) + " |")
    md = ["Valid split (first utterances, 6 s crops), all RVQ stages, from the training log "
          "(– : not computed by that run).", "", *lines]
    for c in changes:
        md += ["", f"From step {c['step']} ({c['train_seconds'] / 60:.1f} GPU-minutes) the frozen "
                   f"ASR is {c['identity']} ({c['asr']}), before it {c['previous']}."]
    for g in growths:
        before, after = g["decoder_layers"]
        md += ["", f"From step {g['step']} ({g['train_seconds'] / 60:.1f} GPU-minutes) the "
                   f"decoder has {after} blocks, before it {before} (grown as the identity)."]
    if points:
        md += ["", "Held-out test splits (`flexicodec eval`; WER: pocketsphinx, originals' in "
                   "parentheses):", "",
               "| GPU-minutes | split | condition | weights | WER % | PESQ-WB | STOI | SIM | "
               "mel dist |", "|---|---|---|---|---|---|---|---|---|"]
        for p in sorted(points, key=lambda p: (p["split"], p["condition"], p["weights"] != "raw",
                                               p["train_minutes"])):
            wer = "–" if p["wer"] is None else \
                f"{100 * p['wer']:.1f} ({100 * p['original_wer']:.1f})"
            md.append(f"| {p['train_minutes']:.1f} | {p['split']} | {p['condition']} | "
                      f"{p['weights']} | {wer} | "
                      f"{_cell(p['pesq_wb'], '{:.2f}')} | {_cell(p['stoi'])} | "
                      f"{_cell(p['sim'])} | {_cell(p['mel_distance'])} |")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out.with_suffix(".md"), "\n".join(md) + "\n")
    marks = ([(c["train_seconds"] / 60, "--") for c in changes]
             + [(g["train_seconds"] / 60, ":") for g in growths])
    _plot(out.with_suffix(".png"), rows, keys, points, marks)
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.png')}")
    return 0


def _plot(path: Path, rows: list[dict], keys: list[str], points: list[dict],
          marks: list[tuple[float, str]]) -> None:
    """The curve's panels; ``marks``: (GPU-minutes, line style) of the state's changes."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    # the 12.5 Hz valid metrics (all stages), then the held-out ones at 12.5 Hz with 8
    # acoustic stages (the targets' setting) where reported, else all; one series per split
    panels = [("mel distance (in-run)", "valid_mel_12.5Hz", None),
              ("STOI", "valid_stoi_12.5Hz", "stoi"), ("PESQ-WB", "valid_pesq_12.5Hz", "pesq_wb")]
    full = [p for p in points if p["condition"].endswith("@12.5Hz, 8 RVQ")] or \
        [p for p in points if p["condition"].endswith("@12.5Hz")]
    if full:
        panels.append(("WER % (held-out)", None, "wer"))
    splits = sorted({p["split"] for p in full})
    color = {"valid": "C0", **{sp: f"C{i + 1}" for i, sp in enumerate(splits)}}
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    axes = axes if hasattr(axes, "__len__") else [axes]
    for ax, (title, key, metric) in zip(axes, panels):
        series = [(key, "valid", "-", color["valid"]),
                  (f"{key}_ema", "valid (EMA)", "--", color["valid"])] if key else []
        if key == "valid_mel_12.5Hz":    # the in-run held-out voices (corpus test_unseen)
            series += [("unseen_mel_12.5Hz", "unseen voices", "-", "C5"),
                       ("unseen_mel_12.5Hz_ema", "unseen voices (EMA)", "--", "C5"),
                       # the first acoustic stage only: the gap to valid (EMA) is what the
                       # other stages add
                       ("valid_mel_12.5Hz_q1_ema", "valid, 1 RVQ stage (EMA)", ":", "C0")]
        for k, label, style, c in series:
            have = [r for r in rows if r.get(k) is not None]
            if have:
                ax.plot([r.get("train_minutes", 0.0) for r in have], [r[k] for r in have],
                        marker="o", label=label, color=c, linestyle=style,
                        markerfacecolor="none" if style == "--" else c)
        if metric:
            for split in splits:
                for weights, style in (("raw", ":"), ("EMA", "--")):
                    pts = sorted((p for p in full if p["split"] == split
                                  and p["weights"] == weights and p[metric] is not None),
                                 key=lambda p: p["train_minutes"])
                    if not pts:
                        continue
                    scale = 100 if metric == "wer" else 1
                    ax.plot([p["train_minutes"] for p in pts], [scale * p[metric] for p in pts],
                            marker="s", linestyle=style, color=color[split],
                            markerfacecolor="none" if weights == "EMA" else color[split],
                            label=split if weights == "raw" else f"{split} (EMA)")
        for minutes, style in marks:
            ax.axvline(minutes, color="grey", linestyle=style, linewidth=1)
        ax.set_xlabel("GPU-minutes (trainer wall time)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
