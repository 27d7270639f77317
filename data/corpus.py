"""Build a synthetic speech corpus: a seeded plan of items (1-3 sentences of one speaker)
synthesized in parallel, resumable, split by sentence with held-out speakers.

Layout (contract in docs/ARCHITECTURE.md)::

    DIR/corpus.json        build settings (seed, speakers, held-out speakers, ...)
    DIR/metadata.jsonl     one row per finished utterance
    DIR/wavs/<speaker>/<id>.wav   16 kHz mono PCM16
    DIR/failed.jsonl       items an engine could not synthesize (only if any): skipped

Each wav is written atomically before its row is appended (by the main process only), so an
interrupted build leaves at most an orphan wav and never a row without audio; a rerun skips
finished ids, repairs a torn last row and continues the same deterministic plan.

Splits are by sentence: the hash of the normalised text picks one of train / valid / test /
test_unseen; the held-out speakers only ever read ``test_unseen`` sentences and the other
speakers never do, and all sentences of one item share a split, so no sentence and no
held-out speaker appears in two splits.

Closer to real speech than one sentence per file at a constant rate and level: each item
joins ``sentences_per_item`` sentences with silent pauses drawn from ``pause_range``, spoken
at one speaking rate drawn from ``pace_range`` and normalised to one RMS level drawn from
``level_db_range``; internal silences (punctuation pauses) are kept up to ``max_silence_s``.
These draws come from (seed, item id) alone, so a resumed build makes the same items.
``pace_range=(1, 1)``, ``sentences_per_item=(1, 1)``, ``level_db_range=(-23, -23)``,
``max_silence_s=0.3``, ``voice_variants=0`` (``LEGACY``) reproduce the corpus of the first
builder.

Derived speakers: each recorded voice (flite, festival) also speaks as ``voice_variants``
pitch- and formant-shifted speakers ``<voice>~v1..vN`` (:mod:`flexicodec.data.variants`), each one a
speaker of its own in the plan and the metadata (``speaker``; ``base_speaker`` names the
voice, ``variant`` its parameters). A variant is held out exactly when its voice is, so no
held-out voice reaches train, valid or test in any form.
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


from flexicodec.common.atomic import atomic_write_text, read_jsonl
from flexicodec.common.constants import SAMPLE_RATE
from flexicodec.data.audio import concat_with_pauses, write_audio
from flexicodec.data.synth import (PACE_LIMITS, RECORDED_ENGINES, PostprocessConfig, Speaker,
                                   SynthError, derive_speakers, list_speakers, synthesize)
from flexicodec.data.text import load_sentences, normalize_text, phonemize
from flexicodec.data.variants import DESIGN as VARIANT_DESIGN, parse_variant_id

log = logging.getLogger(__name__)
SPLITS = ("train", "valid", "test", "test_unseen")
SEEN_SPLITS = SPLITS[:3]
METADATA = "metadata.jsonl"
#: items an engine failed on, one JSON object per line: skipped, and not retried on resume
FAILED = "failed.jsonl"
SETTINGS = "corpus.json"
DEFAULT_UNSEEN = ("flite_rms", "espeak_en-gb-scotland+f3")
#: the sampling group (an ``engine_weights`` key) of voices whose language is not English,
#: and its default weight (each engine's is 1): with the three engines, 1/7 of the items
OTHER_LANGUAGES = "other_languages"
OTHER_LANGUAGES_WEIGHT = 0.5
SECONDS_PER_CHAR = 0.065  # rough speaking rate of our voices at pace 1, for planning only
#: values of the item-style settings for corpora built before they existed (their corpus.json
#: lacks these keys): one sentence per item at the engines' rate, -23 dB, 0.3 s silence cap
#: (pause_range: the default, unused with one sentence per item), no derived speakers
LEGACY = {"pace_range": [1.0, 1.0], "sentences_per_item": [1, 1], "pause_range": [0.2, 1.2],
          "level_db_range": [-23.0, -23.0], "max_silence_s": 0.3, "voice_variants": 0}


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
    #: how likely each engine is drawn, by name; festival's voices of other languages
    #: (:data:`flexicodec.data.synth.FESTIVAL_OTHER_VOICES`) are a group of their own,
    #: OTHER_LANGUAGES. Default: 1 per engine, OTHER_LANGUAGES_WEIGHT for that group
    engine_weights: dict | None = None
    batch_size: int = 8                          # utterances per worker task (one speaker)
    phoneme_voice: str = "en-us"
    min_words: int = 3
    max_words: int = 25
    pace_range: tuple[float, float] = (0.75, 1.35)     # speaking rate per item (1 = engine's)
    sentences_per_item: tuple[int, int] = (1, 3)       # sentences joined per item (uniform)
    pause_range: tuple[float, float] = (0.2, 1.2)      # silence between them, seconds
    level_db_range: tuple[float, float] = (-33.0, -17.0)  # speech RMS per item, dBFS
    max_silence_s: float = 0.8                         # longer internal silences are cut to it
    voice_variants: int = 6                  # derived speakers per flite/festival voice

    def __post_init__(self) -> None:
        self.pace_range = _range("pace_range", self.pace_range, *PACE_LIMITS)
        self.pause_range = _range("pause_range", self.pause_range, 0.0, 10.0)
        self.level_db_range = _range("level_db_range", self.level_db_range, -60.0, 0.0)
        lo, hi = _range("sentences_per_item", self.sentences_per_item, 1, 20)
        if lo != int(lo) or hi != int(hi):
            raise ValueError(f"sentences_per_item must be whole numbers, got "
                             f"{self.sentences_per_item}")
        self.sentences_per_item = (int(lo), int(hi))
        if not 0.0 < self.max_silence_s <= 10.0:
            raise ValueError(f"max_silence_s must lie in (0, 10], got {self.max_silence_s}")
        if self.voice_variants != int(self.voice_variants) or not 0 <= self.voice_variants <= 50:
            raise ValueError(f"voice_variants must be a whole number in [0, 50], got "
                             f"{self.voice_variants}")
        self.voice_variants = int(self.voice_variants)
        bad = {k: v for k, v in (self.engine_weights or {}).items()
               if not (isinstance(v, (int, float)) and 0 <= v < float("inf"))}
        if bad:
            raise ValueError(f"engine_weights must be finite numbers >= 0, got {bad}")
        for name in ("speakers", "unseen_speakers"):
            derived = [s for s in getattr(self, name) or () if parse_variant_id(s)]
            if derived:
                raise ValueError(f"{name}: name engine voices, not derived speakers "
                                 f"{derived} (they follow their voice; see voice_variants)")


def _range(name: str, value, lo: float, hi: float) -> tuple[float, float]:
    """``value`` as a float pair (a, b) with ``lo <= a <= b <= hi``; ValueError otherwise."""
    pair = tuple(float(v) for v in value)
    if len(pair) != 2 or not lo <= pair[0] <= pair[1] <= hi:
        raise ValueError(f"{name} must be LO,HI with {lo:g} <= LO <= HI <= {hi:g}, "
                         f"got {value}")
    return pair


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
class Item:
    """One corpus utterance: ``sentences`` ((text, normalized_text) pairs, all of ``split``)
    spoken at ``pace``, joined with ``pauses`` (seconds), normalised to ``level_db``."""
    id: str
    sentences: list[tuple[str, str]]
    split: str
    pace: float
    pauses: list[float]
    level_db: float

    @property
    def normalized_text(self) -> str:
        return " ".join(norm for _, norm in self.sentences)


@dataclass
class Task:
    """One worker job: up to ``batch_size`` items of one speaker."""
    speaker: Speaker
    items: list[Item]


def resolve_speakers(cfg: CorpusConfig) -> tuple[list[Speaker], set[str]]:
    """Available speakers for ``cfg`` (each voice followed by its ``cfg.voice_variants``
    derived speakers when it is a recorded one; the voices of other languages only unless
    their group's weight is 0) and the held-out subset: the voices of
    ``unseen_speakers`` that are available and all their derived speakers. Raises
    ValueError if nothing usable is found."""
    speakers = list_speakers(cfg.engines)
    if (cfg.engine_weights or {}).get(OTHER_LANGUAGES) == 0:     # that group left out
        speakers = [s for s in speakers if s.language == "en"]
    if cfg.speakers:
        known = {s.id for s in speakers}
        missing = [s for s in cfg.speakers if s not in known]
        if missing:
            raise ValueError(f"requested speakers not available here: {missing}")
        speakers = [s for s in speakers if s.id in set(cfg.speakers)]
    if not speakers:
        raise ValueError(f"no synthesizer voices found for engines {list(cfg.engines)} "
                         f"(install them with scripts/setup.sh or set FLEXICODEC_SYNTH_PREFIX)")
    if cfg.voice_variants:
        speakers = [d for s in speakers for d in
                    ([s] + (derive_speakers(s, cfg.voice_variants)
                            if s.engine in RECORDED_ENGINES else []))]
    unseen = {s.id for s in speakers if s.base_id in set(cfg.unseen_speakers)}
    if len(unseen) == len(speakers):
        raise ValueError("every speaker is held out; nothing left for train")
    return speakers, unseen


class SentenceStream:
    """The shipped sentences in a seeded order, repeated pass after pass with a new order.

    Sentences are normalised lazily while walking the order (normalising all ~40k up front
    costs seconds); each one that passes the word-count filter waits in its split's queue.
    :meth:`take` hands out the oldest waiting sentence of the given splits."""

    def __init__(self, sentences: list[str], cfg: CorpusConfig):
        if not sentences:
            raise ValueError("no sentences to plan with")
        self.sentences, self.cfg = sentences, cfg
        self.rng = np.random.default_rng([cfg.seed, 1])  # independent of the voice draws
        self.order, self.pos, self.n_read = self.rng.permutation(len(sentences)), 0, 0
        self.queues: dict[str, deque] = {name: deque() for name in SPLITS}

    def _read_one(self) -> None:
        if self.pos >= len(self.order):  # next pass over the list
            self.order, self.pos = self.rng.permutation(len(self.sentences)), 0
        text = self.sentences[self.order[self.pos]]
        self.pos += 1
        norm = normalize_text(text)
        if self.cfg.min_words <= len(norm.split()) <= self.cfg.max_words:
            split = sentence_split(norm, self.cfg.split_fractions)
            self.queues[split].append((self.n_read, text, norm, split))
        self.n_read += 1

    def take(self, splits: tuple[str, ...]) -> tuple[str, str, str]:
        """(text, normalized_text, split) of the oldest waiting sentence in ``splits``."""
        scanned = 0
        while not any(self.queues[name] for name in splits):
            if scanned > len(self.sentences):
                raise ValueError(f"no sentence falls in the {'/'.join(splits)} split(s); "
                                 f"check split_fractions")
            self._read_one()
            scanned += 1
        name = min((n for n in splits if self.queues[n]), key=lambda n: self.queues[n][0][0])
        return self.queues[name].popleft()[1:]


def item_rng(seed: int, item_id: str) -> np.random.Generator:
    """The random stream of one item's style draws: a function of (seed, item id) only."""
    key = int.from_bytes(hashlib.sha1(item_id.encode("utf-8")).digest()[:8], "big")
    return np.random.default_rng([seed, 2, key])


def plan_item(cfg: CorpusConfig, stream: SentenceStream, item_id: str,
              splits: tuple[str, ...]) -> Item:
    """One item: its style drawn from (seed, id), its first sentence the oldest waiting one
    of ``splits`` and the others the next ones of that sentence's split."""
    rng = item_rng(cfg.seed, item_id)
    n = int(rng.integers(cfg.sentences_per_item[0], cfg.sentences_per_item[1] + 1))
    pace = round(float(rng.uniform(*cfg.pace_range)), 4)
    level = round(float(rng.uniform(*cfg.level_db_range)), 2)
    pauses = [round(float(rng.uniform(*cfg.pause_range)), 3) for _ in range(n - 1)]
    text, norm, split = stream.take(splits)
    sentences = [(text, norm)] + [stream.take((split,))[:2] for _ in range(n - 1)]
    return Item(item_id, sentences, split, pace, pauses, level)


def sampling_group(speaker: Speaker) -> str:
    """The plan's sampling group of ``speaker``: its engine, or OTHER_LANGUAGES for a voice
    whose language is not English."""
    return speaker.engine if speaker.language == "en" else OTHER_LANGUAGES


def iter_plan(cfg: CorpusConfig, speakers: list[Speaker], unseen: set[str],
              sentences: list[str]) -> Iterator[Task]:
    """The deterministic, endless-until-sentences-run-out plan of tasks for ``cfg.seed``.

    Groups (:func:`sampling_group`: the engine, or OTHER_LANGUAGES) are drawn by
    ``engine_weights`` (default: 1 per engine, OTHER_LANGUAGES_WEIGHT), a speaker uniformly
    within the group; seen speakers read train/valid/test sentences, held-out ones
    test_unseen sentences, voices of other languages train sentences only (their speech does
    not match the English text that the held-out splits are scored against); every item lies
    within one split; every sentence is used once per pass over the list, passes repeat with
    a new order.
    """
    rng = np.random.default_rng(cfg.seed)
    stream = SentenceStream(sentences, cfg)
    by_group: dict[str, list[Speaker]] = {}
    for s in speakers:
        by_group.setdefault(sampling_group(s), []).append(s)
    groups = sorted(by_group)
    weights = {OTHER_LANGUAGES: OTHER_LANGUAGES_WEIGHT, **(cfg.engine_weights or {})}
    w = np.array([weights.get(g, 1.0) for g in groups], dtype=float)
    if not w.sum() > 0:
        raise ValueError(f"engine_weights {cfg.engine_weights} leave none of the groups "
                         f"{groups} to draw from")
    w = w / w.sum()
    n_tasks = 0
    while True:
        group = groups[rng.choice(len(groups), p=w)]
        spk = by_group[group][rng.integers(len(by_group[group]))]
        splits = ("test_unseen",) if spk.id in unseen else \
            ("train",) if spk.language != "en" else SEEN_SPLITS
        items = [plan_item(cfg, stream, f"{spk.slug}_{n_tasks:06d}_{k:02d}", splits)
                 for k in range(cfg.batch_size)]
        n_tasks += 1
        yield Task(spk, items)


def _estimate_seconds(task: Task) -> float:
    """Planned audio of ``task``: speech (characters / pace) plus the pauses."""
    return sum(SECONDS_PER_CHAR * sum(len(norm) for _, norm in it.sentences) / it.pace
               + sum(it.pauses) for it in task.items)


def _row(item: Item, speaker: Speaker, rel: Path, phonemes: list[str],
         seconds: float) -> dict:
    """The metadata row of a finished item (schema: docs/ARCHITECTURE.md)."""
    return {"id": item.id, "audio": rel.as_posix(),
            "text": " ".join(text for text, _ in item.sentences),
            "normalized_text": item.normalized_text, "phonemes": " ".join(phonemes),
            "speaker": speaker.id, "engine": speaker.engine, "duration": round(seconds, 4),
            "split": item.split, "n_sentences": len(item.sentences),
            "sentences": [norm for _, norm in item.sentences], "pace": item.pace,
            "pauses": item.pauses, "level_db": item.level_db,
            "base_speaker": speaker.base_id, "voice_language": speaker.language,
            "variant": speaker.variant.as_dict() if speaker.variant else None}


def run_task(task: Task, out_dir: str, phoneme_voice: str,
             post: PostprocessConfig | None = None) -> tuple[list[dict], list[dict]]:
    """Synthesize one task (all its sentences in one engine batch), join each item's
    sentences with its pauses, write its wavs atomically; returns the metadata rows and the
    items the engine failed on (``{"id", "speaker", "error"}``).

    When the batch fails, each item is synthesized alone, so one text the engine cannot
    read (e.g. some questions for festival's Italian voices) costs that item only."""
    post = post or PostprocessConfig()
    items, failed = task.items, []

    def synth(its: list[Item]) -> list[np.ndarray]:
        return synthesize([norm for it in its for _, norm in it.sentences], task.speaker, post,
                          paces=[it.pace for it in its for _ in it.sentences],
                          levels_db=[it.level_db for it in its for _ in it.sentences])
    try:
        wavs = synth(items)
    except SynthError:
        kept, wavs = [], []
        for it in items:
            try:
                wavs += synth([it])
                kept.append(it)
            except SynthError as exc:
                failed.append({"id": it.id, "speaker": task.speaker.id,
                               "error": str(exc)[-300:]})
        items = kept
    texts = [norm for it in items for _, norm in it.sentences]
    phones = phonemize(texts, voice=phoneme_voice) if texts else []
    rows, pos = [], 0
    for it in items:
        end = pos + len(it.sentences)
        wav = concat_with_pauses(wavs[pos:end], it.pauses, post.sample_rate)
        rel = Path("wavs") / task.speaker.slug / f"{it.id}.wav"
        write_audio(Path(out_dir) / rel, wav, post.sample_rate)
        rows.append(_row(it, task.speaker, rel, phones[pos:end], len(wav) / post.sample_rate))
        pos = end
    return rows, failed


def read_failed(out_dir: str | os.PathLike) -> list[dict]:
    """The items an engine failed on (``DIR/failed.jsonl``; a torn last line is dropped)."""
    path = Path(out_dir) / FAILED
    return read_jsonl(path) if path.is_file() else []


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
        atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return rows


def _check_settings(out: Path, cfg: CorpusConfig, speakers: list[Speaker],
                    unseen: set[str]) -> None:
    settings = {"seed": cfg.seed, "speakers": [s.id for s in speakers if s.variant is None],
                "unseen_speakers": sorted(u for u in unseen if not parse_variant_id(u)),
                "split_fractions": cfg.split_fractions,
                "engine_weights": cfg.engine_weights, "batch_size": cfg.batch_size,
                "phoneme_voice": cfg.phoneme_voice, "sample_rate": SAMPLE_RATE,
                "min_words": cfg.min_words, "max_words": cfg.max_words,
                "pace_range": list(cfg.pace_range),
                "sentences_per_item": list(cfg.sentences_per_item),
                "pause_range": list(cfg.pause_range), "level_db_range": list(cfg.level_db_range),
                "max_silence_s": cfg.max_silence_s, "voice_variants": cfg.voice_variants,
                "variant_design": VARIANT_DESIGN if cfg.voice_variants else None}
    path = out / SETTINGS
    if path.is_file():
        old = json.loads(path.read_text())
        old_cmp = {k: old.get(k, LEGACY.get(k)) for k in settings}  # older builder: LEGACY
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
    failed_before = read_failed(out)
    n_failed = len(failed_before)
    done = {r["id"] for r in rows} | {f["id"] for f in failed_before}
    total = sum(r["duration"] for r in rows)
    target = cfg.hours * 3600.0
    workers = workers or os.cpu_count() or 1
    t0 = time.time()
    new = 0
    plan = iter_plan(cfg, speakers, unseen, load_sentences())
    post = PostprocessConfig(max_silence_s=cfg.max_silence_s)
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
            todo = [it for it in task.items if it.id not in done]
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
                    fut = pool.submit(run_task, task, str(out), cfg.phoneme_voice, post)
                    pending[fut] = _estimate_seconds(task)
                    n_submitted += 1
                if not pending:
                    break
                finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                for fut in finished:
                    pending.pop(fut)
                    new_rows, failed = fut.result()
                    for f in failed:
                        log.warning("%s: %s could not synthesize item %s (skipped): %s", out,
                                    f["speaker"], f["id"], f["error"])
                        done.add(f["id"])
                        n_failed += 1
                    if failed:                  # before their rows: never retried
                        with open(out / FAILED, "a", encoding="utf-8") as fail_log:
                            fail_log.write("".join(json.dumps(f, ensure_ascii=False) + "\n"
                                                   for f in failed))
                            fail_log.flush()
                            os.fsync(fail_log.fileno())
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
    summary = {"hours": total / 3600, "utterances": len(done) - n_failed,
               "new_utterances": new, "failed_items": n_failed, "seconds": secs,
               "speakers": len(speakers)}
    log.info("corpus %s: %.3f h, %d utterances (%d new) in %.1f s", out, total / 3600,
             len(done), new, secs)
    return summary


def summarize(out_dir: str | os.PathLike) -> dict:
    """Hours per split / engine / speaker / voice language and counts, from
    ``metadata.jsonl``."""
    rows = read_metadata(out_dir)
    if not rows:
        raise FileNotFoundError(f"{out_dir}: no {METADATA} rows (not a built corpus?)")
    def hours(key: str, default: str | None = None) -> dict:
        c: Counter = Counter()
        for r in rows:
            c[r.get(key, default) if default is not None else r[key]] += r["duration"] / 3600
        return {k: round(v, 4) for k, v in sorted(c.items())}
    durs = np.array([r["duration"] for r in rows])
    return {"utterances": len(rows), "hours": round(float(durs.sum()) / 3600, 4),
            "duration_s": {"min": float(durs.min()), "mean": float(durs.mean()),
                           "max": float(durs.max())},
            "hours_per_split": hours("split"), "hours_per_engine": hours("engine"),
            "hours_per_speaker": hours("speaker"),
            "hours_per_voice_language": hours("voice_language", "en"),
            "sentences": len({s for r in rows for s in r.get("sentences", [r["normalized_text"]])}),
            "speakers": len({r["speaker"] for r in rows})}


__all__ = ["CorpusConfig", "Item", "Task", "build_corpus", "summarize", "read_metadata",
           "sentence_split", "iter_plan", "plan_item", "item_rng", "resolve_speakers",
           "run_task", "read_failed", "SentenceStream", "SPLITS", "LEGACY"]
