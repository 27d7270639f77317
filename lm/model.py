"""The speech LM: a transformers causal LM (Llama or Qwen2) plus a token-length head.

- Input embedding at position p: ``E[input_ids[p]] + E[length_id(length_in[p])]`` (the second
  term only where ``length_in[p] > 0``): the previous semantic token's length, embedded with
  the length tokens of the same vocabulary.
- Outputs at position p: next-token ``logits`` over the vocabulary and ``length_logits`` over
  ``max_group`` classes (class k = length k + 1) for the token *at* position p.

A model directory::

    DIR/config.json            {"model_type": "flexicodec-lm", "config": SpeechLMConfig, ...}
    DIR/backbone/              transformers save_pretrained (safetensors, shards <= 15 MB)
    DIR/heads.safetensors      the length head
    DIR/phoneme_vocab.json     the phoneme vocabulary (text_input "phoneme"), or
    DIR/text_tokenizer.model   the sentencepiece model (text_input "bpe"), when saved with one

``from_pretrained(DIR, codec=...)`` refuses a codec whose identity or FSQ size differs from
the one the LM was trained on.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

from flexicodec.common.atomic import atomic_path
from flexicodec.common.pretrained import (CheckpointError, check_weight_file, config_from_dict, config_to_dict, load_weight_file, state_dict_identity)
from flexicodec.lm.layout import IGNORE, label_types
from flexicodec.lm.text_input import LEGACY_TEXT_INPUT, check_text_input, load_tokenizer, tokenizer_file
from flexicodec.lm.vocab import DEFAULT_FRAME_RATES, PAD, TYPE_SEMANTIC, TYPE_TEXT, LMVocab

MODEL_TYPE = "flexicodec-lm"
#: dense bf16 peak of one H100 / H200 SXM (FLOP/s): the default denominator of MFU
DEFAULT_PEAK_FLOPS = 989e12
CONFIG_NAME = "config.json"
HEADS_NAME = "heads.safetensors"
BACKBONE_DIR = "backbone"


@dataclass
class SpeechLMConfig:
    """Backbone sizes, the vocabulary, and the codec the LM belongs to."""

    arch: str = "llama"                 # "llama" or "qwen2"
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 4
    intermediate_size: int = 688
    max_positions: int = 2048
    rope_theta: float = 10000.0
    attention_dropout: float = 0.0
    num_text: int = 1000
    semantic_size: int = 1024
    max_group: int = 8
    frame_rates: tuple[float, ...] = field(default_factory=lambda: DEFAULT_FRAME_RATES)
    codec_identity: str = ""            # FlexiCodec.identity the codes came from
    codec_model_type: str = "flexicodec"
    # "phoneme" (espeak-ng phonemes) or "bpe" (sentencepiece pieces); num_text is the size of
    # that vocabulary (lm/text_input.py). Saved configs without the key are "bpe".
    text_input: str = "phoneme"

    def __post_init__(self) -> None:
        check_text_input(self.text_input)

    def vocab(self) -> LMVocab:
        return LMVocab(self.num_text, self.semantic_size, self.max_group, self.frame_rates)


def _hf_config(cfg: SpeechLMConfig, vocab_size: int):
    common = dict(vocab_size=vocab_size, hidden_size=cfg.hidden_size,
                  num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                  num_key_value_heads=cfg.num_kv_heads, intermediate_size=cfg.intermediate_size,
                  max_position_embeddings=cfg.max_positions, attention_dropout=cfg.attention_dropout,
                  pad_token_id=PAD, bos_token_id=None, eos_token_id=None,
                  tie_word_embeddings=False)
    if cfg.arch == "llama":
        from transformers import LlamaConfig
        hf = LlamaConfig(**common)
    elif cfg.arch == "qwen2":
        from transformers import Qwen2Config
        hf = Qwen2Config(**common)
    else:
        raise ValueError(f"unknown LM arch {cfg.arch!r} (use 'llama' or 'qwen2')")
    # rope settings moved between transformers versions: set both spellings
    hf.rope_theta = cfg.rope_theta
    rp = getattr(hf, "rope_parameters", None)
    if isinstance(rp, dict):
        rp["rope_theta"] = cfg.rope_theta
    return hf


def config_from_saved(d: dict) -> SpeechLMConfig:
    """SpeechLMConfig from a saved ``config.json`` / ``lm_config.json`` dict; one written
    before ``text_input`` existed is a BPE LM."""
    return config_from_dict(SpeechLMConfig, {"text_input": LEGACY_TEXT_INPUT, **d})


def make_cache(hf_config, max_cache_len: int | None = None):
    """A fresh transformers DynamicCache (constructor differs between versions), or with
    ``max_cache_len`` a StaticCache of that many positions (preallocated keys/values, fixed
    shapes: what ``torch.compile`` needs)."""
    if max_cache_len is not None:
        from transformers import StaticCache
        return StaticCache(config=hf_config, max_cache_len=int(max_cache_len))
    from transformers import DynamicCache
    try:
        return DynamicCache(config=hf_config)
    except TypeError:
        return DynamicCache()


@dataclass
class SpeechLMOutput:
    logits: torch.Tensor          # [B, L, V]
    length_logits: torch.Tensor   # [B, L, max_group]


class SpeechLM(nn.Module):
    """Text → semantic tokens + token lengths (see module docstring)."""

    model_type = MODEL_TYPE

    def __init__(self, config: SpeechLMConfig):
        super().__init__()
        from transformers import AutoModelForCausalLM

        self.config = config
        self.vocab = config.vocab()
        self.backbone = AutoModelForCausalLM.from_config(_hf_config(config, self.vocab.size))
        self.length_head = nn.Linear(config.hidden_size, config.max_group)
        # loss group of every id, on the model's device (no host copy per step)
        self.register_buffer("_token_types", self.vocab.token_types(), persistent=False)
        self._cache_kw = ("cache" if "cache" in inspect.signature(
            self.decoder.forward).parameters else "past_key_values")

    # the decoder stack / head of the backbone (works under peft wrapping too)
    @property
    def decoder(self) -> nn.Module:
        return self.backbone.get_decoder()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def train_flops(self, seq_lengths) -> float:
        """Model FLOPs of one training step (forward + backward) over sequences of these
        lengths (each attending only to itself, as in packed rows): 6·N·ΣL +
        12·layers·d·ΣL² (full attention counted, as in PaLM's MFU), N = parameters without
        the input embedding table (the LM head counts)."""
        emb = self.backbone.get_input_embeddings().weight.numel()
        n = self.num_parameters() - emb
        c = self.config
        return (6.0 * n * sum(seq_lengths)
                + 12.0 * c.num_layers * c.hidden_size * sum(L * L for L in seq_lengths))

    def embed(self, input_ids: torch.Tensor, length_in: torch.Tensor) -> torch.Tensor:
        """input_ids, length_in [B, L] -> embeddings [B, L, D] (no host synchronisation: the
        length embedding is added everywhere, times 0 where ``length_in`` is 0)."""
        table = self.backbone.get_input_embeddings()
        x = table(input_ids)
        has = length_in > 0
        ids = (length_in.clamp(1, self.vocab.max_group) - 1 + self.vocab.length_offset)
        return x + table(ids) * has.unsqueeze(-1).to(x.dtype)

    def forward(self, input_ids: torch.Tensor, length_in: torch.Tensor,
                attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cache: Any = None,
                **_: Any) -> SpeechLMOutput:
        """input_ids, length_in, attention_mask, position_ids [B, L]; ``cache`` a
        DynamicCache that is extended in place (``attention_mask`` then covers past + new).
        Packed rows (several sequences per row, ``flexicodec.lm.layout.collate_packed``): no
        ``attention_mask`` and ``position_ids`` restarting at 0 for each sequence, so each
        attends only within itself (transformers' packed-sequence masking)."""
        x = self.embed(input_ids, length_in)
        kw = {self._cache_kw: cache, "use_cache": cache is not None}
        h = self.decoder(inputs_embeds=x, attention_mask=attention_mask,
                         position_ids=position_ids, **kw).last_hidden_state
        logits = self.backbone.get_output_embeddings()(h)
        return SpeechLMOutput(logits=logits.float(),
                              length_logits=self.length_head(h).float())

    def loss(self, batch: dict[str, torch.Tensor], out: SpeechLMOutput | None = None,
             text_weight: float = 0.1, length_weight: float = 1.0) -> dict[str, torch.Tensor]:
        """Losses for a collated batch (lm.layout.collate or collate_packed). Returns ``loss``
        (weighted total) and per type ``text_loss``, ``semantic_loss``, ``length_loss`` (means) plus the token
        counts ``n_text``, ``n_semantic``, ``n_length`` and summed ``*_sum`` values."""
        if out is None:
            out = self(batch["input_ids"], batch["length_in"], batch.get("attention_mask"),
                       batch["position_ids"])
        labels = batch["labels"]
        V = out.logits.shape[-1]
        tok = F.cross_entropy(out.logits.reshape(-1, V), labels.reshape(-1),
                              ignore_index=IGNORE, reduction="none").view_as(labels)
        types = label_types(self.vocab, labels, self._token_types)
        ll = batch["length_labels"]
        lenl = F.cross_entropy(out.length_logits.reshape(-1, out.length_logits.shape[-1]),
                               ll.reshape(-1), ignore_index=IGNORE,
                               reduction="none").view_as(ll)
        res: dict[str, torch.Tensor] = {}
        for name, sel, vals in (("text", types == TYPE_TEXT, tok),
                                ("semantic", types == TYPE_SEMANTIC, tok),
                                ("length", ll != IGNORE, lenl)):
            n = sel.sum()
            s = (vals * sel).sum()
            res[f"n_{name}"] = n
            res[f"{name}_sum"] = s.detach()
            res[f"{name}_loss"] = s / n.clamp(min=1)
        res["loss"] = (text_weight * res["text_loss"] + res["semantic_loss"]
                       + length_weight * res["length_loss"])
        return res

    # ---------------------------------------------------------------- codec identity
    def check_codec(self, codec: Any) -> None:
        """Raise CheckpointError if ``codec`` is not the codec this LM was trained on."""
        size = int(getattr(codec, "semantic_vocab_size"))
        if size != self.config.semantic_size:
            raise CheckpointError(f"codec has {size} semantic codes, the LM was trained on "
                                  f"{self.config.semantic_size}")
        mg = int(getattr(codec, "max_group", self.config.max_group))
        if mg != self.config.max_group:
            raise CheckpointError(f"codec max_group {mg} != LM max_group "
                                  f"{self.config.max_group}")
        ident = str(getattr(codec, "identity", ""))
        if self.config.codec_identity and ident != self.config.codec_identity:
            raise CheckpointError(f"codec identity {ident!r} differs from the LM's codec "
                                  f"{self.config.codec_identity!r}: re-tokenize and retrain, "
                                  f"or load the matching codec")

    # ---------------------------------------------------------------- save / load
    def save_pretrained(self, directory: str | os.PathLike, tokenizer_path: str | os.PathLike
                        | None = None, max_shard_size: str = "15MB",
                        extra: dict | None = None) -> Path:
        """Write the model directory atomically (see module docstring)."""
        directory = Path(directory)
        heads = {k: v.detach().cpu().contiguous() for k, v in
                 self.length_head.state_dict().items()}
        with atomic_path(directory) as tmp:
            tmp.mkdir(parents=True)
            self.backbone.save_pretrained(str(tmp / BACKBONE_DIR), max_shard_size=max_shard_size)
            save_file(heads, str(tmp / HEADS_NAME))
            if tokenizer_path is not None:
                shutil.copyfile(tokenizer_path, tmp / tokenizer_file(self.config.text_input))
            meta = {"model_type": MODEL_TYPE, "config": config_to_dict(self.config),
                    "identity": state_dict_identity(self.state_dict()),
                    "vocab": self.vocab.to_dict(), **(extra or {})}
            (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True))
        return directory

    @staticmethod
    def read_config(directory: str | os.PathLike) -> dict:
        path = Path(directory) / CONFIG_NAME
        if not path.is_file():
            raise CheckpointError(f"{directory}: not a speech-LM directory (no {CONFIG_NAME})")
        meta = json.loads(path.read_text())
        if meta.get("model_type") != MODEL_TYPE:
            raise CheckpointError(f"{directory}: holds a '{meta.get('model_type')}' model, "
                                  f"expected '{MODEL_TYPE}'")
        return meta

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, codec: Any = None,
                        map_location: str | torch.device = "cpu") -> "SpeechLM":
        """Load a directory written by :meth:`save_pretrained`; with ``codec`` given, refuse
        a mismatched codec (CheckpointError)."""
        from transformers import AutoModelForCausalLM

        directory = Path(directory)
        meta = cls.read_config(directory)
        config = config_from_saved(meta["config"])
        model = cls(config)
        for shard in sorted((directory / BACKBONE_DIR).glob("*.safetensors")):
            check_weight_file(shard)        # a cut shard: one line naming it
        try:
            backbone = AutoModelForCausalLM.from_pretrained(str(directory / BACKBONE_DIR),
                                                            local_files_only=True,
                                                            dtype=torch.float32)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{directory}: cannot load the backbone ({exc})") from exc
        if backbone.get_input_embeddings().num_embeddings != model.vocab.size:
            raise CheckpointError(f"{directory}: backbone vocabulary "
                                  f"{backbone.get_input_embeddings().num_embeddings} != "
                                  f"layout vocabulary {model.vocab.size}")
        model.backbone = backbone
        heads_path = directory / HEADS_NAME
        if not heads_path.is_file():
            raise CheckpointError(f"{directory}: missing {HEADS_NAME}")
        heads = load_weight_file(heads_path)
        try:
            model.length_head.load_state_dict(heads)
        except RuntimeError as exc:
            raise CheckpointError(f"{directory}: length head does not match ({exc})") from exc
        model.to(map_location).eval()
        if codec is not None:
            model.check_codec(codec)
        return model


def load_lm(directory: str | os.PathLike | None = None, codec: Any = None,
            map_location: str | torch.device = "cpu"):
    """(SpeechLM, tokenizer) from a model directory (None: the shipped LM); the tokenizer of
    the LM's ``text_input`` (PhonemeTokenizer or TextTokenizer, lm/text_input.py)."""
    from flexicodec.common.pretrained import default_checkpoint

    if directory is None:
        directory = default_checkpoint("lm", "LM")

    model = SpeechLM.from_pretrained(directory, codec=codec, map_location=map_location)
    name = tokenizer_file(model.config.text_input)
    tok_path = Path(directory) / name
    if not tok_path.is_file():
        raise CheckpointError(f"{directory}: no {name} beside the LM (text_input "
                              f"{model.config.text_input!r})")
    tok = load_tokenizer(tok_path, model.config.text_input)
    if tok.vocab_size != model.config.num_text:
        raise CheckpointError(f"{directory}: {name} has {tok.vocab_size} symbols, the LM "
                              f"expects {model.config.num_text}")
    return model, tok


def model_config_from_dict(d: dict, **overrides: Any) -> SpeechLMConfig:
    """SpeechLMConfig from a YAML ``model:`` section (unknown keys are an error)."""
    names = {f.name for f in dataclasses.fields(SpeechLMConfig)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"unknown LM model config keys {unknown}; valid: {sorted(names)}")
    return config_from_dict(SpeechLMConfig, {**d, **overrides})
