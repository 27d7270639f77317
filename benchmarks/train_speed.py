"""Codec training throughput: the shipped recipe against the fast one, in one run.

    python -m flexicodec.benchmarks.train_speed --device cuda --data CORPUS [--asr DIR] [--out DIR]
    python -m flexicodec.benchmarks.train_speed --device cpu --quick --data CORPUS    # seconds, tiny

Each recipe builds its model, discriminators, losses and optimizers exactly as
``flexicodec.codec.train`` does and runs the trainer's own step (:func:`flexicodec.codec.train.train_step`):

- ``shipped``: ``configs/codec/small.yaml`` as the first codecs were trained — a DataLoader of
  random crops (decode, crop, collate, copy), the frozen ASR run on every batch, eager
  PyTorch, unfused AdamW, a target rate drawn per batch (dynamic merging), GAN on;
- ``fast_small``: the same model with the fast engine — corpus and frozen features held on
  the device (:mod:`flexicodec.codec.device_data`), full frame-aligned crops, ``torch.compile``, fused
  AdamW, cuDNN autotuning, batch 128, 12.5 Hz (stage-1 training), GAN on;
- ``v2``: ``configs/codec/v2.yaml`` (the GPU-sized model) with its own settings: the
  discriminators frozen in the generator's pass and shown 1-s windows of the 2-s crops
  (``train.disc_segment_seconds``) of 32 of the 128 items (``train.disc_batch_size``);
- ``fast_small_windows``: ``fast_small`` with v2's discriminator windows (1 s of each 2-s
  crop): the same generator and discriminators, trained with the v2 GAN recipe;
- ``fast_small_v2_gan`` (only when named in ``--recipes``): ``fast_small_windows`` with the
  discriminators also on 32 of the 128 items, as v2 trains them (the shipped model with all
  of v2's GAN recipe);
- ``fast_small_v2_gan_b512`` and ``fast_small_v2_gan_cuda_graphs`` (only when named in
  ``--recipes``): ``fast_small_v2_gan`` at batch 512 (the discriminators on 128 of them, the
  same quarter) and with its compiled parts replayed as CUDA graphs
  (``train.compile_mode: reduce-overhead``): the levers against a step whose GPU waits on
  the host's kernel launches; ``fast_small_v2_gan_b512_cuda_graphs`` both;
- ``v2_no_cudnn_benchmark`` (only when named in ``--recipes``): v2 without
  ``train.cudnn_benchmark`` (cuDNN's default convolution algorithms instead of the fastest
  measured per shape);
- ``v2_mpd_1d`` (only when named in ``--recipes``): v2 with the period discriminators as 1-d
  convolutions (``train.discriminator.mpd_layout: 1d``);
- ``v2_whole_crop_d`` (only when named in ``--recipes``): v2 with the discriminators on the
  whole crop (the recipe before the windows), to measure what the windows save;
- ``v2_d_every_2`` (only when named in ``--recipes``): v2 with a discriminator update every
  second step (``train.disc_every``);
- ``v2_whole_batch_d`` (only when named in ``--recipes``): v2 with the discriminators on all
  128 items of each batch (``train.disc_batch_size: 0``, the recipe before v2 took 32);
- ``v2_no_cuda_graphs`` (only when named in ``--recipes``): v2 without replaying its
  compiled parts as CUDA graphs (``train.compile_mode: default``; v2 trains with
  ``reduce-overhead``): one kernel launch per kernel, the host's share of a step;
- ``v2_b256`` (only when named in ``--recipes``): v2 at batch 256 with the discriminators on
  64 of the items (the same quarter): twice the audio per kernel launch.

For each: steady-state audio-seconds per second over ``--steps`` unsynchronised steps (data
included), a per-phase split from ``--phase-steps`` steps synchronised at every phase
boundary (data, semantic features, generator forward, discriminator, generator backward,
optimizer), peak device memory (allocated, and held by the allocator: CUDA graphs' pools
count only in the latter), and achieved TFLOP/s (FLOPs of one eager step counted with
``torch.utils.flop_counter``; MFU against ``--peak-flops``). Writes ``train_speed.json`` and
``train_speed.md`` under ``--out`` and prints the table.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from flexicodec.benchmarks.common import (format_table, hardware_info, log, resolve_device, synchronize,
                                          write_json)
from flexicodec.common.constants import BASE_FRAME_RATE
from flexicodec.lm.model import DEFAULT_PEAK_FLOPS

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Recipe:
    name: str
    config: str
    batch_size: int | None = None        # None: the config's
    data_on_device: bool = False
    compile: bool = False
    fused: bool = False
    dynamic: bool = False                # a target rate per batch (else 12.5 Hz)
    model_overrides: dict = field(default_factory=dict)
    train_overrides: dict = field(default_factory=dict)   # train: keys
    default: bool = True                 # run without --recipes


def recipes(quick: bool) -> list[Recipe]:
    from flexicodec.codec.train import load_train_section

    small, v2 = str(ROOT / "configs/codec/small.yaml"), str(ROOT / "configs/codec/v2.yaml")
    out = [Recipe("shipped", small, dynamic=True),
           Recipe("fast_small", small, batch_size=128, data_on_device=True, compile=True,
                  fused=True, train_overrides={"cudnn_benchmark": True}),
           Recipe("fast_small_windows", small, batch_size=128, data_on_device=True,
                  compile=True, fused=True,
                  train_overrides={"cudnn_benchmark": True, "disc_segment_seconds": 1.0}),
           Recipe("fast_small_v2_gan", small, batch_size=128, data_on_device=True,
                  compile=True, fused=True,
                  train_overrides={"cudnn_benchmark": True, "disc_segment_seconds": 1.0,
                                   "disc_batch_size": 32}, default=False),
           # the v2 GAN recipe's levers left for the same model: batch 512 (the discriminators
           # on 128 of them, the same quarter) and CUDA graphs
           Recipe("fast_small_v2_gan_b512", small, batch_size=512, data_on_device=True,
                  compile=True, fused=True,
                  train_overrides={"cudnn_benchmark": True, "disc_segment_seconds": 1.0,
                                   "disc_batch_size": 128}, default=False),
           Recipe("fast_small_v2_gan_cuda_graphs", small, batch_size=128, data_on_device=True,
                  compile=True, fused=True,
                  train_overrides={"cudnn_benchmark": True, "disc_segment_seconds": 1.0,
                                   "disc_batch_size": 32, "compile_mode": "reduce-overhead"},
                  default=False),
           Recipe("fast_small_v2_gan_b512_cuda_graphs", small, batch_size=512,
                  data_on_device=True, compile=True, fused=True,
                  train_overrides={"cudnn_benchmark": True, "disc_segment_seconds": 1.0,
                                   "disc_batch_size": 128, "compile_mode": "reduce-overhead"},
                  default=False),
           Recipe("v2", v2, data_on_device=True, compile=True, fused=True),
           Recipe("v2_no_cudnn_benchmark", v2, data_on_device=True, compile=True, fused=True,
                  train_overrides={"cudnn_benchmark": False}, default=False),
           Recipe("v2_mpd_1d", v2, data_on_device=True, compile=True, fused=True,
                  train_overrides={"discriminator": {"mpd_layout": "1d"}}, default=False),
           Recipe("v2_whole_crop_d", v2, data_on_device=True, compile=True, fused=True,
                  train_overrides={"disc_segment_seconds": 0.0}, default=False),
           Recipe("v2_d_every_2", v2, data_on_device=True, compile=True, fused=True,
                  train_overrides={"disc_every": 2}, default=False),
           Recipe("v2_whole_batch_d", v2, data_on_device=True, compile=True, fused=True,
                  train_overrides={"disc_batch_size": 0}, default=False),
           Recipe("v2_no_cuda_graphs", v2, data_on_device=True, compile=True, fused=True,
                  train_overrides={"compile_mode": "default"}, default=False),
           Recipe("v2_b256", v2, batch_size=256, data_on_device=True, compile=True, fused=True,
                  train_overrides={"disc_batch_size": 64}, default=False)]
    if quick:    # tiny models and batches: checks the harness, not the GPU numbers
        tiny = dict(encoder_dim=4, latent_dim=32, semantic_dim=32, semantic_layers=1,
                    semantic_decoder_layers=1, n_q=2, rvq_codebook_size=64, rvq_codebook_dim=4,
                    transformer_layers=1, transformer_heads=2, decoder_dim=32,
                    decoder_intermediate_dim=64, decoder_layers=1, fsq_levels=(4, 4, 4))
        # batch 2: a recipe whose discriminators see part of the batch sees 1 item of it
        out = [replace(r, batch_size=2, compile=False, model_overrides=tiny,
                       train_overrides={**r.train_overrides, "disc_batch_size": 1}
                       if r.train_overrides.get("disc_batch_size",
                                                load_train_section(r.config).disc_batch_size)
                       else r.train_overrides)
               for r in out]
    return out


class PhaseTimer:
    """``mark(name)`` synchronises and adds the time since the previous mark to ``name``."""

    def __init__(self, device):
        self.device, self.totals, self.t = device, {}, None

    def start(self) -> None:
        synchronize(self.device)
        self.t = time.perf_counter()

    def mark(self, name: str) -> None:
        synchronize(self.device)
        now = time.perf_counter()
        self.totals[name] = self.totals.get(name, 0.0) + now - self.t
        self.t = now


def _build(recipe: Recipe, data: str, asr: str | None, device, quick: bool, cache: Path,
           max_utts: int):
    """(StepParts, batch function, config) for one recipe."""
    from flexicodec.codec.config import FlexiCodecConfig
    from flexicodec.codec.discriminators import CodecDiscriminator
    from flexicodec.codec.losses import MultiResolutionMelLoss
    from flexicodec.codec.model import FlexiCodec
    from flexicodec.common.pretrained import config_from_dict, config_to_dict
    from flexicodec.codec.train import (StepParts, build_codec_config, compact_buffers, load_train_section,
                                        schedule)
    from flexicodec.common.training import make_accelerator

    tc = load_train_section(recipe.config)
    tc.batch_size = recipe.batch_size or tc.batch_size
    for key, value in recipe.train_overrides.items():
        if not hasattr(tc, key):
            raise ValueError(f"recipe {recipe.name}: unknown train key {key!r}")
        if key == "discriminator":                  # a section: its keys, over the config's
            value = replace(tc.discriminator, **value)
        setattr(tc, key, value)
    tc.compile = recipe.compile                     # what this recipe does, not the config
    if quick:
        tc.discriminator = replace(tc.discriminator, periods=(2, 3), mpd_channels=(8, 16),
                                   mrd_resolutions=((256, 64, 256),), mrd_channels=8)
        tc.num_workers = 0
    cfg = build_codec_config(recipe.config, asr, None)
    if recipe.model_overrides:
        cfg = config_from_dict(FlexiCodecConfig, {**config_to_dict(cfg),
                                                  **recipe.model_overrides})
    if quick:                      # a tiny frozen ASR of the configured shape
        from flexicodec.codec.asr.model import PhonemeASR
        asr_cfg = PhonemeASR.read_config(cfg.semantic.asr_path)["config"]
        asr_cfg.update(d_model=32, n_layers=1, n_heads=2, ff_dim=64)
        cfg.semantic.asr_config, cfg.semantic.asr_path = asr_cfg, ""
    model = FlexiCodec(cfg).to(device)
    compact_buffers(model)
    disc = CodecDiscriminator(tc.discriminator).to(device)
    mel_loss = MultiResolutionMelLoss(tc.mel_loss).to(device)
    acc = make_accelerator(None, cpu=device.type == "cpu")
    fused = {"fused": True} if recipe.fused and device.type == "cuda" else {}
    g_params = [p for p in model.parameters() if p.requires_grad]
    opt_g = torch.optim.AdamW(g_params, lr=tc.lr_g, betas=tuple(tc.betas), **fused)
    opt_d = torch.optim.AdamW(disc.parameters(), lr=tc.lr_d, betas=tuple(tc.betas), **fused)
    sched_g = torch.optim.lr_scheduler.LambdaLR(opt_g, schedule(tc, 1, 10 ** 6))
    sched_d = torch.optim.lr_scheduler.LambdaLR(opt_d, schedule(tc, 1, 10 ** 6))
    parts = StepParts(acc, model, disc, mel_loss, opt_g, opt_d, sched_g, sched_d, g_params,
                      None, tc, torch.Generator(device=device))
    sr, hop = cfg.sample_rate, cfg.hop_size
    if recipe.data_on_device:
        from flexicodec.codec.device_data import build_device_corpus
        frames = max(1, round(tc.segment_seconds * sr / hop))
        corpus = build_device_corpus(model, data, "train", device, frames, cache_dir=cache,
                                     num_workers=tc.num_workers, progress=False,
                                     max_utterances=max_utts)
        sampler = corpus.crop_sampler(frames)
        gen = torch.Generator(device=device).manual_seed(0)

        def batch(timer=None):
            wav, target = sampler.sample(tc.batch_size, gen)
            if timer:
                timer.mark("data")
                timer.mark("semantic_features")
            return wav, None, target
    else:
        from flexicodec.common.training import make_loader, epoch_batches
        from flexicodec.data.loaders import AudioDataset, collate_audio, load_corpus
        ds = load_corpus(data, split="train", sample_rate=sr, check="header")
        ds = ds.select(range(min(len(ds), max_utts)))
        seg = int(round(tc.segment_seconds * sr))
        durs = [float(d) for d in ds["duration"]]
        dataset = AudioDataset(ds, sample_rate=sr, segment_samples=seg, random_crop=True)
        state = {"it": None, "epoch": 0}

        def next_batch():
            while True:
                if state["it"] is None:
                    plan = epoch_batches(durs, tc.batch_size, 0, state["epoch"], bucket=False)
                    state["it"] = iter(make_loader(dataset, plan, tc.num_workers, collate_audio))
                try:
                    return next(state["it"])
                except StopIteration:
                    state["it"], state["epoch"] = None, state["epoch"] + 1

        def batch(timer=None):
            b = next_batch()
            wav, wl = b["wav"].to(device), b["wav_lengths"].to(device)
            if timer is None:        # the model runs the frozen ASR inside its forward
                return wav, wl, None
            timer.mark("data")
            nf = torch.div(wl + hop - 1, hop, rounding_mode="floor")
            F_ = int(nf.max())
            padded = torch.nn.functional.pad(wav, (0, F_ * hop - wav.shape[1]))
            padded = padded * (torch.arange(F_ * hop, device=device)[None] < wl[:, None])
            with acc.autocast():
                target = model.semantic_targets(padded, nf)
            timer.mark("semantic_features")
            return wav, wl, target
    return parts, batch, cfg, tc


def _how(recipe: Recipe, cfg) -> dict:
    return {"frame_rate": cfg.draw_train_rate()} if recipe.dynamic else \
        {"threshold": 1.0}


def run_recipe(recipe: Recipe, data: str, asr: str | None, device, steps: int, warmup: int,
               phase_steps: int, quick: bool, cache: Path, max_utts: int,
               peak_flops: float) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from flexicodec.codec.train import compile_for_training, train_step

    log(f"[train_speed] {recipe.name}: building")
    parts, batch, cfg, tc = _build(recipe, data, asr, device, quick, cache, max_utts)
    seg_s = tc.segment_seconds if not recipe.data_on_device else \
        max(1, round(tc.segment_seconds * BASE_FRAME_RATE)) / BASE_FRAME_RATE
    n_gen = sum(p.numel() for p in parts.g_params)
    steps_done = [tc.disc_start]        # global step: GAN on, D windows and D every k vary
    k = tc.disc_every                   # timed and phase steps: whole cycles of k steps
    steps, phase_steps = -(-steps // k) * k, -(-phase_steps // k) * k

    def align() -> None:                # the next step updates the discriminators
        steps_done[0] += (tc.disc_start - steps_done[0]) % k

    def step(wav, wl, target, mark=None):
        train_step(parts, wav, wl, target, _how(recipe, cfg), True, mark=mark,
                   step=steps_done[0])
        steps_done[0] += 1

    # FLOPs of one eager step (compiled graphs hide their ops from the counter); with a
    # discriminator update every k steps, the mean over k steps
    counter = FlopCounterMode(display=False)
    with counter:
        for _ in range(tc.disc_every):
            wav, wl, target = batch()
            step(wav, wl, target)
    flops = counter.get_total_flops() / tc.disc_every
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = tc.cudnn_benchmark
    if recipe.compile:
        # every recipe's modules share their forward's code objects, and with them dynamo's
        # per-function recompile limit: without a reset, later recipes would exhaust it and
        # run parts eagerly
        torch._dynamo.reset()
        compile_for_training(parts.model, parts.disc, parts.mel_loss, tc.compile_backend,
                             tc.compile_mode)
    t0 = time.perf_counter()
    for _ in range(warmup):
        wav, wl, target = batch()
        step(wav, wl, target)
    synchronize(device)
    warm_s = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    align()
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        wav, wl, target = batch()
        step(wav, wl, target)
    synchronize(device)
    dt = time.perf_counter() - t0
    timer = PhaseTimer(device)
    align()
    for _ in range(phase_steps):
        timer.start()
        wav, wl, target = batch(timer)
        step(wav, wl, target, timer.mark)
    step_s = dt / steps
    audio_s = tc.batch_size * seg_s
    row = {"recipe": recipe.name, "generator_M": n_gen / 1e6, "batch": tc.batch_size,
           "crop_s": seg_s, "compiled": recipe.compile, "data_on_device": recipe.data_on_device,
           "fused_adam": recipe.fused and device.type == "cuda",
           "merging": "target rate ~U[3, 12.5] Hz" if recipe.dynamic else "12.5 Hz",
           "disc_window_s": tc.disc_segment_seconds or seg_s, "disc_every": tc.disc_every,
           "mpd_layout": tc.discriminator.mpd_layout,
           "compile_mode": tc.compile_mode if recipe.compile else "eager",
           "disc_batch": tc.disc_batch_size or tc.batch_size,
           "step_ms": 1000 * step_s, "timed_steps": steps, "audio_s_per_s": audio_s / step_s,
           "samples_per_s": tc.batch_size / step_s, "warmup_s": warm_s,
           "gflop_per_step": flops / 1e9, "tflops": flops / step_s / 1e12,
           "mfu_pct": 100 * flops / step_s / peak_flops,
           # phases per step (a phase that does not run every step is averaged over all)
           "phase_ms": {k: 1000 * v / max(1, phase_steps) for k, v in timer.totals.items()}}
    if device.type == "cuda":
        row["peak_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
        # what the caching allocator holds, CUDA graphs' private pools included (recorded in
        # the warm-up: their replays allocate nothing, so the peak above misses them)
        row["reserved_gb"] = torch.cuda.max_memory_reserved(device) / 2 ** 30
    log(f"[train_speed] {recipe.name}: {row['audio_s_per_s']:.0f} audio-s/s, "
        f"{row['step_ms']:.1f} ms/step, {row['tflops']:.1f} TFLOP/s")
    parts = None          # frees the models (the step closure shares this binding)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


#: the table's columns: (row key, header)
COLUMNS = [("recipe", "recipe"), ("generator_M", "gen M"), ("batch", "batch"),
           ("disc_batch", "D batch"), ("disc_window_s", "D s"), ("disc_every", "D every"),
           ("mpd_layout", "MPD"), ("compile_mode", "compile"),
           ("audio_s_per_s", "audio-s/s"), ("vs_shipped", "x shipped"), ("step_ms", "ms/step"),
           ("ms_data", "data"), ("ms_semantic_features", "ASR"),
           ("ms_generator_forward", "G fwd"), ("ms_discriminator", "D"),
           ("ms_generator_backward", "G bwd"), ("ms_optimizer", "opt"),
           ("peak_mem_gb", "mem GB"), ("reserved_gb", "held GB"), ("tflops", "TFLOP/s"),
           ("mfu_pct", "MFU %"),
           ("error", "error")]


def _write_results(out: Path, rows: list[dict], a, device) -> str:
    """Write ``train_speed.json`` and ``train_speed.md`` (atomically) for the recipes run so
    far; returns the table."""
    from flexicodec.common.atomic import atomic_write_text

    base = next((r for r in rows if r["recipe"] == "shipped"), None)
    for r in rows:
        r["vs_shipped"] = r["audio_s_per_s"] / base["audio_s_per_s"] if base else None
        r.setdefault("error", "")
        for k, v in r["phase_ms"].items():
            r[f"ms_{k}"] = v
    table = format_table(rows, COLUMNS)
    result = {"benchmark": "train_speed", "quick": a.quick, "hardware": hardware_info(device),
              "steps": a.steps, "warmup": a.warmup, "phase_steps": a.phase_steps,
              "peak_flops": a.peak_flops, "rows": rows}
    write_json(out / "train_speed.json", result)
    atomic_write_text(out / "train_speed.md",
                      "Phase columns: ms per step, synchronised at each phase boundary.\n\n```\n"
                      + table + "\n```\n")
    return table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flexicodec.benchmarks.train_speed",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--data", required=True, help="corpus directory (its train split is used)")
    ap.add_argument("--asr", default=None, help="frozen ASR (default: the configs' asr_path)")
    ap.add_argument("--recipes", default=None, help="comma list (default: all)")
    ap.add_argument("--steps", type=int, default=30, help="timed steps per recipe")
    ap.add_argument("--warmup", type=int, default=8, help="untimed steps (compilation)")
    ap.add_argument("--phase-steps", type=int, default=5)
    ap.add_argument("--max-utts", type=int, default=3000, help="train utterances loaded")
    ap.add_argument("--peak-flops", type=float, default=DEFAULT_PEAK_FLOPS,
                    help="device peak for MFU, dense bf16 FLOP/s (default: H100/H200 989e12)")
    ap.add_argument("--quick", action="store_true", help="tiny models (CPU check, seconds)")
    ap.add_argument("-o", "--out", default="benchmarks/results", help="output directory")
    a = ap.parse_args(argv)
    device = resolve_device(a.device)
    chosen = recipes(a.quick)
    if not a.recipes:
        chosen = [r for r in chosen if r.default]
    else:
        names = [n.strip() for n in a.recipes.split(",") if n.strip()]
        unknown = sorted(set(names) - {r.name for r in chosen})
        if unknown:
            ap.error(f"unknown recipes {unknown}; choose from {[r.name for r in chosen]}")
        chosen = [r for r in chosen if r.name in names]
        if not chosen:
            ap.error("--recipes names no recipe")
    if a.quick:
        a.steps, a.warmup, a.phase_steps = min(a.steps, 2), min(a.warmup, 1), min(a.phase_steps, 1)
    out = Path(a.out)
    rows = []
    for r in chosen:
        try:
            rows.append(run_recipe(r, a.data, a.asr, device, a.steps, a.warmup, a.phase_steps,
                                   a.quick, out / "cache", a.max_utts, a.peak_flops))
        except Exception as exc:          # reported in the table and JSON, never dropped
            log(f"[train_speed] {r.name} FAILED: {type(exc).__name__}: {exc}")
            rows.append({"recipe": r.name, "error": f"{type(exc).__name__}: {exc}"[:500],
                         "audio_s_per_s": float("nan"), "phase_ms": {}})
            if device.type == "cuda":
                torch.cuda.empty_cache()
        # after every recipe: a run stopped by a time limit keeps the recipes it finished
        table = _write_results(out, rows, a, device)
    print(table)
    log(f"[train_speed] wrote {out / 'train_speed.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
