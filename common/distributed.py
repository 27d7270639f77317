"""Multi-process (DDP / FSDP, several GPUs or machines) helpers shared by every trainer.

Every trainer (``flexicodec.codec.asr.train``, ``flexicodec.codec.train``, ``flexicodec.lm.train`` / ``flexicodec.lm.finetune``,
``flexicodec.tts.train_acoustic``) runs unchanged under ``accelerate launch`` (see docs/DISTRIBUTED.md and
configs/accelerate/). This module holds the few pieces they share:

- :func:`shard_batches` — each process's share of a precomputed batch plan (equal counts on
  every rank, so ranks never fall out of step); :func:`shard_dataset` — a ``datasets``
  dataset (map-style or streaming ``IterableDataset``) split per process.
- :func:`any_process` — one stop decision (time budget) for all processes.
- :func:`rescale_position` — a per-rank position in the batch plan saved with ``N`` processes,
  mapped to ``M`` processes on resume.
- :func:`configure_process_logging` — INFO logs on the main process only.
- :func:`module_digest`, :func:`replica_digests`, :func:`check_replicas` — a SHA-256 of each
  prepared model's weights per rank, to prove the replicas stayed identical.
- :func:`load_state_any_world` — ``accelerator.load_state`` that also works when the
  checkpoint was written by a different number of processes.
- ``python -m flexicodec.common.distributed run [--replica-digests DIR] [--check-replicas]
  MODULE ARGS``: runs the trainer module's ``main`` (e.g. ``flexicodec.lm.train``) with a
  checkpoint hook that writes every rank's weight digests after each save / load to
  ``DIR/rank<i>.jsonl`` (used by tests/test_distributed.py);
  ``python -m flexicodec.common.distributed compare DIR`` checks them.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import logging
import os
import random
import sys
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import numpy as np
import torch

log = logging.getLogger(__name__)
T = TypeVar("T")

#: callables ``hook(event, accelerator, step)`` that
#: :class:`flexicodec.common.training.CheckpointManager` calls on every process after each
#: checkpoint ``"save"`` and ``"load"`` (the replica-digest check installs one)
CHECKPOINT_HOOKS: list[Callable[[str, Any, int], None]] = []
DIGEST_FILE = "rank{rank}.jsonl"


class ReplicaMismatchError(RuntimeError):
    """Model replicas on different processes hold different weights."""


# ------------------------------------------------------------------------------------------
# data sharding
# ------------------------------------------------------------------------------------------
def shard_batches(batches: Sequence[T], rank: int, world: int) -> list[T]:
    """This rank's share of a batch plan: ``batches[rank::world]`` after dropping the
    ``len % world`` tail, so every rank gets ``len // world`` batches (ranks take the same
    number of optimizer steps per epoch and change epoch together)."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"bad rank {rank} of world {world}")
    usable = len(batches) // world * world
    return list(batches[:usable][rank::world])


def shard_dataset(ds, rank: int, world: int):
    """Split a ``datasets.Dataset`` (contiguous shards) or a streaming
    ``datasets.IterableDataset`` (``split_dataset_by_node``: whole files per node when the
    file count divides, else every ``world``-th example) for process ``rank`` of ``world``."""
    import datasets
    from datasets.distributed import split_dataset_by_node

    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"bad rank {rank} of world {world}")
    if world == 1:
        return ds
    if isinstance(ds, datasets.IterableDataset):
        return split_dataset_by_node(ds, rank=rank, world_size=world)
    if isinstance(ds, datasets.Dataset):
        if len(ds) < world:
            raise ValueError(f"dataset of {len(ds)} rows cannot be split over {world} processes")
        return ds.shard(num_shards=world, index=rank, contiguous=True)
    raise TypeError(f"shard_dataset: expected a datasets.Dataset or IterableDataset, got "
                    f"{type(ds).__name__}")


def rescale_position(per_rank_pos: int, old_world: int, new_world: int, multiple: int = 1) -> int:
    """Per-rank position in an epoch's batch plan saved by ``old_world`` processes → the
    position for ``new_world`` processes (same number of batches consumed globally, rounded
    down to a multiple of ``multiple`` = gradient-accumulation steps; at most ``multiple - 1``
    batches per rank are seen twice)."""
    if old_world < 1 or new_world < 1:
        raise ValueError(f"process counts must be >= 1 (got {old_world}, {new_world})")
    consumed = per_rank_pos * old_world
    pos = consumed // new_world
    return pos - pos % max(1, multiple)


def any_process(accelerator, flag: bool) -> bool:
    """Collective OR of a per-process flag (e.g. "my time budget ran out"): every process
    gets the same answer, so all stop at the same step and no collective is left waiting."""
    if accelerator.num_processes == 1:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(t, reduction="sum").item() > 0)


# ------------------------------------------------------------------------------------------
# logging
# ------------------------------------------------------------------------------------------
def configure_process_logging(accelerator) -> None:
    """INFO logging on the main process; WARNING and above elsewhere (also for the
    transformers / datasets loggers), so N processes do not print N copies."""
    if accelerator.is_main_process:
        return
    logging.getLogger().setLevel(logging.WARNING)
    for name in ("transformers", "datasets", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)


# ------------------------------------------------------------------------------------------
# replica digests
# ------------------------------------------------------------------------------------------
def module_digest(module: torch.nn.Module) -> str:
    """SHA-256 over a module's state dict (names, dtypes, shapes and exact bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _prepared_models(accelerator) -> list[torch.nn.Module]:
    models = getattr(accelerator, "_models", None)
    if models is None:
        raise RuntimeError("this accelerate version keeps no list of prepared models "
                           "(Accelerator._models); cannot compute replica digests")
    return list(models)


def replica_digests(accelerator) -> dict[str, str]:
    """``{"model_<i>": sha256}`` of every model passed through ``accelerator.prepare`` on
    this process (unwrapped). Replicated training only: under FSDP the ranks hold different
    shards by design, so this raises."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP:
        raise ValueError("replica digests compare replicated (DDP) weights; FSDP ranks hold "
                         "different shards")
    return {f"model_{i}": module_digest(accelerator.unwrap_model(m))
            for i, m in enumerate(_prepared_models(accelerator))}


def write_replica_digests(accelerator, out_dir: str | os.PathLike, step: int,
                          event: str) -> dict[str, str]:
    """Append ``{"event", "step", "rank", "world", "digests"}`` to ``out_dir/rank<i>.jsonl``
    (every process writes its own file)."""
    digests = replica_digests(accelerator)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rec = {"event": event, "step": int(step), "rank": accelerator.process_index,
           "world": accelerator.num_processes, "digests": digests}
    with open(out / DIGEST_FILE.format(rank=accelerator.process_index), "a") as f:
        f.write(json.dumps(rec) + "\n")
        f.flush()
    return digests


def check_replicas(accelerator) -> dict[str, str]:
    """Collective: gather every rank's digests and raise :class:`ReplicaMismatchError` if
    any differ. Returns this rank's digests."""
    from accelerate.utils import gather_object

    mine = replica_digests(accelerator)
    if accelerator.num_processes == 1:
        return mine
    everyone = gather_object([mine])
    bad = [r for r, d in enumerate(everyone) if d != everyone[0]]
    if bad:
        raise ReplicaMismatchError(f"model weights differ between rank 0 and ranks {bad}: "
                                   f"{everyone}")
    return mine


def read_replica_digests(out_dir: str | os.PathLike) -> dict[int, list[dict]]:
    """``{rank: [records in write order]}`` from a digest folder."""
    out = {}
    for p in sorted(Path(out_dir).glob("rank*.jsonl")):
        recs = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
        if recs:
            out[int(recs[0]["rank"])] = recs
    if not out:
        raise FileNotFoundError(f"{out_dir}: no rank*.jsonl digest files")
    return out


def compare_replica_digests(out_dir: str | os.PathLike, event: str = "save") -> dict[int, dict]:
    """Check that every rank wrote the same digests at every ``event`` step; returns
    ``{step: digests}``. Raises :class:`ReplicaMismatchError` (differences) or ValueError
    (a rank missing a step)."""
    by_rank = read_replica_digests(out_dir)
    per_rank = {r: {rec["step"]: rec["digests"] for rec in recs if rec["event"] == event}
                for r, recs in by_rank.items()}
    steps = set(per_rank[min(per_rank)])
    for r, d in per_rank.items():
        if set(d) != steps:
            raise ValueError(f"{out_dir}: rank {r} has {event} steps {sorted(d)}, rank "
                             f"{min(per_rank)} has {sorted(steps)}")
    for s in sorted(steps):
        ref = per_rank[min(per_rank)][s]
        bad = [r for r, d in per_rank.items() if d[s] != ref]
        if bad:
            raise ReplicaMismatchError(f"{out_dir}: step {s}: ranks {bad} differ from rank "
                                       f"{min(per_rank)}")
    return {s: per_rank[min(per_rank)][s] for s in sorted(steps)}


# ------------------------------------------------------------------------------------------
# resume on a different process count
# ------------------------------------------------------------------------------------------
def saved_world_size(path: str | os.PathLike) -> int:
    """Number of processes that wrote an accelerate checkpoint folder (its RNG files)."""
    n = len(list(Path(path).glob("random_states_*.pkl")))
    if n == 0:
        raise FileNotFoundError(f"{path}: no random_states_*.pkl (not an accelerate checkpoint)")
    return n


def load_state_any_world(accelerator, path: str | os.PathLike) -> int:
    """``accelerator.load_state(path)`` for a checkpoint written by any number of processes.

    Models, optimizers and schedulers are saved once (main process) and load on any count.
    RNG states are per process: with fewer processes now, ranks take their own saved state;
    with more, accelerate would silently keep the fresh RNG on the extra ranks; here those
    ranks are re-seeded deterministically from (rank 0's saved state, rank) instead, and the
    change of process count is logged. Returns the saved process count.
    """
    path = Path(path)
    saved = saved_world_size(path)
    accelerator.load_state(str(path))
    now, rank = accelerator.num_processes, accelerator.process_index
    if saved != now and accelerator.is_main_process:
        log.warning("resuming a checkpoint written by %d process(es) on %d: per-process batch "
                    "size is unchanged, so the global batch is %d/%d of the original", saved,
                    now, now, saved)
    if rank >= saved:
        base = torch.load(path / "random_states_0.pkl", weights_only=False)["torch_manual_seed"]
        seed = int.from_bytes(hashlib.sha256(base.numpy().tobytes() + rank.to_bytes(4, "little"))
                              .digest()[:8], "little")
        random.seed(seed)
        np.random.seed(seed % (2**32))
        torch.manual_seed(seed)
    return saved


# ------------------------------------------------------------------------------------------
# CLI: run a trainer with the digest hook
# ------------------------------------------------------------------------------------------
def install_digest_hook(out_dir: str | os.PathLike | None, check: bool) -> None:
    """Register a checkpoint hook (:data:`CHECKPOINT_HOOKS`): after every checkpoint save
    (event "save") and load (event "load") each rank writes its weight digests to
    ``out_dir``; with ``check`` all ranks are compared (collective) at every save."""
    def digest_hook(event: str, accelerator, step: int) -> None:
        if out_dir is not None:
            write_replica_digests(accelerator, out_dir, step, event)
        if check and event == "save":
            check_replicas(accelerator)

    digest_hook.replica_digests = True  # type: ignore[attr-defined]
    CHECKPOINT_HOOKS[:] = [h for h in CHECKPOINT_HOOKS
                           if not getattr(h, "replica_digests", False)] + [digest_hook]


def load_trainer(module_path: str) -> Callable[[list[str]], Any]:
    """``main(argv)`` of the trainer module ``module_path`` (a dotted name given by the
    caller, e.g. ``flexicodec.lm.train``; this module names no trainer itself)."""
    try:
        module = importlib.import_module(module_path)
    except ModuleNotFoundError as exc:
        raise SystemExit(f"trainer module {module_path!r} not found ({exc})") from exc
    main = getattr(module, "main", None)
    if not callable(main):
        raise SystemExit(f"trainer module {module_path!r} has no main(argv)")
    return main


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m flexicodec.common.distributed",
                                description="Distributed-training checks (see docs/DISTRIBUTED.md)")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run a trainer with per-rank weight digests at each save")
    r.add_argument("--replica-digests", default=None, metavar="DIR",
                   help="write DIR/rank<i>.jsonl after every checkpoint save/load")
    r.add_argument("--check-replicas", action="store_true",
                   help="compare all ranks' weights at every save (raises on a mismatch)")
    r.add_argument("trainer", metavar="MODULE",
                   help="the trainer's module, e.g. flexicodec.codec.asr.train, "
                        "flexicodec.codec.train, flexicodec.lm.train, flexicodec.lm.finetune, "
                        "flexicodec.tts.train_acoustic")
    c = sub.add_parser("compare", help="check a digest folder: same weights on every rank")
    c.add_argument("dir")
    a, rest = p.parse_known_args(argv)
    if a.cmd == "compare":
        if rest:
            p.error(f"unrecognized arguments: {rest}")
        steps = compare_replica_digests(a.dir)
        print(json.dumps({"identical_at_steps": sorted(steps)}))
        return 0
    if a.replica_digests is None and not a.check_replicas:
        p.error("run: give --replica-digests DIR and/or --check-replicas")
    trainer_main = load_trainer(a.trainer)
    install_digest_hook(a.replica_digests, a.check_replicas)
    return int(trainer_main(rest) or 0)


if __name__ == "__main__":
    # run through the imported module, so the hook lands in the CHECKPOINT_HOOKS that
    # flexicodec.common.training sees (not in this __main__ copy's)
    from flexicodec.common.distributed import main as _main

    raise SystemExit(_main())
