"""Plot a log-mel spectrogram with FlexiCodec's merged-group boundaries drawn on it."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from codec.mel import MelSpectrogram
from codec.pretrained import atomic_path


def plot_groups(wav: np.ndarray, token_lengths: np.ndarray, out_path: str | os.PathLike,
                sample_rate: int = 16000, frame_rate_base: float = 12.5,
                title: str | None = None) -> Path:
    """Save a PNG: log-mel of ``wav`` [T] with a vertical line at each token start.

    ``token_lengths`` [T'] are frames (1/12.5 s) per token; padding zeros are ignored."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = np.asarray(token_lengths).astype(np.int64)
    lengths = lengths[lengths > 0]
    mel = MelSpectrogram(sample_rate, 1024, 160, n_mels=80, power=2.0, log=True, eps=1e-6)
    spec = mel(torch.as_tensor(np.asarray(wav, dtype=np.float32))[None])[0].numpy()
    dur = len(wav) / sample_rate
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]) / frame_rate_base
    fig, ax = plt.subplots(figsize=(max(6.0, min(30.0, dur * 1.5)), 3.5))
    ax.imshow(spec, origin="lower", aspect="auto", extent=(0, spec.shape[1] * 160 / sample_rate,
                                                          0, spec.shape[0]), cmap="magma")
    for s in starts:
        ax.axvline(s, color="cyan", linewidth=0.8, alpha=0.9)
    rate = len(lengths) / (lengths.sum() / frame_rate_base) if len(lengths) else 0.0
    ax.set_title(title or f"{len(lengths)} tokens, {rate:.2f} Hz average")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("mel bin")
    fig.tight_layout()
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return out_path
