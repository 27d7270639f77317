"""Timbre augmentation of training crops: every augmented crop is spoken by a new voice.

A codec trained on a few recorded people learns those people: it reconstructs a voice it
trained on far better than an unheard one (docs/CODEC_V2.md, "What limits the unseen
voice"). The corpus's derived speakers (:mod:`flexicodec.data.variants`) are a fixed set per
voice that can be learnt as well. This module draws a new timbre for each crop on the device,
continuously, so that no voice repeats and the codec has to carry the timbre through its
tokens instead of recalling it:

- **formant scale** ``a`` (log-uniform in ``formant_range``): the frame's spectral envelope
  ``E`` (cepstrally smoothed log magnitude, ``lifter`` coefficients) is moved along
  frequency, gain ``E(f / a) / E(f)``; ``a > 1`` moves the formants up (a shorter vocal
  tract); the harmonics (F0) stay where they are, as in the derived speakers;
- **smooth EQ**: a gain curve over log-frequency, the sum of ``eq_bands`` Gaussian bumps
  (centres log-uniform over 100 Hz - 7 kHz, widths 0.3-1.5 octaves, gains uniform in
  ``±eq_db``) and a tilt uniform in ``±tilt_db`` per octave around 1 kHz: microphones,
  rooms and voice qualities the corpus does not have.

The augmented crop keeps its length and its RMS level (then at most ``peak`` at its
largest sample); it is both the codec's input and its target, so every loss sees one
consistent signal. The frozen ASR's features of the clean crop stay the semantic target
(phonetic content, which neither change alters). A fraction ``prob`` of the items is
augmented; the others pass unchanged. Everything runs batched on the crops' device, in
float32, drawing from a given ``torch.Generator`` (seeded per step by the trainer: a resumed
run draws the same voices).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class TimbreAugmentConfig:
    prob: float = 0.0                       # fraction of the crops augmented (0: off)
    formant_range: tuple = (0.8, 1.25)      # spectral-envelope scale, drawn log-uniformly
    eq_db: float = 8.0                      # largest gain of one EQ bump, dB
    eq_bands: int = 3                       # Gaussian bumps of the smooth EQ
    tilt_db: float = 1.5                    # largest spectral tilt, dB per octave
    n_fft: int = 1024
    hop: int = 256
    lifter: int = 30                        # cepstral coefficients of the envelope
    peak: float = 0.99                      # largest absolute sample after augmentation

    def __post_init__(self) -> None:
        self.formant_range = tuple(float(v) for v in self.formant_range)
        lo, hi = (self.formant_range + (0.0, 0.0))[:2]
        if len(self.formant_range) != 2 or not 0.5 <= lo <= hi <= 2.0:
            raise ValueError(f"timbre_augment.formant_range must be [lo, hi] with "
                             f"0.5 <= lo <= hi <= 2, got {list(self.formant_range)}")
        if not 0.0 <= self.prob <= 1.0:
            raise ValueError(f"timbre_augment.prob must be in [0, 1], got {self.prob}")
        if self.eq_db < 0 or self.tilt_db < 0 or self.eq_bands < 0:
            raise ValueError("timbre_augment.eq_db, tilt_db and eq_bands must be >= 0")
        if not (0 < self.hop <= self.n_fft and 2 <= self.lifter < self.n_fft // 2):
            raise ValueError(f"timbre_augment: need 0 < hop <= n_fft and 2 <= lifter < "
                             f"n_fft / 2, got n_fft {self.n_fft}, hop {self.hop}, "
                             f"lifter {self.lifter}")
        if not 0.0 < self.peak <= 1.0:
            raise ValueError(f"timbre_augment.peak must be in (0, 1], got {self.peak}")


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator, device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen, device=device)


def _log_envelope(mag: torch.Tensor, lifter: int) -> torch.Tensor:
    """Cepstrally smoothed log magnitude: mag [B, F, T] → [B, F, T]."""
    logmag = torch.log(mag.clamp_min(1e-5)).transpose(1, 2)          # [B, T, F]
    cep = torch.fft.irfft(logmag, dim=-1)                             # [B, T, 2(F-1)]
    keep = torch.zeros(cep.shape[-1], device=mag.device)
    keep[:lifter] = 1.0
    keep[-(lifter - 1):] = 1.0                                        # symmetric
    return torch.fft.rfft(cep * keep, dim=-1).real.transpose(1, 2)    # [B, F, T]


def _warp_along_frequency(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x [B, F, T] sampled at bins f / scale (linear interpolation, clamped at the edges):
    the result's bin f holds x's value at f / scale[b]."""
    B, F, T = x.shape
    pos = torch.arange(F, device=x.device, dtype=x.dtype)[None, :] / scale[:, None]  # [B, F]
    pos = pos.clamp(0, F - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=F - 1)
    w = (pos - lo.to(x.dtype))[:, :, None]
    take = lambda idx: x.gather(1, idx[:, :, None].expand(B, F, T))   # noqa: E731
    return take(lo) * (1 - w) + take(hi) * w


def _eq_curve(n: int, freqs: torch.Tensor, cfg: TimbreAugmentConfig, gen: torch.Generator
              ) -> torch.Tensor:
    """Log-gain [n, F] (natural log) of one random smooth EQ per item."""
    dev = freqs.device
    octave = torch.log2(freqs.clamp_min(20.0) / 1000.0)[None, :]     # [1, F], 0 at 1 kHz
    db = _uniform(n, -cfg.tilt_db, cfg.tilt_db, gen, dev)[:, None] * octave
    for _ in range(cfg.eq_bands):
        centre = _uniform(n, math.log2(0.1), math.log2(7.0), gen, dev)[:, None]
        width = _uniform(n, 0.3, 1.5, gen, dev)[:, None]
        gain = _uniform(n, -cfg.eq_db, cfg.eq_db, gen, dev)[:, None]
        db = db + gain * torch.exp(-0.5 * ((octave - centre) / width) ** 2)
    return db * (math.log(10.0) / 20.0)


def timbre_augment(wav: torch.Tensor, cfg: TimbreAugmentConfig, gen: torch.Generator,
                   sample_rate: int) -> torch.Tensor:
    """wav [B, T] → [B, T]: a ``cfg.prob`` fraction of the items with a new timbre (module
    docstring), the rest unchanged. ``gen`` lives on wav's device."""
    if cfg.prob <= 0:
        return wav
    B, T = wav.shape
    dev = wav.device
    x = wav.float()
    chosen = torch.rand(B, generator=gen, device=dev) < cfg.prob           # [B]
    lo, hi = cfg.formant_range
    scale = torch.exp(_uniform(B, math.log(lo), math.log(hi), gen, dev))   # [B]
    window = torch.hann_window(cfg.n_fft, device=dev)
    spec = torch.stft(x, cfg.n_fft, cfg.hop, window=window, return_complex=True)  # [B, F, N]
    env = _log_envelope(spec.abs(), cfg.lifter)
    log_gain = _warp_along_frequency(env, scale) - env                   # [B, F, N]
    freqs = torch.fft.rfftfreq(cfg.n_fft, 1.0 / sample_rate).to(dev)
    log_gain = log_gain + _eq_curve(B, freqs, cfg, gen)[:, :, None]
    y = torch.istft(spec * torch.exp(log_gain.clamp(-6.0, 6.0)), cfg.n_fft, cfg.hop,
                    window=window, length=T)
    rms_in = x.square().mean(-1, keepdim=True).sqrt()
    rms_out = y.square().mean(-1, keepdim=True).sqrt().clamp_min(1e-8)
    y = y * (rms_in / rms_out)
    top = y.abs().amax(-1, keepdim=True)
    y = y * torch.where(top > cfg.peak, cfg.peak / top.clamp_min(1e-8), torch.ones_like(top))
    return torch.where(chosen[:, None], y, x).to(wav.dtype)
