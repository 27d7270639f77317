"""Configuration of :class:`flexicodec.codec.model.FlexiCodec` (one dataclass, four presets).

The presets ``tiny`` (tests), ``small`` (the first shipped codec), ``v2`` (sized for GPU
training) and ``base`` (closer to the paper) are the ``model:`` sections of
``configs/codec/{tiny,small,v2,base}.yaml``; a test checks
that the YAML files and :data:`PRESETS` agree.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from flexicodec.common.pretrained import config_from_dict
from flexicodec.common.constants import BASE_FRAME_RATE, SAMPLE_RATE


@dataclass
class SemanticConfig:
    """Where the frozen semantic features come from.

    ``source="asr"``: our :class:`flexicodec.codec.asr.model.PhonemeASR`, held frozen inside
    the codec. A saved codec refers to it by identity instead of copying it: ``asr_identity``
    is the hash of the ASR's weights (:func:`flexicodec.common.pretrained.state_dict_identity`)
    and ``asr_config`` its architecture; loading finds the ASR directory with those weights
    (see :func:`flexicodec.codec.semantic.find_asr`). ``asr_path`` names a trained ASR
    directory to load when a codec is built (a relative path under ``flexicodec_pretrained/``,
    as in the presets and ``configs/codec/*.yaml``, names the models directory:
    :func:`flexicodec.common.models.resolve_models_path`); it is consumed (cleared) at
    construction and remembered in ``asr_source``, the first place looked at when the codec
    is loaded again.

    ``source="hf"``: a local transformers speech encoder (Wav2Vec2 / HuBERT / WavLM /
    Data2VecAudio / Whisper encoder) loaded from ``hf_path`` with ``local_files_only=True``
    at construction; its weights are *not* stored in the codec (only the path).

    ``layer``: hidden layer to use (None = the model's default: ASR ``feature_layer``, the
    last hidden state of an HF model).
    """

    source: str = "asr"
    asr_config: dict = field(default_factory=dict)
    asr_path: str = ""
    asr_identity: str = ""
    asr_source: str = ""
    hf_path: str = ""
    layer: int | None = None

    def __post_init__(self) -> None:
        if self.source not in ("asr", "hf"):
            raise ValueError(f"semantic source must be 'asr' or 'hf', got {self.source!r}")
        if self.source == "hf" and not self.hf_path:
            raise ValueError("semantic source 'hf' needs hf_path (a local model directory)")


@dataclass
class FlexiCodecConfig:
    """Sizes and settings of FlexiCodec. Frame rate = sample_rate / prod(encoder_rates)."""

    sample_rate: int = SAMPLE_RATE
    # --- acoustic encoder (DAC-style strided convs) ---
    encoder_dim: int = 16                          # channels of the first conv; doubles per stride
    encoder_rates: tuple = (4, 4, 5, 8, 2)         # product 1280 → 12.5 Hz at 16 kHz
    latent_dim: int = 256
    encoder_activation: str = "snake"              # 'snake' (DAC) or 'elu' (faster on CPU)
    # --- semantic path ---
    semantic_dim: int = 256                        # ConvNeXt width on the semantic stream
    semantic_layers: int = 2                       # ConvNeXt blocks before merging
    semantic_decoder_layers: int = 2               # ConvNeXt blocks: tokens → acoustic latent
    # the frozen ASR runs on windows of at most this many seconds (aligned on the frame grid)
    # with context on both sides, so its features do not depend on how long the input is
    # (it normalises per input, uses absolute positions and was trained on <= 20 s clips)
    semantic_window_seconds: float = 16.0
    semantic_context_seconds: float = 2.0
    fsq_levels: tuple = (8, 8, 8, 8)               # codebook = prod(levels)
    # --- acoustic RVQ (DAC-style factorised, l2-normalised codebooks) ---
    n_q: int = 8
    rvq_codebook_size: int = 1024
    rvq_codebook_dim: int = 8
    quantizer_dropout: float = 0.5                 # share of items trained with n < n_q
    # --- merging / unmerging transformers (RoPE, local attention, layer scale) ---
    transformer_layers: int = 2
    transformer_heads: int = 4
    transformer_window: int = 16                   # attends to |i - j| <= window // 2
    transformer_ff_mult: int = 4
    layer_scale_init: float = 0.01
    # --- Vocos-style decoder ---
    decoder_upsample: int = 4                      # 12.5 Hz → 50 Hz by ConvTranspose
    decoder_dim: int = 384
    decoder_intermediate_dim: int = 1152
    decoder_layers: int = 8
    n_fft: int = 1280
    hop_length: int = 320
    # --- merging ---
    max_group: int = 8
    # Training draws one target average rate per batch, uniform in this range (Hz), and each
    # utterance gets the threshold that reaches it (merging.merge_to_rate). The paper samples
    # the threshold itself in [0.8, 1.0], calibrated for SenseVoice features; with our small
    # ASR adjacent-frame similarities are far lower and that range gave 12.2-12.5 Hz, i.e. the
    # codec never trained at the rates it is evaluated at. Sampling the rate is independent of
    # the semantic model. See docs/ARCHITECTURE.md.
    train_frame_rate_range: tuple = (3.0, BASE_FRAME_RATE)
    # threshold used by encode() when neither a threshold nor a rate is given; the trainer
    # calibrates it on the valid split (`default_rate`) when it exports the model
    default_threshold: float = 0.91
    default_rate: float = 8.33
    fixed_group: int = 0                           # >0: merge every k frames (fixed-rate baseline)
    semantic: SemanticConfig = field(default_factory=SemanticConfig)

    def __post_init__(self) -> None:
        if isinstance(self.semantic, dict):
            self.semantic = config_from_dict(SemanticConfig, self.semantic)
        self.encoder_rates = tuple(int(r) for r in self.encoder_rates)
        self.fsq_levels = tuple(int(v) for v in self.fsq_levels)
        self.train_frame_rate_range = tuple(float(v) for v in self.train_frame_rate_range)
        if self.hop_size != self.decoder_upsample * self.hop_length:
            raise ValueError(
                f"decoder_upsample ({self.decoder_upsample}) x hop_length ({self.hop_length}) "
                f"must equal the encoder hop prod(encoder_rates) = {self.hop_size}")
        if self.n_fft < self.hop_length or (self.n_fft - self.hop_length) % 2:
            raise ValueError("n_fft must be >= hop_length with an even difference ('same' iSTFT)")
        if not 1 <= self.max_group <= 64:
            raise ValueError(f"max_group must be in [1, 64], got {self.max_group}")
        lo, hi = self.train_frame_rate_range
        if not (0.0 < lo <= hi <= BASE_FRAME_RATE):
            raise ValueError(f"train_frame_rate_range must satisfy 0 < lo <= hi <= "
                             f"{BASE_FRAME_RATE} Hz, got {self.train_frame_rate_range}")
        if not 0.0 < self.default_rate <= BASE_FRAME_RATE:
            raise ValueError(f"default_rate must be in (0, {BASE_FRAME_RATE}] Hz, got "
                             f"{self.default_rate}")
        if self.fixed_group < 0 or self.fixed_group > self.max_group:
            raise ValueError(f"fixed_group must be in [0, max_group], got {self.fixed_group}")
        if any(v < 2 for v in self.fsq_levels):
            raise ValueError(f"FSQ levels must be >= 2, got {self.fsq_levels}")
        if self.latent_dim % self.transformer_heads or \
                (self.latent_dim // self.transformer_heads) % 2:
            raise ValueError("latent_dim / transformer_heads must be an even integer (RoPE)")

    def draw_train_rate(self) -> float:
        """A training batch's target average rate (Hz): uniform in ``train_frame_rate_range``,
        from the global torch RNG (so a resumed run draws the same)."""
        lo, hi = self.train_frame_rate_range
        return float(lo + (hi - lo) * torch.rand(()).item())

    @property
    def hop_size(self) -> int:
        """Samples per 12.5 Hz frame (1280)."""
        return int(math.prod(self.encoder_rates))

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_size

    @property
    def semantic_vocab_size(self) -> int:
        return int(math.prod(self.fsq_levels))

    def bits_per_token(self, num_quantizers: int | None = None) -> float:
        """log2(FSQ codebook) + n_q·log2(RVQ codebook) + log2(max_group) (the length)."""
        n = self.n_q if num_quantizers is None else num_quantizers
        return (math.log2(self.semantic_vocab_size) + n * math.log2(self.rvq_codebook_size)
                + math.log2(self.max_group))

    # ---- presets -------------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str, **overrides) -> "FlexiCodecConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown codec preset {name!r}; choose from {sorted(PRESETS)}")
        return config_from_dict(cls, {**PRESETS[name], **overrides})

    @classmethod
    def tiny(cls, **overrides) -> "FlexiCodecConfig":
        return cls.preset("tiny", **overrides)

    @classmethod
    def small(cls, **overrides) -> "FlexiCodecConfig":
        return cls.preset("small", **overrides)

    @classmethod
    def base(cls, **overrides) -> "FlexiCodecConfig":
        return cls.preset("base", **overrides)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, **overrides) -> "FlexiCodecConfig":
        """The ``model:`` section of a YAML file (e.g. ``configs/codec/small.yaml``)."""
        path = Path(path)
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
            raise ValueError(f"{path}: no 'model:' section")
        return config_from_dict(cls, {**data["model"], **overrides})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# The presets. ``semantic.asr_config`` is filled from the ASR when a codec is built with
# ``semantic.asr_path``; the defaults here describe the ASR sizes the presets expect.
PRESETS: dict[str, dict] = {
    # for tests: well under a second per training step on CPU
    "tiny": dict(
        encoder_dim=4, latent_dim=32, semantic_dim=32, semantic_layers=1,
        semantic_decoder_layers=1, fsq_levels=(4, 4, 4), n_q=2, rvq_codebook_size=64,
        rvq_codebook_dim=4, transformer_layers=1, transformer_heads=2, decoder_dim=32,
        decoder_intermediate_dim=64, decoder_layers=1,
        # a tiny randomly initialised frozen ASR: tests only (features still vary with the
        # input); real codecs set semantic.asr_path to a trained ASR
        semantic=dict(source="asr", asr_config=dict(n_mels=32, d_model=32, n_layers=2,
                                                    n_heads=2, ff_dim=64, dropout=0.0)),
    ),
    # shipped default (~8-20 M parameters without the ASR). FSQ [8,8,8,8] = 4096 codes instead
    # of the paper's 32768: our corpus is hours, not thousands of hours, so a smaller semantic
    # vocabulary is used fully and keeps the LM's softmax small; RVQ 8 x 1024.
    "small": dict(
        # encoder: 8 base channels (→ 256 after five doublings) and ELU keep encoding fast on
        # CPU; the decoder (Vocos) carries most of the parameters
        encoder_dim=8, encoder_activation="elu", latent_dim=256, semantic_dim=256,
        semantic_layers=2,
        semantic_decoder_layers=2, fsq_levels=(8, 8, 8, 8), n_q=8, rvq_codebook_size=1024,
        rvq_codebook_dim=8, transformer_layers=2, transformer_heads=4, decoder_dim=384,
        decoder_intermediate_dim=1152, decoder_layers=8,
        semantic=dict(source="asr", asr_path="flexicodec_pretrained/asr"),
    ),
    # v2, sized for training on one GPU (configs/codec/v2.yaml): a DAC-like Snake encoder
    # (16 base channels → 512), 12 acoustic RVQ stages (0.6-2.4 kbps from one checkpoint by
    # quantizer dropout), Vocos decoder at 512 x 12 (8 until step 36,000, then grown; TTS
    # decoding stays far below real time on 2 CPU cores). 32.0 M parameters without the ASR.
    "v2": dict(
        encoder_dim=16, encoder_activation="snake", latent_dim=256, semantic_dim=256,
        semantic_layers=2, semantic_decoder_layers=2, fsq_levels=(8, 8, 8, 8), n_q=12,
        rvq_codebook_size=1024, rvq_codebook_dim=8, transformer_layers=2, transformer_heads=4,
        decoder_dim=512, decoder_intermediate_dim=1536, decoder_layers=12,
        semantic=dict(source="asr", asr_path="flexicodec_pretrained/asr"),
    ),
    # closer to the paper: latent 512, FSQ 32768 (= 8^5), RVQ 12 x 4096
    "base": dict(
        encoder_dim=32, latent_dim=512, semantic_dim=512, semantic_layers=4,
        semantic_decoder_layers=4, fsq_levels=(8, 8, 8, 8, 8), n_q=12, rvq_codebook_size=4096,
        rvq_codebook_dim=8, transformer_layers=6, transformer_heads=8, decoder_dim=512,
        decoder_intermediate_dim=1536, decoder_layers=8,
        semantic=dict(source="asr", asr_path="flexicodec_pretrained/asr"),
    ),
}
