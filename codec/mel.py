"""The one mel-spectrogram implementation of the project (torch STFT + mel filterbank, no
torchaudio). Used by the ASR front end (:mod:`flexicodec.codec.asr.model`), the multi-resolution mel loss
(:mod:`flexicodec.codec.losses`) and the evaluation's mel distance (:mod:`flexicodec.codec.eval.evaluate`).

The STFT always runs in float32, even inside a bf16 autocast region.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from flexicodec.common.constants import SAMPLE_RATE


def hz_to_mel(f: torch.Tensor | float) -> torch.Tensor:
    """Slaney mel scale (linear below 1 kHz, logarithmic above), as librosa's default."""
    f = torch.as_tensor(f, dtype=torch.float64)
    f_sp = 200.0 / 3
    min_log_hz, logstep = 1000.0, math.log(6.4) / 27.0
    mel = f / f_sp
    log_region = f >= min_log_hz
    return torch.where(log_region, min_log_hz / f_sp + torch.log(f.clamp(min=1e-9) / min_log_hz)
                       / logstep, mel)


def mel_to_hz(m: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`hz_to_mel`."""
    m = torch.as_tensor(m, dtype=torch.float64)
    f_sp = 200.0 / 3
    min_log_hz, logstep = 1000.0, math.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    return torch.where(m >= min_log_mel, min_log_hz * torch.exp(logstep * (m - min_log_mel)),
                       f_sp * m)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0,
                   f_max: float | None = None) -> torch.Tensor:
    """Slaney-normalised triangular mel filters ``[n_mels, n_fft // 2 + 1]`` (float32)."""
    if n_mels < 1 or n_fft < 2:
        raise ValueError(f"invalid mel filterbank: n_mels={n_mels}, n_fft={n_fft}")
    f_max = float(sample_rate) / 2 if f_max is None else float(f_max)
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(f"invalid mel range f_min={f_min}, f_max={f_max} at {sample_rate} Hz")
    n_freqs = n_fft // 2 + 1
    fft_freqs = torch.linspace(0, sample_rate / 2, n_freqs, dtype=torch.float64)
    mel_pts = torch.linspace(float(hz_to_mel(f_min)), float(hz_to_mel(f_max)), n_mels + 2,
                             dtype=torch.float64)
    hz_pts = mel_to_hz(mel_pts)
    fdiff = hz_pts[1:] - hz_pts[:-1]                      # [n_mels + 1]
    ramps = hz_pts[:, None] - fft_freqs[None, :]          # [n_mels + 2, n_freqs]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    fb = torch.clamp(torch.minimum(lower, upper), min=0.0)
    enorm = 2.0 / (hz_pts[2:n_mels + 2] - hz_pts[:n_mels])  # slaney area normalisation
    return (fb * enorm[:, None]).float()


def stft_frames(lengths: torch.Tensor, hop_length: int, center: bool = True,
                n_fft: int | None = None) -> torch.Tensor:
    """Number of STFT frames for sample ``lengths`` [B] (long)."""
    if center:
        return torch.div(lengths, hop_length, rounding_mode="floor") + 1
    assert n_fft is not None
    return torch.div(lengths - n_fft, hop_length, rounding_mode="floor").clamp(min=0) + 1


class MelSpectrogram(nn.Module):
    """wav ``[B, T]`` → (log-)mel ``[B, n_mels, F]`` with ``F = T // hop + 1`` (center=True).

    ``power=1`` gives a magnitude mel, ``2`` a power mel. With ``log=True`` the output is
    ``log(clamp(mel, min=eps))``. ``pad_mode="constant"`` (zero edges) makes frames of a
    zero-padded batch identical to those of the utterance alone. Filterbank and window are non-persistent buffers (built in
    code, never saved in checkpoints).
    """

    def __init__(self, sample_rate: int = SAMPLE_RATE, n_fft: int = 1024, hop_length: int = 256,
                 win_length: int | None = None, n_mels: int = 80, f_min: float = 0.0,
                 f_max: float | None = None, power: float = 1.0, center: bool = True,
                 log: bool = True, eps: float = 1e-5, pad_mode: str = "reflect"):
        super().__init__()
        self.sample_rate, self.n_fft, self.hop_length = sample_rate, n_fft, hop_length
        self.win_length = win_length or n_fft
        if self.win_length > n_fft:
            raise ValueError(f"win_length {self.win_length} > n_fft {n_fft}")
        self.n_mels, self.power, self.center, self.log, self.eps = n_mels, power, center, log, eps
        self.pad_mode = pad_mode
        self.register_buffer("window", torch.hann_window(self.win_length), persistent=False)
        self.register_buffer("fb", mel_filterbank(sample_rate, n_fft, n_mels, f_min, f_max),
                             persistent=False)

    def num_frames(self, lengths: torch.Tensor) -> torch.Tensor:
        return stft_frames(lengths, self.hop_length, self.center, self.n_fft)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        if wav.dim() != 2:
            raise ValueError(f"MelSpectrogram expects wav [B, T], got shape {tuple(wav.shape)}")
        if self.center and wav.shape[-1] <= self.n_fft // 2:
            wav = nn.functional.pad(wav, (0, self.n_fft // 2 + 1 - wav.shape[-1]))
        device_type = wav.device.type if wav.device.type in ("cuda", "cpu") else "cpu"
        with torch.autocast(device_type=device_type, enabled=False):
            spec = torch.stft(wav.float(), self.n_fft, hop_length=self.hop_length,
                              win_length=self.win_length, window=self.window.float(),
                              center=self.center, pad_mode=self.pad_mode,
                              return_complex=True)
            power = torch.view_as_real(spec).pow(2).sum(-1)   # |X|^2, smooth gradient at 0
            mag = torch.sqrt(power + 1e-9) if self.power == 1.0 else power.pow(self.power / 2)
            mel = torch.matmul(self.fb.float(), mag)   # [B, n_mels, F]
            if self.log:
                mel = torch.log(torch.clamp(mel, min=self.eps))
        return mel
