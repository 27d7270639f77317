"""Acoustic stage: flow matching on the codec's continuous per-token latent (Voicebox style).

The alternative to the masked stage (:mod:`flexicodec.tts.acoustic`). Instead of predicting the RVQ codes
level by level, this stage generates the latent the codes stand for
(:meth:`flexicodec.codec.model.FlexiCodec.latent_from_codes`: semantic decoder output + RVQ sum, [T', D]
per merged token), which the codec decodes with ``decode_from_latent``. Same grid and
conditioning as the masked stage: every position is one merged token with its semantic code and
length; a voice prompt's latent is a known prefix (infilling).

Rectified flow / OT conditional flow matching, on the latent normalised per dimension by the
training data's mean and std (buffers ``latent_mean``/``latent_std``, saved with the weights)::

    x1 = (latent - mean) / std,  x0 ~ N(0, I),  t ~ U[0, 1]
    x_t = (1 - t) x0 + t x1,     the model predicts the velocity u = x1 - x0

Input of position i (a bidirectional transformer of :class:`flexicodec.tts.acoustic.TransformerBlock`)::

    W_in [x_t,i ; ctx_i] + E_sem[s_i] + E_len[l_i] + E_seg[prompt|target]

with ``ctx`` the (normalised) prompt latent on the prompt positions and 0 elsewhere; the flow
time t is a sinusoidal embedding through an MLP, prepended as one extra token (Voicebox).
The loss is the mean squared velocity error on the target (non-prompt) tokens only.

Classifier-free guidance: in training, with probability ``cond_drop_prob`` an item loses its
conditioning (semantic codes → a learned null code, prompt context → 0; lengths and the
prompt/target segment stay: they are the grid, not the content). At inference
``v = (1 + w) v_cond - w v_uncond`` with ``guidance_scale`` w (0: no unconditional pass).

Sampling (:meth:`FlowAcousticModel.generate`) integrates dx/dt = v from t=0 (noise) to 1 with
``steps`` Euler or midpoint steps. Prompt positions follow the exact path
``(1 - t) x0 + t x1_prompt`` at every evaluation (what the model saw in training) and are
returned verbatim.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from flexicodec.common.pretrained import PretrainedMixin
from flexicodec.tts.acoustic import (TransformerBlock, build_batch, check_token_conditioning,
                                    rope_angles, rope_inv_freq)

SAMPLERS = ("euler", "midpoint")


@dataclass
class FlowConfig:
    """Sizes of the flow-matching stage. ``semantic_vocab_size``, ``max_group`` and
    ``latent_dim`` must match the codec; ``n_q`` is the number of RVQ stages summed into the
    target latent (the codes' first ``n_q`` levels, <= the codec's n_q)."""

    #: which acoustic stage a model directory holds (``flexicodec.tts.stages``): always "flow" here
    kind: str = "flow"
    semantic_vocab_size: int = 4096
    max_group: int = 8
    latent_dim: int = 256
    n_q: int = 8
    d_model: int = 256
    n_layers: int = 6
    n_heads: int = 4
    ff_mult: int = 4
    dropout: float = 0.1
    #: probability that a training item loses its conditioning (classifier-free guidance)
    cond_drop_prob: float = 0.2
    #: default ODE steps, sampler and guidance scale of :meth:`FlowAcousticModel.generate`
    steps: int = 16
    sampler: str = "midpoint"
    guidance_scale: float = 0.7

    @classmethod
    def tiny(cls, **kw) -> "FlowConfig":
        base = dict(semantic_vocab_size=64, max_group=8, latent_dim=32, n_q=2, d_model=64,
                    n_layers=2, n_heads=4, dropout=0.0, steps=4)
        base.update(kw)
        return cls(**base)

    def __post_init__(self):
        if self.kind != "flow":
            raise ValueError(f"FlowConfig is the flow stage's config, got kind={self.kind!r}")
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError("d_model must split into n_heads heads of even size")
        if self.latent_dim < 1 or self.n_q < 0:
            raise ValueError("latent_dim >= 1 and n_q >= 0 are required")
        if not 0.0 <= self.cond_drop_prob < 1.0:
            raise ValueError(f"cond_drop_prob must be in [0, 1), got {self.cond_drop_prob}")
        check_sampling(self.steps, self.sampler, self.guidance_scale)


def check_sampling(steps: int, sampler: str, guidance_scale: float) -> None:
    if int(steps) < 1:
        raise ValueError(f"the flow sampler needs at least one step, got {steps}")
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r} (one of {', '.join(SAMPLERS)})")
    if not math.isfinite(float(guidance_scale)) or float(guidance_scale) < 0:
        raise ValueError(f"guidance_scale must be finite and >= 0, got {guidance_scale}")


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of flow times t [B] in [0, 1] → [B, dim] (float32)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
    ang = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat([ang.cos(), ang.sin()], -1)


class FlowAcousticModel(nn.Module, PretrainedMixin):
    """Bidirectional transformer predicting the flow velocity of the codec latent per token."""

    config_class = FlowConfig
    model_type = "flexicodec-acoustic-flow"
    pretrained_name = "acoustic"

    def __init__(self, config: FlowConfig):
        super().__init__()
        self.config = c = config
        d, D = c.d_model, c.latent_dim
        self.null_id = c.semantic_vocab_size          # the dropped-conditioning semantic code
        self.sem_emb = nn.Embedding(c.semantic_vocab_size + 1, d)
        self.len_emb = nn.Embedding(c.max_group + 1, d)  # 0 = padding
        self.seg_emb = nn.Embedding(2, d)                # 0 prompt, 1 target
        self.in_proj = nn.Linear(2 * D, d)
        self.time_mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.SiLU(), nn.Linear(4 * d, d))
        self.blocks = nn.ModuleList(TransformerBlock(d, c.n_heads, c.ff_mult, c.dropout)
                                    for _ in range(c.n_layers))
        self.norm = nn.LayerNorm(d)
        self.out_proj = nn.Linear(d, D)
        self.register_buffer("inv_freq", rope_inv_freq(d // c.n_heads), persistent=False)
        # per-dimension statistics of the training latents (set by the trainer; saved)
        self.register_buffer("latent_mean", torch.zeros(D))
        self.register_buffer("latent_std", torch.ones(D))

    # ------------------------------------------------------------------ latent scale
    @torch.no_grad()
    def set_latent_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """mean, std [D]: the normalisation of the target latent (std > 0)."""
        D = self.config.latent_dim
        if mean.shape != (D,) or std.shape != (D,):
            raise ValueError(f"latent stats must be [{D}], got {tuple(mean.shape)}, "
                             f"{tuple(std.shape)}")
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all() and (std > 0).all()):
            raise ValueError("latent stats must be finite with std > 0")
        self.latent_mean.copy_(mean)
        self.latent_std.copy_(std)

    def normalize(self, latent: torch.Tensor) -> torch.Tensor:
        return (latent.float() - self.latent_mean) / self.latent_std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() * self.latent_std + self.latent_mean

    # ------------------------------------------------------------------ core
    def forward(self, x_t: torch.Tensor, t: torch.Tensor, semantic: torch.Tensor,
                lengths: torch.Tensor, context: torch.Tensor, segment: torch.Tensor,
                drop: torch.Tensor) -> torch.Tensor:
        """Velocity at every position.

        x_t [B, T, D] (normalised), t [B] flow time, semantic [B, T] long, lengths [B, T] long
        (0 = padding), context [B, T, D] normalised prompt latent (0 off the prompt),
        segment [B, T] (0 prompt, 1 target), drop [B] bool (no conditioning).
        Returns v [B, T, D] (float32).
        """
        self._check(x_t, semantic, lengths, context)
        B, T = semantic.shape
        keep = (~drop).to(x_t.dtype)[:, None, None]
        sem = semantic.masked_fill(drop[:, None], self.null_id)
        h = self.in_proj(torch.cat([x_t, context.to(x_t.dtype) * keep], -1))
        h = h + self.sem_emb(sem) + self.len_emb(lengths) + self.seg_emb(segment)
        tok = self.time_mlp(timestep_embedding(t, self.config.d_model).to(h.dtype))
        h = torch.cat([tok[:, None], h], 1)
        cos, sin = rope_angles(self.inv_freq, T + 1, h.dtype)
        valid = torch.cat([torch.ones(B, 1, dtype=torch.bool, device=h.device), lengths > 0], 1)
        attn_mask = valid[:, None, None, :]
        for blk in self.blocks:
            h = blk(h, cos, sin, attn_mask)
        return self.out_proj(self.norm(h[:, 1:])).float()

    def _check(self, x_t, semantic, lengths, context):
        c = self.config
        check_token_conditioning(semantic, lengths, c.semantic_vocab_size, c.max_group)
        want = (*semantic.shape, c.latent_dim)
        if x_t.shape != want or context.shape != want:
            raise ValueError(f"x_t {tuple(x_t.shape)} and context {tuple(context.shape)} must "
                             f"be [B, T, latent_dim={c.latent_dim}]")

    # -------------------------------------------------------------- training
    def training_loss(self, semantic: torch.Tensor, lengths: torch.Tensor,
                      latent: torch.Tensor, prompt_len: torch.Tensor,
                      generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Flow-matching loss for a batch.

        semantic [B, T], lengths [B, T] (0 = padding), latent [B, T, D] the codec latent
        (not normalised), prompt_len [B]: the first ``prompt_len`` tokens are the known prompt
        (no loss). ``generator`` (CPU) makes t, noise and dropping reproducible (evaluation);
        None draws on the device. Returns {"loss", "target_tokens"} (scalars).
        """
        c = self.config
        B, T = semantic.shape
        dev = semantic.device
        if generator is None:
            rand = lambda *s: torch.rand(*s, device=dev)          # noqa: E731
            randn = lambda *s: torch.randn(*s, device=dev)        # noqa: E731
        else:
            rand = lambda *s: torch.rand(*s, generator=generator).to(dev)    # noqa: E731
            randn = lambda *s: torch.randn(*s, generator=generator).to(dev)  # noqa: E731
        pos = torch.arange(T, device=dev)[None]
        valid = lengths > 0
        prompt = valid & (pos < prompt_len[:, None])
        target = valid & ~prompt
        x1 = self.normalize(latent) * valid[..., None]
        t = rand(B)
        x0 = randn(B, T, c.latent_dim)
        tt = t[:, None, None]
        x_t = (1 - tt) * x0 + tt * x1
        drop = rand(B) < c.cond_drop_prob
        v = self(x_t, t, semantic, lengths, x1 * prompt[..., None], (~prompt).long(), drop)
        err = (v - (x1 - x0)).pow(2).mean(-1)                     # [B, T]
        n = target.sum()
        loss = (err * target).sum() / n.clamp(min=1)
        return {"loss": loss, "target_tokens": n.detach()}

    # -------------------------------------------------------------- sampling
    @torch.no_grad()
    def generate(self, semantic: torch.Tensor, lengths: torch.Tensor,
                 prompt_latent: torch.Tensor | None = None,
                 prompt_len: torch.Tensor | None = None, steps: int | None = None,
                 sampler: str | None = None, guidance_scale: float | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Generate the latent of every non-prompt token.

        semantic [B, T] and lengths [B, T] (0 = padding) cover prompt + target; the first
        ``prompt_len[b]`` tokens of item b are the prompt whose latent is
        ``prompt_latent[b, :prompt_len[b]]`` ([B, >= max prompt_len, D], not normalised).
        ``generator`` (CPU) draws the initial noise. Returns latent [B, T, D] (float32; the
        prompt part copied, padding 0).
        """
        c = self.config
        steps = c.steps if steps is None else int(steps)
        sampler = c.sampler if sampler is None else sampler
        w = c.guidance_scale if guidance_scale is None else float(guidance_scale)
        check_sampling(steps, sampler, w)
        B, T = semantic.shape
        dev = semantic.device
        D = c.latent_dim
        if prompt_len is None:
            prompt_len = torch.zeros(B, dtype=torch.long, device=dev)
        pos = torch.arange(T, device=dev)[None]
        valid = lengths > 0
        prompt = valid & (pos < prompt_len[:, None])
        raw = torch.zeros(B, T, D, device=dev)
        if prompt_latent is not None and prompt_latent.shape[1] > 0:
            if prompt_latent.dim() != 3 or prompt_latent.shape[-1] != D:
                raise ValueError(f"prompt latent must be [B, P, {D}], got "
                                 f"{tuple(prompt_latent.shape)}")
            P = min(prompt_latent.shape[1], T)
            raw[:, :P] = prompt_latent[:, :P].to(dev).float()
        elif int(prompt_len.max()) > 0:
            raise ValueError("prompt_len > 0 needs prompt_latent")
        raw = raw * prompt[..., None]
        x1p = self.normalize(raw) * prompt[..., None]
        segment = (~prompt).long()
        x0 = torch.randn(B, T, D, generator=generator).to(dev)
        keep = ~prompt[..., None]

        if w > 0:
            sem2, len2 = semantic.repeat(2, 1), lengths.repeat(2, 1)
            ctx2, seg2 = x1p.repeat(2, 1, 1), segment.repeat(2, 1)
            drop2 = torch.arange(2 * B, device=dev) >= B

        def velocity(x: torch.Tensor, t: float) -> torch.Tensor:
            x = torch.where(keep, x, (1 - t) * x0 + t * x1p)
            if w == 0:
                tt = torch.full((B,), t, device=dev)
                return self(x, tt, semantic, lengths, x1p, segment,
                            torch.zeros(B, dtype=torch.bool, device=dev))
            tt = torch.full((2 * B,), t, device=dev)
            vc, vu = self(x.repeat(2, 1, 1), tt, sem2, len2, ctx2, seg2, drop2).chunk(2)
            return (1 + w) * vc - w * vu

        x = x0.clone()
        dt = 1.0 / steps
        for i in range(steps):
            t = i * dt
            if sampler == "euler":
                x = x + dt * velocity(x, t)
            else:
                xm = x + 0.5 * dt * velocity(x, t)
                x = x + dt * velocity(xm, t + 0.5 * dt)
        out = torch.where(keep, self.denormalize(x), raw)
        return out * valid[..., None]


def latent_stats(latent: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and std [D] of latent [B, T, D] over the valid tokens mask [B, T]."""
    x = latent[mask].double()
    if x.shape[0] < 2:
        raise ValueError("latent statistics need at least two tokens")
    return x.mean(0).float(), x.std(0).clamp(min=1e-4).float()


def predict_latent(model: FlowAcousticModel, items: list[dict], *, steps: int | None = None,
                   sampler: str | None = None, guidance_scale: float | None = None,
                   generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """The latent of each item's target tokens: list of [D, T_i] float32 tensors.

    Items as :func:`flexicodec.tts.acoustic.build_batch`, with ``prompt_acoustic`` the prompt's latent
    [D, P] (channels first, like codes [n_q, P])."""
    dev = next(model.parameters()).device
    batch = build_batch(items, dev, acoustic_dtype=torch.float32)
    pl = batch["prompt_acoustic"]
    if pl is not None and pl.shape[1] != model.config.latent_dim:
        raise ValueError(f"prompt latent has {pl.shape[1]} dims, the flow stage's latent has "
                         f"{model.config.latent_dim}")
    lat = model.generate(batch["semantic"], batch["lengths"],
                         pl.transpose(1, 2) if pl is not None else None, batch["prompt_len"],
                         steps=steps, sampler=sampler, guidance_scale=guidance_scale,
                         generator=generator)
    out = []
    for b in range(lat.shape[0]):
        p, t = int(batch["prompt_len"][b]), int(batch["target_len"][b])
        out.append(lat[b, p:p + t].transpose(0, 1).cpu())
    return out
