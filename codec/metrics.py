"""Offline speech metrics used by :mod:`codec.evaluate` (torch-free, so they run cheaply in
worker processes): pocketsphinx transcription, WER/CER (jiwer), PESQ wide-band, STOI, and a
process pool helper.

pocketsphinx ships its en-US model; a fresh ``Decoder`` is made per utterance so speaker
adaptation never carries over between files (see EVAL-NOTES.md).
"""
from __future__ import annotations

import multiprocessing as mp
import os
import re
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Iterable, Sequence

import numpy as np

SAMPLE_RATE = 16000


def normalize_words(text: str) -> str:
    """Lower-case, drop punctuation except apostrophes, collapse spaces (for WER/CER)."""
    text = re.sub(r"[^a-z0-9' ]+", " ", text.lower())
    return " ".join(text.split())


def transcribe_pocketsphinx(audio: np.ndarray) -> str:
    """16 kHz mono float audio ``[T]`` → lower-case words (fresh Decoder per call)."""
    from pocketsphinx import Decoder

    pcm = (np.clip(np.asarray(audio, dtype=np.float32), -1, 1) * 32767).astype(np.int16)
    dec = Decoder(samprate=SAMPLE_RATE, loglevel="FATAL")
    dec.start_utt()
    dec.process_raw(pcm.tobytes(), full_utt=True)
    dec.end_utt()
    hyp = dec.hyp()
    return normalize_words(hyp.hypstr if hyp is not None else "")


def error_counts(ref: str, hyp: str) -> dict:
    """Word and character edit counts of ``hyp`` against ``ref`` (after normalisation):
    ``{"word_errors", "words", "char_errors", "chars"}`` (so rates aggregate over a corpus)."""
    import jiwer

    ref, hyp = normalize_words(ref), normalize_words(hyp)
    if not ref:
        raise ValueError("empty reference text: cannot score WER")
    w = jiwer.process_words(ref, hyp if hyp else "")
    c = jiwer.process_characters(ref, hyp if hyp else "")
    return {"word_errors": w.substitutions + w.deletions + w.insertions,
            "words": w.substitutions + w.deletions + w.hits,
            "char_errors": c.substitutions + c.deletions + c.insertions,
            "chars": c.substitutions + c.deletions + c.hits}


def pesq_wb(ref: np.ndarray, deg: np.ndarray) -> float:
    """PESQ wide-band (16 kHz) of ``deg`` against ``ref`` (cropped to equal length); NaN when
    PESQ cannot score the pair (e.g. no speech detected), never a made-up value."""
    from pesq import pesq

    n = min(len(ref), len(deg))
    try:
        return float(pesq(SAMPLE_RATE, ref[:n].astype(np.float32), deg[:n].astype(np.float32),
                          "wb"))
    except Exception:   # pesq raises NoUtterancesError etc. for silent / too-short input
        return float("nan")


def stoi(ref: np.ndarray, deg: np.ndarray) -> float:
    """STOI (0..1) of ``deg`` against ``ref`` at 16 kHz (cropped to equal length)."""
    from pystoi import stoi as _stoi

    n = min(len(ref), len(deg))
    return float(_stoi(ref[:n].astype(np.float64), deg[:n].astype(np.float64), SAMPLE_RATE,
                       extended=False))


def quality_pair(args: tuple[np.ndarray, np.ndarray]) -> dict:
    """(ref, deg) → {"pesq", "stoi"}."""
    ref, deg = args
    return {"pesq": pesq_wb(ref, deg), "stoi": stoi(ref, deg)}


def parallel_map(fn: Callable, items: Sequence, workers: int | None = None,
                 desc: str = "", progress: bool = True) -> list:
    """``[fn(x) for x in items]`` over a spawn process pool (order kept, tqdm progress).

    ``workers=None`` uses all CPU cores; 1 (or a single item) runs in-process.
    """
    from tqdm.auto import tqdm

    items = list(items)
    workers = min(len(items), workers or os.cpu_count() or 1)
    if workers <= 1:
        return [fn(x) for x in tqdm(items, desc=desc, disable=not progress, leave=False)]
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as ex:
        return list(tqdm(ex.map(fn, items, chunksize=1), total=len(items), desc=desc,
                         disable=not progress, leave=False))


def aggregate_errors(counts: Iterable[dict]) -> dict:
    """Corpus-level WER and CER from :func:`error_counts` dicts."""
    counts = list(counts)
    we = sum(c["word_errors"] for c in counts)
    w = sum(c["words"] for c in counts)
    ce = sum(c["char_errors"] for c in counts)
    ch = sum(c["chars"] for c in counts)
    return {"wer": we / max(1, w), "cer": ce / max(1, ch)}
