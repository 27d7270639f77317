"""Grow a trained codec without a setback: more ConvNeXt blocks in its Vocos decoder.

The new blocks are appended after the decoder's last block and start as the identity (layer
scale γ = 0; their other weights initialised as a new block's), so the grown codec decodes
exactly as before and a continued run trains the new blocks from there: capacity added to a
run whose learning curve has flattened, without starting over.

A portable training state (:mod:`flexicodec.codec.portable`) grows in place
(:func:`grow_portable_decoder`): its generator gets the new blocks' weights, ``state.json``
its new ``codec_config`` and an entry in ``growth_history``; the discriminators are
untouched. The next run continuing the state builds the grown codec from that config.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from flexicodec.codec.bottleneck import ConvNeXtBlock
from flexicodec.codec.portable import (DISCRIMINATOR, GENERATOR, GROWTH_HISTORY, STATE,
                                       PortableStateError, read_portable_info,
                                       writing_directory)

BLOCK_PREFIX = "decoder.backbone.convnext"


def identity_blocks(dim: int, intermediate_dim: int, first: int, last: int,
                    seed: int = 0) -> dict[str, torch.Tensor]:
    """Weights of decoder blocks ``first`` .. ``last - 1`` (state-dict keys of
    :class:`flexicodec.codec.model.FlexiCodec`) that start as the identity: γ = 0, the rest as
    a new :class:`flexicodec.codec.bottleneck.ConvNeXtBlock` initialises them (seeded)."""
    if not 0 <= first < last:
        raise ValueError(f"no blocks to make: {first}..{last}")
    out = {}
    with torch.random.fork_rng(devices=[]):       # the caller's random state is kept
        torch.manual_seed(seed)
        for i in range(first, last):
            block = ConvNeXtBlock(dim, intermediate_dim, layer_scale=0.0)
            out.update({f"{BLOCK_PREFIX}.{i}.{k}": v.detach().clone()
                        for k, v in block.state_dict().items()})
    return out


def grow_portable_decoder(directory: str | os.PathLike, layers: int, seed: int = 0) -> dict:
    """Grow the decoder of the portable state in ``directory`` to ``layers`` ConvNeXt blocks
    (more than it has), in place and atomically; returns the new ``state.json`` info.
    PortableStateError when ``layers`` is not more than the state's."""
    d = Path(directory)
    info = read_portable_info(d)
    cfg = info["codec_config"]
    old = int(cfg["decoder_layers"])
    if layers <= old:
        raise PortableStateError(f"{d}: its decoder has {old} blocks; growing needs more "
                                 f"(got {layers})")
    try:
        gen = load_file(str(d / GENERATOR))
    except Exception as exc:            # safetensors raises its own error types
        raise PortableStateError(f"{d / GENERATOR}: unreadable ({exc})") from None
    present = {k.split(".")[3] for k in gen if k.startswith(BLOCK_PREFIX + ".")}
    if present != {str(i) for i in range(old)}:
        raise PortableStateError(f"{d / GENERATOR}: decoder blocks {sorted(present)} do not "
                                 f"match its config's {old}")
    dtype = gen[f"{BLOCK_PREFIX}.0.gamma"].dtype
    new = identity_blocks(int(cfg["decoder_dim"]), int(cfg["decoder_intermediate_dim"]), old,
                          layers, seed)
    gen.update({k: v.to(dtype).contiguous() for k, v in new.items()})
    info["codec_config"] = {**cfg, "decoder_layers": layers}
    info[GROWTH_HISTORY] = [*info.get(GROWTH_HISTORY, []), {
        "step": int(info["step"]), "train_seconds": float(info.get("train_seconds", 0.0)),
        "decoder_layers": [old, layers]}]
    with writing_directory(d) as tmp:
        save_file(gen, str(tmp / GENERATOR))
        shutil.copy2(d / DISCRIMINATOR, tmp / DISCRIMINATOR)
        (tmp / STATE).write_text(json.dumps(info, indent=1, ensure_ascii=False))
    return info


__all__ = ["identity_blocks", "grow_portable_decoder", "BLOCK_PREFIX"]
