"""A small CTC phoneme recognizer: the codec's default frozen semantic model.

16 kHz wav ``[B, T]`` → log-mel (100 Hz, :class:`flexicodec.codec.mel.MelSpectrogram`) → per-utterance
mean/variance normalisation over valid frames → strided conv subsampling (×2 or ×4 → 50 or
25 Hz) → pre-norm transformer encoder with padding masks → CTC head over an IPA
phoneme-character vocabulary stored in the config (``<blank>`` = 0, ``<unk>`` = 1, ``" "`` is
the word boundary).

Contract (docs/ARCHITECTURE.md): ``hidden_states``, ``feature_rate``, ``feature_dim``,
``forward``, ``transcribe``, ``tokenize``.
"""
from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass, field
from typing import Iterable

import torch
from torch import nn

from flexicodec.codec.mel import MelSpectrogram, stft_frames
from flexicodec.common.pretrained import PretrainedMixin
from flexicodec.common.constants import SAMPLE_RATE

BLANK = "<blank>"
UNK = "<unk>"
WORD_SEP = " "
#: symbols removed before tokenising (espeak stress marks; not reliably audible)
DEFAULT_STRIP = "ˈˌ"


def normalize_phonemes(phonemes: str, strip_chars: str = DEFAULT_STRIP) -> str:
    """NFC-normalise, drop ``strip_chars`` and collapse whitespace to single spaces."""
    s = unicodedata.normalize("NFC", phonemes)
    if strip_chars:
        s = s.translate({ord(c): None for c in strip_chars})
    return " ".join(s.split())


def build_vocab(phoneme_strings: Iterable[str], strip_chars: str = DEFAULT_STRIP,
                min_count: int = 1) -> list[str]:
    """Vocabulary ``[<blank>, <unk>, " ", *sorted symbols]`` from corpus phoneme strings.

    Symbols are Unicode characters of the normalised strings seen at least ``min_count``
    times. Raises ValueError if no phonemes are given (e.g. a corpus without a phonemes
    column).
    """
    counts: dict[str, int] = {}
    for s in phoneme_strings:
        for ch in normalize_phonemes(s or "", strip_chars):
            if ch != WORD_SEP:
                counts[ch] = counts.get(ch, 0) + 1
    if not counts:
        raise ValueError("no phonemes found to build the ASR vocabulary (is the corpus' "
                         "'phonemes' column empty?)")
    symbols = sorted(c for c, n in counts.items() if n >= min_count)
    return [BLANK, UNK, WORD_SEP, *symbols]


@dataclass
class PhonemeASRConfig:
    """Sizes of :class:`PhonemeASR`. ``vocab`` must start with ``<blank>``, ``<unk>``."""

    vocab: list[str] = field(default_factory=lambda: [BLANK, UNK, WORD_SEP])
    strip_chars: str = DEFAULT_STRIP
    sample_rate: int = SAMPLE_RATE
    n_fft: int = 400          # 25 ms window
    hop_length: int = 160     # 10 ms → 100 Hz mel frames
    n_mels: int = 80
    subsampling: int = 4      # 2 → 50 Hz, 4 → 25 Hz features
    d_model: int = 256
    n_layers: int = 6
    n_heads: int = 4
    ff_dim: int = 1024
    dropout: float = 0.1
    #: layer returned by ``hidden_states`` when none is given (0 = subsampling output,
    #: i = after transformer block i; ``n_layers`` is the final, layer-normed output)
    feature_layer: int = -1   # -1 → n_layers

    def __post_init__(self) -> None:
        if list(self.vocab[:2]) != [BLANK, UNK]:
            raise ValueError(f"ASR vocab must start with {BLANK!r}, {UNK!r}; got "
                             f"{list(self.vocab[:3])}")
        if len(set(self.vocab)) != len(self.vocab):
            raise ValueError("ASR vocab has duplicate symbols")
        if self.subsampling not in (2, 4):
            raise ValueError(f"subsampling must be 2 or 4, got {self.subsampling}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} not divisible by n_heads {self.n_heads}")
        if not -1 <= self.feature_layer <= self.n_layers:
            raise ValueError(f"feature_layer {self.feature_layer} outside [-1, {self.n_layers}]")
        self.vocab = list(self.vocab)

    @classmethod
    def tiny(cls, vocab: list[str] | None = None, **kw) -> "PhonemeASRConfig":
        """A few-thousand-parameter model for tests."""
        base = dict(n_mels=32, d_model=32, n_layers=2, n_heads=2, ff_dim=64, dropout=0.0)
        base.update(kw)
        if vocab is None:
            vocab = [BLANK, UNK, WORD_SEP, *"abdefhijklmnoprstuvwzæðŋɑɔəɛɪʃʊʌʒθ"]
        return cls(vocab=vocab, **base)

    @classmethod
    def small(cls, vocab: list[str], **kw) -> "PhonemeASRConfig":
        base = dict(n_mels=80, d_model=256, n_layers=6, n_heads=4, ff_dim=1024, dropout=0.1)
        base.update(kw)
        return cls(vocab=vocab, **base)


def lengths_to_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """``[B]`` lengths → bool mask ``[B, max_len]``, True on valid positions."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def _conv_out(lengths: torch.Tensor) -> torch.Tensor:
    """Output length of Conv1d(kernel 3, stride 2, padding 1)."""
    return torch.div(lengths - 1, 2, rounding_mode="floor") + 1


class _Subsampling(nn.Module):
    """[B, n_mels, F] → [B, F / factor, d_model] with strided 1-d convolutions."""

    def __init__(self, n_mels: int, d_model: int, factor: int):
        super().__init__()
        self.n = int(math.log2(factor))
        self.convs = nn.ModuleList(
            nn.Conv1d(n_mels if i == 0 else d_model, d_model, 3, stride=2, padding=1)
            for i in range(self.n))
        self.proj = nn.Linear(d_model, d_model)

    def out_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        for _ in range(self.n):
            lengths = _conv_out(lengths)
        return lengths

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x ``[B, n_mels, F]`` (zero beyond ``lengths``) → (``[B, F', D]``, lengths ``[B]``).
        Padding is re-zeroed after each conv so batching never changes valid frames."""
        for conv in self.convs:
            x = nn.functional.gelu(conv(x))
            lengths = _conv_out(lengths).clamp(max=x.shape[-1])
            x = x * lengths_to_mask(lengths, x.shape[-1])[:, None, :].to(x.dtype)
        return self.proj(x.transpose(1, 2)), lengths


def sinusoidal_positions(length: int, dim: int, device, dtype) -> torch.Tensor:
    """``[length, dim]`` sinusoidal position table."""
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32)
                    * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim, device=device)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div[: dim // 2])
    return pe.to(dtype)


class PhonemeASR(nn.Module, PretrainedMixin):
    """CTC phoneme recognizer; see the module docstring for the pipeline and contract."""

    config_class = PhonemeASRConfig
    model_type = "flexicodec-asr"
    pretrained_name = "asr"

    def __init__(self, config: PhonemeASRConfig):
        super().__init__()
        self.config = config
        c = config
        self.mel = MelSpectrogram(c.sample_rate, c.n_fft, c.hop_length, n_mels=c.n_mels,
                                  power=2.0, log=True, eps=1e-6, pad_mode="constant")
        self.subsample = _Subsampling(c.n_mels, c.d_model, c.subsampling)
        self.dropout = nn.Dropout(c.dropout)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(c.d_model, c.n_heads, c.ff_dim, c.dropout,
                                       activation="gelu", batch_first=True, norm_first=True)
            for _ in range(c.n_layers))
        self.final_norm = nn.LayerNorm(c.d_model)
        self.head = nn.Linear(c.d_model, len(c.vocab))
        self._sym2id = {s: i for i, s in enumerate(c.vocab)}

    # ---- contract properties -------------------------------------------------------------
    @property
    def feature_rate(self) -> float:
        """Frames per second of ``hidden_states`` (25.0 or 50.0 with the defaults)."""
        c = self.config
        return c.sample_rate / c.hop_length / c.subsampling

    @property
    def feature_dim(self) -> int:
        return self.config.d_model

    @property
    def vocab(self) -> list[str]:
        return self.config.vocab

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    # ---- text side -----------------------------------------------------------------------
    def tokenize(self, phonemes: str) -> list[int]:
        """IPA phoneme string → ids (stress marks stripped; unseen symbols → ``<unk>``)."""
        unk = self._sym2id[UNK]
        return [self._sym2id.get(ch, unk)
                for ch in normalize_phonemes(phonemes, self.config.strip_chars)]

    def decode_ids(self, ids: Iterable[int]) -> str:
        """Ids (already CTC-collapsed) → phoneme string; blanks and ``<unk>`` are dropped."""
        out = []
        for i in ids:
            i = int(i)
            if i <= 1 or i >= len(self.config.vocab):
                continue
            out.append(self.config.vocab[i])
        return " ".join("".join(out).split())

    # ---- audio side ----------------------------------------------------------------------
    def _check(self, wav: torch.Tensor, wav_lengths: torch.Tensor | None) -> torch.Tensor:
        if wav.dim() == 1:
            raise ValueError("PhonemeASR expects a batch wav [B, T]; got a 1-d tensor "
                             "(use wav[None])")
        if wav.dim() != 2:
            raise ValueError(f"PhonemeASR expects wav [B, T], got shape {tuple(wav.shape)}")
        if wav_lengths is None:
            wav_lengths = torch.full((wav.shape[0],), wav.shape[1], dtype=torch.long,
                                     device=wav.device)
        wav_lengths = wav_lengths.to(wav.device).long()
        if wav_lengths.shape != (wav.shape[0],):
            raise ValueError(f"wav_lengths must be [B]={wav.shape[0]}, got "
                             f"{tuple(wav_lengths.shape)}")
        if (wav_lengths < 1).any() or (wav_lengths > wav.shape[1]).any():
            raise ValueError("wav_lengths must lie in [1, T]")
        return wav_lengths

    def features_front(self, wav: torch.Tensor, wav_lengths: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised log-mel ``[B, n_mels, F]`` and frame lengths ``[B]``."""
        mel = self.mel(wav)                                        # [B, M, F] fp32
        mel_len = stft_frames(wav_lengths, self.config.hop_length).clamp(max=mel.shape[-1])
        mask = lengths_to_mask(mel_len, mel.shape[-1])[:, None, :].float()  # [B, 1, F]
        n = mask.sum(-1, keepdim=True).clamp(min=1.0)
        mean = (mel * mask).sum(-1, keepdim=True) / n
        var = ((mel - mean).pow(2) * mask).sum(-1, keepdim=True) / n
        mel = (mel - mean) / torch.sqrt(var + 1e-5) * mask
        return mel, mel_len

    def _encode(self, wav: torch.Tensor, wav_lengths: torch.Tensor | None, upto: int,
                mel_transform=None, every_layer: bool = False):
        """Encoder output after ``upto`` blocks (final norm when ``upto`` is the last), or with
        ``every_layer`` the list of outputs after 0..``upto`` blocks, from one pass."""
        wav_lengths = self._check(wav, wav_lengths)
        wav = wav * lengths_to_mask(wav_lengths, wav.shape[1]).to(wav.dtype)
        mel, mel_len = self.features_front(wav, wav_lengths)
        if mel_transform is not None:
            mel = mel_transform(mel, mel_len)
        x, feat_len = self.subsample(mel.to(self.subsample.proj.weight.dtype), mel_len)
        x = x + sinusoidal_positions(x.shape[1], x.shape[2], x.device, x.dtype)
        x = self.dropout(x)
        pad = ~lengths_to_mask(feat_len, x.shape[1])                    # True on padding

        def out(h: torch.Tensor, k: int) -> torch.Tensor:
            h = self.final_norm(h) if k == len(self.layers) else h
            return h.masked_fill(pad[..., None], 0.0)

        outs = [out(x, 0)] if every_layer else []
        for k, layer in enumerate(self.layers[:upto], 1):
            x = layer(x, src_key_padding_mask=pad)
            if every_layer:
                outs.append(out(x, k))
        return (outs if every_layer else out(x, upto)), feat_len

    def hidden_states(self, wav: torch.Tensor, wav_lengths: torch.Tensor | None = None,
                      layer: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """wav ``[B, T]`` (16 kHz) → (feats ``[B, T_f, D]``, feat_lengths ``[B]``).

        ``layer``: 0 = subsampling output, i = after block i, ``n_layers`` (or -1) = final
        layer-normed output; default ``config.feature_layer``. Padding frames are zero.
        """
        n = len(self.layers)
        layer = self.config.feature_layer if layer is None else layer
        if layer == -1:
            layer = n
        if not 0 <= layer <= n:
            raise ValueError(f"layer {layer} outside [0, {n}] (or -1)")
        return self._encode(wav, wav_lengths, layer)

    def all_hidden_states(self, wav: torch.Tensor, wav_lengths: torch.Tensor | None = None
                          ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """One encoder pass → (``[hidden_states(layer=k) for k in 0..n_layers]``, each
        ``[B, T_f, D]``, feat_lengths ``[B]``); the last entry feeds the CTC head."""
        return self._encode(wav, wav_lengths, len(self.layers), every_layer=True)

    def forward(self, wav: torch.Tensor, wav_lengths: torch.Tensor | None = None,
                mel_transform=None) -> tuple[torch.Tensor, torch.Tensor]:
        """wav ``[B, T]`` → (CTC logits ``[B, T_f, V]``, feat_lengths ``[B]``).

        ``mel_transform(mel [B, M, F], mel_len [B]) -> mel`` is a training hook (SpecAugment).
        """
        x, feat_len = self._encode(wav, wav_lengths, len(self.layers), mel_transform)
        return self.head(x), feat_len

    def ctc_loss(self, logits: torch.Tensor, feat_lengths: torch.Tensor,
                 targets: list[list[int]]) -> torch.Tensor:
        """Mean CTC loss (per target symbol) of logits ``[B, T_f, V]`` against id lists."""
        if len(targets) != logits.shape[0]:
            raise ValueError(f"{len(targets)} targets for a batch of {logits.shape[0]}")
        flat = torch.tensor([i for t in targets for i in t], dtype=torch.long,
                            device=logits.device)
        tgt_len = torch.tensor([len(t) for t in targets], dtype=torch.long, device=logits.device)
        logp = logits.float().log_softmax(-1).transpose(0, 1)           # [T_f, B, V]
        return nn.functional.ctc_loss(logp, flat, feat_lengths, tgt_len, blank=0,
                                      reduction="mean", zero_infinity=True)

    @torch.no_grad()
    def greedy_ids(self, wav: torch.Tensor, wav_lengths: torch.Tensor | None = None
                   ) -> list[list[int]]:
        """Greedy CTC: argmax per frame, merge repeats, drop blanks → id lists."""
        logits, feat_len = self(wav, wav_lengths)
        best = logits.argmax(-1).cpu()
        out = []
        for b in range(best.shape[0]):
            seq = best[b, : int(feat_len[b])].tolist()
            ids, prev = [], -1
            for i in seq:
                if i != prev and i != 0:
                    ids.append(i)
                prev = i
            out.append(ids)
        return out

    @torch.no_grad()
    def transcribe(self, wav: torch.Tensor, wav_lengths: torch.Tensor | None = None
                   ) -> list[str]:
        """wav ``[B, T]`` → greedy-CTC phoneme strings (one per utterance)."""
        return [self.decode_ids(ids) for ids in self.greedy_ids(wav, wav_lengths)]


def edit_distance(a: list, b: list) -> int:
    """Levenshtein distance between two sequences."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def phoneme_error_counts(hyp: str, ref: str, strip_chars: str = DEFAULT_STRIP
                         ) -> tuple[int, int]:
    """(edit distance, reference length) over phoneme symbols, word boundaries ignored."""
    h = [c for c in normalize_phonemes(hyp, strip_chars) if c != WORD_SEP]
    r = [c for c in normalize_phonemes(ref, strip_chars) if c != WORD_SEP]
    return edit_distance(h, r), len(r)
