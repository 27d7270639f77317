"""Benchmark the corpus builder: hours of audio built per CPU-minute, per engine and mixed.

    python -m flexicodec.benchmarks.corpus_build [--minutes-audio 3] [--workers N] [--out results.json]
                                      [--voice-variants N]

For each engine's English voices, festival's voices of other languages and the default mix
of everything installed (``--engines``) builds ``--minutes-audio`` minutes of
audio into a temp dir with ``--workers`` processes, and reports wall time, hours per wall
minute, hours per CPU-minute (wall x workers) and the extrapolated wall time of 1 hour of
audio. Then it runs the same plan's first tasks in this process (``flexicodec.data.corpus.run_task``,
what each worker runs) until ``--minutes-audio`` is reached and reports the audio seconds
per CPU second they cost (this process and the engine programs it waited for): the per-core
speed, which other load on the machine does not change. Prints a table and writes the
numbers as JSON (atomically).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path


def _cpu_s() -> float:
    """CPU seconds of this process and of its waited-for children so far."""
    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))


def worker_cpu(cfg, minutes: float) -> dict:
    """Audio seconds per CPU second of the plan's first tasks of ``cfg``, run in this
    process with ``flexicodec.data.corpus.run_task`` until ``minutes`` of audio are written."""
    from flexicodec.data.corpus import iter_plan, resolve_speakers, run_task
    from flexicodec.data.synth import PostprocessConfig
    from flexicodec.data.text import load_sentences
    speakers, unseen = resolve_speakers(cfg)
    plan = iter_plan(cfg, speakers, unseen, load_sentences())
    post = PostprocessConfig(max_silence_s=cfg.max_silence_s)
    d = Path(tempfile.mkdtemp(prefix="flexicodec-bench-cpu-"))
    audio = cpu = 0.0
    try:
        while audio < minutes * 60:
            task = next(plan)
            c0 = _cpu_s()
            rows, _ = run_task(task, str(d), cfg.phoneme_voice, post)
            cpu += _cpu_s() - c0
            audio += sum(r["duration"] for r in rows)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return {"worker_audio_s": audio, "worker_cpu_s": cpu, "audio_s_per_cpu_s": audio / cpu}


def config_for(name: str, minutes: float, voice_variants: int | None = None):
    """The corpus config a row ``name`` measures: one engine's English voices (``flite``,
    ``festival``, ``espeak``), festival's voices of other languages alone
    (``other_languages``), or the default mix of everything installed (``all``)."""
    from flexicodec.data.corpus import OTHER_LANGUAGES, CorpusConfig
    from flexicodec.data.synth import list_speakers
    kw = {} if voice_variants is None else {"voice_variants": voice_variants}
    if name == "all":
        return CorpusConfig(hours=minutes / 60, **kw)
    if name == OTHER_LANGUAGES:
        other = tuple(s.id for s in list_speakers(["festival"]) if s.language != "en")
        return CorpusConfig(hours=minutes / 60, engines=("festival",), speakers=other or None,
                            unseen_speakers=(), **kw) if other else None
    return CorpusConfig(hours=minutes / 60, engines=(name,),
                        engine_weights={OTHER_LANGUAGES: 0}, **kw)


def run(name: str, cfg, minutes: float, workers: int) -> dict:
    from flexicodec.data.corpus import build_corpus
    d = Path(tempfile.mkdtemp(prefix="flexicodec-bench-"))
    try:
        t0 = time.perf_counter()
        s = build_corpus(d, cfg, workers=workers, progress=False)
        wall = time.perf_counter() - t0
    finally:
        shutil.rmtree(d, ignore_errors=True)
    hours = s["hours"]
    return {"engines": name, "workers": workers, "audio_hours": hours,
            "voice_variants": getattr(cfg, "voice_variants", 0),
            "utterances": s["utterances"], "wall_s": wall,
            "hours_per_wall_min": hours / (wall / 60),
            "hours_per_cpu_min": hours / (wall * workers / 60),
            "wall_min_for_1h": (wall / 60) / hours, **worker_cpu(cfg, minutes)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes-audio", type=float, default=3.0)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("-o", "--out", type=Path, default=Path("benchmarks/results/corpus_build.json"))
    ap.add_argument("--engines", default="flite,festival,espeak,other_languages,all",
                    help="rows: an engine's English voices, other_languages (festival's "
                         "voices of other languages), all (the default mix)")
    ap.add_argument("--voice-variants", type=int, default=None,
                    help="derived speakers per flite/festival voice (default: the builder's)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from flexicodec.data.corpus import resolve_speakers
    rows = []
    for e in args.engines.split(","):
        cfg = config_for(e, args.minutes_audio, args.voice_variants)
        try:
            if cfg is None:
                raise ValueError("none installed")
            resolve_speakers(cfg)
        except ValueError as exc:
            print(f"skip {e}: {exc}")
            continue
        rows.append(run(e, cfg, args.minutes_audio, args.workers))
    print(f"{'engines':<22}{'variants':>9}{'workers':>8}{'audio h':>9}{'wall s':>8}"
          f"{'h/wall-min':>12}{'h/CPU-min':>11}{'min for 1 h':>13}{'audio-s/CPU-s':>15}")
    for r in rows:
        print(f"{r['engines']:<22}{r['voice_variants']:>9}{r['workers']:>8}"
              f"{r['audio_hours']:>9.3f}{r['wall_s']:>8.1f}{r['hours_per_wall_min']:>12.3f}"
              f"{r['hours_per_cpu_min']:>11.3f}{r['wall_min_for_1h']:>13.2f}"
              f"{r['audio_s_per_cpu_s']:>15.1f}")
    from flexicodec.common.atomic import atomic_write_text
    atomic_write_text(args.out, json.dumps({"cpu_count": os.cpu_count(), "load_avg":
                                            os.getloadavg(), "results": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
