"""Where does the reconstruction error go? Per-frame mel error binned by merge-group length.

A dynamic codec spends the same bits (one FSQ index + n_q RVQ indices) on a token whatever
its length, so a token that stands for 8 frames has 1/8 of the acoustic bits per frame that
a 1-frame token has; a fixed-rate codec spends the same on every 2 frames. These helpers
measure whether that shows: the log-mel error of each 12.5 Hz frame (its four 20 ms mel
frames), the length of the group each frame belongs to, and, per group length, how much
worse one decode is than another on the *same frames* (e.g. the model's own groups vs the
same weights merged every 2 frames), with an utterance-level bootstrap interval.

Used by ``scripts/diagnose_group_error.py``.
"""
from __future__ import annotations

import numpy as np

from flexicodec.common.constants import HOP_SIZE

MEL_HOP = 320       # four mel frames per codec frame


def frame_mel_errors(ref: np.ndarray, deg: np.ndarray, frames: int) -> np.ndarray:
    """Mean absolute log-mel difference (80 mels, 1024-point STFT, hop 320, codec.mel) of
    each 12.5 Hz frame. ref, deg [N] at 16 kHz (deg is cut or zero-padded to N) → [frames];
    mel frame j (centred at sample 320 j) belongs to codec frame j // 4."""
    from flexicodec.codec.eval.evaluate import _pad_to, log_mel_abs_diff

    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    per_mel = log_mel_abs_diff(ref, _pad_to(deg, len(ref)), MEL_HOP).mean(0).numpy()
    owner = np.minimum(np.arange(len(per_mel)) // (HOP_SIZE // MEL_HOP), frames - 1)
    sums = np.bincount(owner, weights=per_mel, minlength=frames)
    counts = np.bincount(owner, minlength=frames)
    return sums / np.maximum(counts, 1)


def frame_group_lengths(token_lengths) -> np.ndarray:
    """token_lengths [T'] (trailing zeros allowed) → [F]: the length of each frame's group."""
    lens = np.asarray(token_lengths, dtype=np.int64).reshape(-1)
    lens = lens[lens > 0]
    return np.repeat(lens, lens)


def error_by_length(lengths: list[np.ndarray], errors: dict[str, list[np.ndarray]],
                    ref: str, against: list[str], max_group: int, n_boot: int = 2000,
                    seed: int = 0) -> list[dict]:
    """Per group length L = 1..max_group (of ``lengths``, one [F] array per utterance):
    frames, their share, each decode's mean per-frame error on those frames, and for every
    name in ``against`` the mean of (errors[ref] - errors[name]) there with a 95 % bootstrap
    interval over utterances (frames of one utterance are resampled together).
    ``errors[name]``: one [F] array per utterance, aligned with ``lengths``."""
    names = [ref] + [a for a in against if a != ref]
    for name in names:
        if len(errors[name]) != len(lengths) or any(
                len(e) != len(l) for e, l in zip(errors[name], lengths)):
            raise ValueError(f"errors[{name!r}] is not aligned with the group lengths")
    total = sum(len(l) for l in lengths)
    rng = np.random.default_rng(seed)
    rows = []
    for L in range(1, max_group + 1):
        masks = [l == L for l in lengths]
        count = np.array([m.sum() for m in masks], dtype=np.float64)
        if count.sum() == 0:
            continue
        row = {"length": L, "frames": int(count.sum()), "share": float(count.sum() / total)}
        sums = {n: np.array([e[m].sum() for e, m in zip(errors[n], masks)]) for n in names}
        for n in names:
            row[f"error_{n}"] = float(sums[n].sum() / count.sum())
        idx = rng.integers(0, len(lengths), size=(n_boot, len(lengths)))
        for n in against:
            if n == ref:
                continue
            diff = sums[ref] - sums[n]
            c = count[idx].sum(1)
            boot = diff[idx].sum(1)[c > 0] / c[c > 0]
            row[f"diff_vs_{n}"] = float(diff.sum() / count.sum())
            row[f"diff_vs_{n}_ci"] = [float(np.percentile(boot, 2.5)),
                                      float(np.percentile(boot, 97.5))]
        rows.append(row)
    return rows
