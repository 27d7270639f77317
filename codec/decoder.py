"""Vocos-style decoder: 12.5 Hz latent [B, F, D] → 16 kHz audio [B, F * 1280].

ConvTranspose (×4, 12.5 → 50 Hz) → Vocos backbone (ConvNeXt; parameter names as in Vocos:
``backbone.embed``, ``backbone.norm``, ``backbone.convnext.{i}.dwconv/norm/pwconv1/pwconv2/
gamma``, ``backbone.final_layer_norm``) → iSTFT head (``head.out`` linear to log-magnitude +
phase, ``head.istft`` with a registered window; "same" padding via explicit overlap-add, as
Vocos does) with hop 320 and n_fft 1280. Output length is exactly frames × 1280.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from flexicodec.codec.bottleneck import ConvNeXtBlock


class ISTFT(nn.Module):
    """Inverse STFT with "same" padding: spec [B, n_fft/2+1, L] complex → audio [B, L * hop]."""

    def __init__(self, n_fft: int, hop_length: int, win_length: int | None = None):
        super().__init__()
        self.n_fft, self.hop_length = n_fft, hop_length
        self.win_length = win_length or n_fft
        self.register_buffer("window", torch.hann_window(self.win_length))

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        pad = (self.win_length - self.hop_length) // 2
        B, N, L = spec.shape
        ifft = torch.fft.irfft(spec, self.n_fft, dim=1, norm="backward")
        ifft = ifft[:, : self.win_length] * self.window[None, :, None]
        out_size = (L - 1) * self.hop_length + self.win_length
        y = F.fold(ifft, output_size=(1, out_size), kernel_size=(1, self.win_length),
                   stride=(1, self.hop_length))[:, 0, 0, pad:out_size - pad]
        env = self.window.square().expand(1, L, -1).transpose(1, 2)
        env = F.fold(env, output_size=(1, out_size), kernel_size=(1, self.win_length),
                     stride=(1, self.hop_length)).squeeze()[pad:out_size - pad]
        return y / env.clamp(min=1e-11)


class ISTFTHead(nn.Module):
    def __init__(self, dim: int, n_fft: int, hop_length: int):
        super().__init__()
        self.out = nn.Linear(dim, n_fft + 2)
        self.istft = ISTFT(n_fft, hop_length)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, L, dim] → audio [B, L * hop] (float32, computed outside autocast)."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            h = self.out(x.float()).transpose(1, 2)
            mag, p = h.chunk(2, dim=1)
            mag = torch.exp(mag).clamp(max=1e2)
            spec = torch.complex(mag * torch.cos(p), mag * torch.sin(p))
            return self.istft(spec)


class VocosBackbone(nn.Module):
    def __init__(self, input_channels: int, dim: int, intermediate_dim: int, num_layers: int):
        super().__init__()
        self.embed = nn.Conv1d(input_channels, dim, kernel_size=7, padding=3)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.convnext = nn.ModuleList(
            ConvNeXtBlock(dim, intermediate_dim, 1.0 / max(num_layers, 1))
            for _ in range(num_layers))
        self.final_layer_norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, L] → [B, L, dim]."""
        x = self.norm(self.embed(x).transpose(1, 2)).transpose(1, 2)
        for block in self.convnext:
            x = block(x)
        return self.final_layer_norm(x.transpose(1, 2))


class VocosDecoder(nn.Module):
    """latent [B, F, latent_dim] → audio [B, F * upsample * hop_length]."""

    def __init__(self, latent_dim: int, dim: int, intermediate_dim: int, num_layers: int,
                 upsample: int, n_fft: int, hop_length: int):
        super().__init__()
        self.upsample = nn.ConvTranspose1d(latent_dim, dim, kernel_size=2 * upsample,
                                           stride=upsample, padding=upsample // 2)
        self.backbone = VocosBackbone(dim, dim, intermediate_dim, num_layers)
        self.head = ISTFTHead(dim, n_fft, hop_length)
        self.factor = upsample

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        F_ = latent.shape[1]
        x = self.upsample(latent.transpose(1, 2))
        x = x[..., : F_ * self.factor]
        return self.head(self.backbone(x))
