"""Quantizers: FSQ for the semantic tokens, residual VQ for the acoustic residual.

FSQ (finite scalar quantization): project to ``len(levels)`` dims, bound each with tanh to
its level count, round (straight-through); the code is the mixed-radix index of the digits.
No codebook, no collapse; every code is used.

RVQ: DAC-style factorised codebooks. Each stage projects its input to a low dimension
(``codebook_dim``, e.g. 8), l2-normalises it and the codebook, picks the nearest code by
cosine, and projects back. We chose this over EMA k-means codebooks because it trains
reliably with plain gradients (high codebook usage without dead-code restarts), keeps no
EMA state to synchronise across GPUs or resume, and is what DAC trains at scale. Quantizer
dropout: in training a share of the items uses only the first ``n`` stages (n uniform in
[0, n_q]; 0 = semantic-only), so any number of quantizers decodes.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


class FSQ(nn.Module):
    """x [B, T, dim] → (quantized [B, T, dim], codes [B, T] long in [0, prod(levels)))."""

    def __init__(self, dim: int, levels: tuple[int, ...], eps: float = 1e-3):
        super().__init__()
        self.levels = tuple(int(v) for v in levels)
        self.codebook_size = int(math.prod(self.levels))
        self.eps = eps
        self.proj_in = nn.Linear(dim, len(self.levels))
        self.proj_out = nn.Linear(len(self.levels), dim)
        lv = torch.tensor(self.levels, dtype=torch.float32)
        basis = torch.cumprod(torch.tensor((1,) + self.levels[:-1], dtype=torch.long), 0)
        self.register_buffer("_levels", lv, persistent=False)
        self.register_buffer("_basis", basis, persistent=False)

    def _bound(self, z: torch.Tensor) -> torch.Tensor:
        half_l = (self._levels - 1) * (1 + self.eps) / 2
        offset = torch.where(self._levels % 2 == 0, 0.5, 0.0)
        shift = torch.atanh(offset / half_l)
        return torch.tanh(z + shift) * half_l - offset

    def quantize_digits(self, z: torch.Tensor) -> torch.Tensor:
        """z [..., n_levels] → normalised quantized values in [-1, 1] (straight-through)."""
        half_width = torch.div(self._levels, 2, rounding_mode="floor")
        return _round_ste(self._bound(z)) / half_width

    def codes_from_digits(self, zhat: torch.Tensor) -> torch.Tensor:
        half_width = torch.div(self._levels, 2, rounding_mode="floor")
        digits = torch.round(zhat * half_width + half_width).long()
        return (digits * self._basis).sum(-1)

    def digits_from_codes(self, codes: torch.Tensor) -> torch.Tensor:
        half_width = torch.div(self._levels, 2, rounding_mode="floor")
        digits = torch.div(codes.long()[..., None], self._basis, rounding_mode="floor") \
            % self._levels.long()
        return (digits.float() - half_width) / half_width

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(device_type=x.device.type, enabled=False):
            zhat = self.quantize_digits(self.proj_in(x.float()))
            codes = self.codes_from_digits(zhat)
            return self.proj_out(zhat), codes

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, T] → quantized [B, T, dim]."""
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(f"semantic codes must lie in [0, {self.codebook_size}), got "
                             f"[{int(codes.min())}, {int(codes.max())}]")
        with torch.autocast(device_type=codes.device.type, enabled=False):
            return self.proj_out(self.digits_from_codes(codes).to(self.proj_out.weight.dtype))


class FactorizedVQ(nn.Module):
    """One DAC-style stage: x [B, T, dim] → (z_q [B, T, dim], codes [B, T], commit, codebook)
    where the two losses are per-position MSEs [B, T] in the low-dim space."""

    def __init__(self, dim: int, codebook_size: int, codebook_dim: int):
        super().__init__()
        self.in_proj = nn.Linear(dim, codebook_dim)
        self.out_proj = nn.Linear(codebook_dim, dim)
        self.codebook = nn.Embedding(codebook_size, codebook_dim)

    def forward(self, x: torch.Tensor):
        z_e = self.in_proj(x).float()                                      # [B, T, d]
        codes = self.nearest(z_e)
        z_q = self.codebook(codes).float()
        commit = (z_e - z_q.detach()).pow(2).mean(-1)
        codebook = (z_q - z_e.detach()).pow(2).mean(-1)
        z_q = z_e + (z_q - z_e).detach()                                   # straight-through
        return self.out_proj(z_q.to(self.out_proj.weight.dtype)), codes, commit, codebook

    def nearest(self, z_e: torch.Tensor) -> torch.Tensor:
        e = nn.functional.normalize(z_e.float(), dim=-1)
        cb = nn.functional.normalize(self.codebook.weight.float(), dim=-1)
        return (e @ cb.t()).argmax(-1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.out_proj(self.codebook(codes).to(self.out_proj.weight.dtype))


class ResidualVQ(nn.Module):
    """Residual VQ over ``n_q`` factorised stages.

    forward(x [B, T, dim], mask [B, T] bool, num_quantizers) →
    (quantized [B, T, dim], codes [B, n, T], commit_loss, codebook_loss, residual_loss) where
    ``n`` is the number of stages used, the commitment and codebook losses are means over
    valid positions and used stages, and ``residual_loss`` is the mean squared residual the
    used stages leave in the full ``dim``-dimensional space, ``|x - quantized|^2`` per
    dimension over valid positions (the factorised stages' own losses live in their
    low-dimensional projections only).
    """

    def __init__(self, dim: int, n_q: int, codebook_size: int, codebook_dim: int,
                 dropout: float = 0.5):
        super().__init__()
        self.n_q = n_q
        self.codebook_size = codebook_size
        self.dropout = dropout
        self.stages = nn.ModuleList(FactorizedVQ(dim, codebook_size, codebook_dim)
                                    for _ in range(n_q))

    def forward(self, x: torch.Tensor, mask: torch.Tensor, num_quantizers: int | None = None):
        B, T, _ = x.shape
        n = self.n_q if num_quantizers is None else int(num_quantizers)
        if not 0 <= n <= self.n_q:
            raise ValueError(f"num_quantizers must be in [0, {self.n_q}], got {n}")
        keep_n = torch.full((B,), n, device=x.device)
        if self.training and self.dropout > 0 and num_quantizers is None:
            drop = torch.rand(B, device=x.device) < self.dropout
            keep_n = torch.where(drop, torch.randint(0, n + 1, (B,), device=x.device), keep_n)
        out = torch.zeros_like(x)
        residual = x
        codes = []
        commit = x.new_zeros((), dtype=torch.float32)
        codebook = x.new_zeros((), dtype=torch.float32)
        m = mask.float()
        count = x.new_zeros((), dtype=torch.float32)
        for i in range(n):
            z_q, c, l_commit, l_cb = self.stages[i](residual)
            use = (keep_n > i).float()[:, None] * m                        # [B, T]
            out = out + z_q * use[..., None].to(z_q.dtype)
            residual = residual - z_q
            codes.append(c)
            commit = commit + (l_commit * use).sum()
            codebook = codebook + (l_cb * use).sum()
            count = count + use.sum()
        count = count.clamp(min=1.0)
        codes_t = torch.stack(codes, 1) if codes else torch.zeros(B, 0, T, dtype=torch.long,
                                                                   device=x.device)
        left = (x.float() - out.float()).pow(2).mean(-1)                      # [B, T]
        residual = (left * m).sum() / m.sum().clamp(min=1.0)
        return out, codes_t, commit / count, codebook / count, residual

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, n, T] (n <= n_q, may be 0) → quantized sum [B, T, dim] (dim from stage 0)."""
        B, n, T = codes.shape
        if n > self.n_q:
            raise ValueError(f"{n} acoustic quantizers given, this codec has {self.n_q}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(f"acoustic codes must lie in [0, {self.codebook_size}), got "
                             f"[{int(codes.min())}, {int(codes.max())}]")
        dim = self.stages[0].out_proj.out_features
        out = torch.zeros(B, T, dim, device=codes.device,
                          dtype=self.stages[0].out_proj.weight.dtype)
        for i in range(n):
            out = out + self.stages[i].decode(codes[:, i])
        return out
