"""Portable training state of a codec run: what a later run on another machine needs to
continue training, small enough to keep in the repository and to move in size-limited parts.

A full run checkpoint (``accelerate save_state``: fp32 weights, both optimizers' moments, RNG
states) is several times the model size. The portable state keeps

    DIR/generator.safetensors      the codec's own weights, fp16, without the frozen ASR
    DIR/discriminator.safetensors  the discriminators, fp16
    DIR/state.json                 step, cumulative training seconds, model and discriminator
                                   configs, the frozen ASR's identity, the run's history

Continuing from it restarts the optimizers' moments (the trainer re-warms the learning rates
over ``train.rewarm_steps``) and the EMA; weights, step, schedule position and data order
continue. Written atomically (a new directory replaces the old in one rename).

A state is tied to its frozen ASR by identity. :func:`rebase_semantic` moves it onto another
ASR of the same architecture and vocabulary (typically one fine-tuned from the state's own
with ``asr-train --init-from``), so a run continues with better semantic features instead of
starting over; every such change is kept in ``state.json``'s ``semantic_history``.
"""
from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from safetensors.torch import load_file, save_file

GENERATOR = "generator.safetensors"
DISCRIMINATOR = "discriminator.safetensors"
STATE = "state.json"
#: ``state.json`` key: the frozen-ASR changes of the run (:func:`rebase_semantic`), oldest first
SEMANTIC_HISTORY = "semantic_history"
#: ``state.json`` key: the model's growths (:mod:`flexicodec.codec.grow`), oldest first
GROWTH_HISTORY = "growth_history"


class PortableStateError(ValueError):
    """A portable state directory is missing, incomplete or does not fit this run."""


def semantic_identity(semantic) -> str:
    """The identity a portable state records for its frozen semantic source: the hash of the
    weights of the codec's ``semantic`` module."""
    from flexicodec.common.pretrained import state_dict_identity

    return state_dict_identity(semantic.state_dict())


def _half(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: (v.detach().to(torch.float16) if v.is_floating_point() else v.detach())
            .contiguous().cpu() for k, v in state.items()}


def save_portable_state(directory: str | os.PathLike, codec, discriminator, info: dict) -> Path:
    """Write ``codec`` (its weights except ``semantic.*``), ``discriminator`` and ``info``
    (JSON-able: step, train_seconds, ...) to ``directory`` atomically; returns it."""
    from flexicodec.common.pretrained import config_to_dict

    out = Path(directory)
    with writing_directory(out) as tmp:
        gen = {k: v for k, v in codec.state_dict().items() if not k.startswith("semantic.")}
        save_file(_half(gen), str(tmp / GENERATOR))
        save_file(_half(discriminator.state_dict()), str(tmp / DISCRIMINATOR))
        meta = {**info, "codec_config": config_to_dict(codec.config),
                "discriminator_config": config_to_dict(discriminator.config),
                "semantic_identity": semantic_identity(codec.semantic)}
        (tmp / STATE).write_text(json.dumps(meta, indent=1, ensure_ascii=False))
    return out


@contextmanager
def writing_directory(out: Path) -> Iterator[Path]:
    """A fresh temporary directory beside ``out`` to write into; when the block ends without
    an error it takes ``out``'s place (two renames: a reader sees the old or the new
    directory, never a mix), otherwise ``out`` stays as it was."""
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    yield tmp
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def read_portable_info(directory: str | os.PathLike) -> dict:
    """``state.json`` of a portable state; PortableStateError if it is not one."""
    d = Path(directory)
    missing = [n for n in (GENERATOR, DISCRIMINATOR, STATE) if not (d / n).is_file()]
    if missing:
        raise PortableStateError(f"{d}: not a portable training state (missing "
                                 f"{', '.join(missing)})")
    try:
        return json.loads((d / STATE).read_text())
    except json.JSONDecodeError as exc:
        raise PortableStateError(f"{d / STATE}: corrupt JSON ({exc})") from None


def load_portable_weights(directory: str | os.PathLike, codec, discriminator) -> dict:
    """Load a portable state's weights into ``codec`` (whose frozen ASR must be the one the
    state was trained with) and ``discriminator``; returns its info."""
    d = Path(directory)
    info = read_portable_info(d)
    ident = semantic_identity(codec.semantic)
    if info.get("semantic_identity") != ident:
        raise PortableStateError(f"{d}: trained with semantic model {info.get('semantic_identity')}"
                                 f", this codec's is {ident} (pass the same --asr)")
    for name, module, skip in ((GENERATOR, codec, "semantic."), (DISCRIMINATOR, discriminator,
                                                                 None)):
        try:
            state = load_file(str(d / name))
        except Exception as exc:            # safetensors raises its own error types
            raise PortableStateError(f"{d / name}: unreadable ({exc})") from None
        own = {k: v for k, v in module.state_dict().items()
               if skip is None or not k.startswith(skip)}
        if set(state) != set(own):
            diff = sorted(set(state) ^ set(own))[:5]
            raise PortableStateError(f"{d / name}: parameters do not match the model "
                                     f"(e.g. {diff})")
        with torch.no_grad():
            for k, v in own.items():
                if state[k].shape != v.shape:
                    raise PortableStateError(f"{d / name}: {k} has shape "
                                             f"{tuple(state[k].shape)}, model {tuple(v.shape)}")
                v.copy_(state[k].to(v.dtype))
    return info


def codec_from_portable(directory: str | os.PathLike, asr_dir: str | os.PathLike):
    """The :class:`flexicodec.codec.model.FlexiCodec` of the portable state in ``directory``
    (its config and current, not EMA, weights) with the frozen ASR in ``asr_dir``, which must
    be the one the state was trained with (PortableStateError otherwise)."""
    from flexicodec.codec.config import FlexiCodecConfig
    from flexicodec.codec.discriminators import CodecDiscriminator, DiscriminatorConfig
    from flexicodec.codec.model import FlexiCodec
    from flexicodec.common.pretrained import config_from_dict

    info = read_portable_info(directory)
    cfg = config_from_dict(FlexiCodecConfig, info["codec_config"])
    cfg.semantic.asr_path = str(asr_dir)
    codec = FlexiCodec(cfg)
    load_portable_weights(directory, codec, CodecDiscriminator(
        config_from_dict(DiscriminatorConfig, info["discriminator_config"])))
    return codec


def rebase_semantic(directory: str | os.PathLike, asr_dir: str | os.PathLike) -> dict:
    """Tie the portable state in ``directory`` to the trained ASR in ``asr_dir`` instead of
    the one it was trained with; returns the new info.

    The weights are unchanged: only ``state.json`` is rewritten (atomically), with the new
    ``semantic_identity`` and an entry ``{"step", "train_seconds", "previous", "identity",
    "asr"}`` appended to ``semantic_history``. The new ASR must have the state's ASR
    architecture and vocabulary (PortableStateError otherwise: the codec's semantic input
    layers would not fit). A continued run then adapts the codec to the new features."""
    import dataclasses

    from flexicodec.codec.config import SemanticConfig
    from flexicodec.codec.semantic import build_semantic
    from flexicodec.common.atomic import atomic_write_text
    from flexicodec.common.pretrained import config_from_dict

    d = Path(directory)
    info = read_portable_info(d)
    old = config_from_dict(SemanticConfig, info["codec_config"]["semantic"])
    if old.source != "asr":
        raise PortableStateError(f"{d}: its semantic source is {old.source!r}, not our ASR")
    if not (Path(asr_dir) / "config.json").is_file():
        raise PortableStateError(f"{asr_dir}: not a trained ASR directory (no config.json)")
    semantic = build_semantic(dataclasses.replace(old, asr_path=str(asr_dir)))
    new_cfg = json.loads(json.dumps(dataclasses.asdict(semantic.asr.config)))  # as stored
    if new_cfg != old.asr_config:
        diff = sorted(k for k in set(new_cfg) | set(old.asr_config)
                      if new_cfg.get(k) != old.asr_config.get(k))
        raise PortableStateError(f"{asr_dir}: its architecture or vocabulary differs from the "
                                 f"ASR {d} was trained with ({', '.join(diff)}); start the run "
                                 f"over with it instead")
    ident = semantic_identity(semantic)
    if ident == info.get("semantic_identity"):
        raise PortableStateError(f"{d}: already trained with the ASR in {asr_dir} ({ident})")
    info[SEMANTIC_HISTORY] = [*info.get(SEMANTIC_HISTORY, []), {
        "step": int(info["step"]), "train_seconds": float(info.get("train_seconds", 0.0)),
        "previous": info.get("semantic_identity"), "identity": ident, "asr": str(asr_dir)}]
    info["semantic_identity"] = ident
    atomic_write_text(d / STATE, json.dumps(info, indent=1, ensure_ascii=False))
    return info


__all__ = ["save_portable_state", "read_portable_info", "load_portable_weights",
           "codec_from_portable", "rebase_semantic", "semantic_identity", "writing_directory",
           "PortableStateError",
           "SEMANTIC_HISTORY", "GROWTH_HISTORY"]
