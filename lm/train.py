"""Train the speech LM on tokenized corpora (one or several frame rates at once).

``flexicodec-lm train --config configs/lm/small.yaml --data TOK[,TOK2] --run-dir RUN
[--max-steps N] [--max-minutes M] [--resume] [--out-model DIR] [--tokenizer PATH]``

accelerate (bf16 autocast on GPU, gradient accumulation), length-bucketed batches or packed
rows (``train.pack_length``: several utterances per row, attention kept within each),
SDPA attention, optional ``torch.compile``, fused AdamW on CUDA and no host synchronisation
between log steps; CheckpointManager checkpoints (``--resume`` continues from RUN/latest,
same batch order), metrics.jsonl with per-type eval loss (text / semantic / length),
tokens/s, audio-hours per GPU-minute, model TFLOP/s and MFU (CUDA). When ``--max-minutes``
runs out it checkpoints and exits cleanly. At the end the model (with its tokenizer) is
written to ``--out-model`` (default RUN/model).

Distributed (docs/DISTRIBUTED.md): ``accelerate launch [--config_file
configs/accelerate/{multi_gpu,fsdp_lm}.yaml] -m flexicodec.lm.cli train ...``. Each process takes an equal
share of every epoch's batch plan (:func:`flexicodec.common.distributed.shard_batches`); eval batches are
split over the processes and their sums reduced; a resume on a different process count maps
the position in the epoch (:func:`flexicodec.common.distributed.rescale_position`). Under FSDP the final
weights are gathered with ``accelerator.get_state_dict``.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from flexicodec.common.atomic import atomic_write_text
from flexicodec.common.heap import after_step
from flexicodec.common.pretrained import config_from_dict, config_to_dict
from flexicodec.common.distributed import (any_process, configure_process_logging, rescale_position,
                                           shard_batches)
from flexicodec.common.training import (STOP_FILE, CheckpointManager, JsonlLogger, TimeBudget, lr_lambda,
                                        make_accelerator, seed_everything)
from flexicodec.lm.data import (bucket_batches, load_tokenized, make_items, pack_batches, read_info,
                                to_device)
from flexicodec.lm.layout import LayoutItem, collate, collate_packed
from flexicodec.lm.model import (DEFAULT_PEAK_FLOPS, SpeechLM, SpeechLMConfig, config_from_saved,
                                 model_config_from_dict)

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """The ``train:`` section of configs/lm/*.yaml."""

    lr: float = 5e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 200
    max_steps: int = 20000
    batch_tokens: int = 8000         # padded positions per micro-batch
    max_batch: int = 64
    grad_accum: int = 1
    grad_clip: float = 1.0
    text_weight: float = 0.1
    length_weight: float = 1.0
    max_len: int = 2048
    log_every: int = 20
    eval_every: int = 500
    save_every: int = 1000
    keep_checkpoints: int = 2
    # keep the weights of the lowest eval loss (semantic + text_weight·text + length_weight·
    # length) in RUN/best/ and export those: a small LM on hours of data overfits
    keep_best: bool = True
    seed: int = 0
    tokenizer_vocab_size: int = 2000     # sentencepiece pieces (text_input: bpe)
    mixed_precision: str | None = None   # None: bf16 on CUDA, fp32 on CPU
    # speed. pack_length > 0: rows of this many positions holding several utterances each
    # (batch_tokens // pack_length rows per micro-batch, attention within each utterance);
    # 0: one utterance per row, length-bucketed and padded
    pack_length: int = 0
    attention: str = "sdpa"              # the backbone's transformers attn_implementation
    compile: bool = False                # torch.compile the model's forward
    compile_backend: str = "inductor"    # its backend ("eager": tracing only)
    peak_flops: float = DEFAULT_PEAK_FLOPS   # device peak (dense bf16) for the logged MFU

    def __post_init__(self) -> None:
        if self.pack_length < 0:
            raise ValueError(f"pack_length must be >= 0, got {self.pack_length}")
        if self.pack_length and self.pack_length < self.max_len:
            raise ValueError(f"pack_length {self.pack_length} < max_len {self.max_len}: a "
                             f"sequence must fit a packed row")
        self.peak_flops = float(self.peak_flops)   # YAML reads "989e12" as a string
        if self.peak_flops <= 0:
            raise ValueError(f"peak_flops must be > 0, got {self.peak_flops}")

    @property
    def rows_per_batch(self) -> int:
        """Packed rows per micro-batch."""
        return max(1, self.batch_tokens // self.pack_length) if self.pack_length else 0


def load_config(path: str | Path) -> tuple[dict, TrainConfig]:
    """(model section dict, TrainConfig) from a YAML file."""
    d = yaml.safe_load(Path(path).read_text()) or {}
    unknown = sorted(set(d) - {"model", "train"})
    if unknown:
        raise ValueError(f"{path}: unknown sections {unknown} (expected model, train)")
    t = d.get("train", {}) or {}
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    bad = sorted(set(t) - names)
    if bad:
        raise ValueError(f"{path}: unknown train keys {bad}; valid: {sorted(names)}")
    return d.get("model", {}) or {}, config_from_dict(TrainConfig, t)


BEST_DIR = "best"


def batch_plan(lengths: list[int], cfg: TrainConfig, seed: int, epoch: int) -> list[list]:
    """One epoch's batches: packed (lists of rows of item indices) when ``cfg.pack_length``,
    else length-bucketed lists of item indices."""
    if cfg.pack_length:
        return pack_batches(lengths, cfg.pack_length, cfg.rows_per_batch, seed, epoch)
    return bucket_batches(lengths, cfg.batch_tokens, cfg.max_batch, seed, epoch)


def batch_items(b: list, cfg: TrainConfig) -> list[int]:
    """The item indices of one planned batch."""
    return [i for row in b for i in row] if cfg.pack_length else list(b)


def collate_batch(items: list[LayoutItem], b: list, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """The tensors of one planned batch (lm.layout.collate_packed or collate)."""
    if cfg.pack_length:
        return collate_packed([[items[i] for i in row] for row in b], cfg.pack_length)
    return collate([items[i] for i in b])


def check_packing_support() -> None:
    """Packed rows rely on transformers' packed-sequence masking (position_ids restarting
    at 0 with no attention_mask); refuse a transformers without it instead of letting
    utterances attend to each other."""
    try:
        from transformers.masking_utils import find_packed_sequence_indices  # noqa: F401
    except ImportError as exc:
        import transformers
        raise RuntimeError(f"train.pack_length needs transformers' packed-sequence masking "
                           f"(transformers.masking_utils.find_packed_sequence_indices), not in "
                           f"transformers {transformers.__version__}: upgrade transformers or "
                           f"set pack_length: 0") from exc


def eval_objective(ev: dict, cfg: TrainConfig) -> float:
    """The eval loss the run is selected on, weighted like the training loss."""
    return (ev["eval_semantic_loss"] + cfg.text_weight * ev["eval_text_loss"]
            + cfg.length_weight * ev["eval_length_loss"])


class BestWeights:
    """The weights at the lowest eval objective so far, in ``DIR/weights.safetensors`` +
    ``DIR/best.json`` (step, objective), written atomically by the main process; survives
    ``--resume`` (the record is read back)."""

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        meta = self.dir / "best.json"
        self.record = json.loads(meta.read_text()) if meta.is_file() else None

    def info(self) -> dict | None:
        return None if self.record is None else {**self.record, "dir": str(self.dir)}

    def offer(self, step: int, objective: float, model, acc) -> bool:
        if self.record is not None and objective >= self.record["objective"]:
            return False
        state = acc.get_state_dict(model)          # collective under FSDP
        if acc.is_main_process:
            from safetensors.torch import save_file

            self.dir.mkdir(parents=True, exist_ok=True)
            tmp = self.dir / "weights.safetensors.tmp"
            save_file({k: v.detach().to("cpu", copy=True).contiguous()   # no shared storage
                       for k, v in state.items()}, str(tmp))
            os.replace(tmp, self.dir / "weights.safetensors")
            atomic_write_text(self.dir / "best.json",
                              json.dumps({"step": step, "objective": objective}))
        self.record = {"step": step, "objective": objective}
        return True

    def load_into(self, model: torch.nn.Module) -> None:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(self.dir / "weights.safetensors")))


@torch.no_grad()
def evaluate(model: torch.nn.Module, items: list[LayoutItem], cfg: TrainConfig,
             device, accelerator=None) -> dict[str, float]:
    """Per-token-type mean losses over ``items``: text / semantic / length.

    With ``accelerator`` (collective: every process must call it) the eval batches are split
    over the processes (``batches[rank::world]``, every batch counted once) and the sums
    reduced, so every process returns the same numbers. Every process runs the same number
    of forward passes (a rank with a shorter share repeats its first batch uncounted): the
    wrapped model's forward is itself collective (DDP buffer broadcast, FSDP all-gather)."""
    was = model.training
    model.eval()
    keys = ("text", "semantic", "length")
    sums = torch.zeros(2 * len(keys), dtype=torch.float64, device=device)
    lengths = [len(it) for it in items]
    batches = batch_plan(lengths, cfg, 0, 0)
    rank, world = (0, 1) if accelerator is None else (accelerator.process_index,
                                                      accelerator.num_processes)
    mine = batches[rank::world]
    n_forward = -(-len(batches) // world)
    for n in range(n_forward):
        counted = n < len(mine)
        b = mine[n] if counted else batches[0]
        batch = to_device(collate_batch(items, b, cfg), device)
        out = model(batch["input_ids"], batch["length_in"], batch.get("attention_mask"),
                    batch["position_ids"])
        if not counted:
            continue
        res = _core(model).loss(batch, out)
        for j, k in enumerate(keys):
            sums[j] += res[f"{k}_sum"].double()
            sums[len(keys) + j] += res[f"n_{k}"].double()
    if accelerator is not None and accelerator.num_processes > 1:
        sums = accelerator.reduce(sums, reduction="sum")
    model.train(was)
    return {f"eval_{k}_loss": float(sums[j]) / max(1.0, float(sums[len(keys) + j]))
            for j, k in enumerate(keys)}


def _core(model):
    """The SpeechLM under DDP / peft wrappers (attribute access falls through peft)."""
    return getattr(model, "module", model)


def set_attention(model: torch.nn.Module, name: str) -> None:
    """Use attention implementation ``name`` ("sdpa", "eager", "flex_attention", ...) in the
    backbone of ``model`` (a SpeechLM, possibly peft-wrapped)."""
    backbone = _core(model).backbone
    if hasattr(backbone, "set_attn_implementation"):
        backbone.set_attn_implementation(name)
    elif backbone.config._attn_implementation != name:
        raise ValueError(f"this transformers cannot switch the attention implementation of "
                         f"a built model to {name!r}; set train.attention: "
                         f"{backbone.config._attn_implementation}")


def run_training(model: torch.nn.Module, train_items: list[LayoutItem], train_durs: list[float],
                 valid_items: list[LayoutItem], cfg: TrainConfig, run_dir: str | Path, *,
                 max_steps: int | None = None, max_minutes: float | None = None,
                 resume: bool = False, params: list[torch.nn.Parameter] | None = None,
                 accelerator=None) -> dict[str, Any]:
    """The training loop shared by ``train`` and ``finetune``.

    ``params``: what to optimize (default all trainable parameters). Returns the final
    ``{"step", "stopped" ("done"|"time"), eval metrics..., "model", "state_dict"}``:
    ``model`` is the unwrapped model; ``state_dict`` its full weights (gathered from the
    shards under FSDP, on the main process), or None when ``model`` holds them already.
    """
    from accelerate.utils import DistributedType
    from tqdm.auto import tqdm

    run_dir = Path(run_dir)
    acc = accelerator or make_accelerator(cfg.mixed_precision, cfg.grad_accum)
    if acc.gradient_accumulation_steps != cfg.grad_accum:
        raise ValueError(f"the accelerator accumulates {acc.gradient_accumulation_steps} "
                         f"micro-batches, the config says grad_accum {cfg.grad_accum}")
    fsdp = acc.distributed_type == DistributedType.FSDP
    if fsdp and params is not None:
        raise ValueError("FSDP shards the whole model: train a subset of parameters "
                         "(LoRA finetune) with DDP instead")
    seed_everything(cfg.seed)
    total = max_steps if max_steps is not None else cfg.max_steps
    if cfg.pack_length:
        check_packing_support()
    set_attention(model, cfg.attention)
    cuda = acc.device.type == "cuda"
    if not fsdp:
        model.to(acc.device)            # fused AdamW wants its parameters on the device
    if cfg.compile:
        _core(model).compile(backend=cfg.compile_backend)   # in place: same state-dict names

    def optimizer(ps):
        o = torch.optim.AdamW(ps, lr=cfg.lr, betas=tuple(cfg.betas),
                              weight_decay=cfg.weight_decay, fused=cuda or None)
        return o, torch.optim.lr_scheduler.LambdaLR(
            o, lr_lambda(cfg.warmup_steps, total, min_ratio=0.1))

    if fsdp and not getattr(acc, "is_fsdp2", False):
        # FSDP1 replaces the parameters by flat shards: wrap first, then build the optimizer
        # over what the wrapped model holds (accelerate's FSDP guidance)
        model = acc.prepare(model)
        params = list(model.parameters())
        opt, sched = acc.prepare(*optimizer(params))
    else:               # DDP, single process, FSDP2 (model + optimizer prepared together)
        params = params if params is not None else [p for p in model.parameters()
                                                    if p.requires_grad]
        model, opt, sched = acc.prepare(model, *optimizer(params))
        if fsdp:
            params = list(model.parameters())
    ckpt = CheckpointManager(run_dir, keep=cfg.keep_checkpoints)
    logger = JsonlLogger(run_dir / "metrics.jsonl", enabled=acc.is_main_process)
    step, epoch, pos = 0, 0, 0
    if resume:
        state = ckpt.load(acc)
        if state is None:
            log.warning("--resume: no checkpoint in %s, starting fresh", run_dir)
        else:
            step, epoch, pos = state["step"], state["epoch"], state["batch_in_epoch"]
            saved_world = int(state.get("num_processes", 1))
            if saved_world != acc.num_processes:
                pos = rescale_position(pos, saved_world, acc.num_processes, cfg.grad_accum)
                log.warning("checkpoint written by %d processes, resuming on %d: batch "
                            "position in epoch %d mapped to %d per process", saved_world,
                            acc.num_processes, epoch, pos)
            log.info("resumed from step %d (epoch %d, batch %d)", step, epoch, pos)
    lengths = [len(it) for it in train_items]
    if not train_items:
        raise ValueError("no training examples")
    budget = TimeBudget(max_minutes, stop_file=run_dir / STOP_FILE)
    best = BestWeights(run_dir / BEST_DIR)
    flops_of = _core(model).train_flops
    win_tokens, win_audio, win_flops, win_t = 0, 0.0, 0.0, time.time()
    bar = tqdm(total=total, initial=step, disable=not acc.is_main_process, desc="lm train")
    model.train()
    stopped = "done"
    last: dict[str, Any] = {}

    def save() -> None:
        ckpt.save(acc, step, epoch=epoch, batch_in_epoch=pos)

    while step < total:
        batches = batch_plan(lengths, cfg, cfg.seed, epoch)
        mine = shard_batches(batches, acc.process_index, acc.num_processes)
        n_per_step = cfg.grad_accum
        while pos + n_per_step <= len(mine) and step < total:
            for b in mine[pos:pos + n_per_step]:
                batch = to_device(collate_batch(train_items, b, cfg), acc.device)
                with acc.accumulate(model), acc.autocast():
                    out = model(batch["input_ids"], batch["length_in"],
                                batch.get("attention_mask"), batch["position_ids"])
                    res = _core(model).loss(batch, out, cfg.text_weight, cfg.length_weight)
                    acc.backward(res["loss"])
                    if acc.sync_gradients and cfg.grad_clip > 0:
                        acc.clip_grad_norm_(params, cfg.grad_clip)
                    opt.step()
                    sched.step()
                    opt.zero_grad(set_to_none=True)
                # counted on the host from the plan: no device synchronisation per step
                seq = [lengths[i] for i in batch_items(b, cfg)]
                win_tokens += sum(seq)
                win_flops += flops_of(seq)
                win_audio += sum(train_durs[i] for i in batch_items(b, cfg))
            pos += n_per_step
            step += 1
            after_step(acc.device)
            bar.update(1)
            log_step = step % cfg.log_every == 0 or step == total
            if log_step:
                if cuda:                    # the window's time includes all of its GPU work
                    torch.cuda.synchronize(acc.device)
                dt = max(1e-6, time.time() - win_t)
                if acc.num_processes > 1:   # collective: all ranks log at the same steps
                    win = acc.reduce(torch.tensor([float(win_tokens), win_audio, win_flops],
                                                  device=acc.device), reduction="sum")
                    win_tokens, win_audio, win_flops = int(win[0]), float(win[1]), float(win[2])
                last = {"step": step, "epoch": epoch, "loss": float(res["loss"].detach()),
                        "text_loss": float(res["text_loss"].detach()),
                        "semantic_loss": float(res["semantic_loss"].detach()),
                        "length_loss": float(res["length_loss"].detach()),
                        "lr": sched.get_last_lr()[0], "tokens_per_s": win_tokens / dt,
                        "audio_hours_per_gpu_minute":
                            win_audio / 3600 / (dt / 60) / acc.num_processes,
                        "model_tflops_per_s": win_flops / dt / 1e12,
                        "num_processes": acc.num_processes}
                if cuda:
                    last["mfu"] = win_flops / dt / acc.num_processes / cfg.peak_flops
                logger.log(last)
                bar.set_postfix(loss=f"{last['loss']:.3f}", tok_s=f"{last['tokens_per_s']:.0f}")
                win_tokens, win_audio, win_flops, win_t = 0, 0.0, 0.0, time.time()
            if valid_items and (step % cfg.eval_every == 0 or step == total):
                ev = evaluate(model, valid_items, cfg, acc.device, acc)
                logger.log({"step": step, **ev})
                last.update(ev)
                log.info("step %d eval %s", step, ev)
                if cfg.keep_best:
                    best.offer(step, eval_objective(ev, cfg), model, acc)
            if step % cfg.save_every == 0 or step == total:
                save()
            budget.tick()
            # one process: a host-side check every step; several: a collective, so only on
            # log steps (no synchronisation between them)
            if ((acc.num_processes == 1 or log_step)
                    and any_process(acc, budget.should_stop())):
                stopped = "time"
                break
        if stopped == "time":
            if step % cfg.save_every != 0 and step != total:
                save()
            log.info("time budget of %.1f min used: checkpointed at step %d", max_minutes, step)
            break
        if pos + n_per_step > len(mine):
            epoch, pos = epoch + 1, 0
            if len(mine) < n_per_step:
                raise ValueError(f"{len(batches)} batches per epoch over {acc.num_processes} "
                                 f"process(es) is fewer than grad_accum {n_per_step} per "
                                 f"process: add data, or lower batch_tokens / grad_accum")
    bar.close()
    full = acc.get_state_dict(model) if fsdp else None    # collective under FSDP
    return {**last, "step": step, "stopped": stopped, "model": acc.unwrap_model(model),
            "state_dict": full, "best": best.info()}


def prepare_run(config_path: str, data: str, run_dir: Path, tokenizer: str | None,
                resume: bool, reuse_only: bool = False, text_input: str | None = None
                ) -> tuple[SpeechLMConfig, TrainConfig, Any]:
    """Fix the run's model config and tokenizer in RUN (reused on --resume).

    The tokenizer follows the model config's ``text_input`` (``text_input`` here overrides
    it): ``--tokenizer`` (a phoneme_vocab.json / sentencepiece model, or a directory holding
    one), else built from the train split — the phoneme vocabulary of its ``phonemes``
    column, or a sentencepiece model trained on its text.
    ``reuse_only``: read what the main process wrote (non-main processes of a distributed
    run call this after the main one, inside ``accelerator.main_process_first()``)."""
    from flexicodec.lm.data import require_phonemes
    from flexicodec.lm.phoneme_tokenizer import DEFAULT_VOICE, PhonemeTokenizer
    from flexicodec.lm.text_input import check_text_input, load_tokenizer, tokenizer_file
    from flexicodec.lm.text_tokenizer import train_text_tokenizer

    model_d, tcfg = load_config(config_path)
    if text_input is not None:
        model_d = {**model_d, "text_input": text_input}
    info = read_info(data)
    cfg_path = run_dir / "lm_config.json"
    if (resume or reuse_only) and cfg_path.is_file():
        mcfg = config_from_saved(json.loads(cfg_path.read_text()))
        tok_path = run_dir / "tokenizer" / tokenizer_file(mcfg.text_input)
        if tok_path.is_file():
            if mcfg.codec_identity != info["codec_identity"]:
                raise ValueError(f"--resume: data codec {info['codec_identity']} != run's "
                                 f"codec {mcfg.codec_identity}")
            return mcfg, tcfg, load_tokenizer(tok_path, mcfg.text_input)
    if reuse_only:
        raise FileNotFoundError(f"{run_dir}: the main process wrote no {cfg_path.name} / "
                                f"tokenizer")
    kind = check_text_input(model_d.get("text_input", SpeechLMConfig.text_input))
    tok_path = run_dir / "tokenizer" / tokenizer_file(kind)
    if tokenizer:
        tok = load_tokenizer(tokenizer, kind)
        tok_path.parent.mkdir(parents=True, exist_ok=True)
        tok_path.write_bytes(tok.path.read_bytes())
        tok = load_tokenizer(tok_path, kind)
    elif kind == "phoneme":
        train = require_phonemes(load_tokenized(data, "train"))
        voice = info.get("phoneme_voice") or DEFAULT_VOICE
        log.info("no --tokenizer: the phoneme vocabulary of the train split (voice %s)", voice)
        tok = PhonemeTokenizer.build(train["phonemes"], tok_path, voice=voice)
    else:
        log.info("no --tokenizer: training one (%d pieces) on the train split text",
                 tcfg.tokenizer_vocab_size)
        texts = load_tokenized(data, "train")["text"]
        tok = train_text_tokenizer(texts, tok_path, tcfg.tokenizer_vocab_size, normalize=False)
    mcfg = model_config_from_dict(model_d, num_text=tok.vocab_size,
                                  semantic_size=int(info["semantic_vocab_size"]),
                                  max_group=int(info["max_group"]),
                                  codec_identity=str(info["codec_identity"] or ""))
    atomic_write_text(cfg_path, json.dumps(config_to_dict(mcfg), indent=2))
    return mcfg, tcfg, tok


def build_parser():
    """The ``flexicodec-lm train`` argument parser."""
    import argparse

    from flexicodec.common.run_flags import add_run_flags

    p = argparse.ArgumentParser(prog="flexicodec-lm train", description=__doc__.split("\n")[0])
    add_run_flags(p)
    p.add_argument("--data", required=True, help="tokenized dirs, comma separated")
    p.add_argument("--tokenizer", default=None,
                   help="phoneme_vocab.json or sentencepiece model, by the config's text_input "
                        "(default: built from the train split)")
    p.add_argument("--text-input", choices=["phoneme", "bpe"], default=None,
                   help="the LM's text input (overrides the config's model.text_input; "
                        "default there: phoneme)")
    p.add_argument("--valid-split", default="valid", help="eval split of the data")
    p.add_argument("--export", choices=["best", "last"], default="best",
                   help="weights written to --out-model: the lowest eval loss (train.keep_best)"
                        " or the last step")
    return p


def main(argv: list[str] | None = None) -> int:
    from flexicodec.common.run_flags import out_model_dir, parse_run_args

    a = parse_run_args(build_parser(), argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    run_dir = Path(a.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tcfg = load_config(a.config)[1]
    acc = make_accelerator(tcfg.mixed_precision, tcfg.grad_accum, cpu=a.cpu)
    configure_process_logging(acc)
    with acc.main_process_first():     # the main process trains/copies the tokenizer once
        mcfg, tcfg, tok = prepare_run(a.config, a.data, run_dir, a.tokenizer, a.resume,
                                      reuse_only=not acc.is_main_process,
                                      text_input=a.text_input)
    vocab = mcfg.vocab()
    train_items, durs = make_items(load_tokenized(a.data, "train"), tok, vocab, tcfg.max_len)
    try:
        valid_items, _ = make_items(load_tokenized(a.data, a.valid_split), tok, vocab, tcfg.max_len)
    except ValueError:
        log.warning("no '%s' split in %s: no eval loss", a.valid_split, a.data)
        valid_items = []
    model = SpeechLM(mcfg)
    log.info("LM %s (%s input): %.1fM params, vocab %d, %d train / %d valid sequences",
             mcfg.arch, mcfg.text_input, model.num_parameters() / 1e6, vocab.size,
             len(train_items), len(valid_items))
    res = run_training(model, train_items, durs, valid_items, tcfg, run_dir,
                       max_steps=a.max_steps, max_minutes=a.max_minutes, resume=a.resume,
                       accelerator=acc)
    if acc.is_main_process:
        out = out_model_dir(a)
        final = res["model"]
        if res["state_dict"] is not None:           # FSDP: gathered full weights
            final = SpeechLM(mcfg)
            final.load_state_dict(res["state_dict"])
        which = f"step {res['step']}"
        if a.export == "best" and res.get("best"):
            final = SpeechLM(mcfg)
            BestWeights(run_dir / BEST_DIR).load_into(final)
            which = (f"best eval at step {res['best']['step']} (objective "
                     f"{res['best']['objective']:.4f}) of {res['step']}")
        final.save_pretrained(out, tokenizer_path=tok.path,
                              extra={"exported": which})
        print(f"wrote {out} ({which}, stopped: {res['stopped']})")
    acc.wait_for_everyone()
    summary = {k: v for k, v in res.items() if k not in ("model", "state_dict")}
    if acc.is_main_process:     # one summary line, not one per process (they would interleave)
        print(json.dumps(summary))
    return 0
