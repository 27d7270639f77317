"""The shipped default checkpoints (ASR, codec, LM, acoustic stage), one folder each.

Each folder is a Hugging Face style directory: ``config.json`` + ``model.safetensors``.
"""
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def default_dir(name: str) -> Path:
    """Path of the shipped checkpoint ``name`` ('asr', 'codec', 'lm', 'acoustic').

    Raises FileNotFoundError with a clear message when that checkpoint is not shipped.
    """
    path = ROOT / name
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"no shipped '{name}' checkpoint at {path}; train one (see README) and pass its "
            f"directory explicitly"
        )
    return path
