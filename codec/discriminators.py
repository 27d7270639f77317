"""GAN discriminators for codec training (HiFi-GAN / Vocos / DAC style).

- :class:`MultiPeriodDiscriminator` (MPD): the waveform reshaped to ``[B, 1, T/p, p]`` for each
  period ``p`` in (2, 3, 5, 7, 11), 2-d convs along time. Its ``(k, 1)`` kernels never mix the
  ``p`` columns, so ``mpd_layout="1d"`` runs the same weights as 1-d convs over
  ``[B * p, C, T/p]`` (the period folded into the batch): equal outputs, permuted to
  ``[B, p, C, T']``, and equal losses; only the kernels the GPU runs differ.
- :class:`MultiResolutionDiscriminator` (MRD): magnitude spectrograms at several STFT
  resolutions, 2-d convs over (time, frequency).
- :class:`CodecDiscriminator`: both together; ``forward(wav [B, T]) -> (logits, fmaps)`` with
  ``logits`` a list of ``[B, ...]`` score maps (one per sub-discriminator) and ``fmaps`` a list
  (per sub-discriminator) of lists of intermediate activations for feature matching.

STFTs run in float32 even under bf16 autocast; the convolutions follow autocast.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


@dataclass
class DiscriminatorConfig:
    periods: tuple = (2, 3, 5, 7, 11)
    mpd_channels: tuple = (32, 128, 512, 1024, 1024)
    #: (n_fft, hop_length, win_length) per MRD resolution
    mrd_resolutions: tuple = ((512, 128, 512), (1024, 256, 1024), (2048, 512, 2048))
    mrd_channels: int = 32
    #: "2d" (HiFi-GAN's ``[B, 1, T/p, p]`` 2-d convs) or "1d" (the period in the batch)
    mpd_layout: str = "2d"
    use_mpd: bool = True
    use_mrd: bool = True

    @classmethod
    def tiny(cls) -> "DiscriminatorConfig":
        return cls(periods=(2, 3), mpd_channels=(8, 16), mrd_resolutions=((256, 64, 256),),
                   mrd_channels=8)


def _lrelu(x: torch.Tensor) -> torch.Tensor:
    return nn.functional.leaky_relu(x, 0.1)


def pad_to_period(wav: torch.Tensor, period: int) -> torch.Tensor:
    """``wav [B, T]`` padded at the end to a multiple of ``period`` samples (reflected, or
    zeros when the pad is not shorter than the signal)."""
    T = wav.shape[-1]
    pad = (-T) % period
    if pad:
        wav = nn.functional.pad(wav, (0, pad), mode="reflect" if pad < T else "constant")
    return wav


MPD_LAYOUTS = ("2d", "1d")
#: DiscriminatorConfig fields that change how the same weights run, not the weights
LAYOUT_FIELDS = ("mpd_layout",)


def same_weights(a: dict, b: dict) -> bool:
    """Whether two saved DiscriminatorConfig dicts describe the same parameters (they may
    differ in :data:`LAYOUT_FIELDS`, or one may predate them)."""
    return ({k: v for k, v in a.items() if k not in LAYOUT_FIELDS}
            == {k: v for k, v in b.items() if k not in LAYOUT_FIELDS})


class PeriodDiscriminator(nn.Module):
    """One MPD branch: ``wav [B, T] -> (logits, fmaps)``; ``layout="2d"``: logits
    ``[B, 1, T', p]``, fmaps ``[B, C, T', p]``; ``"1d"``: logits ``[B, p, 1, T']``, fmaps
    ``[B, p, C, T']`` (same values, same parameters)."""

    def __init__(self, period: int, channels: tuple, layout: str = "2d"):
        super().__init__()
        if layout not in MPD_LAYOUTS:
            raise ValueError(f"mpd_layout must be one of {MPD_LAYOUTS}, got {layout!r}")
        self.period, self.layout = period, layout
        chans = [1, *channels]
        self.convs = nn.ModuleList(
            weight_norm(nn.Conv2d(chans[i], chans[i + 1], (5, 1),
                                  (3 if i < len(channels) - 1 else 1, 1), padding=(2, 0)))
            for i in range(len(channels)))
        self.post = weight_norm(nn.Conv2d(chans[-1], 1, (3, 1), 1, padding=(1, 0)))

    def forward(self, wav: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if self.layout == "1d":
            return self._forward_1d(wav)
        x = pad_to_period(wav, self.period).view(wav.shape[0], 1, -1, self.period)
        fmaps = []
        for conv in self.convs:
            x = _lrelu(conv(x))
            fmaps.append(x)
        x = self.post(x)
        fmaps.append(x)
        return x, fmaps

    def _forward_1d(self, wav: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        B, p = wav.shape[0], self.period
        x = pad_to_period(wav, p).view(B, -1, p).transpose(1, 2).reshape(B * p, 1, -1)
        fmaps = []
        for conv in [*self.convs, self.post]:
            x = nn.functional.conv1d(x, conv.weight.squeeze(-1), conv.bias, conv.stride[0],
                                     conv.padding[0])
            if conv is not self.post:
                x = _lrelu(x)
            fmaps.append(x.view(B, p, *x.shape[1:]))
        return fmaps[-1], fmaps


class MultiPeriodDiscriminator(nn.Module):
    def __init__(self, periods: tuple = (2, 3, 5, 7, 11),
                 channels: tuple = (32, 128, 512, 1024, 1024), layout: str = "2d"):
        super().__init__()
        self.discs = nn.ModuleList(PeriodDiscriminator(p, tuple(channels), layout)
                                   for p in periods)

    def forward(self, wav: torch.Tensor):
        out = [d(wav) for d in self.discs]
        return [o[0] for o in out], [o[1] for o in out]


class ResolutionDiscriminator(nn.Module):
    """One MRD branch on a magnitude spectrogram ``[B, 1, frames, freq]``."""

    def __init__(self, n_fft: int, hop_length: int, win_length: int, channels: int = 32):
        super().__init__()
        self.n_fft, self.hop, self.win = n_fft, hop_length, win_length
        self.register_buffer("window", torch.hann_window(win_length), persistent=False)
        c = channels
        self.convs = nn.ModuleList([
            weight_norm(nn.Conv2d(1, c, (3, 9), padding=(1, 4))),
            weight_norm(nn.Conv2d(c, c, (3, 9), stride=(1, 2), padding=(1, 4))),
            weight_norm(nn.Conv2d(c, c, (3, 9), stride=(1, 2), padding=(1, 4))),
            weight_norm(nn.Conv2d(c, c, (3, 9), stride=(1, 2), padding=(1, 4))),
            weight_norm(nn.Conv2d(c, c, (3, 3), padding=(1, 1))),
        ])
        self.post = weight_norm(nn.Conv2d(c, 1, (3, 3), padding=(1, 1)))

    def spectrogram(self, wav: torch.Tensor) -> torch.Tensor:
        """wav ``[B, T]`` → magnitude ``[B, 1, frames, n_fft/2+1]`` (fp32)."""
        device_type = wav.device.type if wav.device.type in ("cuda", "cpu") else "cpu"
        with torch.autocast(device_type=device_type, enabled=False):
            spec = torch.stft(wav.float(), self.n_fft, self.hop, self.win,
                              window=self.window.float(), center=True, return_complex=True)
            mag = torch.sqrt(torch.view_as_real(spec).pow(2).sum(-1) + 1e-9)
        return mag.transpose(1, 2).unsqueeze(1)

    def forward(self, wav: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.spectrogram(wav)
        fmaps = []
        for conv in self.convs:
            x = _lrelu(conv(x))
            fmaps.append(x)
        x = self.post(x)
        fmaps.append(x)
        return x, fmaps


class MultiResolutionDiscriminator(nn.Module):
    def __init__(self, resolutions: tuple = ((512, 128, 512), (1024, 256, 1024),
                                             (2048, 512, 2048)), channels: int = 32):
        super().__init__()
        self.discs = nn.ModuleList(ResolutionDiscriminator(*r, channels=channels)
                                   for r in resolutions)

    def forward(self, wav: torch.Tensor):
        out = [d(wav) for d in self.discs]
        return [o[0] for o in out], [o[1] for o in out]


class CodecDiscriminator(nn.Module):
    """MPD + MRD; ``forward(wav [B, T]) -> (logits list, fmaps list of lists)``."""

    def __init__(self, config: DiscriminatorConfig | None = None):
        super().__init__()
        self.config = c = config or DiscriminatorConfig()
        if not (c.use_mpd or c.use_mrd):
            raise ValueError("DiscriminatorConfig: enable at least one of use_mpd / use_mrd")
        self.mpd = MultiPeriodDiscriminator(tuple(c.periods), tuple(c.mpd_channels),
                                            c.mpd_layout) if c.use_mpd else None
        self.mrd = MultiResolutionDiscriminator(tuple(tuple(r) for r in c.mrd_resolutions),
                                                c.mrd_channels) if c.use_mrd else None

    def forward(self, wav: torch.Tensor):
        if wav.dim() == 3 and wav.shape[1] == 1:
            wav = wav[:, 0]
        if wav.dim() != 2:
            raise ValueError(f"discriminator expects wav [B, T], got {tuple(wav.shape)}")
        logits, fmaps = [], []
        for d in (self.mpd, self.mrd):
            if d is not None:
                lg, fm = d(wav)
                logits += lg
                fmaps += fm
        return logits, fmaps
