"""FlexiCodec: a speech codec with a dynamic frame rate (see docs/ARCHITECTURE.md).

Pipeline (B utterances, F 12.5 Hz frames, T' merged tokens):

    wav [B, T] ─ AcousticEncoder ─ latent [B, F, D] ─ merging transformer ─┐
        └─ frozen semantic model ─ feats → 12.5 Hz grid [B, F, Dsem] ─┬─ cosine sims → groups
                                     └ ConvNeXt [B, F, S] ──────────┐ │ (codec.merging)
    aggregate per group: semantic [B, T', S] → FSQ → semantic_codes [B, T']
                         → semantic decoder (ConvNeXt) → sem_latent [B, T', D]
                         acoustic [B, T', D] − sem_latent → RVQ → acoustic_codes [B, n_q, T']
    tokens = sem_latent + RVQ sum → repeat by token_lengths to [B, F, D] + position-in-group
    embedding → unmerging transformer → Vocos decoder → audio [B, F * 1280]

The distillation head predicts the (frame-grid) semantic features from the quantized semantic
tokens repeated back to frames (``distill_loss``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

from flexicodec.codec import merging
from flexicodec.codec.bottleneck import ConvNeXtStack, LocalTransformer
from flexicodec.codec.config import FlexiCodecConfig
from flexicodec.codec.decoder import VocosDecoder
from flexicodec.codec.encoder import AcousticEncoder
from flexicodec.common.pretrained import (CheckpointError, PretrainedMixin, config_from_dict,
                                          config_to_dict, state_dict_identity)
from flexicodec.codec.quantize import FSQ, ResidualVQ
from flexicodec.codec.semantic import asr_weights_identity, build_semantic, find_asr, to_frame_grid
from flexicodec.common.constants import BASE_FRAME_RATE, SAMPLE_RATE
from flexicodec.data.audio import AudioError, prepare_waveform


@dataclass
class CodecOutput:
    """Training forward output. audio [B, T]; codes/lengths/mask as in :class:`EncodedCodes`;
    losses are scalars; frame_rate the batch's average token rate (Hz, a 0-dim tensor: reading
    it synchronises with the device)."""

    audio: torch.Tensor
    semantic_codes: torch.Tensor
    acoustic_codes: torch.Tensor
    token_lengths: torch.Tensor
    token_mask: torch.Tensor
    commit_loss: torch.Tensor
    codebook_loss: torch.Tensor
    distill_loss: torch.Tensor
    frame_rate: torch.Tensor
    frame_mask: torch.Tensor | None = None      # [B, F] valid 12.5 Hz frames
    residual_loss: torch.Tensor | None = None   # what the used RVQ stages leave (ResidualVQ)
    threshold: torch.Tensor | None = None       # [B]


@dataclass
class EncodedCodes:
    """semantic_codes [B, T'], acoustic_codes [B, n_q, T'], token_lengths [B, T'] (0 on
    padding), token_mask [B, T'] bool, frame_rate [B] (Hz achieved), threshold [B] (inf for
    fixed groups), num_frames [B] (12.5 Hz frames), num_samples [B] (16 kHz input samples).
    Codes are 0 on padding tokens."""

    semantic_codes: torch.Tensor
    acoustic_codes: torch.Tensor
    token_lengths: torch.Tensor
    token_mask: torch.Tensor
    frame_rate: torch.Tensor
    threshold: torch.Tensor
    num_frames: torch.Tensor
    num_samples: torch.Tensor

    def to(self, device) -> "EncodedCodes":
        return EncodedCodes(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def __len__(self) -> int:
        return self.semantic_codes.shape[0]

    def item(self, b: int) -> "EncodedCodes":
        """Utterance ``b`` alone (batch of one, padding removed)."""
        n = int(self.token_mask[b].sum())
        return EncodedCodes(
            self.semantic_codes[b:b + 1, :n], self.acoustic_codes[b:b + 1, :, :n],
            self.token_lengths[b:b + 1, :n], self.token_mask[b:b + 1, :n],
            self.frame_rate[b:b + 1], self.threshold[b:b + 1], self.num_frames[b:b + 1],
            self.num_samples[b:b + 1])


@dataclass
class FrameFeatures:
    """Frame-level (12.5 Hz) streams: latent [B, F, D] (after the merging transformer),
    semantic [B, F, S] (ConvNeXt), target [B, F, Dsem] (frozen features on the grid),
    frame_mask [B, F], num_frames [B]."""

    latent: torch.Tensor
    semantic: torch.Tensor
    target: torch.Tensor
    frame_mask: torch.Tensor
    num_frames: torch.Tensor


def _to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def prepare_batch(wav, sample_rate: int, target_sr: int = SAMPLE_RATE, multichannel: bool = False
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Any input → (wav [B, T] float32 zero-padded at ``target_sr``, lengths [B] long).

    Accepted: numpy / torch ``[T]`` (one utterance); ``[B, T]`` (a batch; with
    ``multichannel=True`` instead one utterance ``[C, T]``); ``[T, C]`` with C <= 8 < T
    (soundfile layout, one utterance); ``[B, C, T]``; or a list of ``[T]`` / ``[C, T]``
    arrays of any lengths. Channels are averaged, any sample rate is resampled (soxr).
    Raises :class:`AudioError` for empty, NaN/inf or malformed input.
    """
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) \
            or sample_rate <= 0:
        raise AudioError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    if isinstance(wav, (list, tuple)):
        if not wav:
            raise AudioError("empty list of waveforms")
        items = [_to_numpy(x) for x in wav]
    else:
        arr = _to_numpy(wav)
        if arr.ndim == 1:
            items = [arr]
        elif arr.ndim == 2:
            soundfile_layout = arr.shape[1] <= 8 < arr.shape[0]
            items = [arr] if (multichannel or soundfile_layout) else list(arr)
        elif arr.ndim == 3:
            items = list(arr)
        else:
            raise AudioError(f"expected audio [T], [B, T], [C, T] or [B, C, T]; got shape "
                             f"{arr.shape}")
    out = [prepare_waveform(x, int(sample_rate), target_sr, name=f"input {i}")
           for i, x in enumerate(items)]
    lengths = torch.tensor([x.shape[0] for x in out], dtype=torch.long)
    batch = torch.zeros(len(out), int(lengths.max()))
    for i, x in enumerate(out):
        batch[i, : x.shape[0]] = torch.from_numpy(np.ascontiguousarray(x))
    return batch, lengths


#: where the frozen ASR's weights sit in the codec's state dict
ASR_PREFIX = "semantic.asr."
log = logging.getLogger(__name__)


class FlexiCodec(nn.Module, PretrainedMixin):
    """The codec. See the module docstring; contract in docs/ARCHITECTURE.md."""

    config_class = FlexiCodecConfig
    model_type = "flexicodec"
    pretrained_name = "codec"
    frame_rate_base = BASE_FRAME_RATE

    def __init__(self, config: FlexiCodecConfig):
        super().__init__()
        self.config = config
        c = config
        if c.sample_rate / c.hop_size != self.frame_rate_base:
            raise ValueError(f"sample_rate / prod(encoder_rates) must be {self.frame_rate_base}"
                             f" Hz, got {c.sample_rate / c.hop_size}")
        self.semantic = build_semantic(c.semantic)
        D, S, Fd = c.latent_dim, c.semantic_dim, self.semantic.feature_dim
        tf = dict(layers=c.transformer_layers, heads=c.transformer_heads,
                  window=c.transformer_window, ff_mult=c.transformer_ff_mult,
                  layer_scale=c.layer_scale_init)
        self.encoder = AcousticEncoder(c.encoder_dim, c.encoder_rates, D, c.encoder_activation)
        self.merge_transformer = LocalTransformer(D, **tf)
        self.semantic_encoder = ConvNeXtStack(Fd, S, S, c.semantic_layers)
        self.semantic_aggregator = merging.GroupAggregator(S)
        self.acoustic_aggregator = merging.GroupAggregator(D)
        self.fsq = FSQ(S, c.fsq_levels)
        self.distill_head = ConvNeXtStack(S, S, Fd, 1)
        self.semantic_decoder = ConvNeXtStack(S, S, D, c.semantic_decoder_layers)
        self.rvq = ResidualVQ(D, c.n_q, c.rvq_codebook_size, c.rvq_codebook_dim,
                              c.quantizer_dropout)
        self.group_position = nn.Embedding(c.max_group, D)
        self.group_length = nn.Embedding(c.max_group + 1, D)
        nn.init.zeros_(self.group_position.weight)
        nn.init.zeros_(self.group_length.weight)
        self.unmerge_transformer = LocalTransformer(D, **tf)
        self.decoder = VocosDecoder(D, c.decoder_dim, c.decoder_intermediate_dim,
                                    c.decoder_layers, c.decoder_upsample, c.n_fft, c.hop_length)

    # ---- properties ----------------------------------------------------------------------
    @property
    def semantic_vocab_size(self) -> int:
        return self.fsq.codebook_size

    @property
    def max_group(self) -> int:
        return self.config.max_group

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    def train(self, mode: bool = True):
        super().train(mode)
        self.semantic.train(False)  # the semantic model is always frozen
        return self

    # ---- saving / loading: the frozen ASR is referred to by identity ----------------------
    #: ``FlexiCodec.from_pretrained(DIR, asr=ASR_DIR)``: where the referenced ASR is
    load_options = ("asr",)

    def _holds_asr(self) -> bool:
        return self.config.semantic.source == "asr"

    def weights_to_save(self) -> dict[str, torch.Tensor]:
        """The codec's own weights: the frozen ASR's (``semantic.asr.*``) are not saved,
        only its identity (``config.semantic.asr_identity``)."""
        state = self.state_dict()
        if self._holds_asr():
            state = {k: v for k, v in state.items() if not k.startswith(ASR_PREFIX)}
        return state

    def identity_of(self, state: dict[str, torch.Tensor]) -> str:
        """Hash of the codec's own weights and, when they exclude it, the ASR identity."""
        ident = state_dict_identity(state)
        if self._holds_asr() and not any(k.startswith(ASR_PREFIX) for k in state):
            asr = asr_weights_identity(self.semantic.asr)
            ident = hashlib.sha256(f"{ident}|asr:{asr}".encode()).hexdigest()[:16]
        return ident

    def before_save(self, directory: Path) -> None:
        """Record the ASR's identity; make sure the saved codec can find its ASR again (see
        :func:`~flexicodec.codec.semantic.find_asr`). When no ASR directory with these
        weights exists beside ``directory`` or in the models directory, the ASR is saved
        once beside the codec as ``asr-<identity>/``."""
        if not self._holds_asr():
            return
        sem = self.config.semantic
        sem.asr_identity = asr_weights_identity(self.semantic.asr)
        sem.asr_config = config_to_dict(self.semantic.asr.config)
        try:
            find_asr(sem.asr_identity, source=sem.asr_source, codec_dir=directory)
        except CheckpointError:
            target = Path(directory).resolve().parent / f"asr-{sem.asr_identity}"
            self.semantic.asr.save_pretrained(target)
            log.info("saved the codec's ASR (identity %s) to %s", sem.asr_identity, target)
            sem.asr_source = str(target)

    @classmethod
    def instantiate_for_load(cls, config, state, directory: Path, meta: dict,
                             asr: str | None = None):
        """Build the codec for ``state``: resolve its ASR by identity and add its weights.

        Legacy codecs (saved before ASRs were referred to by identity, such as the shipped
        ``codec`` and ``codec_fixed_6.25hz``) carry a copy of the ASR in their weights: that
        copy is used, after checking that its weights have the identity the config records
        (``semantic.asr_identity``; a codec that records none takes the copy's)."""
        sem = config.semantic
        if sem.source != "asr":
            if asr is not None:
                raise CheckpointError(f"{directory}: --asr given, but this codec's semantic "
                                      f"source is {sem.source!r}")
            return cls(config), state
        embedded = {k[len(ASR_PREFIX):]: v for k, v in state.items()
                    if k.startswith(ASR_PREFIX)}
        if embedded:                                    # the legacy branch
            got = state_dict_identity(embedded)
            if sem.asr_identity and got != sem.asr_identity:
                raise CheckpointError(f"{directory}: the embedded ASR copy has identity {got}, "
                                      f"the config records {sem.asr_identity}")
            sem.asr_identity = got
            if asr is not None:
                find_asr(got, explicit=asr)             # an explicit ASR must be the same
            return cls(config), state
        if not sem.asr_identity:
            raise CheckpointError(f"{directory}: holds no ASR weights and names no ASR "
                                  f"(semantic.asr_identity is empty)")
        recorded = dict(sem.asr_config)
        sem.asr_path = str(find_asr(sem.asr_identity, explicit=asr, source=sem.asr_source,
                                    codec_dir=directory))
        model = cls(config)                             # loads the ASR from asr_path
        got = asr_weights_identity(model.semantic.asr)
        if got != sem.asr_identity:
            raise CheckpointError(f"{directory}: ASR {sem.asr_source} has identity {got}, the "
                                  f"codec needs {sem.asr_identity}")
        full = config_to_dict(config_from_dict(type(model.semantic.asr.config), recorded))
        same = json.loads(json.dumps(full)) == json.loads(json.dumps(sem.asr_config))
        if recorded and not same:
            raise CheckpointError(f"{directory}: ASR {sem.asr_source} has another config "
                                  f"than the codec records")
        state = {**state, **{ASR_PREFIX + k: v
                             for k, v in model.semantic.asr.state_dict().items()}}
        return model, state

    def num_parameters(self, include_semantic: bool = False) -> int:
        return sum(p.numel() for n, p in self.named_parameters()
                   if include_semantic or not n.startswith("semantic."))

    def synthesis_context_frames(self) -> int:
        """Frames on each side that cover the receptive field of unmerging + decoder."""
        c = self.config
        tf = c.transformer_layers * (c.transformer_window // 2)
        dec = math.ceil((c.decoder_layers * 3 + 2) / c.decoder_upsample) + 1
        return tf + dec + 2

    # ---- frame level ---------------------------------------------------------------------
    @torch.no_grad()
    def semantic_targets(self, padded: torch.Tensor, num_frames: torch.Tensor) -> torch.Tensor:
        """Frozen semantic features on the 12.5 Hz grid: padded [B, F*hop] (zeros past each
        length), num_frames [B] → target [B, F, Dsem] (0 past each length).

        Inputs longer than ``semantic_window_seconds`` (+ context) are run through the ASR in
        windows aligned on the frame grid (window k covers frames [kW, (k+1)W) and sees
        ``semantic_context_seconds`` more on each side), so a frame's feature depends only on
        audio near it, not on the input's length: encoding long audio in chunks gives the
        same features as encoding it whole."""
        c, hop = self.config, self.config.hop_size
        B, F_ = padded.shape[0], int(num_frames.max())
        W = max(1, round(c.semantic_window_seconds * self.frame_rate_base))
        C = max(0, round(c.semantic_context_seconds * self.frame_rate_base))

        def run(x: torch.Tensor, nf: torch.Tensor, width: int) -> torch.Tensor:
            feats, flen = self.semantic.hidden_states(x, nf * hop)
            return to_frame_grid(feats, flen, self.semantic.feature_rate, nf,
                                 self.frame_rate_base, width)

        if F_ <= W + C:
            return run(padded, num_frames, F_)
        out = None
        for b in range(B):
            Fb = int(num_frames[b])
            for s in range(0, Fb, W):
                a, e = max(0, s - C), min(Fb, s + W + C)
                seg = padded[b:b + 1, a * hop:e * hop]
                tg = run(seg, torch.tensor([e - a], device=padded.device), e - a)
                if out is None:
                    out = tg.new_zeros(B, F_, tg.shape[-1])
                n = min(W, Fb - s)
                out[b, s:s + n] = tg[0, s - a:s - a + n]
        return out

    def frame_features(self, wav: torch.Tensor, wav_lengths: torch.Tensor | None = None,
                       target: torch.Tensor | None = None) -> FrameFeatures:
        """wav [B, T] (16 kHz, zero-padded) → :class:`FrameFeatures` over F = ceil(T/1280).

        ``target`` [B, F, Dsem]: precomputed :meth:`semantic_targets` (used by
        :meth:`frame_features_chunked`); computed here when None."""
        if wav.dim() != 2:
            raise ValueError(f"expected wav [B, T], got shape {tuple(wav.shape)}")
        B, T = wav.shape
        hop = self.config.hop_size
        if wav_lengths is None:         # every item fills the batch: static shapes, no sync
            F_ = -(-T // hop)
            num_frames = torch.full((B,), F_, dtype=torch.long, device=wav.device)
            padded = nn.functional.pad(wav, (0, F_ * hop - T))
            frame_mask = torch.ones(B, F_, dtype=torch.bool, device=wav.device)
            full = True
        else:
            wav_lengths = wav_lengths.to(wav.device).long()
            if (wav_lengths < 1).any() or (wav_lengths > T).any():
                raise ValueError("wav_lengths must lie in [1, T]")
            num_frames = torch.div(wav_lengths + hop - 1, hop, rounding_mode="floor")
            F_ = int(num_frames.max())
            t = torch.arange(F_ * hop, device=wav.device)
            padded = nn.functional.pad(wav, (0, F_ * hop - T))
            padded = padded * (t[None, :] < wav_lengths[:, None]).to(padded.dtype)
            frame_mask = torch.arange(F_, device=wav.device)[None, :] < num_frames[:, None]
            full = None
        if target is None:
            target = self.semantic_targets(padded, num_frames)
        elif target.shape[:2] != (B, F_):
            raise ValueError(f"target must be [B, F]=[{B}, {F_}], got {tuple(target.shape)}")
        latent = self.encoder(padded, num_frames, full=full)
        latent = self.merge_transformer(latent, frame_mask)
        sem = self.semantic_encoder(target.to(latent.dtype), frame_mask)
        return FrameFeatures(latent, sem, target, frame_mask, num_frames)

    def frame_features_chunked(self, wav: torch.Tensor, wav_lengths: torch.Tensor,
                               chunk_seconds: float = 30.0, context_seconds: float = 5.0
                               ) -> FrameFeatures:
        """:meth:`frame_features` for long audio: frame-aligned chunks of ``chunk_seconds``
        each computed with ``context_seconds`` of real audio on both sides, keeping only the
        chunk's own frames (no seams from zero padding). Utterances are chunked one by one."""
        hop = self.config.hop_size
        chunk = max(1, round(chunk_seconds * self.frame_rate_base))
        ctx = max(0, round(context_seconds * self.frame_rate_base))
        n_frames = torch.div(wav_lengths + hop - 1, hop, rounding_mode="floor")
        if int(n_frames.max()) <= chunk + ctx:
            return self.frame_features(wav, wav_lengths)
        per_item = []
        for b in range(wav.shape[0]):
            L, Fb = int(wav_lengths[b]), int(n_frames[b])
            # semantic features of the whole utterance (windowed, so length-independent)
            item = nn.functional.pad(wav[b:b + 1, :L], (0, Fb * hop - L))
            target = self.semantic_targets(item, n_frames[b:b + 1])
            parts = []
            starts = range(0, Fb, chunk)
            for s in starts:
                a, e = max(0, s - ctx), min(Fb, s + chunk + ctx)
                seg = wav[b:b + 1, a * hop: min(L, e * hop)]
                ff = self.frame_features(seg, torch.tensor([seg.shape[1]], device=wav.device),
                                         target=target[:, a:e])
                k0, k1 = s - a, s - a + min(chunk, Fb - s)
                parts.append([x[:, k0:k1] for x in (ff.latent, ff.semantic, ff.target)])
            per_item.append([torch.cat([p[i] for p in parts], 1) for i in range(3)])
        F_ = int(n_frames.max())
        out = []
        for i in range(3):
            x0 = per_item[0][i]
            buf = x0.new_zeros(wav.shape[0], F_, x0.shape[-1])
            for b, item in enumerate(per_item):
                buf[b, : item[i].shape[1]] = item[i][0]
            out.append(buf)
        frame_mask = torch.arange(F_, device=wav.device)[None, :] < n_frames[:, None]
        return FrameFeatures(out[0], out[1], out[2], frame_mask, n_frames)

    # ---- merging -------------------------------------------------------------------------
    def make_merge(self, ff: FrameFeatures, threshold=None, frame_rate=None,
                   fixed_group: int | None = None) -> merging.Merge:
        """Choose the groups: ``fixed_group`` > ``threshold`` / ``frame_rate`` >
        ``config.fixed_group`` > in training a target rate drawn uniformly from
        ``train_frame_rate_range`` (per-utterance thresholds reach it), in eval
        ``default_threshold``."""
        c = self.config
        if threshold is not None and frame_rate is not None:
            raise ValueError("give threshold or frame_rate, not both")
        if fixed_group:
            if not 1 <= fixed_group <= c.max_group:
                raise ValueError(f"fixed_group must be in [1, {c.max_group}], got {fixed_group}")
            return merging.merge_fixed(ff.frame_mask, int(fixed_group))
        if threshold is None and frame_rate is None:
            if c.fixed_group:
                return merging.merge_fixed(ff.frame_mask, c.fixed_group)
            if self.training:
                frame_rate = c.draw_train_rate()
            else:
                threshold = c.default_threshold
        sim = merging.frame_similarity(ff.target)
        if frame_rate is not None:
            return merging.merge_to_rate(sim, ff.frame_mask, float(frame_rate), c.max_group,
                                         self.frame_rate_base)
        return merging.merge_by_threshold(sim, ff.frame_mask, threshold, c.max_group)

    # ---- token level ---------------------------------------------------------------------
    def quantize(self, ff: FrameFeatures, merge: merging.Merge,
                 num_quantizers: int | None = None) -> dict:
        """Aggregate, quantize. Returns dict: tokens [B, T', D], semantic_codes [B, T'],
        acoustic_codes [B, n, T'], commit_loss, codebook_loss, residual_loss, distill_loss."""
        tmask = merge.token_mask
        tm = tmask[..., None]
        sem_tok = self.semantic_aggregator(ff.semantic, merge)
        sem_q, sem_codes = self.fsq(sem_tok)
        sem_q = sem_q * tm.to(sem_q.dtype)
        sem_lat = self.semantic_decoder(sem_q, tmask)
        ac_tok = self.acoustic_aggregator(ff.latent, merge)
        ac_q, ac_codes, commit, codebook, residual = self.rvq(
            (ac_tok - sem_lat) * tm.to(ac_tok.dtype), tmask, num_quantizers)
        pred = self.distill_head(merging.expand_tokens(sem_q, merge), ff.frame_mask)
        target = nn.functional.layer_norm(ff.target.float(), ff.target.shape[-1:])
        fm = ff.frame_mask[..., None].float()
        distill = ((pred.float() - target).pow(2) * fm).sum() / (fm.sum() * target.shape[-1]
                                                                  ).clamp(min=1.0)
        sem_codes = sem_codes.masked_fill(~tmask, 0)
        ac_codes = ac_codes.masked_fill(~tmask[:, None, :], 0)
        return dict(tokens=sem_lat + ac_q, semantic_codes=sem_codes, acoustic_codes=ac_codes,
                    commit_loss=commit, codebook_loss=codebook, residual_loss=residual,
                    distill_loss=distill)

    def synthesize(self, tokens: torch.Tensor, merge: merging.Merge,
                   chunk_frames: int | None = None) -> torch.Tensor:
        """tokens [B, T', D] → audio [B, F * 1280]: repeat by lengths, add position-in-group
        embeddings, unmerging transformer, Vocos decoder. Long inputs are decoded in chunks of
        ``chunk_frames`` with context covering the receptive field (same output)."""
        c = self.config
        x = merging.expand_tokens(tokens, merge)
        pos, glen = merging.position_in_group(merge)
        fm = merge.frame_mask
        emb = self.group_position(pos.clamp(max=c.max_group - 1)) + \
            self.group_length(glen.clamp(max=c.max_group))
        x = (x + emb.to(x.dtype)) * fm[..., None].to(x.dtype)
        F_ = x.shape[1]
        if chunk_frames is None:
            chunk_frames = 375 if not self.training else F_
        if F_ <= chunk_frames:
            return self._synthesize_frames(x, fm)
        ctx = self.synthesis_context_frames()
        hop = c.hop_size
        parts = []
        for s in range(0, F_, chunk_frames):
            a, e = max(0, s - ctx), min(F_, s + chunk_frames + ctx)
            y = self._synthesize_frames(x[:, a:e], fm[:, a:e])
            k = min(chunk_frames, F_ - s)
            parts.append(y[:, (s - a) * hop:(s - a + k) * hop])
        return torch.cat(parts, 1)

    def _synthesize_frames(self, x: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """frames [B, F, D] → audio [B, F * 1280]. Outside training, utterances shorter than
        the batch are decoded alone (the conv decoder and the iSTFT overlap-add would otherwise
        see the padding at their last frames), so a batch decodes exactly like its items."""
        x = self.unmerge_transformer(x, frame_mask)
        n = frame_mask.sum(1)
        if self.training or bool((n == x.shape[1]).all()):
            audio = self.decoder(x)
        else:
            audio = x.new_zeros(x.shape[0], x.shape[1] * self.config.hop_size, dtype=torch.float32)
            for b in range(x.shape[0]):
                k = int(n[b])
                if k:
                    audio[b, : k * self.config.hop_size] = self.decoder(x[b:b + 1, :k])[0]
        smask = frame_mask.repeat_interleave(self.config.hop_size, dim=1)
        return audio * smask.to(audio.dtype)

    # ---- training forward ----------------------------------------------------------------
    def forward(self, wav: torch.Tensor, wav_lengths: torch.Tensor | None = None,
                threshold: float | None = None, num_quantizers: int | None = None,
                fixed_group: int | None = None, frame_rate: float | None = None,
                semantic_target: torch.Tensor | None = None,
                pad_tokens: bool = False) -> CodecOutput:
        """wav [B, T] (16 kHz) → :class:`CodecOutput` (audio [B, T]).

        ``wav_lengths=None``: every item is T samples long (the fast training path: no masks,
        and at 12.5 Hz no host synchronisation). ``semantic_target`` [B, F, Dsem]: the frozen
        semantic features on the frame grid, precomputed (:mod:`flexicodec.codec.device_data`);
        computed from ``wav`` when None.

        Groups: ``threshold`` or a target ``frame_rate`` (Hz, per utterance); with
        neither, training draws one target rate per batch from ``train_frame_rate_range`` and
        eval uses ``default_threshold`` (see :meth:`make_merge`).
        ``num_quantizers=None`` uses all stages (with quantizer dropout in training).

        ``pad_tokens=True``: the token axis is padded to the frame count F (masked padding
        tokens), so the token-level modules (semantic decoder, RVQ) see [B, F, ...] whatever
        the merging, and a compiled training step keeps one shape at dynamic rates; audio and
        losses are those of the unpadded tokens, the codes in the output are [B, F]."""
        T = wav.shape[1]
        ff = self.frame_features(wav, wav_lengths, target=semantic_target)
        merge = self.make_merge(ff, threshold, frame_rate, fixed_group)
        if pad_tokens:
            merge = merge.pad_tokens(ff.latent.shape[1])
        q = self.quantize(ff, merge, num_quantizers)
        audio = self.synthesize(q["tokens"], merge)[:, :T]
        return CodecOutput(audio=audio, semantic_codes=q["semantic_codes"],
                           acoustic_codes=q["acoustic_codes"],
                           token_lengths=merge.token_lengths, token_mask=merge.token_mask,
                           commit_loss=q["commit_loss"], codebook_loss=q["codebook_loss"],
                           residual_loss=q["residual_loss"],
                           distill_loss=q["distill_loss"],
                           frame_rate=merge.frame_rate(self.frame_rate_base).mean(),
                           frame_mask=merge.frame_mask, threshold=merge.threshold)

    # ---- inference API -------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, wav, sample_rate: int, threshold: float | None = None,
               frame_rate: float | None = None, num_quantizers: int | None = None, *,
               fixed_group: int | None = None, multichannel: bool = False,
               chunk_seconds: float = 30.0, context_seconds: float = 5.0) -> EncodedCodes:
        """Audio → :class:`EncodedCodes`. ``wav``: see :func:`prepare_batch` (any rate,
        channels, a list of variable-length arrays). Choose the rate by ``threshold``
        (1.0 = 12.5 Hz, default ``config.default_threshold``) or a target ``frame_rate`` in Hz
        (searched per utterance). Audio longer than ``chunk_seconds`` is encoded in chunks
        with ``context_seconds`` of overlap on each side."""
        n = self.config.n_q if num_quantizers is None else int(num_quantizers)
        if not 0 <= n <= self.config.n_q:
            raise ValueError(f"num_quantizers must be in [0, {self.config.n_q}], got {n}")
        if threshold is not None and not math.isfinite(float(threshold)):
            raise ValueError(f"threshold must be finite, got {threshold}")
        batch, lengths = prepare_batch(wav, sample_rate, self.sample_rate, multichannel)
        batch, lengths = batch.to(self.device), lengths.to(self.device)
        was_training = self.training
        self.eval()
        try:
            ff = self.frame_features_chunked(batch, lengths, chunk_seconds, context_seconds)
            merge = self.make_merge(ff, threshold, frame_rate, fixed_group)
            q = self.quantize(ff, merge, n)
        finally:
            self.train(was_training)
        return EncodedCodes(
            semantic_codes=q["semantic_codes"], acoustic_codes=q["acoustic_codes"],
            token_lengths=merge.token_lengths, token_mask=merge.token_mask,
            frame_rate=merge.frame_rate(self.frame_rate_base), threshold=merge.threshold,
            num_frames=ff.num_frames, num_samples=lengths)

    @torch.no_grad()
    def decode_from_codes(self, semantic_codes, acoustic_codes, token_lengths) -> torch.Tensor:
        """semantic_codes [B, T'], acoustic_codes [B, n, T'] (n may be 0: semantic-only),
        token_lengths [B, T'] (0 on trailing padding) → audio [B, F * 1280] at 16 kHz, where
        F = max total length. Unbatched [T'] / [n, T'] inputs are accepted too.
        Same as ``decode_from_latent(latent_from_codes(...), token_lengths)``."""
        latent, lens = self._latent_from_codes(semantic_codes, acoustic_codes, token_lengths)
        return self._decode_latent(latent, lens)

    @torch.no_grad()
    def latent_from_codes(self, semantic_codes, acoustic_codes, token_lengths) -> torch.Tensor:
        """The continuous per-token latent the codes stand for: the semantic decoder's output
        plus the sum of the RVQ stages (the tokens the unmerging transformer expands), i.e.
        the dequantized codes. Inputs as :meth:`decode_from_codes` → latent [B, T', D]
        (0 on padding). The semantic decoder sees ``latent_context_tokens()`` tokens on each
        side, so a window's latent equals the whole utterance's only that far from its ends."""
        return self._latent_from_codes(semantic_codes, acoustic_codes, token_lengths)[0]

    def latent_context_tokens(self) -> int:
        """Tokens on each side that the semantic decoder's receptive field covers."""
        return 3 * self.config.semantic_decoder_layers

    @torch.no_grad()
    def encode_latent(self, wav, sample_rate: int, **encode_kwargs
                      ) -> tuple[EncodedCodes, torch.Tensor]:
        """:meth:`encode` and the quantized continuous latent of its codes:
        (codes, latent [B, T', D]); ``decode_from_latent(latent, codes.token_lengths)`` gives
        the same audio as decoding the codes."""
        codes = self.encode(wav, sample_rate, **encode_kwargs)
        return codes, self.latent_from_codes(codes.semantic_codes, codes.acoustic_codes,
                                             codes.token_lengths)

    @torch.no_grad()
    def decode_from_latent(self, latent, token_lengths) -> torch.Tensor:
        """latent [B, T', D] (per merged token, as :meth:`latent_from_codes` gives it),
        token_lengths [B, T'] (0 on trailing padding) → audio [B, F * 1280] at 16 kHz.
        Unbatched [T', D] / [T'] inputs are accepted too."""
        dev = self.device
        lat = torch.as_tensor(np.asarray(latent) if not isinstance(latent, torch.Tensor)
                              else latent).to(dev)
        lens = torch.as_tensor(np.asarray(token_lengths) if not isinstance(
            token_lengths, torch.Tensor) else token_lengths).long().to(dev)
        if lat.dim() == 2:
            lat, lens = lat[None], lens[None] if lens.dim() == 1 else lens
        D = self.config.latent_dim
        if lat.dim() != 3 or lat.shape[-1] != D or lens.shape != lat.shape[:2]:
            raise ValueError(f"latent {tuple(lat.shape)} and lengths {tuple(lens.shape)} do "
                             f"not match: expected [B, T', {D}] and [B, T']")
        if not lat.is_floating_point() or not bool(torch.isfinite(lat).all()):
            raise ValueError("latent must be finite floating point values")
        mask = self._check_lengths(lens)
        lat = lat.to(self.semantic_decoder.proj_out.weight.dtype) * mask[..., None]
        return self._decode_latent(lat, lens)

    def _check_lengths(self, lens: torch.Tensor) -> torch.Tensor:
        """token_lengths [B, T'] checked → valid-token mask [B, T']."""
        if lens.shape[1] == 0:
            raise ValueError("no tokens to decode")
        mask = lens > 0
        if (lens < 0).any() or (lens > self.max_group).any():
            raise ValueError(f"token lengths must lie in [1, {self.max_group}] (0 = padding)")
        if (mask[:, 1:] & ~mask[:, :-1]).any():
            raise ValueError("token lengths: padding (0) must only appear at the end")
        if not mask[:, 0].all():
            raise ValueError("every utterance needs at least one token")
        return mask

    def _latent_from_codes(self, semantic_codes, acoustic_codes, token_lengths
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        """Checked codes → (latent [B, T', D], token_lengths [B, T'])."""
        dev = self.device
        sem = torch.as_tensor(np.asarray(semantic_codes) if not isinstance(
            semantic_codes, torch.Tensor) else semantic_codes).long().to(dev)
        ac = torch.as_tensor(np.asarray(acoustic_codes) if not isinstance(
            acoustic_codes, torch.Tensor) else acoustic_codes).long().to(dev)
        lens = torch.as_tensor(np.asarray(token_lengths) if not isinstance(
            token_lengths, torch.Tensor) else token_lengths).long().to(dev)
        if sem.dim() == 1:
            sem, lens = sem[None], lens[None] if lens.dim() == 1 else lens
            ac = ac[None] if ac.dim() == 2 else ac
        if sem.dim() != 2 or lens.shape != sem.shape or ac.dim() != 3 or \
                ac.shape[0] != sem.shape[0] or ac.shape[2] != sem.shape[1]:
            raise ValueError(f"codes shapes do not match: semantic {tuple(sem.shape)}, "
                             f"acoustic {tuple(ac.shape)}, lengths {tuple(lens.shape)}; expected "
                             f"[B, T'], [B, n, T'], [B, T']")
        mask = self._check_lengths(lens)
        sem = sem.masked_fill(~mask, 0)
        ac = ac.masked_fill(~mask[:, None, :], 0)
        was_training = self.training
        self.eval()
        try:
            sem_q = self.fsq.decode(sem) * mask[..., None]
            sem_lat = self.semantic_decoder(sem_q, mask)
            latent = sem_lat + self.rvq.decode(ac).to(sem_lat.dtype) * mask[..., None]
        finally:
            self.train(was_training)
        return latent, lens

    def _decode_latent(self, latent: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        """latent [B, T', D], checked lengths [B, T'] → audio (eval mode)."""
        merge = merging.merge_from_lengths(lens)
        was_training = self.training
        self.eval()
        try:
            return self.synthesize(latent, merge)
        finally:
            self.train(was_training)

    def decode(self, codes: EncodedCodes, trim: bool = True) -> list[torch.Tensor]:
        """Decode :class:`EncodedCodes` → list of audio [T] (trimmed to the input lengths)."""
        audio = self.decode_from_codes(codes.semantic_codes, codes.acoustic_codes,
                                       codes.token_lengths)
        return [audio[b, : int(codes.num_samples[b])] if trim else audio[b]
                for b in range(audio.shape[0])]

    @torch.no_grad()
    def reconstruct(self, wav, sample_rate: int, **encode_kwargs) -> tuple[list[torch.Tensor],
                                                                           EncodedCodes]:
        """encode + decode: (list of 16 kHz audio [T], codes)."""
        codes = self.encode(wav, sample_rate, **encode_kwargs)
        return self.decode(codes), codes
