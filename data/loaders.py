"""Load speech corpora into one schema, and serve them to trainers.

:func:`load_corpus` auto-detects the layout — our built corpus (``metadata.jsonl`` with
``split``), LJSpeech (``metadata.csv`` ``id|text|normalized`` + ``wavs/``), LibriTTS
(``speaker/chapter/*.wav`` beside ``*.normalized.txt``), or any audio folder with
``metadata.csv`` / ``metadata.jsonl`` (columns ``file_name``/``audio``/``path`` + ``text``
[+ ``speaker``, ``phonemes``]) — and returns a ``datasets.Dataset`` (or ``IterableDataset``
when ``streaming=True``) with the columns::

    audio     path string (decode=False) or {"array": float32[T], "sampling_rate", "path"}
    text      normalised text (data.text.normalize_text for sources without one)
    phonemes  IPA phonemes ("" when unknown)
    speaker   speaker id ("" when unknown)
    duration  seconds

Unreadable, empty, NaN, zero-length or over-long files are skipped and counted in one
``logging.warning``; a path that holds no audio raises a clear error.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import soundfile as sf
import torch

from flexicodec.common.constants import SAMPLE_RATE
from flexicodec.data.audio import (AUDIO_EXTENSIONS, DEFAULT_MAX_SECONDS, AudioError, find_audio_files,
                                   load_audio)
from flexicodec.data.text import normalize_text

log = logging.getLogger(__name__)
COLUMNS = ("audio", "text", "phonemes", "speaker", "duration")


@dataclass
class _Row:
    path: Path
    text: str
    phonemes: str = ""
    speaker: str = ""
    split: str | None = None
    voice_language: str = "en"     # our corpus: the voice's language (other layouts: "en")


# --------------------------------------------------------------------------- layouts
def detect_layout(root: Path) -> str:
    """``corpus`` | ``ljspeech`` | ``libritts`` | ``audiofolder``; raises if none fits."""
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such file or directory")
    if not root.is_dir():
        raise ValueError(f"{root}: expected a directory holding a corpus")
    if (root / "metadata.jsonl").is_file():
        with open(root / "metadata.jsonl", encoding="utf-8") as f:
            first = f.readline()
        try:
            keys = set(json.loads(first)) if first.strip() else set()
        except json.JSONDecodeError as exc:
            raise ValueError(f"{root}/metadata.jsonl: first line is not JSON ({exc})") from exc
        return "corpus" if {"normalized_text", "split", "audio"} <= keys else "audiofolder"
    if (root / "metadata.csv").is_file():
        with open(root / "metadata.csv", encoding="utf-8") as f:
            first = f.readline()
        if "|" in first and (root / "wavs").is_dir():
            return "ljspeech"
        return "audiofolder"
    if next(root.rglob("*.normalized.txt"), None) is not None:
        return "libritts"
    find_audio_files(root)  # raises FileNotFoundError when there is no audio at all
    raise ValueError(f"{root}: audio found but no transcripts (need metadata.jsonl, "
                     f"metadata.csv, LJSpeech or LibriTTS layout)")


def _rows_corpus(root: Path) -> list[_Row]:
    from flexicodec.data.corpus import read_metadata
    return [_Row(root / r["audio"], r["normalized_text"], r.get("phonemes", ""),
                 r.get("speaker", ""), r.get("split"), r.get("voice_language", "en"))
            for r in read_metadata(root)]


def _rows_ljspeech(root: Path) -> list[_Row]:
    rows = []
    with open(root / "metadata.csv", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.rstrip("\n").split("|")
            if len(parts) < 2 or not parts[0]:
                raise ValueError(f"{root}/metadata.csv:{n}: expected id|text|normalized")
            text = parts[2] if len(parts) > 2 and parts[2].strip() else parts[1]
            rows.append(_Row(root / "wavs" / f"{parts[0]}.wav", normalize_text(text),
                             speaker="ljspeech"))
    return rows


def _rows_libritts(root: Path) -> list[_Row]:
    rows = []
    for txt in sorted(root.rglob("*.normalized.txt")):
        stem = txt.name[: -len(".normalized.txt")]
        wav = txt.with_name(stem + ".wav")
        speaker = stem.split("_")[0]
        rows.append(_Row(wav, normalize_text(txt.read_text(encoding="utf-8").strip()),
                         speaker=speaker))
    return rows


def _rows_audiofolder(root: Path) -> list[_Row]:
    if (root / "metadata.jsonl").is_file():
        with open(root / "metadata.jsonl", encoding="utf-8") as f:
            recs = [json.loads(line) for line in f if line.strip()]
        src = "metadata.jsonl"
    else:
        with open(root / "metadata.csv", encoding="utf-8", newline="") as f:
            recs = list(csv.DictReader(f))
        src = "metadata.csv"
    rows = []
    for i, r in enumerate(recs):
        key = next((k for k in ("file_name", "audio", "path") if r.get(k)), None)
        if key is None or "text" not in r:
            raise ValueError(f"{root}/{src} row {i + 1}: needs a file_name/audio/path column "
                             f"and a text column (has {sorted(r)})")
        rows.append(_Row(root / str(r[key]), normalize_text(str(r["text"])),
                         str(r.get("phonemes") or ""), str(r.get("speaker") or "")))
    return rows


_READERS = {"corpus": _rows_corpus, "ljspeech": _rows_ljspeech, "libritts": _rows_libritts,
            "audiofolder": _rows_audiofolder}


# --------------------------------------------------------------------------- checking
class SkipCounter:
    """Counts skipped files by reason and reports them in one warning."""

    def __init__(self, name: str):
        self.name, self.counts, self.examples = name, Counter(), []

    def add(self, reason: str, path: Path, err: Exception) -> None:
        self.counts[reason] += 1
        if len(self.examples) < 3:
            self.examples.append(f"{path}: {err}")

    def report(self, total: int) -> None:
        if self.counts:
            detail = ", ".join(f"{k}: {v}" for k, v in sorted(self.counts.items()))
            log.warning("%s: skipped %d of %d files (%s); e.g. %s", self.name,
                        sum(self.counts.values()), total, detail, "; ".join(self.examples))


def _reason(err: Exception) -> str:
    msg = str(err)
    for key, words in (("missing", "no such"), ("nan", "NaN"), ("too_long", "limit"),
                       ("empty", "empty"), ("unreadable", "unreadable")):
        if words in msg:
            return key
    return "bad"


def _check(row: _Row, sample_rate: int, max_seconds: float, full: bool
           ) -> tuple[np.ndarray | None, float]:
    """(audio or None, duration); raises AudioError for a bad file."""
    if full:
        x, sr = load_audio(row.path, sample_rate, max_seconds=max_seconds)
        return x, len(x) / sr
    if not row.path.is_file():
        raise AudioError(f"{row.path}: no such audio file")
    try:
        info = sf.info(str(row.path))
    except Exception as exc:
        raise AudioError(f"{row.path}: unreadable audio ({exc})") from exc
    if info.frames <= 0:
        raise AudioError(f"{row.path}: audio is empty")
    dur = info.frames / info.samplerate
    if dur > max_seconds:
        raise AudioError(f"{row.path}: audio is {dur:.1f} s long, over the {max_seconds} s limit")
    return None, dur


def _record(row: _Row, x: np.ndarray | None, dur: float, sample_rate: int, decode: bool) -> dict:
    audio = ({"array": x.astype(np.float32), "sampling_rate": sample_rate, "path": str(row.path)}
             if decode else str(row.path))
    return {"audio": audio, "text": row.text, "phonemes": row.phonemes, "speaker": row.speaker,
            "duration": float(dur)}


def _features(decode: bool):
    import datasets
    audio = ({"array": datasets.Sequence(datasets.Value("float32")),
              "sampling_rate": datasets.Value("int32"), "path": datasets.Value("string")}
             if decode else datasets.Value("string"))
    return datasets.Features({"audio": audio, "text": datasets.Value("string"),
                              "phonemes": datasets.Value("string"),
                              "speaker": datasets.Value("string"),
                              "duration": datasets.Value("float32")})


# --------------------------------------------------------------------------- public API
def load_corpus(path: str | os.PathLike, split: str | None = None,
                sample_rate: int = SAMPLE_RATE,
                decode: bool = False, streaming: bool = False, *,
                max_seconds: float = 60.0, check: str = "full", progress: bool = True,
                english_speech_only: bool = False):
    """Load a corpus directory as a ``datasets.Dataset`` (or ``IterableDataset``).

    ``split`` filters our corpus' ``split`` column (other layouts have none: passing one
    raises). ``english_speech_only`` drops our corpus' rows spoken by a voice of another
    language (``voice_language``: their speech does not match the English text; the ASR
    and the LM, which learn from the text, pass it); the rows of other layouts are taken
    as spoken in their text's language and kept. ``check="full"`` reads every file once
    (catches NaN audio), ``"header"`` only its header. Files that fail are skipped with one
    counted warning; if none survive, raises ValueError.
    """
    import datasets
    from tqdm.auto import tqdm
    if check not in ("full", "header"):
        raise ValueError("check must be 'full' or 'header'")
    root = Path(path)
    layout = detect_layout(root)
    rows = _READERS[layout](root)
    if split is not None:
        if layout != "corpus":
            raise ValueError(f"{root}: a {layout} directory has no splits (split={split!r})")
        known = {r.split for r in rows}
        if split not in known:
            raise ValueError(f"{root}: no split {split!r} (has {sorted(known)})")
        rows = [r for r in rows if r.split == split]
    if english_speech_only:
        rows = [r for r in rows if r.voice_language == "en"]
    if not rows:
        raise ValueError(f"{root}: {layout} layout with no utterances")
    name = f"load_corpus({root}, {layout}{'' if split is None else ', ' + split})"
    full = check == "full" or decode

    if streaming:
        def gen(rows=rows) -> Iterator[dict]:
            skips = SkipCounter(name)
            for row in rows:
                try:
                    x, dur = _check(row, sample_rate, max_seconds, full)
                except AudioError as exc:
                    skips.add(_reason(exc), row.path, exc)
                    continue
                yield _record(row, x, dur, sample_rate, decode)
            skips.report(len(rows))
        return datasets.IterableDataset.from_generator(gen, features=_features(decode))

    skips = SkipCounter(name)
    records = []
    for row in tqdm(rows, desc=f"checking {root.name}", disable=not progress or len(rows) < 500,
                    unit="file"):
        try:
            x, dur = _check(row, sample_rate, max_seconds, full)
        except AudioError as exc:
            skips.add(_reason(exc), row.path, exc)
            continue
        records.append(_record(row, x if decode else None, dur, sample_rate, decode))
    skips.report(len(rows))
    if not records:
        raise ValueError(f"{root}: none of the {len(rows)} audio files is usable")
    return datasets.Dataset.from_list(records, features=_features(decode))


class AudioDataset(torch.utils.data.Dataset):
    """Training view of a :func:`load_corpus` dataset.

    ``ds[i]["audio"]`` may be a path or a decoded dict. Items are
    ``{"wav": float32 Tensor [T], "text", "phonemes", "speaker", "index"}``; with
    ``segment_samples`` the wav is a crop of at most that many samples (random offset when
    ``random_crop``, else the start), otherwise the whole utterance.
    """

    def __init__(self, ds, sample_rate: int = SAMPLE_RATE, segment_samples: int | None = None,
                 random_crop: bool = True, max_seconds: float | None = DEFAULT_MAX_SECONDS):
        if segment_samples is not None and segment_samples <= 0:
            raise ValueError("segment_samples must be positive")
        missing = [c for c in ("audio", "text") if c not in ds.column_names]
        if missing:
            raise ValueError(f"dataset lacks columns {missing} (use data.loaders.load_corpus)")
        self.ds, self.sample_rate = ds, sample_rate
        self.segment_samples, self.random_crop = segment_samples, random_crop
        self.max_seconds = max_seconds

    def __len__(self) -> int:
        return len(self.ds)

    def _wav(self, audio) -> np.ndarray:
        if isinstance(audio, str):
            x, _ = load_audio(audio, self.sample_rate, max_seconds=self.max_seconds)
            return x
        from flexicodec.data.audio import prepare_waveform
        return prepare_waveform(np.asarray(audio["array"], dtype=np.float32),
                                int(audio["sampling_rate"]), self.sample_rate,
                                name=str(audio.get("path", "audio")))

    def __getitem__(self, index: int) -> dict:
        row = self.ds[int(index)]
        x = self._wav(row["audio"])
        seg = self.segment_samples
        if seg is not None and len(x) > seg:
            start = random.randint(0, len(x) - seg) if self.random_crop else 0
            x = x[start: start + seg]
        return {"wav": torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
                "text": row.get("text", ""), "phonemes": row.get("phonemes", "") or "",
                "speaker": row.get("speaker", "") or "", "index": int(index)}


def collate_audio(batch: list[dict]) -> dict:
    """Pad a list of :class:`AudioDataset` items: ``wav`` [B, T_max] zero-padded,
    ``wav_lengths`` [B] long, ``text``/``phonemes``/``speaker`` lists, ``index`` [B] long."""
    if not batch:
        raise ValueError("collate_audio got an empty batch")
    lengths = torch.tensor([b["wav"].numel() for b in batch], dtype=torch.long)
    wav = torch.zeros(len(batch), int(lengths.max()), dtype=torch.float32)
    for i, b in enumerate(batch):
        wav[i, : b["wav"].numel()] = b["wav"]
    return {"wav": wav, "wav_lengths": lengths, "text": [b["text"] for b in batch],
            "phonemes": [b["phonemes"] for b in batch], "speaker": [b["speaker"] for b in batch],
            "index": torch.tensor([b.get("index", -1) for b in batch], dtype=torch.long)}


__all__ = ["load_corpus", "detect_layout", "AudioDataset", "collate_audio", "COLUMNS",
           "AUDIO_EXTENSIONS"]
