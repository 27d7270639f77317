"""Acoustic stage: masked parallel prediction of the codec's RVQ acoustic codes.

SoundStorm / MaskGIT style, on the codec's *merged-token* grid. Every position is one merged
token: its semantic code, its length (frames it stands for, 1..max_group) and its ``n_q``
acoustic RVQ codes all live at the same index, so conditioning is *per token* (a length
embedding is added) instead of expanding tokens to 12.5 Hz frames. A voice prompt's
(semantic, length, acoustic) codes are prepended as a fully-known prefix.

Input embedding of position t::

    E_sem[s_t] + E_len[l_t] + sum_q E_ac[q][a_{q,t} or MASK] + E_seg[prompt|target] + E_level[q*]

followed by a bidirectional pre-norm transformer with rotary positions and one output head
per RVQ level (only the head of the level being predicted, q*, is evaluated).

Training (:meth:`AcousticModel.training_loss`): per item pick a level q* uniformly, feed
levels < q* as ground truth, mask a cosine-scheduled random subset of level q* and all of
levels > q*, prompt prefix always known; cross entropy on the masked positions of level q*.

Decoding (:meth:`AcousticModel.generate`): coarse to fine, level by level; within a level a
few confidence-based unmasking steps with a cosine schedule (MaskGIT). Later levels default
to one greedy step each (SoundStorm).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from flexicodec.common.pretrained import PretrainedMixin


@dataclass
class AcousticConfig:
    """Sizes of the acoustic stage. ``semantic_vocab_size``, ``codebook_size``, ``n_q`` and
    ``max_group`` must match the codec whose codes the model predicts."""

    #: which acoustic stage a model directory holds (``flexicodec.tts.stages``): always "masked" here
    kind: str = "masked"
    semantic_vocab_size: int = 32768
    codebook_size: int = 1024
    n_q: int = 8
    max_group: int = 8
    d_model: int = 256
    n_layers: int = 6
    n_heads: int = 4
    ff_mult: int = 4
    dropout: float = 0.1
    #: default unmasking steps for each RVQ level (missing levels use the last value)
    steps_per_level: tuple = (8, 2, 1)
    #: sampling temperature of level-0 tokens in decoding (later levels are greedy)
    temperature: float = 1.0
    #: gumbel noise scale on the confidences (annealed to 0 over the steps of a level)
    choice_temperature: float = 1.0

    @classmethod
    def tiny(cls, **kw) -> "AcousticConfig":
        base = dict(semantic_vocab_size=64, codebook_size=32, n_q=3, max_group=8, d_model=64,
                    n_layers=2, n_heads=4, dropout=0.0)
        base.update(kw)
        return cls(**base)

    def __post_init__(self):
        if self.kind != "masked":
            raise ValueError(f"AcousticConfig is the masked stage's config, got kind={self.kind!r}")
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError("d_model must split into n_heads heads of even size")
        if self.n_q < 1:
            raise ValueError("the acoustic stage needs n_q >= 1")
        self.steps_per_level = tuple(int(s) for s in self.steps_per_level)
        if not self.steps_per_level or min(self.steps_per_level) < 1:
            raise ValueError("steps_per_level must be a non-empty list of positive ints")


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` [B, H, T, Dh] by angles (cos/sin [T, Dh/2])."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.flatten(-2)


def rope_angles(inv_freq: torch.Tensor, T: int, dtype: torch.dtype
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) [T, Dh/2] of positions 0..T-1 for :class:`TransformerBlock`."""
    pos = torch.arange(T, device=inv_freq.device, dtype=torch.float32)
    ang = pos[:, None] * inv_freq[None, :]
    return ang.cos().to(dtype), ang.sin().to(dtype)


def rope_inv_freq(head_dim: int) -> torch.Tensor:
    return 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))


class TransformerBlock(nn.Module):
    """Bidirectional pre-norm block with rotary positions: x [B, T, d], cos/sin [T, d/h/2],
    attn_mask [B, 1, 1, T] bool (valid keys) → [B, T, d]."""

    def __init__(self, d_model: int, n_heads: int, ff_mult: int, dropout: float):
        super().__init__()
        d = d_model
        self.n_heads = n_heads
        self.norm1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, ff_mult * d), nn.GELU(),
                                nn.Linear(ff_mult * d, d))
        self.drop = nn.Dropout(dropout)
        self.p_attn = dropout

    def forward(self, x, cos, sin, attn_mask):
        B, T, D = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, T, 3, self.n_heads, -1).permute(2, 0, 3, 1, 4)
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.p_attn if self.training else 0.0)
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(B, T, D)))
        return x + self.drop(self.ff(self.norm2(x)))


def check_token_conditioning(semantic: torch.Tensor, lengths: torch.Tensor,
                             semantic_vocab_size: int, max_group: int) -> None:
    """The per-token conditioning both acoustic stages take: semantic codes [B, T] in
    ``[0, semantic_vocab_size)`` and token lengths [B, T] in ``[0, max_group]`` (0 = padding);
    a ValueError otherwise."""
    if semantic.dim() != 2 or lengths.shape != semantic.shape:
        raise ValueError(f"semantic {tuple(semantic.shape)} and lengths "
                         f"{tuple(lengths.shape)} must both be [B, T]")
    if semantic.numel():
        if int(semantic.min()) < 0 or int(semantic.max()) >= semantic_vocab_size:
            raise ValueError(f"semantic codes outside [0, {semantic_vocab_size})")
        if int(lengths.min()) < 0 or int(lengths.max()) > max_group:
            raise ValueError(f"token lengths outside [0, {max_group}]")


class AcousticModel(nn.Module, PretrainedMixin):
    """Bidirectional masked transformer over merged tokens predicting RVQ acoustic codes."""

    config_class = AcousticConfig
    model_type = "flexicodec-acoustic"
    pretrained_name = "acoustic"

    def __init__(self, config: AcousticConfig):
        super().__init__()
        self.config = c = config
        self.mask_id = c.codebook_size  # per-level MASK index
        self.sem_emb = nn.Embedding(c.semantic_vocab_size, c.d_model)
        self.len_emb = nn.Embedding(c.max_group + 1, c.d_model)  # 0 = padding
        self.ac_emb = nn.Embedding(c.n_q * (c.codebook_size + 1), c.d_model)
        self.seg_emb = nn.Embedding(2, c.d_model)  # 0 prompt, 1 target
        self.level_emb = nn.Embedding(c.n_q, c.d_model)
        self.blocks = nn.ModuleList(TransformerBlock(c.d_model, c.n_heads, c.ff_mult, c.dropout)
                                    for _ in range(c.n_layers))
        self.norm = nn.LayerNorm(c.d_model)
        self.head_w = nn.Parameter(torch.randn(c.n_q, c.codebook_size, c.d_model) * 0.02)
        self.head_b = nn.Parameter(torch.zeros(c.n_q, c.codebook_size))
        dh = c.d_model // c.n_heads
        self.register_buffer("inv_freq", rope_inv_freq(dh), persistent=False)
        self.register_buffer("ac_offset", torch.arange(c.n_q) * (c.codebook_size + 1),
                             persistent=False)

    # ------------------------------------------------------------------ core
    def forward(self, semantic: torch.Tensor, lengths: torch.Tensor, acoustic: torch.Tensor,
                segment: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """Logits of RVQ level ``level`` at every position.

        semantic [B, T] long; lengths [B, T] long (0 = padding); acoustic [B, n_q, T] long with
        ``mask_id`` at unknown entries; segment [B, T] (0 prompt, 1 target); level [B] long.
        Returns logits [B, T, codebook_size] (float32).
        """
        self._check(semantic, lengths, acoustic)
        B, T = semantic.shape
        x = self.sem_emb(semantic) + self.len_emb(lengths) + self.seg_emb(segment)
        x = x + self.ac_emb(acoustic + self.ac_offset.view(1, -1, 1)).sum(1)
        x = x + self.level_emb(level).unsqueeze(1)
        cos, sin = rope_angles(self.inv_freq, T, x.dtype)
        valid = lengths > 0
        attn_mask = valid[:, None, None, :]  # [B, 1, 1, T] keys
        for blk in self.blocks:
            x = blk(x, cos, sin, attn_mask)
        h = self.norm(x)
        w = self.head_w[level]  # [B, C, D]
        logits = torch.einsum("btd,bcd->btc", h, w) + self.head_b[level].unsqueeze(1)
        return logits.float()

    def _check(self, semantic, lengths, acoustic):
        c = self.config
        check_token_conditioning(semantic, lengths, c.semantic_vocab_size, c.max_group)
        if acoustic.shape != (semantic.shape[0], c.n_q, semantic.shape[1]):
            raise ValueError(f"acoustic codes must be [B, n_q={c.n_q}, T], got "
                             f"{tuple(acoustic.shape)}")
        if semantic.numel():
            if int(acoustic.min()) < 0 or int(acoustic.max()) > c.codebook_size:
                raise ValueError(f"acoustic codes outside [0, {c.codebook_size}]")

    # -------------------------------------------------------------- training
    def training_loss(self, semantic: torch.Tensor, lengths: torch.Tensor,
                      acoustic: torch.Tensor, prompt_len: torch.Tensor,
                      generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Masked-prediction loss for a batch.

        semantic [B, T], lengths [B, T] (0 = padding), acoustic [B, n_q, T] ground truth,
        prompt_len [B]: the first ``prompt_len`` tokens are a known prompt (no loss).
        Returns {"loss", "accuracy", "masked"} (scalars).
        """
        c = self.config
        B, T = semantic.shape
        dev = semantic.device
        rand = lambda *s: torch.rand(*s, generator=generator, device="cpu").to(dev)  # noqa: E731
        pos = torch.arange(T, device=dev)[None]
        valid = lengths > 0
        target = valid & (pos >= prompt_len[:, None])
        level = (rand(B) * c.n_q).long().clamp(max=c.n_q - 1)
        ratio = torch.cos(rand(B) * math.pi / 2).clamp(min=1e-3)  # cosine schedule
        masked = target & (rand(B, T) < ratio[:, None])
        # at least one masked position per item with a target
        first = torch.where(target, rand(B, T), torch.full((B, T), -1.0, device=dev)).argmax(1)
        has = target.any(1)
        masked[torch.arange(B, device=dev)[has], first[has]] = True
        lv = torch.arange(c.n_q, device=dev).view(1, -1, 1)
        qs = level.view(-1, 1, 1)
        hide = target[:, None, :] & ((lv > qs) | ((lv == qs) & masked[:, None, :]))
        hide = hide | ~valid[:, None, :]
        inp = torch.where(hide, torch.full_like(acoustic, self.mask_id), acoustic)
        segment = (pos >= prompt_len[:, None]).long()
        logits = self(semantic, lengths.masked_fill(~valid, 0), inp, segment, level)
        gold = acoustic.gather(1, level.view(-1, 1, 1).expand(B, 1, T)).squeeze(1)  # [B, T]
        lg, gd = logits[masked], gold[masked]
        loss = F.cross_entropy(lg, gd)
        acc = (lg.argmax(-1) == gd).float().mean()
        return {"loss": loss, "accuracy": acc.detach(), "masked": masked.sum().detach()}

    # -------------------------------------------------------------- decoding
    @torch.no_grad()
    def generate(self, semantic: torch.Tensor, lengths: torch.Tensor,
                 prompt_acoustic: torch.Tensor | None = None,
                 prompt_len: torch.Tensor | None = None,
                 steps_per_level: tuple[int, ...] | list[int] | None = None,
                 temperature: float | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Fill the acoustic codes of every non-prompt token.

        semantic [B, T] and lengths [B, T] (0 = padding) cover prompt + target; the first
        ``prompt_len[b]`` tokens of item b are the prompt whose codes are
        ``prompt_acoustic[b, :, :prompt_len[b]]`` ([B, n_q, >= max prompt_len]).
        Returns acoustic codes [B, n_q, T] (long, in [0, codebook_size); the prompt part is
        copied, padding is 0).
        """
        c = self.config
        B, T = semantic.shape
        dev = semantic.device
        steps = list(steps_per_level or c.steps_per_level)
        steps = (steps + [steps[-1]] * c.n_q)[:c.n_q]
        if min(steps) < 1:
            raise ValueError("every RVQ level needs at least one decoding step")
        temp = c.temperature if temperature is None else float(temperature)
        if prompt_len is None:
            prompt_len = torch.zeros(B, dtype=torch.long, device=dev)
        pos = torch.arange(T, device=dev)[None]
        valid = lengths > 0
        target = valid & (pos >= prompt_len[:, None])
        codes = torch.full((B, c.n_q, T), self.mask_id, dtype=torch.long, device=dev)
        if prompt_acoustic is not None and prompt_acoustic.shape[-1] > 0:
            P = min(prompt_acoustic.shape[-1], T)
            known = (pos[:, :P] < prompt_len[:, None])[:, None, :]
            codes[:, :, :P] = torch.where(known, prompt_acoustic[:, :, :P].to(dev),
                                          codes[:, :, :P])
        elif int(prompt_len.max()) > 0:
            raise ValueError("prompt_len > 0 needs prompt_acoustic")
        segment = (pos >= prompt_len[:, None]).long().expand(B, T)
        n_target = target.sum(1)  # [B]
        for q in range(c.n_q):
            level = torch.full((B,), q, dtype=torch.long, device=dev)
            S = steps[q]
            unknown = target.clone()
            for s in range(S):
                logits = self(semantic, lengths, codes, segment, level)  # [B, T, C]
                if q == 0 and temp > 0:
                    probs = F.softmax(logits / temp, -1)
                    flat = probs.reshape(-1, probs.shape[-1]).cpu()
                    sampled = torch.multinomial(flat, 1, generator=generator).view(B, T).to(dev)
                else:
                    probs = F.softmax(logits, -1)
                    sampled = logits.argmax(-1)
                conf = probs.gather(-1, sampled.unsqueeze(-1)).squeeze(-1)
                remain = torch.floor(n_target.float() * math.cos(math.pi / 2 * (s + 1) / S)).long()
                if s == S - 1:
                    remain = torch.zeros_like(remain)
                g = c.choice_temperature * (1.0 - (s + 1) / S)
                if g > 0:
                    u = torch.rand(B, T, generator=generator).to(dev).clamp(1e-9, 1 - 1e-9)
                    conf = torch.log(conf.clamp_min(1e-30)) + g * -torch.log(-torch.log(u))
                conf = torch.where(unknown, conf, torch.full_like(conf, float("inf")))
                conf = torch.where(valid, conf, torch.full_like(conf, float("-inf")))
                # keep the ``remain`` least confident unknown positions masked
                order = conf.argsort(dim=1)  # ascending
                rank = torch.empty_like(order)
                rank.scatter_(1, order, torch.arange(T, device=dev).expand(B, T))
                n_pad = (~valid).sum(1, keepdim=True)
                still = unknown & (rank < n_pad + remain[:, None])
                fill = unknown & ~still
                codes[:, q] = torch.where(fill, sampled, codes[:, q])
                unknown = still
        return codes.masked_fill(~valid[:, None, :], 0)


def build_batch(items: list[dict], device: torch.device | str = "cpu",
                acoustic_dtype: torch.dtype = torch.long) -> dict[str, torch.Tensor]:
    """Pad prompt + target items into one batch for :meth:`AcousticModel.generate`.

    Each item: ``semantic`` [T], ``lengths`` [T] (target tokens), and optionally
    ``prompt_semantic`` [P], ``prompt_lengths`` [P], ``prompt_acoustic`` [n_q, P] (codes; the
    flow stage passes its latent [D, P] with ``acoustic_dtype=torch.float32``).
    Returns semantic/lengths [B, P+T max], prompt_acoustic [B, n_q, P max], prompt_len [B],
    target_len [B].
    """
    if not items:
        raise ValueError("build_batch needs at least one item")
    rows = []
    n_q = None
    for it in items:
        sem = torch.as_tensor(it["semantic"], dtype=torch.long).reshape(-1)
        ln = torch.as_tensor(it["lengths"], dtype=torch.long).reshape(-1)
        if sem.shape != ln.shape:
            raise ValueError("semantic codes and token lengths differ in length")
        if sem.numel() == 0:
            raise ValueError("no semantic tokens to give acoustic codes to")
        if int(ln.min()) < 1:
            raise ValueError("token lengths must be >= 1 for every real token")
        ps = torch.as_tensor(it.get("prompt_semantic", []), dtype=torch.long).reshape(-1)
        pl = torch.as_tensor(it.get("prompt_lengths", []), dtype=torch.long).reshape(-1)
        pa = it.get("prompt_acoustic")
        pa = (torch.zeros(0, 0, dtype=acoustic_dtype) if pa is None
              else torch.as_tensor(pa, dtype=acoustic_dtype))
        if ps.numel():
            if pa.dim() != 2 or pa.shape[1] != ps.numel() or pl.shape != ps.shape:
                raise ValueError("prompt semantic [P], lengths [P], acoustic [n_q, P] disagree")
            n_q = pa.shape[0] if n_q is None else n_q
        rows.append((ps, pl, pa, sem, ln))
    n_q = n_q or 0
    B = len(rows)
    L = max(r[0].numel() + r[3].numel() for r in rows)
    P = max(r[0].numel() for r in rows)
    sem = torch.zeros(B, L, dtype=torch.long)
    lens = torch.zeros(B, L, dtype=torch.long)
    pac = torch.zeros(B, max(n_q, 1), P, dtype=acoustic_dtype)
    plen = torch.zeros(B, dtype=torch.long)
    tlen = torch.zeros(B, dtype=torch.long)
    for b, (ps, pl, pa, s, ln) in enumerate(rows):
        p = ps.numel()
        sem[b, :p], lens[b, :p] = ps, pl
        sem[b, p:p + s.numel()], lens[b, p:p + s.numel()] = s, ln
        if p:
            if pa.shape[0] != n_q:
                raise ValueError("prompts with different numbers of quantizers in one batch")
            pac[b, :, :p] = pa
        plen[b], tlen[b] = p, s.numel()
    return {"semantic": sem.to(device), "lengths": lens.to(device),
            "prompt_acoustic": pac[:, :n_q].to(device) if n_q else None,
            "prompt_len": plen.to(device), "target_len": tlen.to(device)}


def predict_acoustic(model: AcousticModel, items: list[dict], *,
                     steps_per_level=None, temperature: float | None = None,
                     generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """Acoustic codes for each item's target tokens: list of [n_q, T_i] long tensors."""
    dev = next(model.parameters()).device
    batch = build_batch(items, dev)
    if batch["prompt_acoustic"] is not None and batch["prompt_acoustic"].shape[1] != model.config.n_q:
        raise ValueError(f"prompt has {batch['prompt_acoustic'].shape[1]} quantizers, the "
                         f"acoustic model predicts {model.config.n_q}")
    codes = model.generate(batch["semantic"], batch["lengths"], batch["prompt_acoustic"],
                           batch["prompt_len"], steps_per_level=steps_per_level,
                           temperature=temperature, generator=generator)
    out = []
    for b in range(codes.shape[0]):
        p, t = int(batch["prompt_len"][b]), int(batch["target_len"][b])
        out.append(codes[b, :, p:p + t].cpu())
    return out
