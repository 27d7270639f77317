"""Plot a log-mel spectrogram with FlexiCodec's merged-group boundaries drawn on it."""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from flexicodec.codec.mel import MelSpectrogram
from flexicodec.common.atomic import atomic_path
from flexicodec.common.constants import BASE_FRAME_RATE, SAMPLE_RATE


def render_groups_png(wav: np.ndarray, segments: Sequence[tuple[float, Sequence[int]]],
                      sample_rate: int = SAMPLE_RATE, frame_rate_base: float = BASE_FRAME_RATE,
                      title: str | None = None, dpi: int = 100) -> bytes:
    """PNG bytes: log-mel of ``wav`` [T] with a vertical line at each token start.

    ``segments``: ``(start_seconds, token_lengths [T'])`` per stretch of tokens (one for a
    codec encoding; one per sentence for synthesized speech, which has pauses between
    sentences); lengths are frames (1/12.5 s) per token, padding zeros are ignored."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    starts, n_tokens, n_frames = [], 0, 0
    for offset, token_lengths in segments:
        lengths = np.asarray(token_lengths).astype(np.int64)
        lengths = lengths[lengths > 0]
        starts.append(float(offset) + np.concatenate([[0], np.cumsum(lengths)[:-1]])
                      / frame_rate_base)
        n_tokens += len(lengths)
        n_frames += int(lengths.sum())
    mel = MelSpectrogram(sample_rate, 1024, 160, n_mels=80, power=2.0, log=True, eps=1e-6)
    spec = mel(torch.as_tensor(np.asarray(wav, dtype=np.float32))[None])[0].numpy()
    dur = len(wav) / sample_rate
    fig, ax = plt.subplots(figsize=(max(6.0, min(30.0, dur * 1.5)), 3.5))
    ax.imshow(spec, origin="lower", aspect="auto", extent=(0, spec.shape[1] * 160 / sample_rate,
                                                          0, spec.shape[0]), cmap="magma")
    for s in (np.concatenate(starts) if starts else []):
        ax.axvline(s, color="cyan", linewidth=0.8, alpha=0.9)
    rate = n_tokens / (n_frames / frame_rate_base) if n_frames else 0.0
    ax.set_title(title or f"{n_tokens} tokens, {rate:.2f} Hz average")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("mel bin")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


def plot_groups(wav: np.ndarray, token_lengths: np.ndarray, out_path: str | os.PathLike,
                sample_rate: int = SAMPLE_RATE, frame_rate_base: float = BASE_FRAME_RATE,
                title: str | None = None) -> Path:
    """Save a PNG: log-mel of ``wav`` [T] with a vertical line at each token start.

    ``token_lengths`` [T'] are frames (1/12.5 s) per token; padding zeros are ignored."""
    png = render_groups_png(wav, [(0.0, token_lengths)], sample_rate, frame_rate_base, title)
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        tmp.write_bytes(png)
    return out_path
