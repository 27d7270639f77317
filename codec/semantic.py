"""The frozen semantic feature source of the codec, behind one contract.

Every source exposes ``hidden_states(wav [B, T], wav_lengths [B], layer=None) ->
(feats [B, T_f, D], feat_lengths [B])``, ``feature_rate`` (Hz) and ``feature_dim``, exactly
like :class:`flexicodec.codec.asr.model.PhonemeASR`. Two sources:

- :class:`ASRSemantic` — our PhonemeASR held as a submodule; a saved codec refers to it by
  the identity of its weights, and :func:`find_asr` finds it again when the codec is loaded.
- :class:`HFSemantic` — a local transformers speech encoder (Wav2Vec2, HuBERT, WavLM,
  Data2VecAudio, or a Whisper encoder) loaded with ``local_files_only=True`` from a path
  stored in the codec config; its weights are kept *out* of the codec's state dict. Its
  feature-extractor normalisation is done in torch (zero-mean/unit-variance per utterance
  for wav2vec2-style models; Whisper's log-mel for Whisper). Each utterance runs alone, so
  batching never changes its features.

:func:`to_frame_grid` brings features to the codec's 12.5 Hz grid by linear interpolation
over time (frame t sits at (t + 0.5) / 12.5 s).
"""
from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import torch
from torch import nn

from flexicodec.codec.config import SemanticConfig
from flexicodec.common.constants import BASE_FRAME_RATE, SAMPLE_RATE


def _freeze(module: nn.Module) -> None:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)


class ASRSemantic(nn.Module):
    """Our PhonemeASR as the semantic source. ``cfg.asr_path`` (if set) is loaded and then
    cleared (remembered in ``cfg.asr_source``), its config copied into ``cfg.asr_config``."""

    def __init__(self, cfg: SemanticConfig):
        super().__init__()
        from flexicodec.codec.asr.model import PhonemeASR, PhonemeASRConfig
        from flexicodec.common.pretrained import config_from_dict

        if cfg.asr_path:
            from flexicodec.common.models import resolve_models_path
            path = resolve_models_path(cfg.asr_path)
            self.asr = PhonemeASR.from_pretrained(path)
            cfg.asr_config = dataclasses.asdict(self.asr.config)
            cfg.asr_source = str(path.resolve())
            cfg.asr_path = ""
        else:
            self.asr = PhonemeASR(config_from_dict(PhonemeASRConfig, cfg.asr_config))
        self.layer = cfg.layer
        _freeze(self.asr)

    @property
    def feature_rate(self) -> float:
        return float(self.asr.feature_rate)

    @property
    def feature_dim(self) -> int:
        return int(self.asr.feature_dim)

    def train(self, mode: bool = True):
        super().train(False)   # always frozen / eval
        return self

    def hidden_states(self, wav, wav_lengths=None, layer=None):
        return self.asr.hidden_states(wav, wav_lengths, self.layer if layer is None else layer)


def asr_weights_identity(asr: nn.Module) -> str:
    """The identity a codec records for its ASR: the hash of the ASR's weights."""
    from flexicodec.common.pretrained import state_dict_identity

    return state_dict_identity(asr.state_dict())


def find_asr(identity: str, explicit: str | os.PathLike | None = None, source: str = "",
             codec_dir: str | os.PathLike | None = None) -> Path:
    """The ASR directory whose weights have ``identity``.

    Looked up, in order: ``explicit`` (``--asr DIR``; it must match), ``source`` (where the
    codec's ASR was loaded from when it was built), the ASR folders beside the codec
    directory (``codec_dir``'s parent, e.g. ``flexicodec_pretrained/asr`` beside
    ``flexicodec_pretrained/codec``), then the models directory (``$FLEXICODEC_MODELS``, else
    the checkout's ``flexicodec_pretrained/``). Raises CheckpointError (one line) when none
    has those weights.
    """
    from flexicodec.common.models import MODELS_ENV, ModelsDirError, models_dir
    from flexicodec.common.pretrained import CheckpointError

    if explicit is not None:
        got = _asr_dir_identity(Path(explicit))
        if got != identity:
            raise CheckpointError(f"ASR {explicit}: " + (
                "not an ASR model directory" if got is None else
                f"its weights have identity {got}, the codec needs {identity}"))
        return Path(explicit)
    places: list[Path] = []
    if source:
        places.append(Path(source))
    parent = Path(codec_dir).resolve().parent if codec_dir is not None else None
    if parent is not None and parent.is_dir():
        places += sorted(p for p in parent.iterdir() if p.is_dir())
    try:
        root = models_dir()
        places += sorted(p for p in root.iterdir() if p.is_dir())
        where = f"the models directory {root}"
    except ModelsDirError:
        where = f"no models directory ({MODELS_ENV} unset or missing)"
    seen: set[Path] = set()
    for place in places:
        key = place.resolve()
        if key in seen:
            continue
        seen.add(key)
        if _asr_dir_identity(place) == identity:
            return place
    beside = f"the folders beside {codec_dir}, " if codec_dir is not None else ""
    raise CheckpointError(f"the codec needs the ASR with identity {identity}: not found in "
                          f"{beside}{where}; set {MODELS_ENV} to a folder holding it or pass "
                          f"--asr DIR")


def _asr_dir_identity(path: Path) -> str | None:
    """Identity of the weights of the ASR model directory ``path`` (None: not an ASR dir)."""
    import json

    from flexicodec.codec.asr.model import PhonemeASR
    from flexicodec.common.pretrained import CONFIG_NAME, _load_sharded, state_dict_identity

    cfg = path / CONFIG_NAME
    if not cfg.is_file():
        return None
    try:
        if json.loads(cfg.read_text()).get("model_type") != PhonemeASR.model_type:
            return None
    except ValueError:
        return None
    return state_dict_identity(_load_sharded(path, "cpu"))


_W2V_TYPES = ("wav2vec2", "hubert", "wavlm", "data2vec-audio", "wav2vec2-conformer", "unispeech",
              "unispeech-sat", "sew", "sew-d")


class HFSemantic(nn.Module):
    """A local transformers speech encoder. Weights stay out of the state dict."""

    def __init__(self, cfg: SemanticConfig):
        super().__init__()
        from transformers import AutoConfig, AutoFeatureExtractor, AutoModel

        path = Path(cfg.hf_path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"semantic model {path}: no local transformers model there (config.json "
                f"missing); the codec stores only this path, so it must exist on this machine")
        hf_cfg = AutoConfig.from_pretrained(str(path), local_files_only=True)
        self.kind = hf_cfg.model_type
        if self.kind not in _W2V_TYPES and self.kind != "whisper":
            raise ValueError(f"semantic model {path}: unsupported model_type {self.kind!r} "
                             f"(supported: {', '.join(_W2V_TYPES)}, whisper)")
        try:
            fe = AutoFeatureExtractor.from_pretrained(str(path), local_files_only=True)
        except Exception as exc:
            raise FileNotFoundError(
                f"semantic model {path}: no feature extractor config "
                f"(preprocessor_config.json) to take its input normalisation from ({exc})"
            ) from exc
        if getattr(fe, "sampling_rate", SAMPLE_RATE) != SAMPLE_RATE:
            raise ValueError(f"semantic model {path} expects {fe.sampling_rate} Hz, not 16 kHz")
        model = AutoModel.from_pretrained(str(path), local_files_only=True)
        if self.kind == "whisper":
            model = model.get_encoder()
            self.feature_dim = int(hf_cfg.d_model)
            self.feature_rate = 50.0
            self.n_fft, self.hop = int(fe.n_fft), int(fe.hop_length)
            self.chunk = int(fe.n_samples)
            self.register_buffer("mel_filters", torch.tensor(fe.mel_filters, dtype=torch.float32),
                                 persistent=False)
            self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)
        else:
            self.feature_dim = int(hf_cfg.hidden_size)
            self.feature_rate = SAMPLE_RATE / math.prod(hf_cfg.conv_stride)
            self.do_normalize = bool(getattr(fe, "do_normalize", True))
        n_layers = int(getattr(hf_cfg, "num_hidden_layers", 0) or hf_cfg.encoder_layers)
        self.layer = n_layers if cfg.layer is None or cfg.layer == -1 else int(cfg.layer)
        if not 0 <= self.layer <= n_layers:
            raise ValueError(f"semantic layer {cfg.layer} outside [0, {n_layers}]")
        _freeze(model)
        self._hf = [model]          # a list: not a registered submodule → not in state_dict

    @property
    def model(self) -> nn.Module:
        return self._hf[0]

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self._hf[0]._apply(fn)
        return self

    def train(self, mode: bool = True):
        super().train(False)
        return self

    def _whisper_input(self, x: torch.Tensor) -> torch.Tensor:
        """x [T] (≤ one chunk) → log-mel [1, n_mels, 3000] as WhisperFeatureExtractor."""
        x = nn.functional.pad(x.float(), (0, self.chunk - x.shape[0]))
        spec = torch.stft(x, self.n_fft, self.hop, window=self.window, center=True,
                          pad_mode="reflect", return_complex=True)
        mag = spec[..., :-1].abs().pow(2)
        mel = self.mel_filters.t() @ mag
        log = torch.log10(mel.clamp(min=1e-10))
        log = torch.maximum(log, log.max() - 8.0)
        return ((log + 4.0) / 4.0)[None]

    @torch.no_grad()
    def hidden_states(self, wav, wav_lengths=None, layer=None):
        layer = self.layer if layer is None else layer
        B = wav.shape[0]
        if wav_lengths is None:
            wav_lengths = torch.full((B,), wav.shape[1], dtype=torch.long, device=wav.device)
        dtype = next(self.model.parameters()).dtype
        outs = []
        for b in range(B):
            x = wav[b, : int(wav_lengths[b])].float()
            if self.kind == "whisper":
                n_out = math.ceil(x.shape[0] / self.hop / 2)
                parts = []
                for s in range(0, x.shape[0], self.chunk):
                    seg = x[s:s + self.chunk]
                    hs = self.model(self._whisper_input(seg).to(dtype),
                                    output_hidden_states=True).hidden_states[layer][0]
                    parts.append(hs[: math.ceil(seg.shape[0] / self.hop / 2)])
                outs.append(torch.cat(parts)[:n_out].float())
            else:
                if self.do_normalize:
                    x = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-7)
                hs = self.model(x[None].to(dtype), output_hidden_states=True).hidden_states
                outs.append(hs[layer][0].float())
        lengths = torch.tensor([o.shape[0] for o in outs], dtype=torch.long, device=wav.device)
        feats = wav.new_zeros(B, int(lengths.max()), self.feature_dim, dtype=torch.float32)
        for b, o in enumerate(outs):
            feats[b, : o.shape[0]] = o
        return feats, lengths


def build_semantic(cfg: SemanticConfig) -> nn.Module:
    """The semantic source named by ``cfg`` (frozen, eval mode)."""
    if cfg.source == "asr":
        return ASRSemantic(cfg)
    if cfg.source == "hf":
        return HFSemantic(cfg)
    raise ValueError(f"unknown semantic source {cfg.source!r}")


def to_frame_grid(feats: torch.Tensor, feat_lengths: torch.Tensor, feature_rate: float,
                  num_frames: torch.Tensor, frame_rate: float = BASE_FRAME_RATE,
                  total_frames: int | None = None) -> torch.Tensor:
    """Linear interpolation over time: feats [B, T_f, D] at ``feature_rate`` Hz →
    [B, F, D] at ``frame_rate`` Hz, exactly ``num_frames[b]`` valid frames (zero after)."""
    B, Tf, D = feats.shape
    F_ = int(num_frames.max()) if total_frames is None else total_frames
    t = torch.arange(F_, device=feats.device, dtype=torch.float32)
    pos = (t[None, :] + 0.5) * (feature_rate / frame_rate) - 0.5             # [1, F]
    last = (feat_lengths.clamp(min=1) - 1).float()[:, None]                 # [B, 1]
    pos = torch.minimum(pos.clamp(min=0.0).expand(B, F_), last)
    lo = pos.floor().long()
    hi = torch.minimum(lo + 1, last.long())
    w = (pos - lo.float())[..., None]
    f = feats.float()
    out = f.gather(1, lo[..., None].expand(-1, -1, D)) * (1 - w) \
        + f.gather(1, hi[..., None].expand(-1, -1, D)) * w
    valid = t[None, :] < num_frames[:, None]
    return out * valid[..., None]
