"""Does a grouping of 12.5 Hz frames follow the speech content? (token allocation analysis)

FlexiCodec's claim rests on one mechanism: merging frames whose semantic features are similar
should spend tokens where the phonetic content is, so that at the same average rate fewer
phonemes have to share a token than with fixed-rate merging. This module measures that
directly, without training anything: the phonemes' positions come from a CTC recognizer's
greedy path on the *original* audio (the onset frame of each emitted phoneme, mapped to the
12.5 Hz grid), and each token's *load* is the number of phoneme onsets among its frames.

    loads = token_loads(group_index, onsets, num_tokens)      # per-token phoneme counts
    stats = allocation_stats([loads, ...])                    # pooled over utterances

A grouping that follows the content has few empty tokens (none spent on silence or on the
middle of a long vowel while neighbours are crowded) and few phonemes in crowded tokens.
``scripts/diagnose_merging.py`` compares the codec's similarity-based merging (for each
layer of the frozen ASR as the similarity source) with fixed-rate merging at the same rate.
"""
from __future__ import annotations

import numpy as np
import torch

from flexicodec.common.constants import BASE_FRAME_RATE

#: a token holding at least this many phoneme onsets counts as crowded
CROWDED = 3


def ctc_onsets(best: list[int], blank: int = 0, skip: tuple[int, ...] = ()) -> list[int]:
    """Indices of the frames where a greedy CTC path emits a symbol: the first frame of each
    run of one non-blank id (repeats separated by a blank are two emissions). ``skip``: ids
    not counted (e.g. the word separator)."""
    out, prev = [], blank
    for i, s in enumerate(best):
        if s != prev and s != blank and s not in skip:
            out.append(i)
        prev = s
    return out


def onsets_to_frames(onsets: list[int], feature_rate: float,
                     frame_rate: float = BASE_FRAME_RATE) -> np.ndarray:
    """Feature-frame indices at ``feature_rate`` Hz → 12.5 Hz frame indices (the frame whose
    span holds the feature frame's centre)."""
    idx = np.asarray(onsets, dtype=np.float64)
    return np.floor((idx + 0.5) * frame_rate / feature_rate).astype(np.int64)


def token_loads(group_index: np.ndarray | torch.Tensor, onset_frames: np.ndarray,
                num_tokens: int) -> np.ndarray:
    """Phoneme onsets per token. group_index [F] (token of each valid frame), onset_frames
    [P] (12.5 Hz frame of each onset; frames past the end are clipped to the last frame)
    → loads [num_tokens] summing to P."""
    gid = np.asarray(group_index.cpu() if isinstance(group_index, torch.Tensor)
                     else group_index, dtype=np.int64)
    if gid.size == 0:
        raise ValueError("no frames")
    frames = np.clip(np.asarray(onset_frames, dtype=np.int64), 0, gid.size - 1)
    return np.bincount(gid[frames], minlength=num_tokens)[:num_tokens]


def allocation_stats(loads: list[np.ndarray], crowded: int = CROWDED) -> dict:
    """Pooled statistics of per-utterance token loads.

    tokens, phonemes, phonemes_per_token; empty_token_share (tokens with no onset);
    crowded_phoneme_share (share of phonemes in tokens with >= ``crowded`` onsets);
    load_std (std of the per-token load: 0 for a perfectly even allocation);
    histogram: share of tokens with 0, 1, 2, 3, 4+ onsets."""
    x = np.concatenate([np.asarray(v, dtype=np.int64) for v in loads]) if loads else \
        np.zeros(0, dtype=np.int64)
    if x.size == 0:
        raise ValueError("allocation_stats needs at least one token")
    n_ph = int(x.sum())
    hist = np.bincount(np.minimum(x, 4), minlength=5) / x.size
    return {
        "tokens": int(x.size),
        "phonemes": n_ph,
        "phonemes_per_token": n_ph / x.size,
        "empty_token_share": float((x == 0).mean()),
        "crowded_phoneme_share": float(x[x >= crowded].sum() / max(1, n_ph)),
        "load_std": float(x.std()),
        "histogram": {k: float(v) for k, v in zip(("0", "1", "2", "3", "4+"), hist)},
    }
