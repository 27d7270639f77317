"""Reproduce the encoder-init diagnosis behind the third codec run (docs/ARCHITECTURE.md).

For the shipped codec's configuration, compare the acoustic encoder at PyTorch's default conv
init (what the first two runs had) with the He init now in ``codec/encoder.py``:

1. input sensitivity at initialisation: ‖e(x1) − e(x2)‖ / ‖e(x1)‖ for two random 0.1-rms
   inputs (a near-constant latent gives a small ratio);
2. with ``--data CORPUS --steps N``: train the acoustic path alone, without quantizers or
   the semantic stream (encoder → merging transformer → unmerging transformer → decoder),
   on random 1 s crops with the multi-resolution mel loss, and print the loss every 50 steps.

    python scripts/diagnose_encoder_init.py                        # (1) only, seconds
    python scripts/diagnose_encoder_init.py --data CORPUS --steps 300   # ~3 min per init, 2 cores

Measured on the 2-core CPU machine: ratio ~0.05 (default) vs ~0.6–0.7 (He); mel loss at step
300 1.45 (default: still on its plateau) vs 1.01 (He).
"""
from __future__ import annotations

import argparse
import math
import random
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flexicodec.codec.config import PRESETS, FlexiCodecConfig  # noqa: E402
from flexicodec.codec.encoder import AcousticEncoder  # noqa: E402


def torch_default_init(encoder: nn.Module) -> None:
    """Re-initialise every (weight-normalised) conv of ``encoder`` the way nn.Conv1d does by
    default: weights kaiming-uniform with a=√5, biases uniform ±1/√fan_in."""
    with torch.no_grad():
        for mod in encoder.modules():
            if isinstance(mod, nn.Conv1d):
                w = torch.empty_like(mod.weight)
                nn.init.kaiming_uniform_(w, a=math.sqrt(5))
                mod.weight = w                       # weight_norm's right_inverse sets g, v
                fan_in = mod.in_channels // mod.groups * mod.kernel_size[0]
                nn.init.uniform_(mod.bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))


def input_sensitivity(encoder: AcousticEncoder, frames: int = 25, seed: int = 0) -> float:
    g = torch.Generator().manual_seed(seed)
    x1, x2 = torch.randn(2, 2, encoder.hop_size * frames, generator=g) * 0.1
    nf = torch.full((2,), frames)
    with torch.no_grad():
        e1, e2 = encoder(x1, nf), encoder(x2, nf)
    return float((e1 - e2).norm() / e1.norm())


def train_acoustic_path(config: FlexiCodecConfig, default_init: bool, data: str, steps: int,
                        seed: int = 0) -> list[tuple[int, float]]:
    """Mel loss every 50 steps of the unquantized acoustic path (batch 8 × 1 s crops)."""
    from tqdm import tqdm

    from flexicodec.codec import merging
    from flexicodec.codec.losses import MultiResolutionMelLoss
    from flexicodec.codec.model import FlexiCodec
    from flexicodec.data.loaders import AudioDataset, load_corpus

    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = FlexiCodec(config)
    if default_init:
        torch_default_init(model.encoder)
    ds = AudioDataset(load_corpus(data, split="train", check="header", progress=False))
    seg = config.sample_rate
    wavs = [w for w in (ds[i]["wav"] for i in range(min(len(ds), 600))) if len(w) >= seg]
    if not wavs:
        raise ValueError(f"{data}: no train utterances of at least 1 s")
    parts = [model.encoder, model.merge_transformer, model.unmerge_transformer, model.decoder,
             model.group_position, model.group_length]
    opt = torch.optim.AdamW([p for m in parts for p in m.parameters()], lr=1e-3,
                            betas=(0.8, 0.99))
    mel = MultiResolutionMelLoss()
    hop = config.hop_size
    frames = -(-seg // hop)
    fmask = torch.ones(8, frames, dtype=torch.bool)
    merge = merging.merge_fixed(fmask, 1)
    out = []
    for step in tqdm(range(1, steps + 1), desc="default init" if default_init else "He init"):
        x = torch.stack([w[(o := rng.randint(0, len(w) - seg)):o + seg]
                         for w in (rng.choice(wavs) for _ in range(8))])
        latent = model.merge_transformer(
            model.encoder(nn.functional.pad(x, (0, frames * hop - seg)), fmask.sum(1)), fmask)
        loss = mel(model.synthesize(latent, merge)[:, :seg], x)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_([p for m in parts for p in m.parameters()], 1.0)
        opt.step()
        if step % 50 == 0:
            out.append((step, loss.item()))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="corpus directory (for --steps)")
    p.add_argument("--steps", type=int, default=0)
    a = p.parse_args(argv)
    if a.steps and not a.data:
        p.error("--steps needs --data")
    # the shipped codec's sizes; a tiny random frozen ASR (the semantic stream is not used)
    cfg = FlexiCodecConfig.small(semantic=PRESETS["tiny"]["semantic"])
    torch.manual_seed(0)
    enc = AcousticEncoder(cfg.encoder_dim, cfg.encoder_rates, cfg.latent_dim,
                          cfg.encoder_activation)
    he = input_sensitivity(enc)
    torch_default_init(enc)
    print(f"input sensitivity at init: default {input_sensitivity(enc):.3f}, He {he:.3f}")
    for default in (True, False):
        if a.steps:
            losses = train_acoustic_path(cfg, default, a.data, a.steps)
            print(("default" if default else "He") + " init mel loss: " +
                  ", ".join(f"{s}: {v:.3f}" for s, v in losses))
    return 0


if __name__ == "__main__":
    sys.exit(main())
