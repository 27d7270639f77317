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
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

GENERATOR = "generator.safetensors"
DISCRIMINATOR = "discriminator.safetensors"
STATE = "state.json"


class PortableStateError(ValueError):
    """A portable state directory is missing, incomplete or does not fit this run."""


def _half(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: (v.detach().to(torch.float16) if v.is_floating_point() else v.detach())
            .contiguous().cpu() for k, v in state.items()}


def save_portable_state(directory: str | os.PathLike, codec, discriminator, info: dict) -> Path:
    """Write ``codec`` (its weights except ``semantic.*``), ``discriminator`` and ``info``
    (JSON-able: step, train_seconds, ...) to ``directory`` atomically; returns it."""
    from flexicodec.common.pretrained import config_to_dict, state_dict_identity

    out = Path(directory)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    gen = {k: v for k, v in codec.state_dict().items() if not k.startswith("semantic.")}
    save_file(_half(gen), str(tmp / GENERATOR))
    save_file(_half(discriminator.state_dict()), str(tmp / DISCRIMINATOR))
    meta = {**info, "codec_config": config_to_dict(codec.config),
            "discriminator_config": config_to_dict(discriminator.config),
            "semantic_identity": state_dict_identity(codec.semantic.state_dict())}
    (tmp / STATE).write_text(json.dumps(meta, indent=1, ensure_ascii=False))
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    return out


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
    from flexicodec.common.pretrained import state_dict_identity

    d = Path(directory)
    info = read_portable_info(d)
    ident = state_dict_identity(codec.semantic.state_dict())
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


__all__ = ["save_portable_state", "read_portable_info", "load_portable_weights",
           "PortableStateError"]
