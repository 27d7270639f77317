"""Train the CTC phoneme recognizer (:mod:`flexicodec.codec.asr.model`) on a corpus' ``phonemes`` column.

    flexicodec asr-train --config configs/asr/small.yaml --data CORPUS --run-dir RUN \
        [--max-steps N] [--max-minutes M] [--resume] [--out-model DIR] [--init-from ASR_DIR]

Also ``accelerate launch -m flexicodec.codec.asr.train ...`` for several GPUs. bf16 autocast on CUDA
(the mel front end and the CTC loss stay fp32), SpecAugment-light, AdamW with linear warm-up
and cosine decay, gradient clipping, phoneme error rate (PER) on the valid split,
checkpoints/resume through :class:`flexicodec.common.training.CheckpointManager`, ``metrics.jsonl``.
The vocabulary is built from the train split once and stored in ``RUN/asr_config.json`` so
a resumed run uses the same one. ``--init-from ASR_DIR`` fine-tunes a trained ASR instead: a
new run (step 0, fresh optimizer, the YAML's schedule) with that model's config, vocabulary
and weights (the YAML's model section is not used); a train split with phoneme symbols
outside its vocabulary is refused. The end result is written with ``save_pretrained`` to
``--out-model`` (default ``RUN/model``); the flags every trainer shares are
:func:`flexicodec.common.run_flags.add_run_flags`.
The helpers every trainer shares live in :mod:`flexicodec.common.training`.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from flexicodec.codec.asr.model import PhonemeASR, PhonemeASRConfig, build_vocab, phoneme_error_counts
from flexicodec.common.atomic import atomic_write_text
from flexicodec.common.pretrained import config_from_dict, config_to_dict
from flexicodec.common.training import (STOP_FILE, CheckpointManager, JsonlLogger, TimeBudget, cuda_memory_gb,
                                        EpochPlan, dataclass_from_section, end_of_step, load_yaml,
                                        lr_lambda, make_accelerator, make_loader, seed_everything)
from flexicodec.common.constants import SAMPLE_RATE
from flexicodec.common.run_flags import add_run_flags, out_model_dir, parse_run_args


@dataclass
class SpecAugmentConfig:
    freq_masks: int = 2
    freq_width: int = 10        # max bins per frequency mask
    time_masks: int = 2
    time_width: float = 0.05    # max fraction of the utterance per time mask


@dataclass
class ASRTrainConfig:
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: tuple = (0.9, 0.98)
    warmup_steps: int = 500
    max_steps: int = 5000
    grad_clip: float = 1.0
    max_seconds: float = 20.0     # utterances longer than this are skipped
    spec_augment: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)
    log_every: int = 50
    eval_every: int = 1000
    save_every: int = 1000
    max_eval_utts: int = 200
    num_workers: int = 2
    seed: int = 0


def spec_augment(cfg: SpecAugmentConfig):
    """A ``mel_transform(mel [B, M, F], mel_len [B]) -> mel`` hook zeroing random frequency
    bands (width <= ``freq_width`` bins) and time spans (<= ``time_width`` of each
    utterance). Vectorised over the batch (no host syncs on GPU); draws from the torch RNG
    of ``mel``'s device, which checkpoints restore."""
    def f(mel: torch.Tensor, mel_len: torch.Tensor) -> torch.Tensor:
        B, M, F = mel.shape
        dev = mel.device
        drop = torch.zeros(B, M, F, dtype=torch.bool, device=dev)
        bins = torch.arange(M, device=dev)[None, :]
        for _ in range(cfg.freq_masks):
            w = torch.randint(0, min(cfg.freq_width, M - 1) + 1, (B, 1), device=dev)
            s = (torch.rand(B, 1, device=dev) * (M - w + 1)).long()
            drop |= ((bins >= s) & (bins < s + w))[:, :, None]
        frames = torch.arange(F, device=dev)[None, :]
        L = mel_len.to(dev)[:, None]
        tw = (cfg.time_width * L.float()).long()
        for _ in range(cfg.time_masks):
            w = (torch.rand(B, 1, device=dev) * (tw + 1).float()).long()
            s = (torch.rand(B, 1, device=dev) * (L - w + 1).clamp(min=1).float()).long()
            drop |= ((frames >= s) & (frames < s + w))[:, None, :]
        return mel.masked_fill(drop, 0.0)
    return f


def load_asr_yaml(path: str | Path) -> tuple[dict, ASRTrainConfig]:
    """``configs/asr/*.yaml`` → (model section dict (no vocab), ASRTrainConfig)."""
    data = load_yaml(path)
    model = dict(data.get("model") or {})
    if "vocab" in model:
        raise ValueError(f"{path}: model.vocab is built from the corpus; remove it")
    # validate model keys now, with a placeholder vocabulary
    dataclass_from_section(PhonemeASRConfig, model, f"{path} model")
    train = dataclass_from_section(ASRTrainConfig, data.get("train"), f"{path} train")
    return model, train


def corpus_split(data: str, split: str, max_seconds: float):
    """``(rows, AudioDataset, dropped)``: the split's utterances that have phonemes and last
    at most ``max_seconds``, and how many were left out."""
    from flexicodec.data.loaders import AudioDataset, load_corpus

    ds = load_corpus(data, split=split, sample_rate=SAMPLE_RATE, decode=False, check="header",
                     english_speech_only=True)
    if len(ds) == 0:
        raise ValueError(f"{data}: split '{split}' is empty")
    phon = ds["phonemes"]
    dur = ds["duration"]
    keep = [i for i, (p, d) in enumerate(zip(phon, dur)) if p and p.strip() and d <= max_seconds]
    if not keep:
        raise ValueError(f"{data}: split '{split}' has no utterances with phonemes "
                         f"(the ASR needs the 'phonemes' column)")
    dropped = len(ds) - len(keep)
    if dropped:
        ds = ds.select(keep)
    return (ds, AudioDataset(ds, sample_rate=SAMPLE_RATE, segment_samples=None,
                             random_crop=False), dropped)


@torch.no_grad()
def evaluate_per(model: PhonemeASR, dataset, batch_size: int, device, max_utts: int | None,
                 num_workers: int = 0, desc: str = "PER") -> dict:
    """Phoneme error rate of greedy CTC over (up to ``max_utts`` of) ``dataset``:
    ``{"per", "eval_utts", "per_speaker": {speaker: {"per", "utts"}}}``."""
    n = len(dataset) if max_utts is None else min(len(dataset), max_utts)
    batches = [list(range(s, min(n, s + batch_size))) for s in range(0, n, batch_size)]
    was_training = model.training
    model.eval()
    errs = total = 0
    by_speaker: dict[str, list[int]] = {}
    from flexicodec.data.loaders import collate_audio

    for batch in tqdm(make_loader(dataset, batches, num_workers, collate_audio), desc=desc,
                      leave=False):
        hyps = model.transcribe(batch["wav"].to(device), batch["wav_lengths"].to(device))
        for h, r, spk in zip(hyps, batch["phonemes"], batch["speaker"]):
            e, t = phoneme_error_counts(h, r, model.config.strip_chars)
            errs, total = errs + e, total + t
            acc = by_speaker.setdefault(str(spk), [0, 0, 0])
            acc[0], acc[1], acc[2] = acc[0] + e, acc[1] + t, acc[2] + 1
    model.train(was_training)
    return {"per": errs / max(1, total), "eval_utts": n,
            "per_speaker": {k: {"per": e / max(1, t), "utts": u}
                            for k, (e, t, u) in sorted(by_speaker.items())}}


def _valid_scalars(ev: dict) -> dict:
    """The trainer's log entries of an :func:`evaluate_per` result (no per-speaker table)."""
    return {f"valid_{k}": v for k, v in ev.items() if k != "per_speaker"}


def init_asr(init_from: str, train_phonemes: list[str]) -> PhonemeASR:
    """The trained ASR in ``init_from`` (``--init-from``), checked against the train split:
    every phoneme symbol of ``train_phonemes`` must be in its vocabulary (ValueError naming
    the missing ones otherwise; they would all be trained as ``<unk>``)."""
    model = PhonemeASR.from_pretrained(init_from).float()
    have = set(model.config.vocab)
    missing = sorted(set(build_vocab(train_phonemes, model.config.strip_chars)) - have)
    if missing:
        raise ValueError(f"--init-from {init_from}: the train split has phoneme symbols outside "
                         f"its vocabulary: {' '.join(missing)}; train from scratch instead")
    return model


def train_asr(config_path: str, data: str, run_dir: str, max_steps: int | None = None,
              max_minutes: float | None = None, resume: bool = False,
              out_model: str | None = None, cpu: bool = False,
              stop_after: int | None = None, mixed_precision: str | None = None,
              init_from: str | None = None) -> dict:
    """Run (or resume) ASR training; returns the final metrics dict.

    ``max_steps`` is the run's total length (also the LR schedule's); ``stop_after`` ends this
    invocation early after that many steps (checkpointed, resumable) without changing it.
    ``init_from``: a trained ASR directory to fine-tune (ignored when resuming, since the
    run's checkpoint holds the weights).
    """
    model_section, tc = load_asr_yaml(config_path)
    if max_steps is not None:
        tc.max_steps = max_steps
    run = Path(run_dir)
    accelerator = make_accelerator(mixed_precision, cpu=cpu)
    main = accelerator.is_main_process
    seed_everything(tc.seed)
    budget = TimeBudget(max_minutes, stop_file=run / STOP_FILE)

    from flexicodec.data.loaders import collate_audio

    train_ds, train_set, _ = corpus_split(data, "train", tc.max_seconds)
    valid_ds, valid_set, _ = corpus_split(data, "valid", tc.max_seconds)

    ckpt = CheckpointManager(run)
    cfg_file = run / "asr_config.json"
    initial = None
    if resume and ckpt.latest() is not None:
        if not cfg_file.is_file():
            raise FileNotFoundError(f"{cfg_file}: missing; cannot resume this run")
        model_cfg = config_from_dict(PhonemeASRConfig, json.loads(cfg_file.read_text()))
    else:
        if ckpt.latest() is not None:
            raise FileExistsError(f"{run}: already holds checkpoints; pass --resume or use a "
                                  f"new --run-dir")
        if init_from:
            initial = init_asr(init_from, train_ds["phonemes"])
            model_cfg = initial.config
        else:
            vocab = build_vocab(train_ds["phonemes"])
            model_cfg = config_from_dict(PhonemeASRConfig, {**model_section, "vocab": vocab})
        if main:
            atomic_write_text(cfg_file, json.dumps(config_to_dict(model_cfg), indent=1,
                                                   ensure_ascii=False))
    model = PhonemeASR(model_cfg)
    if initial is not None:     # a fresh module (train mode, no loaded-from identity), its weights
        model.load_state_dict(initial.state_dict())
        if main:
            print(f"[asr-train] new run from the weights, config and vocabulary of {init_from} "
                  f"(the YAML's model section is not used)")
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, betas=tuple(tc.betas),
                            weight_decay=tc.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(tc.warmup_steps, tc.max_steps))
    model, opt, sched = accelerator.prepare(model, opt, sched)
    raw = accelerator.unwrap_model(model)
    n_params = sum(p.numel() for p in raw.parameters())

    state = ckpt.load(accelerator) if resume else None
    step = int(state["step"]) if state else 0
    logger = JsonlLogger(run / "metrics.jsonl", enabled=main)
    start_note = (f"resumed at step {step}" if state else
                  f"fine-tuning {init_from}" if initial is not None else "from scratch")
    if main:
        print(f"[asr-train] {n_params / 1e6:.2f} M params, vocab {len(model_cfg.vocab)}, "
              f"{len(train_set)} train / {len(valid_set)} valid utterances, device "
              f"{accelerator.device}, precision {accelerator.mixed_precision}, "
              f"{start_note}")

    lengths = [float(d) for d in train_ds["duration"]]
    world = accelerator.num_processes
    plan = EpochPlan(lengths, tc.batch_size, tc.seed, accelerator.process_index, world,
                     what="train utterances")
    augment = spec_augment(tc.spec_augment)
    pbar = tqdm(total=tc.max_steps, initial=step, desc="asr-train", disable=not main)
    last: dict = {}
    t_log, samples, audio_s = time.monotonic(), 0, 0.0
    stopped_early = False
    while step < tc.max_steps and not stopped_early:
        epoch, loader = plan.loader(train_set, step, tc.num_workers, collate_audio)
        for batch in loader:
            wav = batch["wav"].to(accelerator.device)
            wl = batch["wav_lengths"].to(accelerator.device)
            targets = [raw.tokenize(p) for p in batch["phonemes"]]
            with accelerator.autocast():
                logits, flen = model(wav, wl, mel_transform=augment)
            loss = raw.ctc_loss(logits, flen, targets)
            accelerator.backward(loss)
            gnorm = accelerator.clip_grad_norm_(model.parameters(), tc.grad_clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            budget.tick()
            samples += wav.shape[0] * world
            audio_s += float(wl.sum()) / SAMPLE_RATE * world
            pbar.update(1)
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"step {step}: CTC loss is {loss.item()}")
            if step % tc.log_every == 0 or step == tc.max_steps:
                dt = time.monotonic() - t_log
                last = {"step": step, "epoch": epoch, "loss": loss.item(),
                        "grad_norm": float(gnorm), "lr": sched.get_last_lr()[0],
                        "samples_per_s": samples / dt, "audio_s_per_s": audio_s / dt,
                        "elapsed_s": budget.elapsed()}
                mem = cuda_memory_gb()
                if mem is not None:
                    last["gpu_mem_gb"] = mem
                logger.log(last)
                pbar.set_postfix(loss=f"{loss.item():.3f}")
                t_log, samples, audio_s = time.monotonic(), 0, 0.0
            if step % tc.eval_every == 0 and main:
                ev = evaluate_per(raw, valid_set, tc.batch_size, accelerator.device,
                                  tc.max_eval_utts)
                logger.log({"step": step, **_valid_scalars(ev)})
                tqdm.write(f"[asr-train] step {step}: valid PER {ev['per']:.3f}")
            ended = end_of_step(accelerator, ckpt, budget, step, tc.max_steps, tc.save_every,
                                stop_after, name="asr-train", epoch=epoch)
            if ended:
                stopped_early = ended == "stopped"
                break
    pbar.close()
    result = dict(last)
    if main:
        ev = evaluate_per(raw, valid_set, tc.batch_size, accelerator.device, tc.max_eval_utts)
        result.update(_valid_scalars(ev), step=step, params=n_params,
                      finished=not stopped_early)
        logger.log({"step": step, "final": True, **_valid_scalars(ev)})
        print(f"[asr-train] step {step}: valid PER {ev['per']:.3f}")
        if out_model:
            raw.float().save_pretrained(out_model)
            print(f"[asr-train] saved model to {out_model}")
    accelerator.wait_for_everyone()
    return result


def main(argv: list[str] | None = None) -> int:
    a = parse_run_args(build_parser(), argv)
    res = train_asr(a.config, a.data, a.run_dir, a.max_steps, a.max_minutes, a.resume,
                    str(out_model_dir(a)), a.cpu, a.stop_after, a.mixed_precision,
                    a.init_from)
    print(json.dumps(res, indent=1))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flexicodec asr-train", description=__doc__.split("\n")[0])
    add_run_flags(p, stop_after=True, mixed_precision=True)
    p.add_argument("--data", required=True, help="corpus directory (with train/valid splits)")
    p.add_argument("--init-from", default=None,
                   help="fine-tune this trained ASR directory: a new run (step 0, fresh "
                        "optimizer, the YAML's schedule) with its config, vocabulary and "
                        "weights, e.g. flexicodec_pretrained/asr")
    return p


if __name__ == "__main__":
    raise SystemExit(main())
