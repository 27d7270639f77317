"""save_pretrained / from_pretrained for our own torch models, and atomic file writing.

A model directory is ``config.json`` (the model's dataclass config, plus ``model_type`` and
``identity``) beside ``model.safetensors`` (no pickle). Large state dicts are sharded into
``model-0000N-of-0000M.safetensors`` files of at most ``max_shard_mb`` with an index file, so
every shipped file stays under the 16 MiB limit. Every write goes to a temporary file or
directory first and is renamed into place, so an interrupted save never leaves a broken model.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, TypeVar

import torch
from safetensors.torch import load_file, save_file

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"

T = TypeVar("T", bound="PretrainedMixin")


class CheckpointError(ValueError):
    """A checkpoint directory is missing, of the wrong model type or does not match."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    Works for files and directories. On error the temporary is removed and ``path`` is left
    as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp", dir=path.parent)) / "x"
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            old = path.with_name(f".{path.name}.old{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_report_files(out_prefix: str | os.PathLike, result: dict, markdown: str
                       ) -> tuple[Path, Path]:
    """Write ``OUT_PREFIX.json`` (``result``) and ``OUT_PREFIX.md`` (``markdown``)
    atomically; returns their paths (the report format of the eval and diagnostic tools)."""
    out = Path(out_prefix)
    jpath, mpath = out.with_name(out.name + ".json"), out.with_name(out.name + ".md")
    atomic_write_text(jpath, json.dumps(result, indent=1, ensure_ascii=False))
    atomic_write_text(mpath, markdown)
    return jpath, mpath


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save ``obj`` to ``path`` atomically (for training checkpoints, not shipping)."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def config_to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)


def config_from_dict(cls: type, d: dict) -> Any:
    """Build dataclass ``cls`` from ``d``, ignoring unknown keys, recursing into dataclass
    fields (nested configs)."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in d:
            continue
        value = d[f.name]
        ftype = f.type if not isinstance(f.type, str) else None
        if ftype is None:
            # postponed annotations: resolve via the default's type if it is a dataclass
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
            ftype = type(default) if dataclasses.is_dataclass(default) else None
        if ftype is not None and dataclasses.is_dataclass(ftype) and isinstance(value, dict):
            value = config_from_dict(ftype, value)
        elif isinstance(value, list) and f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
            if isinstance(default, tuple):
                value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)


def state_dict_identity(state: dict[str, torch.Tensor]) -> str:
    """A short stable hash of a state dict's names, shapes and values (model identity).

    Floating tensors are hashed as float32 values, so casting fp16-exact weights to another
    precision keeps the identity."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        # floats hashed as float32: the identity does not change when weights that are exact
        # in fp16/bf16 are stored in half precision for shipping
        h.update(t.float().numpy().tobytes() if t.is_floating_point() else t.numpy().tobytes())
    return h.hexdigest()[:16]


class PretrainedMixin:
    """Mixin for ``nn.Module`` subclasses built from one dataclass config.

    Subclasses set ``config_class`` and ``model_type`` and keep the config in ``self.config``.
    """

    config_class: type
    model_type: str
    #: name of the shipped checkpoint (``flexicodec_pretrained/<name>``) that
    #: ``from_pretrained()`` loads when no directory is given; None = nothing shipped
    pretrained_name: str | None = None

    def save_pretrained(self, directory: str | os.PathLike, *, dtype: torch.dtype | None = None,
                        max_shard_mb: float = 15.0, extra: dict | None = None) -> Path:
        """Write ``config.json`` + safetensors weights to ``directory`` atomically.

        ``dtype`` casts floating weights (e.g. torch.float16 for shipping). Returns the path.
        """
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        if dtype is not None:
            state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}
        # tied / shared tensors must be stored once for safetensors
        seen: dict[int, str] = {}
        for k in list(state):
            ptr = state[k].data_ptr()
            if ptr in seen and state[k].numel() > 0:
                state[k] = state[k].clone()
            seen[ptr] = k
        config = config_to_dict(self.config)
        meta = {"model_type": self.model_type, "identity": state_dict_identity(state),
                **(extra or {}), "config": config}
        directory = Path(directory)
        with atomic_path(directory) as tmp:
            tmp.mkdir(parents=True)
            _save_sharded(state, tmp, max_shard_mb)
            (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True))
        return directory

    @classmethod
    def read_config(cls, directory: str | os.PathLike) -> dict:
        directory = Path(directory)
        path = directory / CONFIG_NAME
        if not path.is_file():
            raise CheckpointError(f"{directory}: not a model directory (no {CONFIG_NAME})")
        meta = json.loads(path.read_text())
        if meta.get("model_type") != cls.model_type:
            raise CheckpointError(
                f"{directory}: holds a '{meta.get('model_type')}' model, expected "
                f"'{cls.model_type}'")
        return meta

    @classmethod
    def from_pretrained(cls: type[T], directory: str | os.PathLike | None = None,
                        map_location: str | torch.device = "cpu", **overrides: Any) -> T:
        """Load a model saved by :meth:`save_pretrained` (``directory=None``: the shipped
        default checkpoint of this class). ``overrides`` replace config fields.

        Raises :class:`CheckpointError` for a missing directory, another model type, or
        weights that do not match the config.
        """
        if directory is None:
            directory = default_checkpoint(cls.pretrained_name, cls.__name__)
        meta = cls.read_config(directory)
        config = config_from_dict(cls.config_class, {**meta["config"], **overrides})
        model = cls(config)
        state = _load_sharded(Path(directory), map_location)
        own = model.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        bad_shape = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
        if missing or unexpected or bad_shape:
            raise CheckpointError(
                f"{directory}: weights do not match the {cls.__name__} config "
                f"(missing {missing[:5]}, unexpected {unexpected[:5]}, shape {bad_shape[:5]})")
        state = {k: v.to(own[k].dtype) for k, v in state.items()}
        model.load_state_dict(state)
        model.identity = meta.get("identity", "")
        model.eval()
        return model

    @property
    def identity(self) -> str:
        """Hash of the weights this model was loaded from (or current weights if new)."""
        ident = getattr(self, "_identity", "")
        if not ident:
            ident = state_dict_identity(self.state_dict())
        return ident

    @identity.setter
    def identity(self, value: str) -> None:
        self._identity = value


def default_checkpoint(name: str | None, what: str = "model") -> Path:
    """Directory of the shipped checkpoint ``name`` (FileNotFoundError if not shipped)."""
    if name is None:
        raise CheckpointError(f"no shipped {what} checkpoint: pass a directory")
    from flexicodec_pretrained import default_dir

    return default_dir(name)


def _save_sharded(state: dict[str, torch.Tensor], directory: Path, max_shard_mb: float) -> None:
    limit = int(max_shard_mb * 1024 * 1024)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name in sorted(state):
        nbytes = state[name].numel() * state[name].element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][name] = state[name]
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], str(directory / WEIGHTS_NAME))
        return
    weight_map = {}
    n = len(shards)
    for i, shard in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{n:05d}.safetensors"
        save_file(shard, str(directory / fname))
        weight_map.update({k: fname for k in shard})
    (directory / INDEX_NAME).write_text(json.dumps({"weight_map": weight_map}, indent=1))


def _load_sharded(directory: Path, map_location: str | torch.device) -> dict[str, torch.Tensor]:
    device = str(map_location)
    if (directory / WEIGHTS_NAME).is_file():
        return load_file(str(directory / WEIGHTS_NAME), device=device)
    if (directory / INDEX_NAME).is_file():
        index = json.loads((directory / INDEX_NAME).read_text())["weight_map"]
        state = {}
        for fname in sorted(set(index.values())):
            state.update(load_file(str(directory / fname), device=device))
        return state
    raise CheckpointError(f"{directory}: no {WEIGHTS_NAME} or {INDEX_NAME}")
