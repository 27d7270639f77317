"""Codes files: one ``.npz`` holding a batch of FlexiCodec codes and how they were made.

Arrays: ``semantic_codes`` [B, T'] int32, ``acoustic_codes`` [B, n, T'] int32,
``token_lengths`` [B, T'] int16 (0 on padding), ``num_samples`` [B] (16 kHz samples of the
input, to trim the decoded audio), ``num_frames`` [B], ``frame_rate`` [B] (Hz achieved),
``threshold`` [B] (inf = fixed groups, NaN = lengths written by the speech LM); scalars
``sample_rate``, ``num_quantizers``, ``target_frame_rate`` (NaN when a threshold was
given), ``model_identity``, ``model_type``, ``format_version``. No pickled objects. Written atomically.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from flexicodec.common.atomic import atomic_path

FORMAT_VERSION = 1
_KEYS = ("semantic_codes", "acoustic_codes", "token_lengths", "num_samples", "num_frames",
         "frame_rate", "threshold", "sample_rate", "num_quantizers", "target_frame_rate",
         "model_identity", "model_type", "format_version")


class CodesFileError(ValueError):
    """A codes file is unreadable, malformed, or made by another model."""


@dataclass
class CodesFile:
    semantic_codes: np.ndarray
    acoustic_codes: np.ndarray
    token_lengths: np.ndarray
    num_samples: np.ndarray
    num_frames: np.ndarray
    frame_rate: np.ndarray
    threshold: np.ndarray
    sample_rate: int
    num_quantizers: int
    target_frame_rate: float
    model_identity: str
    model_type: str = "flexicodec"

    @classmethod
    def from_encoded(cls, codes, model, target_frame_rate: float | None = None) -> "CodesFile":
        """From :class:`flexicodec.codec.model.EncodedCodes` made by ``model``."""
        def np_(x, dtype):
            return x.detach().cpu().numpy().astype(dtype)
        return cls(np_(codes.semantic_codes, np.int32), np_(codes.acoustic_codes, np.int32),
                   np_(codes.token_lengths, np.int16), np_(codes.num_samples, np.int64),
                   np_(codes.num_frames, np.int64), np_(codes.frame_rate, np.float32),
                   np_(codes.threshold, np.float32), int(model.sample_rate),
                   int(codes.acoustic_codes.shape[1]),
                   math.nan if target_frame_rate is None else float(target_frame_rate),
                   str(model.identity), str(model.model_type))

    @classmethod
    def from_tokens(cls, model, semantic_codes: list, token_lengths: list,
                    target_frame_rate: float) -> "CodesFile":
        """Codes without acoustic stages (``num_quantizers`` 0: decoded from the semantic
        tokens alone) for ``model``, e.g. the speech LM's output: one utterance per
        ``semantic_codes[b]`` [T_b] with ``token_lengths[b]`` [T_b] (frames per token),
        right-padded to [B, max T_b]. ``target_frame_rate``: the rate the tokens were made
        for (Hz)."""
        if not semantic_codes or len(semantic_codes) != len(token_lengths):
            raise CodesFileError("need one token_lengths per semantic_codes sequence (>= 1)")
        sem = [np.asarray(c, dtype=np.int64).reshape(-1) for c in semantic_codes]
        lens = [np.asarray(n, dtype=np.int64).reshape(-1) for n in token_lengths]
        if any(a.size != b.size or a.size == 0 for a, b in zip(sem, lens)):
            raise CodesFileError("every utterance needs as many lengths as codes (>= 1)")
        if any(n.min() < 1 for n in lens):
            raise CodesFileError("token lengths must be >= 1")
        B, T = len(sem), max(a.size for a in sem)
        S, L = np.zeros((B, T), np.int32), np.zeros((B, T), np.int16)
        for b, (a, n) in enumerate(zip(sem, lens)):
            S[b, :a.size], L[b, :n.size] = a, n
        frames = L.sum(1).astype(np.int64)
        hop = int(model.config.hop_size)
        return cls(S, np.zeros((B, 0, T), np.int32), L, frames * hop, frames,
                   np.array([a.size / (f / model.frame_rate_base) for a, f in zip(sem, frames)],
                            np.float32),
                   np.full(B, np.nan, np.float32), int(model.sample_rate), 0,
                   float(target_frame_rate), str(model.identity), str(model.model_type))

    def check_model(self, model) -> None:
        """Raise :class:`CodesFileError` unless ``model`` made these codes."""
        if self.model_type != model.model_type or self.model_identity != model.identity:
            raise CodesFileError(
                f"these codes were made by {self.model_type} model {self.model_identity!r}, "
                f"not by the loaded {model.model_type} model {model.identity!r}; decode them "
                f"with the model that encoded them (--model DIR)")

    def to_tensors(self, device="cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(semantic_codes [B, T'], acoustic_codes [B, n, T'], token_lengths [B, T']) long."""
        return tuple(torch.from_numpy(x.astype(np.int64)).to(device)
                     for x in (self.semantic_codes, self.acoustic_codes, self.token_lengths))

    @property
    def batch_size(self) -> int:
        return int(self.semantic_codes.shape[0])


def concat_codes(files: Sequence[CodesFile], target_frame_rate: float = math.nan
                 ) -> CodesFile:
    """Stack codes files of one model along the batch, padding tokens with 0 (lengths 0 mark
    padding). ``target_frame_rate``: the stacked file's (NaN when the rows differ)."""
    if not files:
        raise CodesFileError("no codes to concatenate")
    first = files[0]
    for f in files[1:]:
        if (f.model_identity, f.model_type, f.sample_rate, f.num_quantizers) != (
                first.model_identity, first.model_type, first.sample_rate, first.num_quantizers):
            raise CodesFileError("cannot concatenate codes of different models or quantizers")
    width = max(int(f.semantic_codes.shape[1]) for f in files)

    def pad(x: np.ndarray) -> np.ndarray:
        return np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, width - x.shape[-1])])
    cat = lambda name: np.concatenate([getattr(f, name) for f in files])  # noqa: E731
    return CodesFile(np.concatenate([pad(f.semantic_codes) for f in files]),
                     np.concatenate([pad(f.acoustic_codes) for f in files]),
                     np.concatenate([pad(f.token_lengths) for f in files]),
                     cat("num_samples"), cat("num_frames"), cat("frame_rate"), cat("threshold"),
                     first.sample_rate, first.num_quantizers, float(target_frame_rate),
                     first.model_identity, first.model_type)


def save_codes(path: str | os.PathLike, codes: CodesFile) -> Path:
    """Write ``codes`` to ``path`` (.npz) atomically."""
    path = Path(path)
    arrays = dict(semantic_codes=codes.semantic_codes, acoustic_codes=codes.acoustic_codes,
                  token_lengths=codes.token_lengths, num_samples=codes.num_samples,
                  num_frames=codes.num_frames, frame_rate=codes.frame_rate,
                  threshold=codes.threshold, sample_rate=np.int64(codes.sample_rate),
                  num_quantizers=np.int64(codes.num_quantizers),
                  target_frame_rate=np.float64(codes.target_frame_rate),
                  model_identity=np.str_(codes.model_identity),
                  model_type=np.str_(codes.model_type),
                  format_version=np.int64(FORMAT_VERSION))
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    return path


def load_codes(path: str | os.PathLike) -> CodesFile:
    """Read a codes file; raises :class:`CodesFileError` for anything malformed."""
    path = Path(path)
    if not path.is_file():
        raise CodesFileError(f"{path}: no such codes file")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as exc:
        raise CodesFileError(f"{path}: not a readable .npz codes file ({exc})") from exc
    missing = [k for k in _KEYS if k not in data]
    if missing:
        raise CodesFileError(f"{path}: not a FlexiCodec codes file (missing {missing})")
    if int(data["format_version"]) > FORMAT_VERSION:
        raise CodesFileError(f"{path}: codes format version {int(data['format_version'])} is "
                             f"newer than this code understands ({FORMAT_VERSION})")
    sem, ac, lens = data["semantic_codes"], data["acoustic_codes"], data["token_lengths"]
    if sem.ndim != 2 or ac.ndim != 3 or lens.shape != sem.shape or ac.shape[0] != sem.shape[0] \
            or ac.shape[2] != sem.shape[1]:
        raise CodesFileError(f"{path}: inconsistent code shapes {sem.shape}, {ac.shape}, "
                             f"{lens.shape}")
    return CodesFile(sem, ac, lens, data["num_samples"], data["num_frames"], data["frame_rate"],
                     data["threshold"], int(data["sample_rate"]), int(data["num_quantizers"]),
                     float(data["target_frame_rate"]), str(data["model_identity"]),
                     str(data["model_type"]))
