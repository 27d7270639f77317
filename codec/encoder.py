"""DAC-style acoustic encoder: wav [B, T] (16 kHz) → latent [B, T / 1280, latent_dim].

Conv(7) → for each stride s: 3 residual units (Snake, dilated conv 7 with dilations 1/3/9,
Snake, conv 1) → Snake → strided conv (kernel 2s, stride s), channels doubling → Snake →
conv(3) to the latent. Weight-normalised convs. Every activation is re-masked to the valid
length of its resolution, so a zero-padded batch encodes each utterance exactly as it would
alone (the convolutions only ever see zeros beyond an utterance's end).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


class Snake(nn.Module):
    """x + sin²(αx)/α with a learned α per channel. x [B, C, T]."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.alpha
        return x + (a + 1e-9).reciprocal() * torch.sin(a * x).pow(2)


def make_activation(name: str, channels: int) -> nn.Module:
    """'snake' (DAC; periodic inductive bias) or 'elu' (EnCodec; one fused op, faster on CPU)."""
    if name == "snake":
        return Snake(channels)
    if name == "elu":
        return nn.ELU()
    raise ValueError(f"unknown encoder activation {name!r} (snake or elu)")


def _conv(cin: int, cout: int, k: int, stride: int = 1, dilation: int = 1,
          padding: int | None = None) -> nn.Module:
    """Weight-normalised conv, He-initialised (normal, fan-in, gain √2) with zero bias.

    PyTorch's default conv init (uniform, gain 1/√3) shrinks the signal by ~√3 at every
    layer while the biases do not shrink, so at initialisation this encoder's output was a
    near-constant bias vector (two random inputs gave latents 0.055 apart relative to their
    norm; 0.58 with this init):
    the acoustic path sat on a long plateau, the RVQ codebooks collapsed onto a few codes and
    the decoder learnt to ignore them (the first shipped codecs decoded equally well with 0 or
    8 acoustic quantizers). With this init the signal reaches the latent and an
    encoder–decoder without quantizers starts learning at once (docs/ARCHITECTURE.md;
    scripts/diagnose_encoder_init.py reproduces both).
    """
    if padding is None:
        padding = dilation * (k - 1) // 2
    conv = nn.Conv1d(cin, cout, k, stride=stride, dilation=dilation, padding=padding)
    nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
    nn.init.zeros_(conv.bias)
    return weight_norm(conv)


class ResidualUnit(nn.Module):
    def __init__(self, dim: int, dilation: int, act: str):
        super().__init__()
        self.act1 = make_activation(act, dim)
        self.conv1 = _conv(dim, dim, 7, dilation=dilation)
        self.act2 = make_activation(act, dim)
        self.conv2 = _conv(dim, dim, 1)

    def forward(self, x: torch.Tensor, m: torch.Tensor | None) -> torch.Tensor:
        y = self.conv1(self.act1(x))
        y = y if m is None else y * m
        y = self.conv2(self.act2(y))
        return x + (y if m is None else y * m)


class EncoderBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, act: str):
        super().__init__()
        self.res = nn.ModuleList(ResidualUnit(cin, d, act) for d in (1, 3, 9))
        self.act = make_activation(act, cin)
        self.down = _conv(cin, cout, 2 * stride, stride=stride, padding=math.ceil(stride / 2))
        self.stride = stride

    def forward(self, x: torch.Tensor, m: torch.Tensor | None) -> torch.Tensor:
        for unit in self.res:
            x = unit(x, m)
        return self.down(self.act(x))


class AcousticEncoder(nn.Module):
    """wav [B, T] with T a multiple of ``hop_size`` and num_frames [B] → latent [B, F, D]
    (zero on frames beyond each utterance's ``num_frames``)."""

    def __init__(self, dim: int, rates: tuple[int, ...], latent_dim: int, act: str = "snake"):
        super().__init__()
        self.rates = tuple(rates)
        self.hop_size = int(math.prod(rates))
        self.conv_in = _conv(1, dim, 7)
        blocks, c = [], dim
        for r in rates:
            blocks.append(EncoderBlock(c, 2 * c, r, act))
            c *= 2
        self.blocks = nn.ModuleList(blocks)
        self.act = make_activation(act, c)
        self.conv_out = _conv(c, latent_dim, 3)

    def forward(self, wav: torch.Tensor, num_frames: torch.Tensor,
                full: bool | None = None) -> torch.Tensor:
        """``full=True``: every utterance fills the batch (no masks, no host sync); None:
        decided from ``num_frames``."""
        B, T = wav.shape
        if T % self.hop_size:
            raise ValueError(f"encoder input length {T} is not a multiple of {self.hop_size}")

        # masks only matter when some utterance is shorter than the batch (skipped otherwise)
        if full is None:
            full = bool((num_frames * self.hop_size >= T).all())

        def mask_at(step: int, length: int) -> torch.Tensor | None:
            if full:
                return None
            valid = num_frames * (self.hop_size // step)
            t = torch.arange(length, device=wav.device)
            return (t[None, :] < valid[:, None]).to(wav.dtype)[:, None, :]

        step = 1
        m = mask_at(step, T)
        x = self.conv_in(wav[:, None, :] if m is None else wav[:, None, :] * m)
        x = x if m is None else x * m
        for block in self.blocks:
            x = block(x, m)
            step *= block.stride
            m = mask_at(step, x.shape[-1])
            x = x if m is None else x * m
        x = self.conv_out(self.act(x))
        return (x if m is None else x * m).transpose(1, 2)
