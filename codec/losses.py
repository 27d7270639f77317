"""Codec training losses: multi-resolution mel L1, GAN losses (hinge or least squares) and
feature matching. The mel transform is :class:`flexicodec.codec.mel.MelSpectrogram` (fp32 STFT).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from flexicodec.codec.mel import MelSpectrogram
from flexicodec.common.constants import SAMPLE_RATE


@dataclass
class MelLossConfig:
    n_ffts: tuple = (256, 512, 1024, 2048)
    hops: tuple = (64, 128, 256, 512)
    n_mels: tuple = (20, 40, 80, 160)
    sample_rate: int = SAMPLE_RATE


class MultiResolutionMelLoss(nn.Module):
    """Mean over resolutions of L1 between log-mel spectrograms of ``pred`` and ``target``
    (both ``[B, T]``; ``pred`` is cropped/padded to ``target``'s length)."""

    def __init__(self, config: MelLossConfig | None = None):
        super().__init__()
        c = config or MelLossConfig()
        if not (len(c.n_ffts) == len(c.hops) == len(c.n_mels)) or not c.n_ffts:
            raise ValueError(f"MelLossConfig lists must be non-empty and of equal length: {c}")
        self.mels = nn.ModuleList(
            MelSpectrogram(c.sample_rate, n_fft, hop, n_mels=m, power=1.0, log=True, eps=1e-5)
            for n_fft, hop, m in zip(c.n_ffts, c.hops, c.n_mels))

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pred = match_length(pred, target.shape[-1])
        loss = 0.0
        for mel in self.mels:
            loss = loss + (mel(pred) - mel(target)).abs().mean()
        return loss / len(self.mels)


def match_length(x: torch.Tensor, length: int) -> torch.Tensor:
    """Crop or zero-pad the last dim of ``x`` to ``length``."""
    if x.shape[-1] > length:
        return x[..., :length]
    if x.shape[-1] < length:
        return nn.functional.pad(x, (0, length - x.shape[-1]))
    return x


def _check_kind(kind: str) -> None:
    if kind not in ("hinge", "lsgan"):
        raise ValueError(f"GAN loss kind must be 'hinge' or 'lsgan', got {kind!r}")


def discriminator_loss(real_logits: list[torch.Tensor], fake_logits: list[torch.Tensor],
                       kind: str = "hinge") -> torch.Tensor:
    """Discriminator loss summed over sub-discriminators (each averaged over its map)."""
    _check_kind(kind)
    loss = 0.0
    for r, f in zip(real_logits, fake_logits, strict=True):
        r, f = r.float(), f.float()
        if kind == "hinge":
            loss = loss + torch.relu(1 - r).mean() + torch.relu(1 + f).mean()
        else:
            loss = loss + (r - 1).pow(2).mean() + f.pow(2).mean()
    return loss / len(real_logits)


def generator_adv_loss(fake_logits: list[torch.Tensor], kind: str = "hinge") -> torch.Tensor:
    """Generator adversarial loss, averaged over sub-discriminators."""
    _check_kind(kind)
    loss = 0.0
    for f in fake_logits:
        f = f.float()
        loss = loss + (torch.relu(1 - f).mean() if kind == "hinge" else (f - 1).pow(2).mean())
    return loss / len(fake_logits)


def feature_matching_loss(real_fmaps: list[list[torch.Tensor]],
                          fake_fmaps: list[list[torch.Tensor]]) -> torch.Tensor:
    """Mean L1 between real (detached) and fake activations, relative to the real scale
    (EnCodec-style normalisation; averaged over all layers of all sub-discriminators)."""
    loss, n = 0.0, 0
    for rs, fs in zip(real_fmaps, fake_fmaps, strict=True):
        for r, f in zip(rs, fs, strict=True):
            r = r.detach().float()
            loss = loss + (r - f.float()).abs().mean() / (r.abs().mean() + 1e-5)
            n += 1
    return loss / max(1, n)
