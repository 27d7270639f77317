"""Build a synthetic speech corpus: a seeded plan of (sentence, speaker) pairs synthesized in
parallel, resumable, split by sentence with held-out speakers.

Layout (contract in docs/ARCHITECTURE.md)::

    DIR/corpus.json        build settings (seed, speakers, held-out speakers, ...)
    DIR/metadata.jsonl     one row per finished utterance
    DIR/wavs/<speaker>/<id>.wav   16 kHz mono PCM16

Each wav is written atomically before its row is appended (by the main process only), so an
interrupted build leaves at most an orphan wav and never a row without audio; a rerun skips
finished ids, repairs a torn last row and continues the same deterministic plan.

Splits are by sentence: the hash of the normalised text picks one of train / valid / test /
test_unseen; the held-out speakers only ever read ``test_unseen`` sentences and the other
speakers never do, so no sentence and no held-out speaker appears in two splits.
"""
from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import time
from collections import Counter, deque
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm.auto import tqdm


from data.audio import write_audio
from data.synth import PostprocessConfig, Speaker, list_speakers, synthesize
from data.text import load_sentences, normalize_text, phonemize

log = logging.getLogger(__name__)
SPLITS = ("train", "valid", "test", "test_unseen")
METADATA = "metadata.jsonl"
SETTINGS = "corpus.json"
DEFAULT_UNSEEN = ("flite_rms", "espeak_en-gb-scotland+f3")
SECONDS_PER_CHAR = 0.065  # rough speaking rate of our voices, for planning only


@dataclass
class CorpusConfig:
    """What to build. ``hours`` is the target total audio (all splits)."""
    hours: float
    seed: int = 0
    engines: tuple[str, ...] = ("flite", "festival", "espeak")
    speakers: tuple[str, ...] | None = None      # restrict to these ids (default: all found)
    unseen_speakers: tuple[str, ...] = DEFAULT_UNSEEN
    split_fractions: dict = field(default_factory=lambda: {
        "train": 0.94, "valid": 0.02, "test": 0.02, "test_unseen": 0.02})
    engine_weights: dict | None = None           # default: every engine equally likely
    batch_size: int = 8                          # utterances per worker task (one speaker)
    phoneme_voice: str = "en-us"
    min_words: int = 3
    max_words: int = 25


def sentence_split(normalized: str, fractions: dict) -> str:
    """Split for a sentence: stable hash of its lower-cased normalised text → bucket."""
    key = " ".join(normalized.lower().split())
    h = int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big") / 2 ** 64
    acc = 0.0
    for name in SPLITS:
        acc += fractions[name]
        if h < acc:
            return name
    return SPLITS[-1]


@dataclass
class Task:
    """One worker job: up to ``batch_size`` utterances of one speaker."""
    speaker: Speaker
    items: list[tuple[str, str, str, str]]   # (id, text, normalized_text, split)


def resolve_speakers(cfg: CorpusConfig) -> tuple[list[Speaker], set[str]]:
    """Available speakers for ``cfg`` and the held-out subset (those of ``unseen_speakers``
    that are available). Raises ValueError if nothing usable is found."""
    speakers = list_speakers(cfg.engines)
    if cfg.speakers:
        known = {s.id for s in speakers}
        missing = [s for s in cfg.speakers if s not in known]
        if missing:
            raise ValueError(f"requested speakers not available here: {missing}")
        speakers = [s for s in speakers if s.id in set(cfg.speakers)]
    if not speakers:
        raise ValueError(f"no synthesizer voices found for engines {list(cfg.engines)} "
                         f"(install them with scripts/setup.sh or set FLEXICODEC_SYNTH_PREFIX)")
    unseen = {s.id for s in speakers if s.id in set(cfg.unseen_speakers)}
    if len(unseen) == len(speakers):
        raise ValueError("every speaker is held out; nothing left for train")
    return speakers, unseen


def iter_plan(cfg: CorpusConfig, speakers: list[Speaker], unseen: set[str],
              sentences: list[str]) -> Iterator[Task]:
    """The deterministic, endless-until-sentences-run-out plan of tasks for ``cfg.seed``.

    Engines are drawn by ``engine_weights``, a speaker uniformly within the engine; seen
    speakers read train/valid/test sentences, held-out ones test_unseen sentences; every
    sentence is used once per pass over the list, passes repeat with a new order.
    """
    rng = np.random.default_rng(cfg.seed)
    srng = np.random.default_rng([cfg.seed, 1])  # sentence order, independent of voices
    # sentences are normalised lazily while walking a shuffled order (normalising all ~40k
    # up front costs seconds); each one lands in the seen or held-out queue by its split
    queues: dict[bool, deque] = {True: deque(), False: deque()}
    state = {"order": srng.permutation(len(sentences)), "pos": 0}

    def take(held: bool) -> tuple[str, str, str]:
        scanned = 0
        while not queues[held]:
            if scanned > len(sentences):
                raise ValueError(f"no sentence falls in the {'test_unseen' if held else 'seen'}"
                                 f" splits; check split_fractions")
            if state["pos"] >= len(state["order"]):  # next pass over the list
                state["order"], state["pos"] = srng.permutation(len(sentences)), 0
            text = sentences[state["order"][state["pos"]]]
            state["pos"] += 1
            scanned += 1
            norm = normalize_text(text)
            if not cfg.min_words <= len(norm.split()) <= cfg.max_words:
                continue
            split = sentence_split(norm, cfg.split_fractions)
            queues[split == "test_unseen"].append((text, norm, split))
        return queues[held].popleft()

    if not sentences:
        raise ValueError("no sentences to plan with")
    by_engine: dict[str, list[Speaker]] = {}
    for s in speakers:
        by_engine.setdefault(s.engine, []).append(s)
    engines = sorted(by_engine)
    w = np.array([(cfg.engine_weights or {}).get(e, 1.0) for e in engines], dtype=float)
    w = w / w.sum()
    n_tasks = 0
    while True:
        engine = engines[rng.choice(len(engines), p=w)]
        spk = by_engine[engine][rng.integers(len(by_engine[engine]))]
        held = spk.id in unseen
        items = []
        for _ in range(cfg.batch_size):
            text, norm, split = take(held)
            uid = f"{spk.slug}_{n_tasks:06d}_{len(items):02d}"
            items.append((uid, text, norm, split))
        n_tasks += 1
        yield Task(spk, items)


def _estimate_seconds(task: Task) -> float:
    return sum(SECONDS_PER_CHAR * len(it[2]) for it in task.items)


def run_task(task: Task, out_dir: str, phoneme_voice: str,
             post: PostprocessConfig | None = None) -> list[dict]:
    """Synthesize one task, write its wavs atomically; returns the metadata rows."""
    post = post or PostprocessConfig()
    texts = [it[2] for it in task.items]
    wavs = synthesize(texts, task.speaker, post)
    phones = phonemize(texts, voice=phoneme_voice)
    rows = []
    for (uid, text, norm, split), wav, ph in zip(task.items, wavs, phones):
        rel = Path("wavs") / task.speaker.slug / f"{uid}.wav"
        write_audio(Path(out_dir) / rel, wav, post.sample_rate)
        rows.append({"id": uid, "audio": rel.as_posix(), "text": text, "normalized_text": norm,
                     "phonemes": ph, "speaker": task.speaker.id, "engine": task.speaker.engine,
                     "duration": round(len(wav) / post.sample_rate, 4), "split": split})
    return rows


def read_metadata(out_dir: str | os.PathLike, repair: bool = False) -> list[dict]:
    """Rows of ``DIR/metadata.jsonl``. A torn (unparseable) last line from an interrupted
    append is dropped, and with ``repair=True`` the file is rewritten without it (and with a
    final newline); a bad line anywhere else raises ValueError."""
    path = Path(out_dir) / METADATA
    if not path.is_file():
        return []
    raw = path.read_text(encoding="utf-8")
    lines = [ln for ln in raw.split("\n") if ln.strip()]
    rows, torn = [], False
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                torn = True
                continue
            raise ValueError(f"{path}: corrupt metadata row {i + 1}") from None
    if repair and (torn or (raw and not raw.endswith("\n"))):
        log.warning("%s: repairing an interrupted last row", path)
        from codec.pretrained import atomic_write_text  # lazy: keeps torch out of workers
        atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return rows


def _check_settings(out: Path, cfg: CorpusConfig, speakers: list[Speaker],
                    unseen: set[str]) -> None:
    settings = {"seed": cfg.seed, "speakers": [s.id for s in speakers],
                "unseen_speakers": sorted(unseen), "split_fractions": cfg.split_fractions,
                "engine_weights": cfg.engine_weights, "batch_size": cfg.batch_size,
                "phoneme_voice": cfg.phoneme_voice, "sample_rate": 16000,
                "min_words": cfg.min_words, "max_words": cfg.max_words}
    from codec.pretrained import atomic_write_text  # lazy: keeps torch out of workers
    path = out / SETTINGS
    if path.is_file():
        old = json.loads(path.read_text())
        old_cmp = {k: old.get(k) for k in settings}
        diff = [k for k in settings if json.dumps(old_cmp[k]) != json.dumps(settings[k])]
        if diff:
            raise ValueError(f"{out} was built with other settings ({', '.join(diff)}); "
                             f"use a new --out or the same options")
    atomic_write_text(path, json.dumps({**settings, "hours": cfg.hours}, indent=2) + "\n")


def build_corpus(out_dir: str | os.PathLike, cfg: CorpusConfig, workers: int | None = None,
                 progress: bool = True, max_tasks: int | None = None) -> dict:
    """Build (or resume) the corpus in ``out_dir`` until its total audio reaches
    ``cfg.hours``. ``max_tasks`` stops after that many new tasks (for tests/benchmarks).

    Returns a summary: ``{"hours", "utterances", "new_utterances", "seconds", "speakers"}``.
    """
    if cfg.hours <= 0:
        raise ValueError("hours must be positive")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    speakers, unseen = resolve_speakers(cfg)
    _check_settings(out, cfg, speakers, unseen)
    for tmp in (out / "wavs").glob("*/.*.wav"):  # temp files of an interrupted write_audio
        tmp.unlink(missing_ok=True)
    rows = read_metadata(out, repair=True)
    done = {r["id"] for r in rows}
    total = sum(r["duration"] for r in rows)
    target = cfg.hours * 3600.0
    workers = workers or os.cpu_count() or 1
    t0 = time.time()
    new = 0
    plan = iter_plan(cfg, speakers, unseen, load_sentences())
    bar = tqdm(total=round(target / 3600, 3), initial=round(min(total, target) / 3600, 3),
               unit="h", desc="build-corpus", disable=not progress,
               bar_format="{l_bar}{bar}| {n:.3f}/{total:.3f} h [{elapsed}<{remaining}]")
    log.info("building %s: %.3f h target, %.3f h done, %d speakers (%d held out), %d workers",
             out, cfg.hours, total / 3600, len(speakers), len(unseen), workers)
    meta = open(out / METADATA, "a", encoding="utf-8")
    pending: dict = {}  # future -> estimated seconds
    n_submitted = 0

    def next_task() -> Task | None:
        for task in plan:
            todo = [it for it in task.items if it[0] not in done]
            if not todo:
                continue
            return Task(task.speaker, todo)
        return None

    ctx = multiprocessing.get_context("forkserver" if os.name == "posix" else "spawn")
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            while True:
                # submit while the real total plus in-flight estimates is under the target
                while (len(pending) < 2 * workers
                       and total + sum(pending.values()) < target
                       and (max_tasks is None or n_submitted < max_tasks)):
                    task = next_task()
                    if task is None:
                        break
                    fut = pool.submit(run_task, task, str(out), cfg.phoneme_voice)
                    pending[fut] = _estimate_seconds(task)
                    n_submitted += 1
                if not pending:
                    break
                finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                for fut in finished:
                    pending.pop(fut)
                    new_rows = fut.result()
                    for r in new_rows:
                        meta.write(json.dumps(r, ensure_ascii=False) + "\n")
                        done.add(r["id"])
                        total += r["duration"]
                        new += 1
                    meta.flush()
                    os.fsync(meta.fileno())
                    bar.update(round(sum(r["duration"] for r in new_rows) / 3600, 6))
    finally:
        meta.close()
        bar.close()
    secs = time.time() - t0
    summary = {"hours": total / 3600, "utterances": len(done), "new_utterances": new,
               "seconds": secs, "speakers": len(speakers)}
    log.info("corpus %s: %.3f h, %d utterances (%d new) in %.1f s", out, total / 3600,
             len(done), new, secs)
    return summary


def summarize(out_dir: str | os.PathLike) -> dict:
    """Hours per split / engine / speaker and counts, from ``metadata.jsonl``."""
    rows = read_metadata(out_dir)
    if not rows:
        raise FileNotFoundError(f"{out_dir}: no {METADATA} rows (not a built corpus?)")
    def hours(key: str) -> dict:
        c: Counter = Counter()
        for r in rows:
            c[r[key]] += r["duration"] / 3600
        return {k: round(v, 4) for k, v in sorted(c.items())}
    durs = np.array([r["duration"] for r in rows])
    return {"utterances": len(rows), "hours": round(float(durs.sum()) / 3600, 4),
            "duration_s": {"min": float(durs.min()), "mean": float(durs.mean()),
                           "max": float(durs.max())},
            "hours_per_split": hours("split"), "hours_per_engine": hours("engine"),
            "hours_per_speaker": hours("speaker"),
            "sentences": len({r["normalized_text"] for r in rows}),
            "speakers": len({r["speaker"] for r in rows})}


__all__ = ["CorpusConfig", "build_corpus", "summarize", "read_metadata", "sentence_split",
           "iter_plan", "resolve_speakers", "run_task", "SPLITS"]
