"""Training data of the acoustic stage: per-utterance codec codes on the merged-token grid.

The data is the output of ``flexicodec-lm tokenize`` (``flexicodec.lm.tokenize``, the one corpus-encoding
pass; ``flexicodec-tts encode-corpus`` is an alias): ``TOK/rate_X/<split>/shard_N`` folders,
one row per (utterance, frame rate)::

    id str, speaker str, text str, frame_rate float,
    semantic_codes list[int] [T'], token_lengths list[int] [T'],
    acoustic_codes list[list[int]] [n_q][T']

:func:`load_codes_dataset` reads one or several rate folders at once (``TOK``, ``TOK/rate_6.25``
or a comma-separated list, via ``flexicodec.lm.data.load_tokenized``); a plain ``save_to_disk`` dataset /
``DatasetDict`` with those columns (hand-made code sets in tests) is read as well.

:class:`AcousticCodesDataset` crops a random window of at most ``max_tokens`` tokens and
marks a random prefix of it as the voice prompt (SoundStorm trains with the prompt taken from
the same utterance); :func:`collate_codes` pads a batch. With ``context`` > 0 the window comes
with up to ``context`` more tokens of codes on each side (the flow stage dequantizes the codes
to the codec latent with the semantic decoder's receptive field covered, then keeps the
window: :func:`crop_window`).
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from flexicodec.lm.data import INFO_NAME

REQUIRED_COLUMNS = ("semantic_codes", "token_lengths", "acoustic_codes")


class CodesDataError(ValueError):
    """A codes dataset is missing, lacks the needed columns, or holds inconsistent rows."""


def is_tokenized(path: str | os.PathLike | Sequence[str]) -> bool:
    """True for ``flexicodec.lm.tokenize`` output: a rate folder, a folder of them, or a list of these."""
    paths = [p for p in str(path).split(",") if p] if isinstance(path, (str, os.PathLike)) \
        else list(path)
    return bool(paths) and all(
        (Path(p) / INFO_NAME).is_file()
        or any((d / INFO_NAME).is_file() for d in [*Path(p).glob("rate_*"),
                                                   *Path(p).glob("thr_*")])
        for p in paths)


def read_codes_info(path: str | os.PathLike | Sequence[str]) -> dict | None:
    """Codec sizes of ``flexicodec.lm.tokenize`` output (``flexicodec.lm.data.read_info``); None for a plain
    dataset."""
    from flexicodec.lm.data import TokenizedDataError, read_info

    if not is_tokenized(path):
        return None
    try:
        return read_info(path)
    except TokenizedDataError as exc:
        raise CodesDataError(str(exc)) from exc


def load_codes_dataset(path: str | os.PathLike | Sequence[str], split: str | None = None):
    """Open acoustic-stage training data; checks the needed columns.

    ``path``: ``flexicodec.lm.tokenize`` output (``TOK``, ``TOK/rate_X``, or several, comma-separated or
    a list: their ``split`` shards are concatenated, default split "train"), or a dataset
    saved with ``save_to_disk`` (a ``DatasetDict`` is reduced to ``split``, default "train"
    when present).
    """
    import datasets

    if is_tokenized(path):
        from flexicodec.lm.data import TokenizedDataError, load_tokenized

        try:
            ds = load_tokenized(path, split or "train")
        except TokenizedDataError as exc:
            raise CodesDataError(str(exc)) from exc
        return _check_columns(ds, path)
    if not isinstance(path, (str, os.PathLike)):
        raise CodesDataError(f"{list(path)}: not tokenized data (no {INFO_NAME}); several "
                             f"paths are only accepted for `flexicodec-lm tokenize` output")
    path = Path(path)
    if not path.exists():
        raise CodesDataError(f"{path}: no such codes dataset")
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:  # datasets raises FileNotFoundError / ValueError variants
        raise CodesDataError(f"{path}: neither `flexicodec-lm tokenize` output (no {INFO_NAME}"
                             f") nor a saved Hugging Face dataset ({exc})") from exc
    if isinstance(ds, datasets.DatasetDict):
        name = split or ("train" if "train" in ds else next(iter(ds)))
        if name not in ds:
            raise CodesDataError(f"{path}: no split '{name}' (has {list(ds)})")
        ds = ds[name]
    elif split is not None and "split" in ds.column_names:
        ds = ds.filter(lambda s: s == split, input_columns="split")
    return _check_columns(ds, path)


def _check_columns(ds, path) -> "object":
    missing = [c for c in REQUIRED_COLUMNS if c not in ds.column_names]
    if missing:
        raise CodesDataError(
            f"{path}: the dataset has no {missing} column(s). The acoustic stage needs the "
            f"codec's acoustic codes; (re)write the data with `flexicodec-lm tokenize` "
            f"(it stores them since format 2)")
    if len(ds) == 0:
        raise CodesDataError(f"{path}: the dataset is empty")
    return ds


def row_tensors(row: dict, n_q: int | None = None) -> tuple[torch.Tensor, torch.Tensor,
                                                              torch.Tensor]:
    """(semantic [T'], lengths [T'], acoustic [n_q, T']) of a dataset row, checked."""
    sem = torch.as_tensor(row["semantic_codes"], dtype=torch.long).reshape(-1)
    ln = torch.as_tensor(row["token_lengths"], dtype=torch.long).reshape(-1)
    ac = torch.as_tensor(row["acoustic_codes"], dtype=torch.long)
    if ac.dim() != 2 or ac.shape[1] != sem.numel() or ln.numel() != sem.numel():
        raise CodesDataError(f"row {row.get('id', '?')}: semantic {tuple(sem.shape)}, lengths "
                             f"{tuple(ln.shape)} and acoustic {tuple(ac.shape)} disagree")
    if n_q is not None:
        if ac.shape[0] < n_q:
            raise CodesDataError(f"row {row.get('id', '?')}: {ac.shape[0]} quantizers stored, "
                                 f"the model needs {n_q}")
        ac = ac[:n_q]
    return sem, ln, ac


@dataclass
class CropConfig:
    max_tokens: int = 200
    prompt_prob: float = 0.9
    prompt_min: float = 0.1
    prompt_max: float = 0.5


class AcousticCodesDataset(torch.utils.data.Dataset):
    """Random windows of a codes dataset. Item: ``semantic`` [C], ``lengths`` [C],
    ``acoustic`` [n_q, C], ``prompt_len`` int (within the window), ``offset`` int (context
    tokens before the window), ``core`` int (window tokens T); C = T plus at most
    ``context`` tokens on each side (C = T, offset 0 when ``context`` is 0)."""

    def __init__(self, ds, n_q: int, crop: CropConfig | None = None, seed: int = 0,
                 context: int = 0):
        self.ds = ds
        self.n_q = n_q
        self.crop = crop or CropConfig()
        self.rng = random.Random(seed)
        if context < 0:
            raise ValueError("context must be >= 0")
        self.context = int(context)

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict:
        sem, ln, ac = row_tensors(self.ds[int(i)], self.n_q)
        full = T = sem.numel()
        c = self.crop
        s = 0
        if T > c.max_tokens:
            s = self.rng.randrange(0, T - c.max_tokens + 1)
            T = c.max_tokens
        a, e = max(0, s - self.context), min(full, s + T + self.context)
        sem, ln, ac = sem[a:e], ln[a:e], ac[:, a:e]
        p = 0
        if T >= 4 and self.rng.random() < c.prompt_prob:
            p = int(T * self.rng.uniform(c.prompt_min, c.prompt_max))
            p = min(max(p, 1), T - 2)
        return {"semantic": sem, "lengths": ln, "acoustic": ac, "prompt_len": p,
                "offset": s - a, "core": T}


def collate_codes(batch: list[dict]) -> dict[str, torch.Tensor]:
    """Pad to [B, T_max]: semantic, lengths (0 = padding), acoustic [B, n_q, T_max],
    prompt_len [B], offset [B], core [B] (items without offset/core: 0 and their length)."""
    if not batch:
        raise ValueError("empty batch")
    B = len(batch)
    T = max(b["semantic"].numel() for b in batch)
    n_q = batch[0]["acoustic"].shape[0]
    out = {"semantic": torch.zeros(B, T, dtype=torch.long),
           "lengths": torch.zeros(B, T, dtype=torch.long),
           "acoustic": torch.zeros(B, n_q, T, dtype=torch.long),
           "prompt_len": torch.tensor([b["prompt_len"] for b in batch], dtype=torch.long),
           "offset": torch.tensor([b.get("offset", 0) for b in batch], dtype=torch.long),
           "core": torch.tensor([b.get("core", b["semantic"].numel()) for b in batch],
                                dtype=torch.long)}
    for i, b in enumerate(batch):
        n = b["semantic"].numel()
        out["semantic"][i, :n] = b["semantic"]
        out["lengths"][i, :n] = b["lengths"]
        out["acoustic"][i, :, :n] = b["acoustic"]
    return out


def crop_window(x: torch.Tensor, offset: torch.Tensor, core: torch.Tensor) -> torch.Tensor:
    """Keep each item's window: x [B, C, ...] → [B, max(core), ...], item b's tokens
    [offset_b, offset_b + core_b) moved to the front, zeros after ``core_b``."""
    B, C = x.shape[:2]
    T = int(core.max())
    ar = torch.arange(T, device=x.device)
    idx = (offset[:, None] + ar[None]).clamp(max=C - 1)                 # [B, T]
    inside = ar[None] < core[:, None]
    g = idx.view(B, T, *([1] * (x.dim() - 2))).expand(B, T, *x.shape[2:])
    out = x.gather(1, g)
    return out * inside.view(B, T, *([1] * (x.dim() - 2))).to(out.dtype)
