"""Tokenized-corpus access for LM training: load ``flexicodec.lm.tokenize`` output, lay out examples,
length-bucketed batches (one utterance per row) and packed batches (several per row).

A tokenized directory (one frame rate; written by ``flexicodec.lm.tokenize``, also the training data of
the TTS acoustic stage)::

    TOK/rate_6.25/info.json            codec identity, FSQ size, max_group, RVQ size, counts
    TOK/rate_6.25/<split>/shard_00000  datasets.save_to_disk shards (arrow) with semantic_codes,
                                       token_lengths, acoustic_codes [n_q][T'] and phonemes

``load_tokenized("TOK")`` takes every ``rate_*`` beneath; ``load_tokenized("TOK/rate_6.25")``
one rate.
"""
from __future__ import annotations

import json
import os

import random
from pathlib import Path
from typing import Sequence

import torch

from flexicodec.lm.layout import LayoutItem, build_sequence
from flexicodec.lm.vocab import LMVocab

INFO_NAME = "info.json"


class TokenizedDataError(ValueError):
    """Missing or inconsistent tokenized data."""


def rate_dirs(paths: str | Sequence[str]) -> list[Path]:
    """Expand comma-separated / listed tokenized paths to their rate directories."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [p for p in str(paths).split(",") if p]
    out: list[Path] = []
    for p in map(Path, paths):
        if (p / INFO_NAME).is_file():
            out.append(p)
        else:
            found = sorted(d for d in [*p.glob("rate_*"), *p.glob("thr_*")]
                           if (d / INFO_NAME).is_file())
            if not found:
                raise TokenizedDataError(f"{p}: no tokenized data (no {INFO_NAME} here or in "
                                         f"rate_* subfolders); run `flexicodec-lm tokenize`")
            out.extend(found)
    return out


def read_info(paths: str | Sequence[str]) -> dict:
    """The shared codec info of several rate directories (they must match)."""
    infos = [(d, json.loads((d / INFO_NAME).read_text())) for d in rate_dirs(paths)]
    keys = ("codec_identity", "semantic_vocab_size", "max_group")
    first_dir, first = infos[0]
    for d, info in infos[1:]:
        for k in keys:
            if info.get(k) != first.get(k):
                raise TokenizedDataError(f"{d} and {first_dir} were tokenized with different "
                                         f"codecs ({k}: {info.get(k)} vs {first.get(k)})")
    # absent in data written before format 2 (RVQ) / 3 (phoneme_voice)
    extra = ("rvq_codebook_size", "num_quantizers", "phoneme_voice")
    return ({k: first.get(k) for k in keys + extra}
            | {"dirs": [str(d) for d, _ in infos]})


def load_tokenized(paths: str | Sequence[str], split: str):
    """Concatenate the ``split`` shards of every rate directory → datasets.Dataset with
    columns id, text, semantic_codes, token_lengths, speaker, duration, frame_rate, ...."""
    from datasets import concatenate_datasets, load_from_disk

    parts = []
    for d in rate_dirs(paths):
        for shard in sorted((d / split).glob("shard_*")):
            if shard.name.startswith("shard_") and (shard / "dataset_info.json").is_file():
                parts.append(load_from_disk(str(shard)))
    if not parts:
        raise TokenizedDataError(f"no '{split}' shards in {paths}")
    return concatenate_datasets(parts) if len(parts) > 1 else parts[0]


def require_phonemes(ds):
    """``ds`` if it has the ``phonemes`` column, else a TokenizedDataError saying what to do."""
    if "phonemes" not in ds.column_names:
        raise TokenizedDataError("the tokenized data has no 'phonemes' column (written before "
                                 "tokenize format 3): re-run `flexicodec-lm tokenize` into a "
                                 "new --out, or train with text_input: bpe")
    return ds


def make_items(ds, tokenizer, vocab: LMVocab, max_len: int | None = None
               ) -> tuple[list[LayoutItem], list[float]]:
    """Lay out every row: the text input is the ``phonemes`` column mapped by a
    PhonemeTokenizer, or the (already normalized) ``text`` encoded by a sentencepiece
    TextTokenizer (``tokenizer.text_input``). Rows longer than ``max_len`` positions are
    dropped (counted in the returned list's absence, logged by the caller). Returns
    (items, durations)."""
    items, durs = [], []
    phonemes = tokenizer.text_input == "phoneme"
    if phonemes:
        require_phonemes(ds)
    # only the columns the layout needs (acoustic_codes, n_q times the semantic codes, are
    # the acoustic stage's and would only slow the scan down)
    want = [c for c in ("text", "phonemes", "frame_rate", "semantic_codes", "token_lengths",
                        "duration") if c in ds.column_names]
    if hasattr(ds, "select_columns"):
        ds = ds.select_columns(want)
    for row in ds:
        pieces = (tokenizer.ids(row["phonemes"]) if phonemes
                  else tokenizer.encode(row["text"], normalize=False))
        it = build_sequence(vocab, pieces, float(row["frame_rate"]), row["semantic_codes"],
                            row["token_lengths"])
        if max_len is not None and len(it) > max_len:
            continue
        items.append(it)
        durs.append(float(row.get("duration", 0.0) or 0.0))
    return items, durs


def bucket_batches(lengths: Sequence[int], max_tokens: int, max_batch: int, seed: int,
                   epoch: int) -> list[list[int]]:
    """Length-bucketed batches: shuffle, sort within windows of 50 batches' worth, cut into
    batches of at most ``max_tokens`` padded tokens / ``max_batch`` items, shuffle batches.
    Deterministic in (seed, epoch)."""
    rng = random.Random(seed * 1000003 + epoch)
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    window = max(1, max_batch * 50)
    batches: list[list[int]] = []
    for w in range(0, len(idx), window):
        chunk = sorted(idx[w:w + window], key=lambda i: lengths[i])
        cur: list[int] = []
        cur_max = 0
        for i in chunk:
            m = max(cur_max, lengths[i])
            if cur and (m * (len(cur) + 1) > max_tokens or len(cur) >= max_batch):
                batches.append(cur)
                cur, m = [], lengths[i]
            cur.append(i)
            cur_max = m
        if cur:
            batches.append(cur)
    rng.shuffle(batches)
    return batches


def pack_batches(lengths: Sequence[int], row_length: int, rows_per_batch: int, seed: int,
                 epoch: int) -> list[list[list[int]]]:
    """Packed batches: each batch is a list of at most ``rows_per_batch`` rows, each row a
    list of item indices whose lengths sum to at most ``row_length``. Items are shuffled,
    then packed first-fit-decreasing within windows of ~32 rows' worth of positions; rows
    are shuffled and grouped (the last batch may have fewer rows). Every item is in exactly
    one row. Deterministic in (seed, epoch)."""
    if row_length < 1 or rows_per_batch < 1:
        raise ValueError(f"need row_length >= 1 and rows_per_batch >= 1, got {row_length}, "
                         f"{rows_per_batch}")
    too_long = [i for i, n in enumerate(lengths) if n > row_length]
    if too_long:
        raise ValueError(f"{len(too_long)} sequences are longer than a packed row of "
                         f"{row_length} positions (e.g. {lengths[too_long[0]]}): raise "
                         f"pack_length or lower max_len")
    rng = random.Random(seed * 1000003 + epoch)
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    rows: list[list[int]] = []
    start = 0
    while start < len(idx):
        end, total = start, 0
        while end < len(idx) and total < 32 * row_length:
            total += lengths[idx[end]]
            end += 1
        open_rows: list[list] = []          # [free positions, items]
        for i in sorted(idx[start:end], key=lambda i: -lengths[i]):
            for r in open_rows:
                if r[0] >= lengths[i]:
                    r[0] -= lengths[i]
                    r[1].append(i)
                    break
            else:
                open_rows.append([row_length - lengths[i], [i]])
        rows.extend(r[1] for r in open_rows)
        start = end
    rng.shuffle(rows)
    return [rows[k:k + rows_per_batch] for k in range(0, len(rows), rows_per_batch)]


def to_device(batch: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    """Move a collated batch; on CUDA through pinned memory, so the copy does not block."""
    device = torch.device(device)
    if device.type == "cuda":
        return {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}
    return {k: v.to(device) for k, v in batch.items()}


