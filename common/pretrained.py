"""save_pretrained / from_pretrained for our own torch models, and atomic file writing.

A model directory is ``config.json`` (the model's dataclass config, plus ``model_type`` and
``identity``) beside ``model.safetensors`` (no pickle). Large state dicts are sharded into
``model-0000N-of-0000M.safetensors`` files of at most ``max_shard_mb`` with an index file, so
every shipped file stays under the 16 MiB limit. Every write goes to a temporary file or
directory first and is renamed into place, so an interrupted save never leaves a broken model.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch
from safetensors.torch import load_file, save_file

from flexicodec.common.atomic import atomic_path

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"

T = TypeVar("T", bound="PretrainedMixin")


class CheckpointError(ValueError):
    """A checkpoint directory is missing, of the wrong model type or does not match."""


class WeightFileError(CheckpointError):
    """A weight file is truncated or corrupt; the message (one line) names the file."""


def check_weight_file(path: str | os.PathLike) -> None:
    """Check that a safetensors file is whole without loading it: its header parses and the
    file is exactly as long as the header says. Raises :class:`WeightFileError`."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError(f"{size} bytes, shorter than a safetensors header")
            n = int.from_bytes(head, "little")
            if n > size - 8:
                raise ValueError(f"header of {n} bytes in a {size}-byte file")
            header = json.loads(f.read(n))
        end = max((int(v["data_offsets"][1]) for k, v in header.items()
                   if k != "__metadata__"), default=0)
    except FileNotFoundError:
        raise WeightFileError(f"{path}: weight file missing") from None
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise WeightFileError(f"{path}: corrupt weight file ({_one_line(exc)})") from None
    if size != 8 + n + end:
        raise WeightFileError(f"{path}: truncated or corrupt weight file ({size} bytes, the "
                              f"header describes {8 + n + end}); fetch or save it again")


def load_weight_file(path: str | os.PathLike, device: str = "cpu") -> dict[str, torch.Tensor]:
    """``safetensors.torch.load_file`` that raises :class:`WeightFileError` (one line, naming
    the file) for a truncated or corrupt file instead of safetensors' own error types."""
    check_weight_file(path)
    try:
        return load_file(str(path), device=device)
    except Exception as exc:            # SafetensorError and friends: no common base class
        raise WeightFileError(f"{path}: corrupt weight file ({_one_line(exc)})") from None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


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
    #: name of the default model in the models directory (``<models dir>/<name>``, see
    #: :mod:`flexicodec.common.models`) that ``from_pretrained()`` loads when no directory is
    #: given; None = no default
    pretrained_name: str | None = None

    def save_pretrained(self, directory: str | os.PathLike, *, dtype: torch.dtype | None = None,
                        max_shard_mb: float = 15.0, extra: dict | None = None) -> Path:
        """Write ``config.json`` + safetensors weights to ``directory`` atomically.

        ``dtype`` casts floating weights (e.g. torch.float16 for shipping). Returns the path.
        """
        state = {k: v.detach().to("cpu").contiguous()
                 for k, v in self.weights_to_save().items()}
        if dtype is not None:
            state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}
        # tied / shared tensors must be stored once for safetensors
        seen: dict[int, str] = {}
        for k in list(state):
            ptr = state[k].data_ptr()
            if ptr in seen and state[k].numel() > 0:
                state[k] = state[k].clone()
            seen[ptr] = k
        self.before_save(Path(directory))
        config = config_to_dict(self.config)
        meta = {"model_type": self.model_type, "identity": self.identity_of(state),
                **(extra or {}), "config": config}
        directory = Path(directory)
        with atomic_path(directory) as tmp:
            tmp.mkdir(parents=True)
            _save_sharded(state, tmp, max_shard_mb)
            (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True))
        return directory

    # ---- hooks for models that keep part of their weights elsewhere ----------------------
    #: keyword arguments of :meth:`from_pretrained` that are load options, not config fields
    load_options: tuple[str, ...] = ()

    def weights_to_save(self) -> dict[str, torch.Tensor]:
        """The tensors :meth:`save_pretrained` writes (default: the whole state dict)."""
        return self.state_dict()

    def identity_of(self, state: dict[str, torch.Tensor]) -> str:
        """The identity of a model whose saved tensors are ``state``."""
        return state_dict_identity(state)

    def before_save(self, directory: Path) -> None:
        """Called by :meth:`save_pretrained` before the config is written."""

    @classmethod
    def instantiate_for_load(cls, config: Any, state: dict[str, torch.Tensor], directory: Path,
                             meta: dict, **options: Any) -> tuple[Any, dict]:
        """Build the model to load ``state`` into; returns (model, state to load). Models
        whose saved weights are not their whole state dict complete ``state`` here."""
        if options:
            raise TypeError(f"{cls.__name__}.from_pretrained: unknown options {sorted(options)}")
        return cls(config), state

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
        options = {k: overrides.pop(k) for k in cls.load_options if k in overrides}
        meta = cls.read_config(directory)
        config = config_from_dict(cls.config_class, {**meta["config"], **overrides})
        state = _load_sharded(Path(directory), map_location)
        model, state = cls.instantiate_for_load(config, state, Path(directory), meta, **options)
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
            ident = self.identity_of(self.weights_to_save())
        return ident

    @identity.setter
    def identity(self, value: str) -> None:
        self._identity = value


def run_reporting_model_errors(prog: str, entry: Callable[[list[str] | None], int | None],
                               argv: list[str] | None = None,
                               errors: tuple[type[BaseException], ...] = ()) -> int:
    """Run a command-line entry point; a missing models directory or model
    (:class:`~flexicodec.common.models.ModelsDirError`), a truncated / corrupt weight file
    (:class:`WeightFileError`) or another unusable model directory (:class:`CheckpointError`,
    e.g. a codec whose ASR is missing) ends it with one line on stderr (``PROG: error:
    ...``) and exit status 2 instead of a traceback; so do the exception types ``errors``
    (e.g. a script's ``(ValueError, FileNotFoundError)`` for bad input of any kind)."""
    from flexicodec.common.models import ModelsDirError

    try:
        return int(entry(argv) or 0)
    except (ModelsDirError, CheckpointError, *errors) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2


def default_checkpoint(name: str | None, what: str = "model") -> Path:
    """Directory of the default model ``name`` in the models directory
    (:class:`~flexicodec.common.models.ModelsDirError`, a FileNotFoundError, if missing)."""
    if name is None:
        raise CheckpointError(f"no shipped (default) {what} checkpoint: pass a directory")
    from flexicodec.common.models import default_dir

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
        return load_weight_file(directory / WEIGHTS_NAME, device=device)
    if (directory / INDEX_NAME).is_file():
        index = json.loads((directory / INDEX_NAME).read_text())["weight_map"]
        state = {}
        for fname in sorted(set(index.values())):
            state.update(load_weight_file(directory / fname, device=device))
        missing = sorted(set(index) - set(state))
        if missing:
            raise WeightFileError(f"{directory}: tensors {missing[:3]} listed in {INDEX_NAME} "
                                  f"are in none of its shards")
        return state
    raise CheckpointError(f"{directory}: no {WEIGHTS_NAME} or {INDEX_NAME}")
