"""Train the acoustic stage on ``flexicodec-lm tokenize`` output (see :mod:`tts.codes_data`).

    flexicodec-tts train-acoustic --config configs/tts/acoustic_small.yaml \
        --data TOK --run-dir runs/acoustic [--max-minutes 30] [--resume] \
        [--out flexicodec_pretrained/acoustic]

``--data TOK`` takes every ``TOK/rate_*`` folder at once (or name some: ``TOK/rate_12.5,
TOK/rate_6.25``); splits ``train`` and ``valid``. The model's ``semantic_vocab_size``,
``max_group``, ``codebook_size`` and ``n_q`` are checked against the codec recorded in the
data's ``info.json`` before training starts.

YAML: ``model:`` (AcousticConfig fields), ``train:`` (TrainConfig fields). accelerate with
bf16 autocast on GPU, checkpoints through ``CheckpointManager`` (``--resume`` continues from
``RUN/latest``), metrics in ``RUN/metrics.jsonl``. When the step or time budget runs out the
run checkpoints and writes the final model (+ shipped speaker prompts) to ``--out``
(default ``RUN/final``).

Distributed (docs/DISTRIBUTED.md): ``accelerate launch -m tts.train_acoustic ...``. Batches
come from a seeded per-epoch plan (:func:`codec.train_asr.epoch_batches`), each process
takes its equal share (:func:`codec.distributed.shard_batches`), and ``--resume`` continues
at the same place in the plan; the time-budget stop is decided jointly by all processes.
"""
from __future__ import annotations

import argparse
import logging
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import yaml

from codec.pretrained import config_from_dict
from codec.distributed import any_process, configure_process_logging
from codec.training import (CheckpointManager, EpochPlan, JsonlLogger, TimeBudget, lr_lambda,
                            make_accelerator, seed_everything)
from tts.acoustic import AcousticConfig, AcousticModel
from tts.codes_data import (AcousticCodesDataset, CodesDataError, CropConfig, collate_codes,
                            load_codes_dataset, read_codes_info)
from tts.speakers import build_speaker_table, save_speakers

log = logging.getLogger("flexicodec.tts.train_acoustic")


@dataclass
class TrainConfig:
    batch_size: int = 16
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup_steps: int = 200
    max_steps: int = 20000
    grad_clip: float = 1.0
    max_tokens: int = 200
    log_every: int = 50
    save_every: int = 1000
    eval_every: int = 1000
    eval_batches: int = 8
    num_workers: int = 0
    seed: int = 0
    speakers_per: int = 3


def load_config(path: str | Path | None) -> tuple[AcousticConfig, TrainConfig]:
    data = {}
    if path:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such config file")
        data = yaml.safe_load(path.read_text()) or {}
        unknown = set(data) - {"model", "train"}
        if unknown:
            raise ValueError(f"{path}: unknown sections {sorted(unknown)} (model, train)")
    for sec, cls in (("model", AcousticConfig), ("train", TrainConfig)):
        bad = set(data.get(sec) or {}) - {f.name for f in fields(cls)}
        if bad:
            raise ValueError(f"unknown {sec} keys {sorted(bad)}")
    return (config_from_dict(AcousticConfig, data.get("model") or {}),
            config_from_dict(TrainConfig, data.get("train") or {}))


class _LossWrapper(torch.nn.Module):
    """Puts :meth:`AcousticModel.training_loss` behind ``forward`` so DDP syncs gradients."""

    def __init__(self, model: AcousticModel):
        super().__init__()
        self.model = model

    def forward(self, batch: dict, generator: torch.Generator | None = None) -> dict:
        return self.model.training_loss(batch["semantic"], batch["lengths"], batch["acoustic"],
                                        batch["prompt_len"], generator=generator)


def check_data_matches(mc: AcousticConfig, data) -> dict | None:
    """Raise :class:`CodesDataError` when the codec that wrote ``data`` (its ``info.json``)
    has other sizes than the model config; returns that info (None for a plain dataset)."""
    info = read_codes_info(data)
    if info is None:
        return None
    pairs = [("semantic_vocab_size", "semantic_vocab_size"), ("max_group", "max_group"),
             ("codebook_size", "rvq_codebook_size")]
    bad = [f"{m}={getattr(mc, m)} but the codec has {info[k]}" for m, k in pairs
           if info.get(k) is not None and int(info[k]) != int(getattr(mc, m))]
    if info.get("num_quantizers") is not None and mc.n_q > int(info["num_quantizers"]):
        bad.append(f"n_q={mc.n_q} but the data stores {info['num_quantizers']} quantizers")
    if bad:
        raise CodesDataError(f"{data}: the acoustic model config does not fit the codec the "
                             f"data was tokenized with ({'; '.join(bad)}); set these in the "
                             f"YAML model: section")
    return info


@torch.no_grad()
def evaluate(model, loader, accelerator, batches: int, seed: int = 1234) -> dict[str, float]:
    """Masked-prediction loss/accuracy on ``batches`` validation batches (fixed masking)."""
    model.eval()
    g = torch.Generator().manual_seed(seed)
    tot = {"loss": 0.0, "accuracy": 0.0}
    n = 0
    for i, batch in enumerate(loader):
        if i >= batches:
            break
        out = model(batch, generator=g)
        tot["loss"] += float(out["loss"])
        tot["accuracy"] += float(out["accuracy"])
        n += 1
    model.train()
    return {f"val_{k}": v / max(1, n) for k, v in tot.items()}


def train(mc: AcousticConfig, tc: TrainConfig, data: str | Path, run_dir: str | Path, *,
          out: str | Path | None = None, resume: bool = False,
          max_minutes: float | None = None, cpu: bool = False) -> dict:
    """Run training; returns a summary dict (steps, last metrics, paths)."""
    from tqdm import tqdm

    start = time.time()
    seed_everything(tc.seed)
    run_dir = Path(run_dir)
    accelerator = make_accelerator(cpu=cpu)
    configure_process_logging(accelerator)
    check_data_matches(mc, data)
    train_ds = load_codes_dataset(data, "train")
    try:
        val_ds = load_codes_dataset(data, "valid")
    except CodesDataError:
        val_ds = None
        log.warning("no 'valid' split in %s: validation metrics are skipped", data)
    crop = CropConfig(max_tokens=tc.max_tokens)
    tr = AcousticCodesDataset(train_ds, mc.n_q, crop, seed=tc.seed + accelerator.process_index)
    plan = EpochPlan([0.0] * len(tr), tc.batch_size, tc.seed, accelerator.process_index,
                     accelerator.num_processes, bucket=False, what=f"{data}: training rows")
    val_loader = None
    if val_ds is not None:
        val_loader = torch.utils.data.DataLoader(
            AcousticCodesDataset(val_ds, mc.n_q, crop, seed=tc.seed + 1),
            batch_size=tc.batch_size, collate_fn=collate_codes)
    model = _LossWrapper(AcousticModel(mc))
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay,
                            betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lr_lambda(tc.warmup_steps, tc.max_steps, min_ratio=0.1))
    model, opt, sched = accelerator.prepare(model, opt, sched)
    # weights are identical on every rank; the masking differs per rank
    seed_everything(tc.seed + 7919 * accelerator.process_index)
    if val_loader is not None:
        val_loader = accelerator.prepare(val_loader)
    ckpt = CheckpointManager(run_dir)
    logger = JsonlLogger(run_dir / "metrics.jsonl", enabled=accelerator.is_main_process)
    step = 0
    if resume:
        state = ckpt.load(accelerator)
        if state is None:
            log.warning("--resume: nothing to resume in %s, starting fresh", run_dir)
        else:
            step = int(state["step"])
            log.info("resumed from step %d", step)
    if accelerator.is_main_process:
        (run_dir).mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(
            {"model": {**asdict(mc), "steps_per_level": list(mc.steps_per_level)},
             "train": asdict(tc)}))
    budget = TimeBudget(max_minutes)
    model.train()
    bar = tqdm(total=tc.max_steps, initial=step, desc="acoustic", unit="step",
               disable=not accelerator.is_main_process)
    last: dict = {}
    stop_reason = "max_steps"
    while step < tc.max_steps:
        epoch, loader = plan.loader(tr, step, tc.num_workers, collate_fn=collate_codes)
        for batch in loader:
            batch = {key: v.to(accelerator.device) for key, v in batch.items()}
            with accelerator.autocast():
                res = model(batch)
            accelerator.backward(res["loss"])
            if tc.grad_clip:
                accelerator.clip_grad_norm_(model.parameters(), tc.grad_clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            bar.update(1)
            if step % tc.log_every == 0 or step == 1:
                last = {"step": step, "loss": float(res["loss"].detach()),
                        "accuracy": float(res["accuracy"]), "lr": sched.get_last_lr()[0],
                        "elapsed_s": round(time.time() - start, 1)}
                logger.log(last)
                bar.set_postfix(loss=f"{last['loss']:.3f}", acc=f"{last['accuracy']:.3f}")
            if val_loader is not None and step % tc.eval_every == 0:
                v = evaluate(model, val_loader, accelerator, tc.eval_batches)
                logger.log({"step": step, **v})
                last.update(v)
            if step % tc.save_every == 0:
                ckpt.save(accelerator, step)
            budget.tick()
            if any_process(accelerator, budget.should_stop()):
                stop_reason = "time budget"
                break
            if step >= tc.max_steps:
                break
        if stop_reason == "time budget":
            break
    bar.close()
    ckpt.save(accelerator, step)
    if val_loader is not None:
        last.update(evaluate(model, val_loader, accelerator, tc.eval_batches))
        logger.log({"step": step, **{k: v for k, v in last.items() if k.startswith("val_")}})
    out = Path(out) if out else run_dir / "final"  # final model directory
    if accelerator.is_main_process:
        final = accelerator.unwrap_model(model).model
        final.save_pretrained(out, extra={"trained_steps": step})
        save_speakers(out, build_speaker_table(train_ds, tc.speakers_per, n_q=mc.n_q))
    accelerator.wait_for_everyone()
    log.info("stopped at step %d (%s); model in %s", step, stop_reason, out)
    return {"step": step, "stop_reason": stop_reason, "out": str(out), **last}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="flexicodec-tts train-acoustic",
                                 description="Train the acoustic stage (masked RVQ prediction)")
    ap.add_argument("--config", help="YAML with model:/train: sections")
    ap.add_argument("--data", required=True,
                    help="`flexicodec-lm tokenize` output: TOK (all rate_* folders) or "
                         "comma-separated rate folders")
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--out", help="final model directory (default RUN/final)")
    ap.add_argument("--resume", action="store_true", help="continue from RUN/latest")
    ap.add_argument("--max-minutes", type=float, help="time budget; checkpoints and exits")
    ap.add_argument("--max-steps", type=int, help="override train.max_steps")
    ap.add_argument("--cpu", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    mc, tc = load_config(args.config)
    if args.max_steps:
        tc.max_steps = args.max_steps
    summary = train(mc, tc, args.data, args.run_dir, out=args.out, resume=args.resume,
                    max_minutes=args.max_minutes, cpu=args.cpu)
    print(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
