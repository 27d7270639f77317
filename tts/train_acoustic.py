"""Train the acoustic stage on ``flexicodec-lm tokenize`` output (see :mod:`flexicodec.tts.codes_data`).

    flexicodec-tts train-acoustic --config configs/tts/acoustic_small.yaml \
        --data TOK --run-dir runs/acoustic [--max-minutes 30] [--resume] \
        [--out-model flexicodec_pretrained/acoustic]
    flexicodec-tts train-acoustic --config configs/tts/acoustic_flow_gpu.yaml \
        --data TOK --codec CODEC_DIR --run-dir runs/acoustic_flow

The YAML's top-level ``kind: masked|flow`` (default masked) selects the stage
(:mod:`flexicodec.tts.stages`): ``masked`` predicts the RVQ codes (:mod:`flexicodec.tts.acoustic`), ``flow`` the
codec's continuous latent (:mod:`flexicodec.tts.acoustic_flow`). Both read the same codes files: the flow
stage's target latent is the stored codes dequantized by the codec's quantizers
(``FlexiCodec.latent_from_codes`` on the training device, with the semantic decoder's context
around each window; no audio is re-encoded), so it needs ``--codec``: the codec that wrote the
data (its identity is checked against the data's ``info.json``). Before training it sets the
flow model's latent normalisation from ``train.stats_rows`` training rows.

``--data TOK`` takes every ``TOK/rate_*`` folder at once (or name some: ``TOK/rate_12.5,
TOK/rate_6.25``); splits ``train`` and ``valid``. The model's ``semantic_vocab_size``,
``max_group``, ``codebook_size`` and ``n_q`` are checked against the codec recorded in the
data's ``info.json`` before training starts.

YAML: ``kind:``, ``model:`` (AcousticConfig / FlowConfig fields), ``train:`` (TrainConfig
fields). accelerate with
bf16 autocast on GPU, checkpoints through ``CheckpointManager`` (``--resume`` continues from
``RUN/latest``), metrics in ``RUN/metrics.jsonl``. When the step or time budget runs out the
run checkpoints and writes the final model (+ shipped speaker prompts) to ``--out-model``
(default ``RUN/model``).

Distributed (docs/DISTRIBUTED.md): ``accelerate launch -m flexicodec.tts.train_acoustic ...``. Batches
come from a seeded per-epoch plan (:func:`flexicodec.codec.asr.train.epoch_batches`), each process
takes its equal share (:func:`flexicodec.common.distributed.shard_batches`), and ``--resume`` continues
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

from flexicodec.common.pretrained import config_from_dict
from flexicodec.common.heap import after_step
from flexicodec.common.distributed import any_process, configure_process_logging
from flexicodec.common.training import (STOP_FILE, CheckpointManager, EpochPlan, JsonlLogger, TimeBudget,
                                        lr_lambda, make_accelerator, seed_everything)
from flexicodec.common.run_flags import (DEFAULT_OUT_MODEL, add_run_flags, out_model_dir,
                                         parse_run_args)
from flexicodec.tts.acoustic import AcousticConfig
from flexicodec.tts.acoustic_flow import FlowAcousticModel, FlowConfig, latent_stats
from flexicodec.tts.codes_data import (AcousticCodesDataset, CodesDataError, CropConfig, collate_codes,
                                       crop_window, load_codes_dataset, read_codes_info, row_tensors)
from flexicodec.tts.speakers import build_speaker_table, save_speakers
from flexicodec.tts.stages import STAGES, check_kind

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
    #: flow stage: training rows whose latents set the model's normalisation
    stats_rows: int = 512


def load_config(path: str | Path | None) -> tuple[AcousticConfig | FlowConfig, TrainConfig]:
    """YAML → (model config of the ``kind`` the file names, TrainConfig)."""
    data = {}
    if path:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such config file")
        data = yaml.safe_load(path.read_text()) or {}
        unknown = set(data) - {"kind", "model", "train"}
        if unknown:
            raise ValueError(f"{path}: unknown sections {sorted(unknown)} (kind, model, train)")
    kind = check_kind(str(data.get("kind", "masked")))
    model_cls = STAGES[kind][0]
    model = dict(data.get("model") or {})
    if model.get("kind", kind) != kind:
        raise ValueError(f"model.kind {model['kind']!r} contradicts kind {kind!r}")
    for sec, cls, d in (("model", model_cls, model), ("train", TrainConfig, data.get("train"))):
        bad = set(d or {}) - {f.name for f in fields(cls)}
        if bad:
            raise ValueError(f"unknown {sec} keys {sorted(bad)}")
    return (config_from_dict(model_cls, model),
            config_from_dict(TrainConfig, data.get("train") or {}))


class _LossWrapper(torch.nn.Module):
    """Puts the stage's ``training_loss`` behind ``forward`` so DDP syncs gradients. A flow
    batch carries ``latent`` [B, T, D] (:func:`flow_batch`) in place of the codes."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch: dict, generator: torch.Generator | None = None) -> dict:
        target = batch["latent"] if isinstance(self.model, FlowAcousticModel) else batch["acoustic"]
        return self.model.training_loss(batch["semantic"], batch["lengths"], target,
                                        batch["prompt_len"], generator=generator)


@torch.no_grad()
def flow_batch(codec, batch: dict) -> dict:
    """A collated codes batch (windows with codes context, see
    :class:`flexicodec.tts.codes_data.AcousticCodesDataset`) → the flow stage's batch: the window's
    semantic [B, T], lengths [B, T], prompt_len [B] and the codec latent [B, T, D] of the
    codes (dequantized with their context, float32)."""
    latent = codec.latent_from_codes(batch["semantic"], batch["acoustic"], batch["lengths"])
    off, core = batch["offset"], batch["core"]
    return {"semantic": crop_window(batch["semantic"], off, core),
            "lengths": crop_window(batch["lengths"], off, core),
            "latent": crop_window(latent.float(), off, core), "prompt_len": batch["prompt_len"]}


@torch.no_grad()
def flow_latent_stats(codec, ds, n_q: int, rows: int, batch_size: int = 16
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std [D] of the codec latent of up to ``rows`` rows of ``ds`` (evenly spaced,
    whole utterances)."""
    n = min(len(ds), max(1, rows))
    picks = sorted({int(i * len(ds) / n) for i in range(n)})
    lats, masks = [], []
    for k in range(0, len(picks), batch_size):
        items = [row_tensors(ds[i], n_q) for i in picks[k:k + batch_size]]
        b = collate_codes([{"semantic": s, "lengths": ln, "acoustic": a, "prompt_len": 0}
                           for s, ln, a in items])
        dev = codec.device
        lat = codec.latent_from_codes(b["semantic"].to(dev), b["acoustic"].to(dev),
                                      b["lengths"].to(dev))
        mask = b["lengths"].to(dev) > 0
        lats.append(lat[mask].float())
        masks.append(torch.ones(int(mask.sum()), dtype=torch.bool, device=dev))
    return latent_stats(torch.cat(lats)[None], torch.cat(masks)[None])


def load_codec(codec):
    """A FlexiCodec object, or one loaded from a directory path."""
    from flexicodec.codec.model import FlexiCodec

    if isinstance(codec, (str, Path)):
        return FlexiCodec.from_pretrained(codec)
    if not isinstance(codec, FlexiCodec):
        raise TypeError("codec must be a FlexiCodec or a codec directory")
    return codec


def check_codec_matches(mc: FlowConfig, codec, info: dict | None) -> None:
    """CodesDataError when the flow config or the data's codec does not fit ``codec``."""
    c = codec.config
    bad = [f"{m}={getattr(mc, m)} but the codec has {v}" for m, v in
           (("semantic_vocab_size", codec.semantic_vocab_size), ("max_group", c.max_group),
            ("latent_dim", c.latent_dim)) if int(getattr(mc, m)) != int(v)]
    if mc.n_q > c.n_q:
        bad.append(f"n_q={mc.n_q} but the codec has {c.n_q} quantizers")
    if bad:
        raise CodesDataError(f"the flow model config does not fit the codec ({'; '.join(bad)})")
    if info is not None and info.get("codec_identity") and \
            str(info["codec_identity"]) != str(codec.identity):
        raise CodesDataError(f"the data was tokenized with codec {info['codec_identity']}, "
                             f"--codec is {codec.identity}: the latent of the codes is only "
                             f"defined by the codec that wrote them")


def check_data_matches(mc: AcousticConfig | FlowConfig, data) -> dict | None:
    """Raise :class:`CodesDataError` when the codec that wrote ``data`` (its ``info.json``)
    has other sizes than the model config; returns that info (None for a plain dataset)."""
    info = read_codes_info(data)
    if info is None:
        return None
    pairs = [("semantic_vocab_size", "semantic_vocab_size"), ("max_group", "max_group")]
    if mc.kind == "masked":
        pairs.append(("codebook_size", "rvq_codebook_size"))
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
def evaluate(model, loader, accelerator, batches: int, seed: int = 1234,
             prepare=lambda b: b) -> dict[str, float]:
    """Validation loss (and the masked stage's accuracy) on ``batches`` batches, with fixed
    masking / flow noise. ``prepare`` turns a loader batch into the model's batch."""
    model.eval()
    g = torch.Generator().manual_seed(seed)
    tot: dict[str, float] = {}
    n = 0
    for i, batch in enumerate(loader):
        if i >= batches:
            break
        out = model(prepare(batch), generator=g)
        for k in ("loss", "accuracy"):
            if k in out:
                tot[k] = tot.get(k, 0.0) + float(out[k])
        n += 1
    model.train()
    return {f"val_{k}": v / max(1, n) for k, v in tot.items()}


def train(mc: AcousticConfig | FlowConfig, tc: TrainConfig, data: str | Path,
          run_dir: str | Path, *, out_model: str | Path | None = None, resume: bool = False,
          max_minutes: float | None = None, cpu: bool = False, codec=None) -> dict:
    """Run training of the stage ``mc.kind``; returns a summary dict (steps, last metrics,
    paths). ``out_model``: the final model directory (default ``RUN/model``). ``codec`` (a
    FlexiCodec or its directory): required for the flow stage."""
    from tqdm import tqdm

    start = time.time()
    seed_everything(tc.seed)
    run_dir = Path(run_dir)
    accelerator = make_accelerator(cpu=cpu)
    configure_process_logging(accelerator)
    info = check_data_matches(mc, data)
    flow = mc.kind == "flow"
    if flow:
        if codec is None:
            raise ValueError("the flow stage needs the codec that wrote the codes (--codec): "
                             "its target latent is the codes dequantized by that codec")
        codec = load_codec(codec).to(accelerator.device).eval()
        check_codec_matches(mc, codec, info)
    context = codec.latent_context_tokens() if flow else 0
    train_ds = load_codes_dataset(data, "train")
    try:
        val_ds = load_codes_dataset(data, "valid")
    except CodesDataError:
        val_ds = None
        log.warning("no 'valid' split in %s: validation metrics are skipped", data)
    crop = CropConfig(max_tokens=tc.max_tokens)
    tr = AcousticCodesDataset(train_ds, mc.n_q, crop, seed=tc.seed + accelerator.process_index,
                              context=context)
    plan = EpochPlan([0.0] * len(tr), tc.batch_size, tc.seed, accelerator.process_index,
                     accelerator.num_processes, bucket=False, what=f"{data}: training rows")
    val_loader = None
    if val_ds is not None:
        val_loader = torch.utils.data.DataLoader(
            AcousticCodesDataset(val_ds, mc.n_q, crop, seed=tc.seed + 1, context=context),
            batch_size=tc.batch_size, collate_fn=collate_codes)
    stage = STAGES[mc.kind][1](mc)
    prepare = (lambda b: flow_batch(codec, b)) if flow else (lambda b: b)
    if flow:
        stage.set_latent_stats(*(x.cpu() for x in flow_latent_stats(codec, train_ds, mc.n_q,
                                                                      tc.stats_rows)))
    model = _LossWrapper(stage)
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
            {"kind": mc.kind, "model": {k: list(v) if isinstance(v, tuple) else v
                                         for k, v in asdict(mc).items()},
             "train": asdict(tc)}))
    budget = TimeBudget(max_minutes, stop_file=run_dir / STOP_FILE)
    model.train()
    bar = tqdm(total=tc.max_steps, initial=step, desc=f"acoustic ({mc.kind})", unit="step",
               disable=not accelerator.is_main_process)
    last: dict = {}
    stop_reason = "max_steps"
    while step < tc.max_steps:
        epoch, loader = plan.loader(tr, step, tc.num_workers, collate_fn=collate_codes)
        for batch in loader:
            batch = prepare({key: v.to(accelerator.device) for key, v in batch.items()})
            with accelerator.autocast():
                res = model(batch)
            accelerator.backward(res["loss"])
            if tc.grad_clip:
                accelerator.clip_grad_norm_(model.parameters(), tc.grad_clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            after_step(accelerator.device)
            bar.update(1)
            if step % tc.log_every == 0 or step == 1:
                last = {"step": step, "loss": float(res["loss"].detach()),
                        **({"accuracy": float(res["accuracy"])} if "accuracy" in res else {}),
                        "lr": sched.get_last_lr()[0], "elapsed_s": round(time.time() - start, 1)}
                logger.log(last)
                bar.set_postfix(loss=f"{last['loss']:.3f}")
            if val_loader is not None and step % tc.eval_every == 0:
                v = evaluate(model, val_loader, accelerator, tc.eval_batches, prepare=prepare)
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
        last.update(evaluate(model, val_loader, accelerator, tc.eval_batches, prepare=prepare))
        logger.log({"step": step, **{k: v for k, v in last.items() if k.startswith("val_")}})
    out = Path(out_model) if out_model else run_dir / DEFAULT_OUT_MODEL  # final model directory
    if accelerator.is_main_process:
        final = accelerator.unwrap_model(model).model
        final.save_pretrained(out, extra={"trained_steps": step})
        save_speakers(out, build_speaker_table(train_ds, tc.speakers_per, n_q=mc.n_q))
    accelerator.wait_for_everyone()
    log.info("stopped at step %d (%s); model in %s", step, stop_reason, out)
    return {"step": step, "stop_reason": stop_reason, "out": str(out), **last}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="flexicodec-tts train-acoustic",
                                 description="Train the acoustic stage (masked RVQ "
                                             "prediction or flow matching on the codec latent)")
    add_run_flags(ap, config_required=False)
    ap.add_argument("--data", required=True,
                    help="`flexicodec-lm tokenize` output: TOK (all rate_* folders) or "
                         "comma-separated rate folders")
    ap.add_argument("--codec", help="codec directory that wrote the data (flow stage)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parse_run_args(build_parser(), argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    mc, tc = load_config(args.config)
    if args.max_steps is not None:
        tc.max_steps = args.max_steps
    summary = train(mc, tc, args.data, args.run_dir, out_model=out_model_dir(args),
                    resume=args.resume, max_minutes=args.max_minutes, cpu=args.cpu,
                    codec=args.codec)
    print(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
