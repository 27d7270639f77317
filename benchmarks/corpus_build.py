"""Benchmark the corpus builder: hours of audio built per CPU-minute, per engine and mixed.

    python -m benchmarks.corpus_build [--minutes-audio 3] [--workers N] [--out results.json]

For each engine (and the default mix of all engines) builds ``--minutes-audio`` minutes of
audio into a temp dir with ``--workers`` processes, and reports wall time, hours per wall
minute, hours per CPU-minute (wall x workers) and the extrapolated wall time of 1 hour of
audio. Prints a table and writes the numbers as JSON (atomically).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path


def run(engines: tuple[str, ...], minutes: float, workers: int) -> dict:
    from data.corpus import CorpusConfig, build_corpus
    d = Path(tempfile.mkdtemp(prefix="flexicodec-bench-"))
    try:
        t0 = time.perf_counter()
        cpu0 = os.times()
        s = build_corpus(d, CorpusConfig(hours=minutes / 60, engines=engines), workers=workers,
                         progress=False)
        wall = time.perf_counter() - t0
        cpu1 = os.times()
        cpu = (cpu1.children_user + cpu1.children_system + cpu1.user + cpu1.system
               - cpu0.children_user - cpu0.children_system - cpu0.user - cpu0.system)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    hours = s["hours"]
    return {"engines": ",".join(engines), "workers": workers, "audio_hours": hours,
            "utterances": s["utterances"], "wall_s": wall,
            "hours_per_wall_min": hours / (wall / 60),
            "hours_per_cpu_min": hours / (wall * workers / 60),
            "measured_cpu_s": cpu,
            "wall_min_for_1h": (wall / 60) / hours}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes-audio", type=float, default=3.0)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/corpus_build.json"))
    ap.add_argument("--engines", default="flite,festival,espeak,all")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from data.synth import list_speakers
    rows = []
    for e in args.engines.split(","):
        engines = ("flite", "festival", "espeak") if e == "all" else (e,)
        if not list_speakers(engines):
            print(f"skip {e}: not installed")
            continue
        rows.append(run(engines, args.minutes_audio, args.workers))
    print(f"{'engines':<22}{'workers':>8}{'audio h':>9}{'wall s':>8}{'h/wall-min':>12}"
          f"{'h/CPU-min':>11}{'min for 1 h':>13}")
    for r in rows:
        print(f"{r['engines']:<22}{r['workers']:>8}{r['audio_hours']:>9.3f}{r['wall_s']:>8.1f}"
              f"{r['hours_per_wall_min']:>12.3f}{r['hours_per_cpu_min']:>11.3f}"
              f"{r['wall_min_for_1h']:>13.2f}")
    from codec.pretrained import atomic_write_text
    atomic_write_text(args.out, json.dumps({"cpu_count": os.cpu_count(), "load_avg":
                                            os.getloadavg(), "results": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
