"""Training plumbing shared by every trainer (ASR, codec, LM, acoustic stage).

One way of doing each thing:
- :func:`make_accelerator` — an ``accelerate.Accelerator`` with bf16 on GPU, fp32 on CPU.
- :class:`CheckpointManager` — atomic, resumable checkpoints through ``accelerator.save_state``
  (models, optimizers, schedulers, RNG states and anything registered with
  ``accelerator.register_for_checkpointing``) plus a ``trainer_state.json`` (step, epoch, ...).
  A checkpoint is written to a temporary folder and renamed into place, so a crash while
  saving never corrupts the last good one; ``latest`` names the newest.
- :class:`JsonlLogger` — one JSON object per line, main process only, flushed each write.
- :func:`seed_everything`, :func:`load_yaml` / :func:`dataclass_from_section` (configs),
  :class:`TimeBudget` (``--max-minutes``), :func:`epoch_batches` + :func:`make_loader`
  (deterministic, resumable data order), :func:`lr_lambda` (warm-up + cosine).

Layout of a run directory::

    RUN/
      checkpoints/step_00001000/   accelerate state + trainer_state.json
      latest                       text file: name of the newest checkpoint folder
      metrics.jsonl                one line per logged step
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import yaml

from flexicodec.common.distributed import (CHECKPOINT_HOOKS, any_process, load_state_any_world,
                                           shard_batches)
from flexicodec.common.atomic import atomic_write_text
from flexicodec.common.heap import after_step
from flexicodec.common.pretrained import config_from_dict

STATE_NAME = "trainer_state.json"


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def make_accelerator(mixed_precision: str | None = None, gradient_accumulation_steps: int = 1,
                     cpu: bool = False, **kwargs: Any):
    """An Accelerator; ``mixed_precision=None`` picks 'bf16' on CUDA and 'no' elsewhere."""
    from accelerate import Accelerator

    if mixed_precision is None:
        mixed_precision = "bf16" if (torch.cuda.is_available() and not cpu) else "no"
    return Accelerator(mixed_precision=mixed_precision, cpu=cpu,
                       gradient_accumulation_steps=gradient_accumulation_steps, **kwargs)


class CheckpointManager:
    """Atomic save / resume of a training run in ``run_dir`` keeping the ``keep`` newest."""

    def __init__(self, run_dir: str | os.PathLike, keep: int = 2):
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.keep = keep

    def latest(self) -> Path | None:
        """Folder of the newest complete checkpoint, or None."""
        pointer = self.run_dir / "latest"
        if pointer.is_file():
            path = self.ckpt_dir / pointer.read_text().strip()
            if (path / STATE_NAME).is_file():
                return path
        # pointer missing or stale: fall back to the newest complete folder
        done = sorted(p for p in self.ckpt_dir.glob("step_*") if (p / STATE_NAME).is_file())
        return done[-1] if done else None

    def save(self, accelerator, step: int, **state: Any) -> Path | None:
        """Save everything accelerate tracks plus ``state`` (JSON-able) as ``step_<step>``.

        Collective: every process must call it. Returns the folder on the main process.
        """
        name = f"step_{step:08d}"
        final = self.ckpt_dir / name
        tmp = self.ckpt_dir / f".{name}.tmp"
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True, exist_ok=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            info = {"step": step, "time": time.time(),
                    "num_processes": accelerator.num_processes, **state}
            (tmp / STATE_NAME).write_text(json.dumps(info, indent=1))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            atomic_write_text(self.run_dir / "latest", name)
            self._prune()
        accelerator.wait_for_everyone()
        for hook in CHECKPOINT_HOOKS:
            hook("save", accelerator, step)
        return final if accelerator.is_main_process else None

    def _prune(self) -> None:
        done = sorted(p for p in self.ckpt_dir.glob("step_*") if (p / STATE_NAME).is_file())
        for old in done[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)

    def load(self, accelerator, path: str | os.PathLike | None = None) -> dict | None:
        """Restore the newest (or given) checkpoint into the prepared objects.

        Returns its trainer state dict (``step`` etc.), or None when there is nothing to
        resume from.
        """
        path = Path(path) if path else self.latest()
        if path is None:
            return None
        # works when the checkpoint was written by another number of processes
        load_state_any_world(accelerator, path)
        state = json.loads((path / STATE_NAME).read_text())
        for hook in CHECKPOINT_HOOKS:
            hook("load", accelerator, int(state["step"]))
        return state


class JsonlLogger:
    """Append JSON lines to ``path`` (main process only)."""

    def __init__(self, path: str | os.PathLike, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        clean = {k: (v.item() if isinstance(v, (torch.Tensor, np.generic)) else v)
                 for k, v in record.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps(clean) + "\n")
            f.flush()


def load_yaml(path: str | Path) -> dict:
    """Read a YAML config file into a dict (clear error for a missing/bad file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such config file")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return data


def dataclass_from_section(cls: type, section: dict | None, where: str) -> Any:
    """Build dataclass ``cls`` from a YAML section, rejecting unknown keys by name."""
    section = dict(section or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(section) - names)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown} (known: {sorted(names)})")
    return config_from_dict(cls, section)


STOP_FILE = "STOP"      # RUN/STOP: a running trainer stops cleanly after its current step


class TimeBudget:
    """``--max-minutes``: tells the loop to stop early enough to save a checkpoint.

    ``should_stop()`` is True once elapsed time plus a reserve (twice the slowest step seen,
    plus ``reserve_s`` for checkpointing/final export) would pass the limit, or once
    ``stop_file`` exists (``touch RUN/STOP``: stop a run that has no fixed end, e.g. one
    outliving the command that started it; a stop file left from an earlier run is removed
    here). The first ``warmup_ticks`` steps (compilation, allocator warm-up) do not count as
    the slowest.
    """
    warmup_ticks = 3

    def __init__(self, max_minutes: float | None, reserve_s: float = 20.0,
                 stop_file: str | Path | None = None):
        self.stop_file = None if stop_file is None else Path(stop_file)
        if self.stop_file is not None:
            self.stop_file.unlink(missing_ok=True)
        self.limit = None if max_minutes is None else max_minutes * 60.0
        self.reserve = reserve_s
        self.start = time.monotonic()
        self._last = self.start
        self.slowest = 0.0
        self.ticks = 0

    def tick(self) -> None:
        now = time.monotonic()
        self.ticks += 1
        if self.ticks > self.warmup_ticks:
            self.slowest = max(self.slowest, now - self._last)
        self._last = now

    def skip(self) -> None:
        """Exclude the time since the last tick from the step times (evaluation and
        checkpoint writes are not steps: counted as one, they inflate the reserve)."""
        self._last = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def should_stop(self) -> bool:
        if self.stop_file is not None and self.stop_file.exists():
            return True
        if self.limit is None:
            return False
        reserve = min(self.reserve + 2 * self.slowest, 0.25 * self.limit)
        return self.elapsed() + reserve >= self.limit


def epoch_batches(lengths: Sequence[float], batch_size: int, seed: int, epoch: int,
                  bucket: bool = True, drop_last: bool = True) -> list[list[int]]:
    """Deterministic batches of dataset indices for one epoch.

    Shuffled with ``seed + epoch``; with ``bucket`` indices are sorted by length inside
    windows of 50 batches (less padding) and the batches shuffled again. Same inputs →
    same batches, which is what makes ``--resume`` reproduce the data order.
    """
    n = len(lengths)
    if n == 0:
        raise ValueError("empty dataset")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rng = random.Random(seed * 100003 + epoch)
    idx = list(range(n))
    rng.shuffle(idx)
    if bucket:
        window = batch_size * 50
        idx = [i for s in range(0, n, window)
               for i in sorted(idx[s:s + window], key=lambda j: lengths[j])]
    batches = [idx[s:s + batch_size] for s in range(0, n, batch_size)]
    if drop_last and len(batches) > 1 and len(batches[-1]) < batch_size:
        batches.pop()
    if bucket:
        rng.shuffle(batches)
    return batches


def lr_lambda(warmup: int, total: int, min_ratio: float = 0.05):
    """Linear warm-up then cosine decay to ``min_ratio`` (a LambdaLR factor)."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        p = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * p))
    return f


def cuda_memory_gb() -> float | None:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return None


def make_loader(dataset, batches: list[list[int]], num_workers: int, collate_fn,
                seed: int = 0):
    """A DataLoader over precomputed ``batches`` with its own seeded generator, so creating
    it never draws from the global torch RNG (needed for exact ``--resume``); worker seeds
    derive from ``seed``. ``collate_fn`` turns a list of items into a batch (e.g.
    ``flexicodec.data.loaders.collate_audio``)."""
    return torch.utils.data.DataLoader(dataset, batch_sampler=batches, collate_fn=collate_fn,
                                       num_workers=num_workers,
                                       generator=torch.Generator().manual_seed(seed),
                                       persistent_workers=False, pin_memory=False)


class EpochPlan:
    """The per-process, resumable data order shared by the trainers.

    Every epoch is :func:`epoch_batches` (seeded by ``seed`` and the epoch) split evenly
    over the processes (:func:`flexicodec.common.distributed.shard_batches`), so the global ``step``
    alone says where a run is: :meth:`loader` for a resumed step skips what was done.
    """

    def __init__(self, lengths: Sequence[float], batch_size: int, seed: int, rank: int,
                 world: int, bucket: bool = True, what: str = "training items"):
        self.lengths, self.batch_size, self.seed = lengths, batch_size, seed
        self.rank, self.world, self.bucket = rank, world, bucket
        self.steps_per_epoch = len(epoch_batches(lengths, batch_size, seed, 0, bucket)) // world
        if self.steps_per_epoch < 1:
            raise ValueError(f"{len(lengths)} {what} are too few for batch_size {batch_size} "
                             f"x {world} processes")

    def loader(self, dataset, step: int, num_workers: int, collate_fn):
        """(epoch, DataLoader over this process's remaining batches of the epoch of ``step``);
        the loader's worker seeds derive from (seed, step, rank)."""
        epoch, k = divmod(step, self.steps_per_epoch)
        plan = epoch_batches(self.lengths, self.batch_size, self.seed, epoch, self.bucket)
        batches = shard_batches(plan, self.rank, self.world)[k:]
        return epoch, make_loader(dataset, batches, num_workers, collate_fn,
                                  seed=self.seed * 1000003 + step * 7 + self.rank)


def end_of_step(accelerator, ckpt: CheckpointManager, budget: TimeBudget, step: int,
                max_steps: int, save_every: int, stop_after: int | None = None,
                name: str = "train", **state: Any) -> str | None:
    """Checkpoint and decide whether a training loop ends after ``step``.

    Saves every ``save_every`` steps, at ``max_steps`` and when stopping early. The early
    stop (time budget or ``stop_after``) is one decision for all processes, so none is left
    waiting in a collective. Returns None to go on, "done" at ``max_steps``, or "stopped"
    for an early stop (the checkpoint is saved; ``--resume`` continues). Calls
    :func:`flexicodec.common.heap.after_step` (``--release-memory``).
    """
    after_step(accelerator.device)
    stop = any_process(accelerator, budget.should_stop()) or (
        stop_after is not None and step >= stop_after)
    if step % save_every == 0 or step >= max_steps or stop:
        ckpt.save(accelerator, step, **state)
    if stop and step < max_steps:
        if accelerator.is_main_process:
            from tqdm.auto import tqdm
            tqdm.write(f"[{name}] stopping at step {step} (time budget / {STOP_FILE} file / "
                       f"--stop-after); "
                       f"checkpoint saved, continue with --resume")
        return "stopped"
    return "done" if step >= max_steps or stop else None
