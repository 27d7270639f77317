"""Sequence blocks around the quantizers: a local-attention transformer (RoPE, layer scale,
padding masks) and masked ConvNeXt stacks.

All blocks take ``x [B, T, D]`` and ``mask [B, T]`` (True = valid) and keep padding at zero,
so a zero-padded batch gives the same valid outputs as each utterance alone.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def rope_tables(T: int, head_dim: int, device, base: float = 10000.0
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin tables [T, head_dim / 2] (float32)."""
    inv = 1.0 / base ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32)
                         / head_dim)
    ang = torch.arange(T, device=device, dtype=torch.float32)[:, None] * inv[None, :]
    return ang.cos(), ang.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, T, hd] rotated pairwise (half-split layout)."""
    x1, x2 = x.float().chunk(2, dim=-1)
    out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.to(x.dtype)


class LocalAttention(nn.Module):
    def __init__(self, dim: int, heads: int, window: int):
        super().__init__()
        self.heads, self.window = heads, window
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor, rope) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.out(y.transpose(1, 2).reshape(B, T, D))


class TransformerLayer(nn.Module):
    """Pre-norm block: x + γ1·Attn(LN x); x + γ2·MLP(LN x) with layer-scale vectors γ."""

    def __init__(self, dim: int, heads: int, window: int, ff_mult: int, layer_scale: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = LocalAttention(dim, heads, window)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, ff_mult * dim), nn.GELU(),
                                 nn.Linear(ff_mult * dim, dim))
        self.gamma1 = nn.Parameter(torch.full((dim,), layer_scale))
        self.gamma2 = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x, attn_mask, rope):
        x = x + self.gamma1 * self.attn(self.norm1(x), attn_mask, rope)
        return x + self.gamma2 * self.mlp(self.norm2(x))


class LocalTransformer(nn.Module):
    """x [B, T, D], mask [B, T] → [B, T, D]. Each frame attends to valid frames j with
    |i - j| <= window // 2 (RoPE positions); padding rows only see themselves and are zeroed."""

    def __init__(self, dim: int, layers: int, heads: int, window: int, ff_mult: int = 4,
                 layer_scale: float = 0.01):
        super().__init__()
        self.heads, self.window = heads, window
        self.layers = nn.ModuleList(TransformerLayer(dim, heads, window, ff_mult, layer_scale)
                                    for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        t = torch.arange(T, device=x.device)
        local = (t[:, None] - t[None, :]).abs() <= self.window // 2          # [T, T]
        allowed = local[None] & mask[:, None, :]                              # [B, T, T]
        allowed = allowed | torch.eye(T, dtype=torch.bool, device=x.device)[None]
        attn_mask = allowed[:, None]                                          # [B, 1, T, T]
        rope = rope_tables(T, D // self.heads, x.device)
        m = mask[..., None].to(x.dtype)
        x = x * m
        for layer in self.layers:
            x = layer(x, attn_mask, rope) * m
        return self.norm(x) * m


class ConvNeXtBlock(nn.Module):
    """Vocos-style ConvNeXt block on [B, C, T]: depthwise conv 7 → LN → MLP → layer scale.

    Parameter names (dwconv, norm, pwconv1, pwconv2, gamma) match Vocos."""

    def __init__(self, dim: int, intermediate_dim: int, layer_scale: float):
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, intermediate_dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(intermediate_dim, dim)
        self.gamma = nn.Parameter(layer_scale * torch.ones(dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, C, T], mask [B, 1, T] float or None."""
        res = x
        x = self.dwconv(x).transpose(1, 2)
        x = self.pwconv2(self.act(self.pwconv1(self.norm(x))))
        x = res + (self.gamma * x).transpose(1, 2)
        return x if mask is None else x * mask


class ConvNeXtStack(nn.Module):
    """x [B, T, in_dim], mask [B, T] → [B, T, out_dim]: Linear in → ConvNeXt blocks → LN →
    Linear out, padding kept at zero (the depthwise convs never see non-zero padding)."""

    def __init__(self, in_dim: int, dim: int, out_dim: int, layers: int):
        super().__init__()
        self.proj_in = nn.Linear(in_dim, dim)
        self.blocks = nn.ModuleList(ConvNeXtBlock(dim, 3 * dim, 1.0 / max(layers, 1))
                                    for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.proj_out = nn.Linear(dim, out_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask[:, None, :].to(x.dtype)
        h = (self.proj_in(x) * mask[..., None].to(x.dtype)).transpose(1, 2)
        for block in self.blocks:
            h = block(h, m)
        return self.proj_out(self.norm(h.transpose(1, 2))) * mask[..., None].to(x.dtype)
