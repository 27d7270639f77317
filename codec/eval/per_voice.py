"""Reconstruction quality per voice, from a ``flexicodec eval`` report.

A held-out split mixes voices; their means hide which voices the codec fits and which it
does not (e.g. a voice held out of training against the training voices). This groups the
report's utterances by voice (a derived speaker ``V~vK`` counts as its voice ``V``) and
averages, per condition, the mel distance, PESQ-WB, STOI and speaker similarity::

    python -m flexicodec.codec.eval.per_voice REPORT.json [REPORT.json ...]

``flexicodec eval`` adds the same table to the reports it writes (``per_voice``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from flexicodec.data.variants import parse_variant_id

#: per-utterance fields averaged per voice: (report key, column title, digits)
FIELDS = (("mel_distance", "mel dist", 3), ("pesq", "PESQ-WB", 2), ("stoi", "STOI", 3),
          ("speaker_similarity", "SIM", 3))


def voice_of(speaker: str) -> str:
    """The voice of a speaker id (``flite_rms~v3`` → ``flite_rms``)."""
    parsed = parse_variant_id(speaker)
    return parsed[0] if parsed else speaker


def per_voice(result: dict) -> list[dict]:
    """Rows ``{"condition", "voice", "utterances", <field>: mean or None}`` for every
    condition of ``result`` (a ``flexicodec eval`` report) and every voice of its
    utterances, in the report's condition order and sorted by voice. Missing or unscored
    values (None, NaN) are left out of a mean; a field no utterance has is None."""
    utts = result.get("per_utterance") or []
    if not utts:
        raise ValueError("the report has no per-utterance results")
    voices = sorted({voice_of(u["speaker"]) for u in utts})
    rows = []
    for cond in (c["condition"] for c in result["conditions"]):
        for voice in voices:
            scored = [u[cond] for u in utts if voice_of(u["speaker"]) == voice and cond in u]
            if not scored:
                continue
            row = {"condition": cond, "voice": voice, "utterances": len(scored)}
            for key, _, _ in FIELDS:
                vals = [s[key] for s in scored
                        if s.get(key) is not None and np.isfinite(s[key])]
                row[key] = float(np.mean(vals)) if vals else None
            rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    """``rows`` of :func:`per_voice` as a markdown table."""
    head = "| condition | voice | utterances | " + " | ".join(t for _, t, _ in FIELDS) + " |"
    lines = [head, "|" + "---|" * (3 + len(FIELDS))]
    for r in rows:
        vals = ["–" if r[k] is None else f"{r[k]:.{d}f}" for k, _, d in FIELDS]
        lines.append(f"| {r['condition']} | {r['voice']} | {r['utterances']} | "
                     + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flexicodec.codec.eval.per_voice",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("reports", nargs="+", help="flexicodec eval report(s), OUT.json")
    a = ap.parse_args(argv)
    for path in a.reports:
        try:
            result = json.loads(Path(path).read_text())
            rows = per_voice(result)
        except (OSError, ValueError, KeyError) as exc:
            print(f"error: {path}: {exc}", file=sys.stderr)
            return 2
        print(f"{path} ({result.get('split', '?')}):\n")
        print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
