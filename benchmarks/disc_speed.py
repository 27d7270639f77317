"""Discriminator speed: the GAN half of a codec training step in isolation, for layouts of
the same discriminators (same weights, same losses), with cuDNN's autotuning off and on.

    python -m flexicodec.benchmarks.disc_speed --device cuda [--config configs/codec/v2.yaml] -o DIR
    python -m flexicodec.benchmarks.disc_speed --device cpu --quick -o DIR     # seconds, tiny

In a v2 training step the discriminators' update and the generator's backward through them
take most of the time (``benchmarks/train_speed.py``). This measures the two parts alone on
random audio, as the trainer runs them (:func:`flexicodec.codec.train.generator_gan_losses`,
``torch.compile(dynamic=False)``, bf16 autocast on CUDA, fused AdamW):

- ``d_update``: one pass over [real; fake] (2B windows), hinge loss, backward, AdamW step;
- ``g_pass``: the real windows under ``no_grad``, the fake ones with frozen weights,
  adversarial + feature-matching losses, backward to the fake audio.

Layouts (``--variants``):

- ``nchw``: :class:`flexicodec.codec.discriminators.CodecDiscriminator` as the trainer uses it;
- ``channels_last``: its weights and 4-d activations in channels-last memory layout;
- ``mpd_conv1d``: every period branch as 1-d convolutions over ``[B * p, C, T / p]``
  (``train.discriminator.mpd_layout: 1d``; same weights, outputs and losses).

The D and G columns time the whole discriminators as the trainer runs them (one compiled
graph, one optimizer); ``MPD ms`` / ``MRD ms`` time a second copy's multi-period and
multi-resolution halves apart (each its own graph and optimizer; D update + G pass), to show
which one to make faster (their sum is close to the whole, not equal).

``--batch 128,256`` repeats everything per batch size: whether the GAN half is bound by
the number of kernels (more audio per step costs little more) or by their work. Writes
``disc_speed.json`` and ``disc_speed.md`` under ``-o``.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from flexicodec.benchmarks.common import (format_table, hardware_info, log, resolve_device,
                                          time_interleaved, write_json)

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("nchw", "channels_last", "mpd_conv1d")
PARTS = ("mpd", "mrd")


def _build(variant: str, dcfg, device):
    from flexicodec.codec.discriminators import CodecDiscriminator
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}: choose from {', '.join(VARIANTS)}")
    layout = "1d" if variant == "mpd_conv1d" else "2d"
    torch.manual_seed(0)
    disc = CodecDiscriminator(dataclasses.replace(dcfg, mpd_layout=layout)).to(device)
    if variant == "channels_last":
        disc = disc.to(memory_format=torch.channels_last)
    return disc


def _steps(disc, opt, real, fake, kind: str, autocast):
    from flexicodec.codec.losses import discriminator_loss
    from flexicodec.codec.train import _split, generator_gan_losses

    def d_update():
        with autocast():
            logits, _ = disc(torch.cat([real, fake]))
        r, f = _split(logits, real.shape[0])
        loss = discriminator_loss(r, f, kind)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def g_pass():
        x = fake.detach().requires_grad_(True)
        adv, fm = generator_gan_losses(disc, real, x, kind, autocast)
        (adv + 2.0 * fm).backward()
    return d_update, g_pass


def run(config: str, device, batches: list[int | None], window_s: float | None, variants,
        repeats: int, warmup: int, quick: bool, compile_: bool) -> list[dict]:
    from flexicodec.codec.discriminators import DiscriminatorConfig
    from flexicodec.codec.train import load_train_section

    tc = load_train_section(config)
    dcfg = DiscriminatorConfig.tiny() if quick else tc.discriminator
    seconds = window_s or tc.disc_segment_seconds or tc.segment_seconds
    T = int(round(seconds * 16000))
    bf16 = device.type == "cuda"

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    rows = []
    for (variant, B) in [(v, b or tc.batch_size) for b in batches for v in variants]:
        g = torch.Generator(device="cpu").manual_seed(0)
        real = (0.1 * torch.randn(B, T, generator=g)).to(device)
        fake = (real + 0.03 * torch.randn(B, T, generator=g).to(device))
        torch._dynamo.reset()                       # every variant compiles from scratch
        fused = {"fused": True} if device.type == "cuda" else {}
        fns = {}                                    # the closures hold modules, optimizers
        # the whole discriminators as the trainer runs them (one graph, one optimizer), and
        # a second copy's MPD and MRD halves, each its own graph and optimizer
        whole, halves = _build(variant, dcfg, device), _build(variant, dcfg, device)
        for part, module in (("all", whole), *((q, getattr(halves, q)) for q in PARTS)):
            if module is None:
                continue
            if compile_:
                module.compile(dynamic=False)
            opt = torch.optim.AdamW(module.parameters(), lr=1e-4, betas=(0.8, 0.99), **fused)
            fns[(part, "d")], fns[(part, "g")] = _steps(module, opt, real, fake, tc.gan_kind,
                                                        autocast)
        for bench in ((False, True) if device.type == "cuda" else (False,)):
            torch.backends.cudnn.benchmark = bench
            log(f"[disc_speed] {variant}, batch {B}, cudnn.benchmark={bench}")
            t = time_interleaved(fns, device, warmup=warmup, repeats=repeats)
            ms = {k: 1000 * v.median for k, v in t.items()}
            d_ms, g_ms = ms[("all", "d")], ms[("all", "g")]
            row = {"variant": variant, "cudnn_benchmark": bench, "batch": B,
                   "window_s": seconds, "d_update_ms": d_ms, "g_pass_ms": g_ms,
                   "total_ms": d_ms + g_ms,
                   "disc_audio_s_per_s": B * seconds / ((d_ms + g_ms) / 1000)}
            for part in PARTS:
                row[f"{part}_ms"] = ms.get((part, "d"), 0.0) + ms.get((part, "g"), 0.0)
            rows.append(row)
        del whole, halves, fns
        if device.type == "cuda":
            torch.cuda.empty_cache()
    base = rows[0]["disc_audio_s_per_s"]
    for r in rows:
        r["speedup"] = r["disc_audio_s_per_s"] / base
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flexicodec.benchmarks.disc_speed",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--config", default=str(ROOT / "configs/codec/v2.yaml"),
                    help="codec config whose train.discriminator, batch and window are used")
    ap.add_argument("--batch", default=None, help="windows per pass, comma list (default: the "
                    "config's batch size; the update sees twice as many)")
    ap.add_argument("--window-s", type=float, default=None,
                    help="seconds per window (default: train.disc_segment_seconds)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3, help="untimed calls (compilation)")
    ap.add_argument("--no-compile", action="store_true", help="eager (default: compiled)")
    ap.add_argument("--quick", action="store_true",
                    help="tiny discriminators, batch 2, eager (a CPU check of the harness)")
    ap.add_argument("-o", "--out", default="benchmarks/results", help="output directory")
    a = ap.parse_args(argv)
    device = resolve_device(a.device)
    variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    bad = sorted(set(variants) - set(VARIANTS))
    if bad or not variants:
        ap.error(f"--variants: unknown {', '.join(bad) or '(none given)'}; choose from "
                 f"{', '.join(VARIANTS)}")
    try:
        batches = [int(b) for b in a.batch.split(",") if b.strip()] if a.batch else \
            [2 if a.quick else None]
    except ValueError:
        ap.error(f"--batch: expected comma-separated integers, got {a.batch!r}")
    if any(b is not None and b < 1 for b in batches):
        ap.error(f"--batch: sizes must be >= 1, got {a.batch!r}")
    rows = run(a.config, device, batches, a.window_s, variants, a.repeats, a.warmup, a.quick,
               compile_=not (a.no_compile or a.quick))
    cols = [("variant", "variant"), ("cudnn_benchmark", "cudnn bench"), ("batch", "batch"),
            ("window_s", "window s"), ("d_update_ms", "D update ms"), ("g_pass_ms", "G pass ms"),
            ("total_ms", "total ms"), ("mpd_ms", "MPD ms"), ("mrd_ms", "MRD ms"),
            ("disc_audio_s_per_s", "audio-s/s"),
            ("speedup", "audio-s/s x first row")]
    table = format_table(rows, cols)
    print(table)
    out = Path(a.out)
    write_json(out / "disc_speed.json", {"benchmark": "disc_speed", "config": a.config,
                                         "quick": a.quick, "compiled": not a.no_compile,
                                         "hardware": hardware_info(device), "rows": rows})
    from flexicodec.common.atomic import atomic_write_text
    atomic_write_text(out / "disc_speed.md", "Medians of interleaved calls; audio-s/s: the "
                      "windows' audio per second of D update + G pass.\n\n```\n" + table
                      + "\n```\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
