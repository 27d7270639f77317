"""The two acoustic stages and how a model directory says which one it holds.

``config.json`` of an acoustic-stage directory carries ``config.kind``: ``"masked"``
(:class:`flexicodec.tts.acoustic.AcousticModel`, RVQ codes by masked prediction) or ``"flow"``
(:class:`flexicodec.tts.acoustic_flow.FlowAcousticModel`, the codec's continuous latent by flow
matching). Directories written before the flow stage existed have no ``kind`` and are masked.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from flexicodec.common.pretrained import CONFIG_NAME, CheckpointError
from flexicodec.tts.acoustic import AcousticConfig, AcousticModel
from flexicodec.tts.acoustic_flow import FlowAcousticModel, FlowConfig

#: kind → (config class, model class)
STAGES = {"masked": (AcousticConfig, AcousticModel), "flow": (FlowConfig, FlowAcousticModel)}


def check_kind(kind: str) -> str:
    if kind not in STAGES:
        raise ValueError(f"unknown acoustic stage kind {kind!r} (one of {', '.join(STAGES)})")
    return kind


def stage_kind(directory: str | os.PathLike) -> str:
    """The ``kind`` of the acoustic stage saved in ``directory``."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{directory}: not a model directory (no {CONFIG_NAME})")
    meta = json.loads(path.read_text())
    kind = (meta.get("config") or {}).get("kind", "masked")
    if kind not in STAGES:
        raise CheckpointError(f"{directory}: unknown acoustic stage kind {kind!r}")
    return kind


def load_acoustic(directory: str | os.PathLike, map_location: str = "cpu"):
    """The acoustic stage in ``directory``, masked or flow (by its config's ``kind``)."""
    return STAGES[stage_kind(directory)][1].from_pretrained(directory, map_location=map_location)
