"""Where the default models live: the models directory.

The default checkpoints (ASR, codec, LM, acoustic stage) are plain folders, one per model,
each a Hugging Face style directory (``config.json`` + ``model.safetensors``). They are not
package data: they are looked up in the models directory, which is

1. the directory named by the environment variable ``FLEXICODEC_MODELS``, else
2. the checkout's ``flexicodec_pretrained/`` folder (beside the package folders).

Every lookup reads the environment variable again, so it can be changed at run time.
"""
from __future__ import annotations

import os
from pathlib import Path

#: environment variable naming the models directory
MODELS_ENV = "FLEXICODEC_MODELS"
#: the checkout's models folder (this file is ``<checkout>/common/models.py``)
CHECKOUT_MODELS = Path(__file__).resolve().parent.parent / "flexicodec_pretrained"


class ModelsDirError(FileNotFoundError):
    """The models directory, or a model in it, does not exist."""


def models_dir() -> Path:
    """The models directory (``$FLEXICODEC_MODELS``, else the checkout's
    ``flexicodec_pretrained/``). Raises :class:`ModelsDirError` when it does not exist."""
    env = os.environ.get(MODELS_ENV, "")
    path = Path(env).expanduser() if env else CHECKOUT_MODELS
    if not path.is_dir():
        where = f"{MODELS_ENV}={env}" if env else f"no {MODELS_ENV} set, and {path}"
        raise ModelsDirError(f"models directory not found ({where}): set {MODELS_ENV} to the "
                             f"folder holding the model folders (asr, codec, lm, acoustic)")
    return path


def resolve_models_path(path: str | os.PathLike) -> Path:
    """``path``, where a relative path whose first part is ``flexicodec_pretrained`` names a
    model in the models directory (so ``flexicodec_pretrained/asr``, the ASR the codec presets
    and configs name, is found from any working directory and follows ``$FLEXICODEC_MODELS``);
    every other path is returned as given. Raises :class:`ModelsDirError` when such a path
    names a models directory that does not exist."""
    p = Path(path)
    if p.is_absolute() or not p.parts or p.parts[0] != CHECKOUT_MODELS.name:
        return p
    return models_dir().joinpath(*p.parts[1:])


def default_dir(name: str) -> Path:
    """Path of the default model ``name`` ('asr', 'codec', 'lm', 'acoustic', ...) in the
    models directory. Raises :class:`ModelsDirError` with a one-line message when it is
    not there."""
    root = models_dir()
    path = root / name
    if not (path / "config.json").is_file():
        raise ModelsDirError(f"no '{name}' model in the models directory {root} (no "
                             f"{path / 'config.json'}); set {MODELS_ENV} or pass a model "
                             f"directory explicitly")
    return path

