"""Training data of the acoustic stage: per-utterance codec codes on the merged-token grid.

A codes dataset is a Hugging Face dataset (``save_to_disk`` folder) with one row per
(utterance, frame rate)::

    id str, speaker str, text str, frame_rate float,
    semantic_codes list[int] [T'], token_lengths list[int] [T'],
    acoustic_codes list[list[int]] [n_q][T']

``lm.tokenize`` output can be used directly when it carries ``acoustic_codes``; otherwise
:func:`encode_corpus` (CLI ``flexicodec-tts encode-corpus``) writes one with the codec.

:class:`AcousticCodesDataset` crops a random window of at most ``max_tokens`` tokens and
marks a random prefix of it as the voice prompt (SoundStorm trains with the prompt taken from
the same utterance); :func:`collate_codes` pads a batch.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import torch

REQUIRED_COLUMNS = ("semantic_codes", "token_lengths", "acoustic_codes")


class CodesDataError(ValueError):
    """A codes dataset is missing, lacks the needed columns, or holds inconsistent rows."""


def load_codes_dataset(path: str | os.PathLike, split: str | None = None):
    """Open a codes dataset saved with ``save_to_disk``; checks the needed columns.

    A ``DatasetDict`` is reduced to ``split`` (default "train" when present).
    """
    import datasets

    path = Path(path)
    if not path.exists():
        raise CodesDataError(f"{path}: no such codes dataset")
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:  # datasets raises FileNotFoundError / ValueError variants
        raise CodesDataError(f"{path}: not a saved Hugging Face dataset ({exc})") from exc
    if isinstance(ds, datasets.DatasetDict):
        name = split or ("train" if "train" in ds else next(iter(ds)))
        if name not in ds:
            raise CodesDataError(f"{path}: no split '{name}' (has {list(ds)})")
        ds = ds[name]
    elif split is not None and "split" in ds.column_names:
        ds = ds.filter(lambda s: s == split, input_columns="split")
    missing = [c for c in REQUIRED_COLUMNS if c not in ds.column_names]
    if missing:
        raise CodesDataError(
            f"{path}: the dataset has no {missing} column(s). The acoustic stage needs the "
            f"codec's acoustic codes; write them with `flexicodec-tts encode-corpus` (or "
            f"tokenize with acoustic codes kept)")
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
    """Random windows of a codes dataset. Item: ``semantic`` [T], ``lengths`` [T],
    ``acoustic`` [n_q, T], ``prompt_len`` int."""

    def __init__(self, ds, n_q: int, crop: CropConfig | None = None, seed: int = 0):
        self.ds = ds
        self.n_q = n_q
        self.crop = crop or CropConfig()
        self.rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict:
        sem, ln, ac = row_tensors(self.ds[int(i)], self.n_q)
        T = sem.numel()
        c = self.crop
        if T > c.max_tokens:
            s = self.rng.randrange(0, T - c.max_tokens + 1)
            sem, ln, ac = sem[s:s + c.max_tokens], ln[s:s + c.max_tokens], ac[:, s:s + c.max_tokens]
            T = c.max_tokens
        p = 0
        if T >= 4 and self.rng.random() < c.prompt_prob:
            p = int(T * self.rng.uniform(c.prompt_min, c.prompt_max))
            p = min(max(p, 1), T - 2)
        return {"semantic": sem, "lengths": ln, "acoustic": ac, "prompt_len": p}


def collate_codes(batch: list[dict]) -> dict[str, torch.Tensor]:
    """Pad to [B, T_max]: semantic, lengths (0 = padding), acoustic [B, n_q, T_max],
    prompt_len [B]."""
    if not batch:
        raise ValueError("empty batch")
    B = len(batch)
    T = max(b["semantic"].numel() for b in batch)
    n_q = batch[0]["acoustic"].shape[0]
    out = {"semantic": torch.zeros(B, T, dtype=torch.long),
           "lengths": torch.zeros(B, T, dtype=torch.long),
           "acoustic": torch.zeros(B, n_q, T, dtype=torch.long),
           "prompt_len": torch.tensor([b["prompt_len"] for b in batch], dtype=torch.long)}
    for i, b in enumerate(batch):
        n = b["semantic"].numel()
        out["semantic"][i, :n] = b["semantic"]
        out["lengths"][i, :n] = b["lengths"]
        out["acoustic"][i, :, :n] = b["acoustic"]
    return out


def encode_corpus(codec, corpus: str | os.PathLike, out: str | os.PathLike, *,
                  frame_rates: tuple[float, ...] = (12.5, 8.33, 6.25),
                  num_quantizers: int | None = None, splits: tuple[str, ...] = ("train", "valid"),
                  limit: int | None = None) -> Path:
    """Encode a corpus with ``codec`` at each of ``frame_rates`` into a codes dataset.

    Writes a ``DatasetDict`` (one split per corpus split) to ``out`` atomically. Uses
    ``data.loaders.load_corpus`` and ``FlexiCodec.encode``. Returns ``out``.
    """
    import datasets
    import numpy as np
    from tqdm import tqdm

    from codec.pretrained import atomic_path
    from data.loaders import load_corpus

    parts = {}
    for split in splits:
        ds = load_corpus(corpus, split=split, decode=True)
        n = len(ds) if limit is None else min(limit, len(ds))
        rows = {k: [] for k in ("id", "speaker", "text", "frame_rate", "semantic_codes",
                                "token_lengths", "acoustic_codes")}
        codec.eval()
        for i in tqdm(range(n), desc=f"encode {split}", unit="utt"):
            ex = ds[i]
            wav = torch.as_tensor(np.asarray(ex["audio"]["array"], dtype=np.float32))[None]
            for rate in frame_rates:
                with torch.no_grad():
                    enc = codec.encode(wav, ex["audio"]["sampling_rate"], frame_rate=rate,
                                       num_quantizers=num_quantizers)
                m = enc.token_mask[0]
                rows["id"].append(str(ex.get("id", i)))
                rows["speaker"].append(str(ex.get("speaker", "")))
                rows["text"].append(ex["text"])
                rows["frame_rate"].append(float(enc.frame_rate[0]))
                rows["semantic_codes"].append(enc.semantic_codes[0][m].tolist())
                rows["token_lengths"].append(enc.token_lengths[0][m].tolist())
                rows["acoustic_codes"].append(enc.acoustic_codes[0][:, m].tolist())
        if n:
            parts[split] = datasets.Dataset.from_dict(rows)
    if not parts:
        raise CodesDataError(f"{corpus}: no utterances in splits {splits}")
    out = Path(out)
    with atomic_path(out) as tmp:
        datasets.DatasetDict(parts).save_to_disk(str(tmp))
    return out
