"""Train FlexiCodec (generator + MPD/MRD discriminators) on random crops of a corpus.

    flexicodec train --config configs/codec/small.yaml --data CORPUS --run-dir RUN \
        --asr DIR [--max-steps N] [--max-minutes M] [--stop-after N] [--resume] \
        [--out-model DIR] [--fixed-group K] [--init-from CODEC_OR_PORTABLE_DIR]
    accelerate launch -m flexicodec.codec.train ...            # several GPUs

The exported model (EMA weights when ``train.ema_decay`` > 0; a dynamic-rate model with its
default threshold calibrated on the valid split) goes to ``--out-model``, default
``RUN/model``.

The model is built from the YAML ``model:`` section with the trained ASR (``--asr``) copied in
as its frozen semantic model; the ``train:`` section (:class:`CodecTrainConfig`) holds batch,
crop length, learning rates, loss weights and schedule.

Schedule: the first ``warmup_fixed_steps`` steps run at fixed 12.5 Hz (threshold 1.0, no
merging: the author's advice); after that each batch draws a target average rate uniformly
from the model's ``train_frame_rate_range`` and each utterance is merged by the threshold that
reaches it. ``--fixed-group K`` trains the fixed-rate baseline instead
(every K frames merged regardless of content; K=2 → 6.25 Hz) with the same architecture and
budget. Discriminators join at ``disc_start``.

Losses (weights in YAML): multi-resolution mel L1, GAN (hinge or LSGAN over MPD + MRD) with
feature matching, RVQ codebook + commitment, semantic distillation. bf16 autocast on CUDA
(STFT/iSTFT and the losses stay fp32), gradient clipping, optional EMA of the generator,
AdamW + warm-up/cosine schedulers for both. Checkpoints (``accelerate save_state``: models,
optimizers, schedulers, EMA, RNG states) are atomic; ``--resume`` continues exactly (seeded
batch plan + skip, restored RNG). ``--max-minutes`` checkpoints and exits before the limit.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from flexicodec.codec.augment import TimbreAugmentConfig, timbre_augment
from flexicodec.codec.discriminators import (CodecDiscriminator, DiscriminatorConfig,
                                             same_weights)
from flexicodec.codec.losses import (MelLossConfig, MultiResolutionMelLoss, discriminator_loss,
                                     feature_matching_loss, generator_adv_loss, match_length)
from flexicodec.codec.portable import (GROWTH_HISTORY, SEMANTIC_HISTORY,
                                       STATE as PORTABLE_STATE, load_portable_weights,
                                       read_portable_info, save_portable_state)
from flexicodec.common.atomic import atomic_write_text
from flexicodec.common.pretrained import config_from_dict, config_to_dict
from flexicodec.common.training import (STATE_NAME, STOP_FILE, CheckpointManager, EpochPlan, JsonlLogger,
                                        TimeBudget, cuda_memory_gb, dataclass_from_section, end_of_step, load_yaml,
                                        lr_lambda, make_accelerator, seed_everything)
from flexicodec.common.constants import BASE_FRAME_RATE
from flexicodec.common.models import resolve_models_path
from flexicodec.common.compile_cache import (compile_seconds, compile_seconds_between,
                                             load_compile_cache, save_compile_cache)
from flexicodec.common.run_flags import add_run_flags, out_model_dir, parse_run_args


PROFILE_AFTER = 50      # steps into a run before train.profile_steps are profiled
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
#: the modes under which torch.compile replays CUDA graphs (each step marks its start)
CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")


@dataclass
class LossWeights:
    mel: float = 15.0
    adv: float = 1.0
    feature_matching: float = 2.0
    commit: float = 0.25
    codebook: float = 1.0
    distill: float = 1.0
    # the residual the used RVQ stages leave in the full latent space (0: off, as in DAC,
    # whose factorised stages are trained only in their low-dimensional projections)
    residual: float = 0.0


@dataclass
class CodecTrainConfig:
    batch_size: int = 16
    segment_seconds: float = 2.56
    min_seconds: float = 0.5            # shorter utterances are not used for training
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    betas: tuple = (0.8, 0.99)
    weight_decay: float = 0.01
    warmup_steps: int = 500
    max_steps: int = 20000
    grad_clip_g: float = 1.0
    grad_clip_d: float = 1.0
    gan_kind: str = "hinge"
    disc_start: int = 2000
    warmup_fixed_steps: int = 2000      # steps at threshold 1.0 (12.5 Hz) before merging
    ema_decay: float = 0.0              # 0 disables the EMA copy of the generator
    loss_weights: LossWeights = field(default_factory=LossWeights)
    mel_loss: MelLossConfig = field(default_factory=MelLossConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    log_every: int = 50
    eval_every: int = 1000
    save_every: int = 1000
    max_eval_utts: int = 16
    eval_seconds: float = 6.0
    num_workers: int = 2
    seed: int = 0
    # --- speed (benchmarks/train_speed.py measures each) ---
    data_on_device: bool = False        # train split + frozen features held on the device
    cache_dir: str = ""                 # device-data cache (default RUN/cache)
    compile: bool = False               # torch.compile the generator parts, discriminators, loss
    compile_backend: str = "inductor"   # its backend ("aot_eager": tracing and autograd only)
    # torch.compile's mode: "default"; "reduce-overhead" replays each compiled part as a CUDA
    # graph (one launch instead of one per kernel: the host's share of a step); or
    # "max-autotune" / "max-autotune-no-cudagraphs" (Triton autotuning, longer compilation)
    compile_mode: str = "default"
    lr_schedule: str = "cosine"         # 'cosine' (to lr_min_ratio at max_steps), 'constant'
    #   after warm-up, or 'exponential': constant until global step lr_decay_start, then
    #   halved every lr_half_life steps down to lr_min_ratio (annealing without a planned end)
    lr_decay_start: int = 0
    lr_half_life: int = 0
    lr_min_ratio: float = 0.05
    rewarm_steps: int = 200             # LR ramp after continuing from a portable state
    eval_quality: bool = False          # STOI / PESQ-WB of valid reconstructions at each eval
    # the discriminators (their update and the generator's adversarial / feature-matching
    # losses) see one random window of this many seconds per item, cut at the same offset
    # from the real and the reconstructed crop (0: the whole crop); the mel and the other
    # losses always use the whole crop
    disc_segment_seconds: float = 0.0
    # the discriminators (update, adversarial and feature-matching losses) see the first this
    # many items of each batch, a random subset as batches are random draws (0: all); their
    # cost falls about batch_size / disc_batch_size times, the mel and other losses keep
    # the whole batch
    disc_batch_size: int = 0
    disc_every: int = 1                 # discriminator update every k generator steps
    # a new timbre per crop on the device (flexicodec.codec.augment; prob 0: off): formant
    # scale and a smooth EQ, the augmented crop is the codec's input and target
    timbre_augment: TimbreAugmentConfig = field(default_factory=TimbreAugmentConfig)
    # cuDNN times its convolution algorithms for each new shape and keeps the fastest (pays
    # off when every step has the same shapes: data_on_device)
    cudnn_benchmark: bool = False
    # profile this many steps, PROFILE_AFTER steps after the run starts (compiled by then):
    # where the step's device time goes, RUN/profile_step{S}.{json,md}
    # (flexicodec.common.profiling)
    profile_steps: int = 0

    def __post_init__(self) -> None:
        for name in ("loss_weights", "mel_loss", "discriminator", "timbre_augment"):
            value = getattr(self, name)
            if isinstance(value, dict):
                cls = {"loss_weights": LossWeights, "mel_loss": MelLossConfig,
                       "discriminator": DiscriminatorConfig,
                       "timbre_augment": TimbreAugmentConfig}[name]
                setattr(self, name, dataclass_from_section(cls, value, f"train.{name}"))
        if self.gan_kind not in ("hinge", "lsgan"):
            raise ValueError(f"train.gan_kind must be 'hinge' or 'lsgan', got {self.gan_kind!r}")
        if self.segment_seconds <= 0 or self.batch_size < 1:
            raise ValueError("train.segment_seconds and train.batch_size must be positive")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"train.ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.lr_schedule not in ("cosine", "constant", "exponential"):
            raise ValueError(f"train.lr_schedule must be 'cosine', 'constant' or 'exponential', "
                             f"got {self.lr_schedule!r}")
        if self.lr_schedule == "exponential" and self.lr_half_life < 1:
            raise ValueError(f"train.lr_schedule 'exponential' needs train.lr_half_life >= 1 "
                             f"(steps), got {self.lr_half_life}")
        if self.lr_decay_start < 0 or not 0.0 < self.lr_min_ratio <= 1.0:
            raise ValueError(f"train.lr_decay_start must be >= 0 and train.lr_min_ratio in "
                             f"(0, 1], got {self.lr_decay_start} and {self.lr_min_ratio}")
        if self.rewarm_steps < 0:
            raise ValueError(f"train.rewarm_steps must be >= 0, got {self.rewarm_steps}")
        if not 0.0 <= self.disc_segment_seconds <= self.segment_seconds:
            raise ValueError(f"train.disc_segment_seconds must be in [0, segment_seconds="
                             f"{self.segment_seconds}], got {self.disc_segment_seconds}")
        if self.disc_every < 1:
            raise ValueError(f"train.disc_every must be >= 1, got {self.disc_every}")
        if not 0 <= self.disc_batch_size <= self.batch_size:
            raise ValueError(f"train.disc_batch_size must be in [0, batch_size="
                             f"{self.batch_size}], got {self.disc_batch_size}")
        if self.profile_steps < 0:
            raise ValueError(f"train.profile_steps must be >= 0, got {self.profile_steps}")
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"train.compile_mode must be one of {COMPILE_MODES}, got "
                             f"{self.compile_mode!r}")


def load_train_section(path: str | Path) -> CodecTrainConfig:
    """The ``train:`` section of ``configs/codec/*.yaml`` (unknown keys are an error)."""
    data = load_yaml(path)
    if not isinstance(data.get("train"), dict):
        raise ValueError(f"{path}: no 'train:' section")
    return dataclass_from_section(CodecTrainConfig, data["train"], f"{path} train")


class EMA:
    """Exponential moving average of a module's floating parameters and buffers.

    Has ``state_dict``/``load_state_dict`` so ``accelerator.register_for_checkpointing`` saves
    and restores it with the run.
    """

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()
                       if v.is_floating_point()}

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        state = module.state_dict()
        keys = [k for k in self.shadow if k in state]
        torch._foreach_lerp_([self.shadow[k] for k in keys],
                             [state[k].detach().to(self.shadow[k].dtype) for k in keys],
                             1 - self.decay)

    def copy_to(self, module: torch.nn.Module) -> None:
        state = module.state_dict()
        state.update({k: v.to(state[k].dtype) for k, v in self.shadow.items()})
        module.load_state_dict(state)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay = state["decay"]
        self.shadow = {k: v.to(self.shadow[k].device) for k, v in state["shadow"].items()}


def build_codec_config(config_path: str, asr: str | None, fixed_group: int | None):
    """FlexiCodecConfig from the YAML ``model:`` section, with ``--asr`` / ``--fixed-group``."""
    from flexicodec.codec.config import FlexiCodecConfig

    cfg = FlexiCodecConfig.from_yaml(config_path)
    if fixed_group is not None:
        cfg = config_from_dict(FlexiCodecConfig, {**config_to_dict(cfg),
                                                  "fixed_group": int(fixed_group)})
    if cfg.semantic.source == "asr":
        asr = asr or cfg.semantic.asr_path      # --asr overrides the YAML's asr_path
        if not asr:
            raise ValueError("the codec's semantic model is our PhonemeASR: pass --asr DIR "
                             "(a trained `flexicodec asr-train --out-model` directory) or set "
                             "model.semantic.asr_path")
        asr = resolve_models_path(asr)          # flexicodec_pretrained/...: the models dir
        if not (Path(asr) / "config.json").is_file():
            raise FileNotFoundError(f"ASR {asr}: not a model directory (no config.json); "
                                    f"train one with `flexicodec asr-train`")
        cfg.semantic.asr_path = str(asr)
    elif asr:
        raise ValueError(f"--asr given but the config's semantic source is "
                         f"{cfg.semantic.source!r}")
    return cfg


def init_codec_config(init_from: str, fixed_group: int | None):
    """The model config of the trained codec in ``init_from`` (``--init-from``); a
    ``--fixed-group`` that differs from it is refused (the weights were trained for it)."""
    from flexicodec.codec.config import FlexiCodecConfig
    from flexicodec.codec.model import FlexiCodec

    meta = FlexiCodec.read_config(init_from)           # CheckpointError if not a codec
    cfg = config_from_dict(FlexiCodecConfig, meta["config"])
    if fixed_group is not None and int(fixed_group) != cfg.fixed_group:
        raise ValueError(f"--fixed-group {fixed_group} differs from {init_from}'s "
                         f"fixed_group {cfg.fixed_group}")
    return cfg


def sample_merging(step: int, tc: CodecTrainConfig, model_cfg) -> dict:
    """How this batch is merged, as keyword arguments of ``FlexiCodec.forward``: none in
    fixed-group mode, threshold 1.0 (12.5 Hz) during the fixed-rate warm-up, else a target
    ``frame_rate`` uniform in ``train_frame_rate_range`` (global torch RNG, so resumable)."""
    if model_cfg.fixed_group:
        return {}
    if step < tc.warmup_fixed_steps:
        return {"threshold": 1.0}
    return {"frame_rate": model_cfg.draw_train_rate()}


def schedule(tc: CodecTrainConfig, warmup: int, total: int, offset: int = 0,
             rewarm: tuple[int, int] | None = None):
    """LambdaLR factor of scheduler step ``i`` (global step ``i + offset``): linear warm-up,
    then (``tc.lr_schedule``) cosine decay to ``tc.lr_min_ratio`` at ``total``, constant, or
    exponential: constant until global step ``tc.lr_decay_start``, then
    ``0.5 ** (steps since / tc.lr_half_life)``, at least ``tc.lr_min_ratio``;
    ``rewarm=(from, n)`` multiplies by a linear ramp over the ``n`` steps after global step
    ``from`` (fresh optimizer moments after continuing from a portable state)."""
    base = lr_lambda(warmup, total, tc.lr_min_ratio) if tc.lr_schedule == "cosine" else \
        (lambda i: min(1.0, (i + 1) / max(1, warmup)))

    def f(i: int) -> float:
        factor = base(i)
        if tc.lr_schedule == "exponential":
            since = max(0, i + offset - tc.lr_decay_start)
            factor *= max(tc.lr_min_ratio, 0.5 ** (since / tc.lr_half_life))
        if rewarm is not None and rewarm[1] > 0:
            factor *= min(1.0, max(0, i + offset - rewarm[0] + 1) / rewarm[1])
        return factor
    return f


@contextlib.contextmanager
def eager():
    """Context in which ``torch.compile``d modules run eagerly and cuDNN does not autotune
    (evaluation on whole utterances of varying lengths would otherwise compile graphs, and
    time convolution algorithms, for each new shape)."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    bench = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        with set_stance("force_eager") if set_stance is not None else contextlib.nullcontext():
            yield
    finally:
        torch.backends.cudnn.benchmark = bench


def compile_for_training(model, disc, mel_loss, backend: str = "inductor",
                         mode: str = "default") -> None:
    """``torch.compile`` (in place: parameter names unchanged) the parts of a training step
    whose shapes are fixed by the crop length: acoustic encoder, transformers, ConvNeXt
    stacks, RVQ, decoder, discriminators and the mel loss. The merging itself (data-dependent
    grouping) stays eager; the token-level parts see the token axis padded to the frame
    count (``pad_tokens``), so every shape is fixed. ``dynamic=False``: each distinct shape
    gets its own static graph (the discriminators see [2B, ...] in their update and [B, ...]
    in the generator's pass) instead of one with a symbolic batch size. ``mode``: one of
    :data:`COMPILE_MODES` (``train.compile_mode``)."""
    for part in (model.encoder, model.merge_transformer, model.semantic_encoder,
                 model.semantic_decoder, model.distill_head, model.rvq,
                 model.unmerge_transformer, model.decoder, disc, mel_loss):
        part.compile(dynamic=False, backend=backend, mode=None if mode == "default" else mode)


def fresh_copy(raw, ema: "EMA | None", device):
    """A new, uncompiled FlexiCodec of ``raw``'s config on ``device`` with ``raw``'s weights,
    or the EMA's where ``ema`` is given (what exports use)."""
    from flexicodec.codec.model import FlexiCodec

    model = FlexiCodec(copy.deepcopy(raw.config)).to(device)
    model.load_state_dict(raw.state_dict())
    if ema is not None:
        ema.copy_to(model)
    return model


@torch.no_grad()
def valid_of_ema(ema_model, dataset, mel_loss, device, tc: "CodecTrainConfig",
                 rate: float | None) -> dict:
    """The valid metrics of :func:`valid_mel_loss` (with STOI and PESQ-WB under
    ``train.eval_quality``) for ``ema_model``, the EMA weights in a fresh uncompiled copy of
    the trained model (:func:`fresh_copy`), keys suffixed ``_ema``; with acoustic RVQ
    stages, also the mel L1 with the first stage only (``valid_mel_{rate}_q1_ema``: what
    the other stages add is the difference)."""
    ev = {k: v for k, v in valid_mel_loss(ema_model, dataset, mel_loss, device,
                                          tc.max_eval_utts, (rate,),
                                          quality=tc.eval_quality).items()
          if not k.startswith("valid_rate")}
    if ema_model.config.n_q > 1:
        ev.update({k: v for k, v in valid_mel_loss(ema_model, dataset, mel_loss, device,
                                                   tc.max_eval_utts, (rate,), 1).items()
                   if k.startswith("valid_mel")})
    return {f"{k}_ema": v for k, v in ev.items()}


@torch.no_grad()
def unseen_mel(models: dict, dataset, mel_loss, device, max_utts: int,
               rate: float | None) -> dict:
    """Mean mel L1 of the first ``max_utts`` utterances of the corpus's ``test_unseen``
    split (voices held out of training) at ``rate`` for each of ``models`` (key suffix →
    model, e.g. ``{"": raw, "_ema": ema_copy}``): keys ``unseen_mel_{rate}{suffix}`` (the
    in-run counterpart of the held-out evaluation's unheard voices)."""
    out = {}
    for suffix, model in models.items():
        ev = valid_mel_loss(model, dataset, mel_loss, device, max_utts, (rate,))
        out.update({k.replace("valid_mel", "unseen_mel") + suffix: v for k, v in ev.items()
                    if k.startswith("valid_mel")})
    return out


def compact_buffers(module: torch.nn.Module) -> None:
    """Give every buffer its own exactly-sized storage. ``torch.hann_window(n)`` is a view
    into an n+1 storage, which accelerate's safetensors ``load_state`` refuses ("None is
    covering the entire storage"); cloning fixes it without changing any value."""
    for mod in module.modules():
        for name, buf in list(mod._buffers.items()):
            if buf is not None and buf.untyped_storage().nbytes() != \
                    buf.numel() * buf.element_size():
                mod._buffers[name] = buf.clone()


def _split(tensors: list[torch.Tensor], n: int) -> tuple[list, list]:
    """Split each ``[2n, ...]`` tensor of a list into its first and second halves."""
    return [t[:n] for t in tensors], [t[n:] for t in tensors]


def _mask_audio(y: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    mask = torch.arange(y.shape[-1], device=y.device)[None, :] < lengths[:, None]
    return y * mask.to(y.dtype)


@torch.no_grad()
def valid_mel_loss(model, dataset, mel_loss: MultiResolutionMelLoss, device, max_utts: int,
                   rates: tuple, num_quantizers: int | None = None,
                   quality: bool = False) -> dict:
    """Mean mel L1 on the first ``max_utts`` valid utterances at each target rate (Hz; None:
    the model's own fixed groups), decoded with all acoustic stages or, with
    ``num_quantizers`` n, the first n (keys then end in ``_q{n}``). With ``quality``, also
    the mean STOI and PESQ-WB of the same reconstructions at the first rate
    (``valid_stoi_{rate}``, ``valid_pesq_{rate}``; needs the judges, ``pip install
    .[eval]``)."""
    from flexicodec.data.loaders import collate_audio

    if quality:
        from flexicodec.codec.eval.metrics import pesq_wb, stoi
    was = model.training
    model.eval()
    n = min(len(dataset), max_utts)
    out = {}
    for j, r in enumerate(rates):
        tot, achieved, st, pq = 0.0, 0.0, 0.0, 0.0
        judge = quality and j == 0
        for i in range(n):
            batch = collate_audio([dataset[i]])
            wav = batch["wav"].to(device)
            res = model(wav, batch["wav_lengths"].to(device), frame_rate=r,
                        num_quantizers=num_quantizers)
            tot += mel_loss(res.audio.float(), wav).item()
            achieved += float(res.frame_rate)
            if judge:
                ref = wav[0].float().cpu().numpy()
                deg = res.audio[0, : ref.shape[0]].float().cpu().numpy()
                st += stoi(ref, deg)
                pq += pesq_wb(ref, deg)
        key = ("fixed" if r is None else f"{r:g}Hz") + \
            ("" if num_quantizers is None else f"_q{num_quantizers}")
        out[f"valid_mel_{key}"] = tot / max(1, n)
        out[f"valid_rate_{key}"] = achieved / max(1, n)
        if judge:
            out[f"valid_stoi_{key}"] = st / max(1, n)
            out[f"valid_pesq_{key}"] = pq / max(1, n)
    model.train(was)
    return out


@torch.no_grad()
def calibrate_default_threshold(model, dataset, device, max_utts: int = 200) -> float:
    """The global threshold whose pooled average rate on ``dataset`` (first ``max_utts``
    utterances) is nearest ``model.config.default_rate``."""
    from flexicodec.codec import merging

    sims = corpus_similarities(model, dataset, device, max_utts)
    return merging.calibrate_threshold(sims, model.config.default_rate, model.config.max_group)


@torch.no_grad()
def corpus_similarities(model, dataset, device, max_utts: int = 200) -> list[torch.Tensor]:
    """Adjacent-frame cosine similarities [F_i] of the frozen semantic features for the first
    ``max_utts`` items of an :class:`flexicodec.data.loaders.AudioDataset` (no encoder pass needed)."""
    from flexicodec.codec import merging
    from flexicodec.data.loaders import collate_audio

    was = model.training
    model.eval()
    sims = []
    hop = model.config.hop_size
    for i in tqdm(range(min(len(dataset), max_utts)), desc="semantic similarities",
                  leave=False):
        batch = collate_audio([dataset[i]])
        n = int(batch["wav_lengths"][0])
        wav = batch["wav"][:, :n].to(device)                                # [1, n]
        frames = -(-n // hop)
        padded = torch.nn.functional.pad(wav, (0, frames * hop - n))
        target = model.semantic_targets(padded, torch.tensor([frames], device=device))
        sims.append(merging.frame_similarity(target)[0].cpu())
    model.train(was)
    if not sims:
        raise ValueError("no utterances to calibrate on")
    return sims


@dataclass
class StepParts:
    """Everything one training step touches (prepared by accelerate)."""
    accelerator: object
    model: torch.nn.Module
    disc: torch.nn.Module
    mel_loss: torch.nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    sched_g: object
    sched_d: object
    g_params: list
    ema: "EMA | None"
    tc: CodecTrainConfig
    #: draws the discriminator windows' offsets (on the training device; seeded per step)
    window_gen: torch.Generator | None = None


def disc_window_samples(tc: CodecTrainConfig, sample_rate: int, crop_samples: int) -> int:
    """Samples of the discriminators' window (``train.disc_segment_seconds``); 0 when they
    see the whole crop (the key is 0 or the window would cover the crop)."""
    n = int(round(tc.disc_segment_seconds * sample_rate))
    return n if 0 < n < crop_samples else 0


def disc_windows(real: torch.Tensor, fake: torch.Tensor, window: int,
                 gen: torch.Generator | None, lengths: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """One random window of ``window`` samples per item, at the same offset in ``real`` and
    ``fake`` (both [B, T]) → ([B, window], [B, window]); ``window`` 0 (or >= T) returns the
    inputs themselves. Offsets are uniform over the positions where the window lies inside
    the item (``lengths`` [B]: valid samples, None = all T; an item shorter than the window
    starts at 0). Drawn on the device from ``gen``: fixed shapes, no host synchronisation."""
    B, T = real.shape
    if fake.shape != real.shape:
        raise ValueError(f"real {tuple(real.shape)} and fake {tuple(fake.shape)} differ")
    if window <= 0 or window >= T:
        return real, fake
    span = (T - window + 1 if lengths is None
            else (lengths.to(real.device).long() - window).clamp(min=0) + 1)    # [B] or int
    u = torch.rand(B, generator=gen, device=real.device)
    offset = torch.minimum((u * span).long(), torch.as_tensor(span, device=real.device) - 1)
    idx = offset[:, None] + torch.arange(window, device=real.device)[None, :]
    return real.gather(1, idx), fake.gather(1, idx)


@contextlib.contextmanager
def frozen(module: torch.nn.Module):
    """Parameters of ``module`` do not require gradients inside the block (restored after):
    a forward through it builds no graph for its weights, so a later backward computes only
    the gradients of the inputs."""
    params = [q for q in module.parameters() if q.requires_grad]
    for q in params:
        q.requires_grad_(False)
    try:
        yield module
    finally:
        for q in params:
            q.requires_grad_(True)


def generator_gan_losses(disc: torch.nn.Module, real: torch.Tensor, fake: torch.Tensor,
                         kind: str, autocast) -> tuple[torch.Tensor, torch.Tensor]:
    """(adversarial loss, feature-matching loss) of the generator: ``fake`` [B, T] (with its
    graph) and ``real`` [B, T] through ``disc`` with the discriminators' weights frozen (no
    gradient reaches them) and the real half under ``no_grad`` (its features are targets).
    ``disc`` is the unwrapped module (no DDP: nothing of it is reduced in this pass)."""
    with frozen(disc), autocast():
        with torch.no_grad():
            _, real_fmaps = disc(real)
        fake_logits, fake_fmaps = disc(fake)
    return (generator_adv_loss(fake_logits, kind),
            feature_matching_loss(real_fmaps, fake_fmaps))


def _step_seed(tc: "CodecTrainConfig", acc, step: int, stream: int) -> int:
    """Seed of one stream of a step's random draws on the device (1: discriminator windows,
    2: timbre augmentation): fixed by (seed, stream, step, process), so a resumed step draws
    the same."""
    return (tc.seed + stream) * 2654435761 + step * acc.num_processes + acc.process_index


def train_step(p: StepParts, wav: torch.Tensor, wl: torch.Tensor | None,
               target: torch.Tensor | None, how: dict, use_gan: bool, mark=None,
               step: int = 0):
    """One generator (+ discriminator) update on wav [B, T] (``wl`` [B] lengths or None for
    full crops; ``target`` [B, F, Dsem] precomputed semantic features or None).

    With ``train.timbre_augment.prob`` > 0 the crops first get new timbres
    (:mod:`flexicodec.codec.augment`, drawn from ``window_gen`` seeded by the step): every
    loss then sees the augmented crop.

    With ``use_gan`` the discriminators update (every ``train.disc_every`` steps counted from
    ``disc_start``; ``step`` is the global step) and the generator gets the adversarial and
    feature-matching losses, both on the first ``train.disc_batch_size`` items (0: all) and
    on windows of ``train.disc_segment_seconds`` (:func:`disc_windows`, offsets seeded by the
    step); the mel loss covers the whole batch and crop.

    Returns (model output, mel loss, generator loss, generator grad norm, logs) with every
    value still on the device (reading them synchronises). ``mark(name)``, when given, is
    called at the end of each phase ("generator_forward", "discriminator",
    "generator_backward", "optimizer"): benchmarks/train_speed.py times the phases with it."""
    acc, tc, w = p.accelerator, p.tc, p.tc.loss_weights
    mark = mark or (lambda name: None)
    if tc.compile and tc.compile_mode in CUDAGRAPH_MODES:
        torch.compiler.cudagraph_mark_step_begin()   # the last step's graph outputs are done
    if tc.timbre_augment.prob > 0:       # a new voice per crop, the same for a resumed step
        if p.window_gen is None:
            raise ValueError("train.timbre_augment needs StepParts.window_gen")
        p.window_gen.manual_seed(_step_seed(tc, acc, step, stream=2))
        wav = timbre_augment(wav, tc.timbre_augment, p.window_gen,
                             acc.unwrap_model(p.model).config.sample_rate)
        if wl is not None:
            wav = _mask_audio(wav, wl)
    with acc.autocast():
        out = p.model(wav, wl, semantic_target=target, pad_tokens=True, **how)
    y_hat = match_length(out.audio.float(), wav.shape[-1])
    if wl is not None:
        y_hat = _mask_audio(y_hat, wl)
    l_mel = p.mel_loss(y_hat, wav)
    mark("generator_forward")

    logs = {}
    if use_gan:
        window = disc_window_samples(tc, acc.unwrap_model(p.model).config.sample_rate,
                                     wav.shape[-1])
        if window:
            if p.window_gen is None:
                raise ValueError("train.disc_segment_seconds needs StepParts.window_gen")
            p.window_gen.manual_seed(_step_seed(tc, acc, step, stream=1))
        n = tc.disc_batch_size or wav.shape[0]          # [n, T] of the batch's [B, T]
        real_w, fake_w = disc_windows(wav[:n], y_hat[:n], window, p.window_gen,
                                      None if wl is None else wl[:n])
    if use_gan and (step - tc.disc_start) % tc.disc_every == 0:    # discriminator step
        with acc.autocast():   # one pass over [real; fake] (DDP-safe)
            logits, _ = p.disc(torch.cat([real_w, fake_w.detach()]))
        real_logits, fake_logits = _split(logits, real_w.shape[0])
        d_loss = discriminator_loss(real_logits, fake_logits, tc.gan_kind)
        p.opt_d.zero_grad(set_to_none=True)
        acc.backward(d_loss)
        logs["d_grad_norm"] = acc.clip_grad_norm_(p.disc.parameters(), tc.grad_clip_d)
        p.opt_d.step()
        p.opt_d.zero_grad(set_to_none=True)         # free the D gradients before the G pass
        logs["d_loss"] = d_loss.detach()
        mark("discriminator")
    if use_gan:                  # the D schedule follows the global step (also when k > 1)
        p.sched_d.step()

    g_loss = w.mel * l_mel
    for name, weight in (("commit", w.commit), ("codebook", w.codebook),
                         ("residual", w.residual), ("distill", w.distill)):
        value = getattr(out, f"{name}_loss")
        if value is not None and weight:
            g_loss = g_loss + weight * value.float()
            logs[f"{name}_loss"] = value.detach()
    if use_gan:
        l_adv, l_fm = generator_gan_losses(acc.unwrap_model(p.disc), real_w, fake_w,
                                           tc.gan_kind, acc.autocast)
        g_loss = g_loss + w.adv * l_adv + w.feature_matching * l_fm
        logs.update(adv_loss=l_adv.detach(), fm_loss=l_fm.detach())
    p.opt_g.zero_grad(set_to_none=True)
    acc.backward(g_loss)
    mark("generator_backward")
    gnorm = acc.clip_grad_norm_(p.g_params, tc.grad_clip_g)
    p.opt_g.step()
    p.sched_g.step()
    if p.ema is not None:
        p.ema.update(acc.unwrap_model(p.model))
    mark("optimizer")
    return out, l_mel, g_loss, gnorm, logs


def train_codec(config_path: str, data: str, run_dir: str, asr: str | None = None,
                max_steps: int | None = None, max_minutes: float | None = None,
                resume: bool = False, out_model: str | None = None,
                fixed_group: int | None = None, stop_after: int | None = None,
                cpu: bool = False, mixed_precision: str | None = None,
                init_from: str | None = None, portable_state: str | None = None,
                compile_cache: str | None = None) -> dict:
    """Run (or resume) codec training; returns the last logged metrics.

    ``init_from``: start a new run (step 0, fresh optimizers, the YAML's schedule from its
    start) from

    - a trained codec directory — its model config and weights (frozen ASR included);
      the discriminators start fresh; the YAML's ``model:`` section and ``asr`` are not
      used; or
    - a portable state (:mod:`flexicodec.codec.portable`, e.g. stage 1's ``checkpoints/codec_v2``) —
      its generator and discriminator weights, loaded into the model of the YAML's
      ``model:`` section (with ``fixed_group``; the frozen ASR from ``asr`` must be the
      state's); the stage-2 fine-tunes start this way. Unlike continuing the state
      (``portable_state``), the step count, schedule and training time restart.

    ``portable_state``: a :mod:`flexicodec.codec.portable` directory. A new run (no checkpoint in
    ``run_dir``) continues from it when it exists — model config, generator and
    discriminator weights, step and training time — with fresh optimizer moments (learning
    rates re-warmed over ``rewarm_steps``); the run rewrites it when it ends (also when it
    stops early on ``max_minutes``).

    ``compile_cache`` (with ``train.compile``): a :mod:`flexicodec.common.compile_cache` file,
    loaded before the first step when it exists and rewritten at the run's first logged
    step (and again at its first logged step with the discriminators, when they join later
    in the run), when the step's graphs have compiled. The first logged row has
    ``first_step_s``: seconds from the loop's start to the end of its first step
    (compilation and cuDNN autotuning) and, compiled, ``compile_s``: the part of it that
    was graph compilation (:func:`flexicodec.common.compile_cache.compile_seconds`)."""
    from accelerate.utils import DistributedDataParallelKwargs

    from flexicodec.codec.config import FlexiCodecConfig
    from flexicodec.codec.model import FlexiCodec
    from flexicodec.data.loaders import AudioDataset, collate_audio, load_corpus

    tc = load_train_section(config_path)
    if max_steps is not None:
        tc.max_steps = max_steps
    run = Path(run_dir)
    ckpt = CheckpointManager(run)
    accelerator = make_accelerator(mixed_precision, cpu=cpu, kwargs_handlers=[
        DistributedDataParallelKwargs(find_unused_parameters=True)])
    main = accelerator.is_main_process
    seed_everything(tc.seed)
    budget = TimeBudget(max_minutes, stop_file=run / STOP_FILE)

    cfg_file = run / "codec_config.json"
    resuming = resume and ckpt.latest() is not None
    portable_info = None
    if portable_state and not resuming and Path(portable_state).exists():
        if init_from:
            raise ValueError("give --init-from or an existing --portable-state, not both")
        portable_info = read_portable_info(portable_state)
    init_info = None            # --init-from a portable state (else a codec directory)
    if init_from and not resuming and (Path(init_from) / PORTABLE_STATE).is_file():
        init_info = read_portable_info(init_from)
    # where the run's weights came from, kept in its checkpoints and portable state
    lineage = None
    if init_from and not resuming:
        lineage = {"path": str(init_from),
                   **({"step": int(init_info["step"]),
                       "train_seconds": float(init_info.get("train_seconds", 0.0))}
                      if init_info is not None else {})}
    elif portable_info is not None:
        lineage = portable_info.get("init_from")
    # the frozen-ASR changes of a continued state (flexicodec.codec.portable.rebase_semantic)
    semantic_history = (portable_info or {}).get(SEMANTIC_HISTORY, [])
    # the model's growths (flexicodec.codec.grow), kept with the state
    growth_history = (portable_info or {}).get(GROWTH_HISTORY, [])
    if resuming:
        if not cfg_file.is_file():
            raise FileNotFoundError(f"{cfg_file}: missing; cannot resume this run")
        model_cfg = config_from_dict(FlexiCodecConfig, json.loads(cfg_file.read_text()))
        if fixed_group is not None and fixed_group != model_cfg.fixed_group:
            raise ValueError(f"--fixed-group {fixed_group} differs from the run's "
                             f"{model_cfg.fixed_group}")
    else:
        if ckpt.latest() is not None:
            raise FileExistsError(f"{run}: already holds checkpoints; pass --resume or use a "
                                  f"new --run-dir")
        if portable_info is not None:
            model_cfg = config_from_dict(FlexiCodecConfig, portable_info["codec_config"])
            if fixed_group is not None and fixed_group != model_cfg.fixed_group:
                raise ValueError(f"--fixed-group {fixed_group} differs from the portable "
                                 f"state's {model_cfg.fixed_group}")
            model_cfg.semantic.asr_path = build_codec_config(config_path, asr,
                                                             None).semantic.asr_path
        else:
            model_cfg = (init_codec_config(init_from, fixed_group)
                         if init_from and init_info is None
                         else build_codec_config(config_path, asr, fixed_group))
    model = FlexiCodec(model_cfg)           # consumes semantic.asr_path (weights copied in)
    if init_from and not resuming and init_info is None:
        model.load_state_dict(FlexiCodec.from_pretrained(init_from).state_dict())
        if main:
            print(f"[train] initialised from {init_from} (discriminators and optimizers "
                  f"start fresh)")
    compact_buffers(model)
    if main and not resuming:
        atomic_write_text(cfg_file, json.dumps(config_to_dict(model.config), indent=1,
                                               ensure_ascii=False))
    disc = CodecDiscriminator(tc.discriminator)
    mel_loss = MultiResolutionMelLoss(tc.mel_loss)
    start_step, prior_seconds = 0, 0.0
    if init_info is not None:
        if not same_weights(config_to_dict(disc.config), init_info["discriminator_config"]):
            raise ValueError(f"{init_from}: its discriminators differ from {config_path}'s "
                             f"train.discriminator")
        load_portable_weights(init_from, model, disc)
        if main:
            print(f"[train] new run from the generator and discriminators of {init_from} "
                  f"(its step {init_info['step']}); step 0, fresh optimizers and schedule")
    if portable_info is not None:
        if not same_weights(config_to_dict(disc.config),
                            portable_info["discriminator_config"]):
            raise ValueError(f"{portable_state}: its discriminators differ from "
                             f"{config_path}'s train.discriminator")
        load_portable_weights(portable_state, model, disc)
        start_step = int(portable_info["step"])
        prior_seconds = float(portable_info.get("train_seconds", 0.0))
        if main:
            print(f"[train] continuing {portable_state} at step {start_step} "
                  f"({prior_seconds / 60:.1f} training minutes so far; optimizer moments "
                  f"start fresh, learning rates re-warm over {tc.rewarm_steps} steps)")
    if tc.compile:
        compile_for_training(model, disc, mel_loss, tc.compile_backend, tc.compile_mode)
    if accelerator.device.type == "cuda":
        torch.backends.cudnn.benchmark = tc.cudnn_benchmark
    if tc.eval_quality:
        for module in ("pesq", "pystoi"):
            try:
                __import__(module)
            except ImportError as exc:
                raise ImportError(f"train.eval_quality needs {module} (pip install "
                                  f"'.[eval]'): {exc}") from None

    fused = {"fused": True} if accelerator.device.type == "cuda" else {}
    g_params = [p for p in model.parameters() if p.requires_grad]
    opt_g = torch.optim.AdamW(g_params, lr=tc.lr_g, betas=tuple(tc.betas),
                              weight_decay=tc.weight_decay, **fused)
    opt_d = torch.optim.AdamW(disc.parameters(), lr=tc.lr_d, betas=tuple(tc.betas),
                              weight_decay=tc.weight_decay, **fused)
    rewarm_from = start_step if portable_info is not None else None
    if resuming:          # a run that began from a portable state keeps its re-warm
        saved = json.loads((ckpt.latest() / STATE_NAME).read_text())
        rewarm_from, lineage = saved.get("rewarm_from"), saved.get("init_from")
        semantic_history = saved.get(SEMANTIC_HISTORY, [])
        growth_history = saved.get(GROWTH_HISTORY, [])
    rewarm = (rewarm_from, tc.rewarm_steps) if rewarm_from is not None else None
    sched_g = torch.optim.lr_scheduler.LambdaLR(
        opt_g, schedule(tc, tc.warmup_steps, tc.max_steps, 0, rewarm))
    d_steps = max(1, tc.max_steps - tc.disc_start)
    sched_d = torch.optim.lr_scheduler.LambdaLR(
        opt_d, schedule(tc, min(tc.warmup_steps, d_steps), d_steps, tc.disc_start, rewarm))
    if start_step:                       # continuing a portable state: schedules follow step
        with warnings.catch_warnings():  # ("lr_scheduler.step() before optimizer.step()")
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(start_step):
                sched_g.step()
            for _ in range(max(0, start_step - tc.disc_start)):
                sched_d.step()
    model, disc, opt_g, opt_d, sched_g, sched_d = accelerator.prepare(
        model, disc, opt_g, opt_d, sched_g, sched_d)
    mel_loss = mel_loss.to(accelerator.device)
    raw = accelerator.unwrap_model(model)
    ema = EMA(raw, tc.ema_decay) if tc.ema_decay > 0 else None
    if ema is not None:
        accelerator.register_for_checkpointing(ema)

    parts = StepParts(accelerator, model, disc, mel_loss, opt_g, opt_d, sched_g, sched_d,
                      g_params, ema, tc, torch.Generator(device=accelerator.device))
    state = ckpt.load(accelerator) if resuming else None
    step = int(state["step"]) if state else start_step
    if state:
        prior_seconds = float(state.get("train_seconds", 0.0))

    sr = model_cfg.sample_rate
    hop = model_cfg.hop_size
    seg_frames = max(1, round(tc.segment_seconds * sr / hop)) if tc.data_on_device else None
    seg = seg_frames * hop if seg_frames else int(round(tc.segment_seconds * sr))
    world = accelerator.num_processes
    if tc.data_on_device:
        from flexicodec.codec.device_data import build_device_corpus

        corpus = build_device_corpus(raw, data, "train", accelerator.device, seg_frames,
                                     cache_dir=tc.cache_dir or (run / "cache"),
                                     num_workers=tc.num_workers, progress=main)
        sampler = corpus.crop_sampler(seg_frames)
        n_train = corpus.num_utterances
        crops_per_epoch = max(1, sampler.total // seg_frames)
        plan = None
    else:
        train_ds = load_corpus(data, split="train", sample_rate=sr, check="header")
        durs = [float(d) for d in train_ds["duration"]]
        keep = [i for i, d in enumerate(durs) if d >= tc.min_seconds]
        if not keep:
            raise ValueError(f"{data}: no train utterances of at least {tc.min_seconds} s")
        if len(keep) < len(train_ds):
            train_ds = train_ds.select(keep)
            durs = [durs[i] for i in keep]
        train_set = AudioDataset(train_ds, sample_rate=sr, segment_samples=seg, random_crop=True)
        n_train = len(train_set)
        plan = EpochPlan(durs, tc.batch_size, tc.seed, accelerator.process_index, world,
                         bucket=False, what="train utterances")
    def eval_split(split: str):
        """The corpus split as fixed ``eval_seconds`` crops, or None when it has none."""
        try:
            ds = load_corpus(data, split=split, sample_rate=sr, check="header")
        except ValueError:
            return None
        return AudioDataset(ds, sample_rate=sr, segment_samples=int(tc.eval_seconds * sr),
                            random_crop=False)

    valid_set = eval_split("valid")
    unseen_set = eval_split("test_unseen")    # voices held out of training

    logger = JsonlLogger(run / "metrics.jsonl", enabled=main)
    n_gen = sum(p.numel() for p in g_params)
    n_disc = sum(p.numel() for p in disc.parameters())
    if main:
        mode = f"fixed group {model_cfg.fixed_group}" if model_cfg.fixed_group else \
            f"dynamic (fixed 12.5 Hz for {tc.warmup_fixed_steps} steps)"
        print(f"[train] generator {n_gen / 1e6:.2f} M trainable params, discriminators "
              f"{n_disc / 1e6:.2f} M; {n_train} train utterances, crops "
              f"{seg / sr:g} s x {tc.batch_size}"
              f"{' (held on the device)' if tc.data_on_device else ''}; {mode}; device "
              f"{accelerator.device}, precision {accelerator.mixed_precision}"
              f"{', compiled' if tc.compile else ''}; "
              f"{('resumed at step ' if state else 'continued at step ') + str(step) if step else 'from scratch'}")

    def batches():
        """(epoch, wav [B, seg], wav_lengths [B] or None, semantic target or None) per step."""
        if tc.data_on_device:
            gen = torch.Generator(device=accelerator.device)
            while True:       # seeded by (seed, step, rank): a resumed run draws the same
                gen.manual_seed(tc.seed * 1000003 + step * world + accelerator.process_index)
                wav, target = sampler.sample(tc.batch_size, gen)
                yield step * tc.batch_size * world // crops_per_epoch, wav, None, target
        while True:
            epoch, loader = plan.loader(train_set, step, tc.num_workers, collate_audio)
            for batch in loader:
                yield (epoch, batch["wav"].to(accelerator.device),
                       batch["wav_lengths"].to(accelerator.device), None)

    def write_portable() -> None:
        save_portable_state(portable_state, raw, accelerator.unwrap_model(disc),
                            {"step": step, "train_seconds": prior_seconds + budget.elapsed(),
                             "config": str(config_path), "init_from": lineage,
                             SEMANTIC_HISTORY: semantic_history,
                             **({GROWTH_HISTORY: growth_history} if growth_history else {})})

    if compile_cache and tc.compile:
        n_art = load_compile_cache(compile_cache)
        if main:
            print(f"[train] compile cache {compile_cache}: " + (
                f"{n_art} artifacts loaded" if n_art is not None else "none yet"))
    elif compile_cache and main:
        print(f"[train] compile cache {compile_cache} not used: train.compile is off")
    cache_saved_with_gan = None          # None: not saved yet; else whether D had joined
    pbar = tqdm(total=tc.max_steps, initial=step, desc="codec-train", disable=not main)
    last: dict = {}
    first_step_s = None
    compile_before = compile_seconds() if tc.compile else None    # this process's earlier runs
    t_loop = time.monotonic()
    t_log, samples = time.monotonic(), 0
    stopped_early = False
    model.train()
    disc.train()
    profiler = None
    if tc.profile_steps and main:
        from flexicodec.common.profiling import StepProfiler
        first = step + PROFILE_AFTER
        profiler = StepProfiler(run / f"profile_step{first}", first, tc.profile_steps,
                                accelerator.device)
    for epoch, wav, wl, target in batches():
        if step >= tc.max_steps:
            break
        how = sample_merging(step, tc, model_cfg)
        if profiler is not None:
            profiler.before(step)
        out, l_mel, g_loss, gnorm, logs = train_step(parts, wav, wl, target, how,
                                                     step >= tc.disc_start, step=step)
        step += 1
        if first_step_s is None:      # one synchronisation: compilation ends with this step
            if accelerator.device.type == "cuda":
                torch.cuda.synchronize(accelerator.device)
            first_step_s = time.monotonic() - t_loop
            compile_s = (compile_seconds_between(compile_before, compile_seconds())
                         if tc.compile else None)
            if main:
                tqdm.write(f"[train] first step after {first_step_s:.1f} s (compilation"
                           + (f" {compile_s:.1f} s" if compile_s is not None else "")
                           + ", cuDNN autotuning, the step)")
        if profiler is not None and (prof := profiler.after(step)) is not None:
            tqdm.write(f"[train] profiled steps {first}-{step - 1}: "
                       f"{prof['wall_ms_per_step']:.1f} ms per step, device "
                       f"{prof['device_ms_per_step']:.1f} ms -> {profiler.out}.md")
        budget.tick()
        samples += wav.shape[0] * world
        pbar.update(1)
        if step % tc.log_every == 0 or step == tc.max_steps:
            first_row = not last
            if not math.isfinite(g_loss.item()):
                raise FloatingPointError(f"step {step}: generator loss is {g_loss.item()}")
            dt = time.monotonic() - t_log
            last = {"step": step, "epoch": epoch, "loss": g_loss.item(),
                    "mel_loss": l_mel.item(), **{k: float(v) for k, v in logs.items()},
                    "grad_norm": float(gnorm),
                    "target_frame_rate": how.get("frame_rate"),
                    "threshold": (float(out.threshold.float().mean())
                                  if bool(torch.isfinite(out.threshold).all()) else None),
                    "frame_rate": float(out.frame_rate),
                    "lr_g": sched_g.get_last_lr()[0], "samples_per_s": samples / dt,
                    "audio_s_per_s": samples * wav.shape[-1] / sr / dt,
                    "elapsed_s": budget.elapsed(),
                    "train_minutes": (prior_seconds + budget.elapsed()) / 60}
            mem = cuda_memory_gb()
            if mem is not None:
                last["gpu_mem_gb"] = mem
            if first_row:
                last["first_step_s"] = first_step_s
                if compile_s is not None:
                    last["compile_s"] = compile_s
            logger.log(last)
            with_gan = step > tc.disc_start
            if (compile_cache and tc.compile and main
                    and (cache_saved_with_gan is None or (with_gan and not cache_saved_with_gan))):
                n_art = save_compile_cache(compile_cache)
                cache_saved_with_gan = with_gan
                tqdm.write(f"[train] compile cache: {n_art} artifacts written to "
                           f"{compile_cache}")
            pbar.set_postfix(mel=f"{last['mel_loss']:.3f}", rate=f"{last['frame_rate']:.1f}")
            t_log, samples = time.monotonic(), 0
        if valid_set is not None and step % tc.eval_every == 0 and main:
            rates = (None,) if model_cfg.fixed_group else (BASE_FRAME_RATE, 6.25)
            with eager():            # whole utterances: no graphs compiled for their shapes
                ev = valid_mel_loss(raw, valid_set, mel_loss, accelerator.device,
                                    tc.max_eval_utts, rates, quality=tc.eval_quality)
                models = {"": raw}
                if ema is not None:  # the EMA weights (what exports use), at the first rate
                    models["_ema"] = fresh_copy(raw, ema, accelerator.device)
                    ev.update(valid_of_ema(models["_ema"], valid_set, mel_loss,
                                           accelerator.device, tc, rates[0]))
                if unseen_set is not None:
                    ev.update(unseen_mel(models, unseen_set, mel_loss, accelerator.device,
                                         tc.max_eval_utts, rates[0]))
            logger.log({"step": step, "train_minutes": (prior_seconds + budget.elapsed()) / 60,
                        **ev})
            tqdm.write(f"[train] step {step}: " + ", ".join(f"{k} {v:.3f}"
                                                            for k, v in ev.items()))
        ended = end_of_step(accelerator, ckpt, budget, step, tc.max_steps, tc.save_every,
                            stop_after, name="train", epoch=epoch, rewarm_from=rewarm_from,
                            train_seconds=prior_seconds + budget.elapsed(), init_from=lineage,
                            **{SEMANTIC_HISTORY: semantic_history,
                               GROWTH_HISTORY: growth_history})
        if ended:
            stopped_early = ended == "stopped"
            break
        if main and portable_state and step % tc.save_every == 0:
            write_portable()      # with every checkpoint: a copy can leave the machine any time
        budget.skip()             # evaluation / checkpoint time is not a training step
    pbar.close()
    result = dict(last, step=step, finished=not stopped_early, generator_params=n_gen,
                  train_minutes=(prior_seconds + budget.elapsed()) / 60)
    if main and portable_state:
        write_portable()
        print(f"[train] portable state (step {step}) written to {portable_state}")
    if main and out_model:
        export = fresh_copy(raw, ema, accelerator.device)
        if valid_set is not None and not model_cfg.fixed_group:
            with eager():
                thr = calibrate_default_threshold(export, valid_set, accelerator.device)
            export.config.default_threshold = round(thr, 6)
            print(f"[train] default_threshold {thr:.4f} (~{model_cfg.default_rate:g} Hz on valid)")
        export.float().save_pretrained(out_model)
        print(f"[train] saved codec to {out_model}{' (EMA weights)' if ema else ''}")
    accelerator.wait_for_everyone()
    return result


def main(argv: list[str] | None = None) -> int:
    a = parse_run_args(build_parser(), argv)
    res = train_codec(a.config, a.data, a.run_dir, a.asr, a.max_steps, a.max_minutes,
                      a.resume, str(out_model_dir(a)), a.fixed_group, a.stop_after, a.cpu,
                      a.mixed_precision, a.init_from, a.portable_state, a.compile_cache)
    print(json.dumps(res, indent=1))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flexicodec train", description=__doc__.split("\n")[0])
    add_run_flags(p, stop_after=True, mixed_precision=True, compile_cache=True)
    p.add_argument("--data", required=True, help="corpus directory (train/valid splits)")
    p.add_argument("--asr", default=None, help="trained PhonemeASR directory (semantic model)")
    p.add_argument("--fixed-group", type=int, default=None,
                   help="train the fixed-rate baseline: merge every K frames (2 → 6.25 Hz)")
    p.add_argument("--init-from", default=None,
                   help="start a new run (step 0, fresh optimizers and schedule) from a "
                        "trained codec directory (its config and weights; fresh "
                        "discriminators) or a portable state (its generator and "
                        "discriminators in the YAML's model), e.g. checkpoints/codec_v2")
    p.add_argument("--portable-state", default=None,
                   help="continue from this portable state when RUN has no checkpoint, and "
                        "rewrite it with every checkpoint and at the end (fp16 generator + "
                        "discriminators, step; small enough to keep in the repository)")
    return p


if __name__ == "__main__":
    raise SystemExit(main())
