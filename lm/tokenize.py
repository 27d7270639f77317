"""Encode a corpus with the codec into LM training data (Hugging Face datasets, arrow).

``flexicodec-lm tokenize --data CORPUS --codec DIR (--frame-rate HZ | --threshold T)
[--split train,valid] --out DIR``

Output (one folder per frame rate / threshold, several side by side)::

    OUT/rate_6.25/info.json              codec identity, FSQ size, max_group, setting, counts
    OUT/rate_6.25/<split>/shard_00000/   datasets.save_to_disk, written atomically

Columns: id, text (normalized), speaker, duration, semantic_codes, token_lengths,
frame_rate (achieved), num_frames. A rerun skips finished shards (resumable). Unreadable or
unusable utterances are skipped and counted (in the log and in info.json).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from codec.pretrained import atomic_path, atomic_write_text
from data.audio import AudioError, load_audio
from lm.data import INFO_NAME

log = logging.getLogger(__name__)
SAMPLE_RATE = 16000


def setting_dir_name(frame_rate: float | None, threshold: float | None) -> str:
    if (frame_rate is None) == (threshold is None):
        raise ValueError("give exactly one of frame_rate or threshold")
    return f"rate_{frame_rate:g}" if frame_rate is not None else f"thr_{threshold:g}"


def _features():
    import datasets

    return datasets.Features({
        "id": datasets.Value("string"), "text": datasets.Value("string"),
        "speaker": datasets.Value("string"), "duration": datasets.Value("float32"),
        "semantic_codes": datasets.Sequence(datasets.Value("int32")),
        "token_lengths": datasets.Sequence(datasets.Value("int16")),
        "frame_rate": datasets.Value("float32"), "num_frames": datasets.Value("int32")})


@torch.no_grad()
def encode_batch(codec: Any, wavs: list[np.ndarray], frame_rate: float | None,
                 threshold: float | None) -> list[dict]:
    """Encode a batch of 16 kHz mono waves [T_i] (variable lengths; the codec pads and masks)
    → per item {semantic_codes [T'], token_lengths [T'], frame_rate, num_frames}."""
    enc = codec.encode(wavs, SAMPLE_RATE, merging_threshold=threshold, frame_rate=frame_rate,
                       num_quantizers=0)
    out = []
    for i in range(len(wavs)):
        m = enc.token_mask[i].bool()
        out.append({"semantic_codes": enc.semantic_codes[i][m].cpu().long(),
                    "token_lengths": enc.token_lengths[i][m].cpu().long(),
                    "frame_rate": float(enc.frame_rate[i]),
                    "num_frames": int(enc.num_frames[i])})
    return out


def _check_codes(item: dict, semantic_size: int, max_group: int) -> str | None:
    c, n = item["semantic_codes"], item["token_lengths"]
    if c.numel() == 0:
        return "no tokens"
    if c.min() < 0 or c.max() >= semantic_size:
        return "semantic code out of range"
    if n.min() < 1 or n.max() > max_group:
        return "token length out of range"
    return None


def tokenize_corpus(codec: Any, corpus: str | os.PathLike, out: str | os.PathLike, *,
                    frame_rate: float | None = None, threshold: float | None = None,
                    splits: list[str] | None = None, shard_size: int = 500,
                    batch_size: int = 8, device: str | torch.device = "cpu") -> dict:
    """Tokenize ``corpus`` into ``out/rate_X`` (or ``out/thr_T``). Returns the info dict."""
    from datasets import Dataset
    from tqdm.auto import tqdm

    from data.loaders import detect_layout, load_corpus

    name = setting_dir_name(frame_rate, threshold)
    root = Path(out) / name
    ident = str(codec.identity)
    sem_size, max_group = int(codec.semantic_vocab_size), int(codec.max_group)
    info_path = root / INFO_NAME
    info = {"codec_identity": ident, "codec_model_type": getattr(codec, "model_type", ""),
            "semantic_vocab_size": sem_size, "max_group": max_group,
            "target_frame_rate": frame_rate, "threshold": threshold, "splits": {}}
    if info_path.is_file():
        old = json.loads(info_path.read_text())
        for k in ("codec_identity", "semantic_vocab_size", "max_group"):
            if old.get(k) != info[k]:
                raise ValueError(f"{root} holds data from another codec ({k}: {old.get(k)} "
                                 f"vs {info[k]}); use a new --out")
        info["splits"] = old.get("splits", {})
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(info_path, json.dumps(info, indent=1))
    codec = codec.to(device).eval()
    corpus_layout = detect_layout(Path(corpus))
    explicit = splits is not None
    if splits is None:
        splits = ["train", "valid", "test"] if corpus_layout == "corpus" else ["train"]
    for split in splits:
        try:
            ds = load_corpus(corpus, split=split if corpus_layout == "corpus" else None,
                             decode=False, check="header")
        except ValueError as exc:
            if explicit:
                raise
            log.warning("split %s: %s (skipped)", split, exc)
            continue
        stats = {"utterances": 0, "skipped": 0, "tokens": 0, "seconds": 0.0, "reasons": {}}
        n_shards = (len(ds) + shard_size - 1) // shard_size
        bar = tqdm(total=len(ds), desc=f"tokenize {name} {split}")
        for s in range(n_shards):
            shard_dir = root / split / f"shard_{s:05d}"
            lo, hi = s * shard_size, min(len(ds), (s + 1) * shard_size)
            if (shard_dir / "dataset_info.json").is_file():
                done = json.loads((shard_dir / "shard_stats.json").read_text())
                _merge(stats, done)
                bar.update(hi - lo)
                continue
            rows = ds.select(range(lo, hi))
            cols: dict[str, list] = {k: [] for k in _features()}
            shard_stats = {"utterances": 0, "skipped": 0, "tokens": 0, "seconds": 0.0,
                           "reasons": {}}
            for b in range(0, len(rows), batch_size):
                chunk = rows.select(range(b, min(len(rows), b + batch_size)))
                wavs, metas = [], []
                for r in chunk:
                    try:
                        w, _ = load_audio(r["audio"], SAMPLE_RATE, min_samples=SAMPLE_RATE // 10)
                    except AudioError as exc:
                        _skip(shard_stats, "audio", exc)
                        continue
                    wavs.append(w)
                    metas.append(r)
                encoded = encode_batch(codec, wavs, frame_rate, threshold) if wavs else []
                for r, e in zip(metas, encoded):
                    why = _check_codes(e, sem_size, max_group)
                    if why is None and not str(r["text"]).strip():
                        why = "empty text"
                    if why is not None:
                        _skip(shard_stats, why, r["audio"])
                        continue
                    cols["id"].append(str(Path(r["audio"]).stem))
                    cols["text"].append(r["text"])
                    cols["speaker"].append(str(r.get("speaker") or ""))
                    cols["duration"].append(float(r["duration"]))
                    cols["semantic_codes"].append(e["semantic_codes"].tolist())
                    cols["token_lengths"].append(e["token_lengths"].tolist())
                    cols["frame_rate"].append(e["frame_rate"])
                    cols["num_frames"].append(e["num_frames"])
                    shard_stats["utterances"] += 1
                    shard_stats["tokens"] += len(e["semantic_codes"])
                    shard_stats["seconds"] += float(r["duration"])
                bar.update(len(chunk))
            with atomic_path(shard_dir) as tmp:
                Dataset.from_dict(cols, features=_features()).save_to_disk(str(tmp))
                (tmp / "shard_stats.json").write_text(json.dumps(shard_stats))
            _merge(stats, shard_stats)
        bar.close()
        if stats["skipped"]:
            log.warning("tokenize %s %s: skipped %d of %d utterances (%s)", name, split,
                        stats["skipped"], len(ds), stats["reasons"])
        stats["avg_frame_rate"] = stats["tokens"] / max(1e-9, stats["seconds"])
        info["splits"][split] = stats
        atomic_write_text(info_path, json.dumps(info, indent=1))
        log.info("tokenize %s %s: %d utterances, %.2f tokens/s", name, split,
                 stats["utterances"], stats["avg_frame_rate"])
    return info


def _skip(stats: dict, reason: str, what: Any) -> None:
    log.debug("skip %s: %s", what, reason)
    stats["skipped"] += 1
    stats["reasons"][reason] = stats["reasons"].get(reason, 0) + 1


def _merge(total: dict, part: dict) -> None:
    for k in ("utterances", "skipped", "tokens", "seconds"):
        total[k] += part[k]
    for r, n in part["reasons"].items():
        total["reasons"][r] = total["reasons"].get(r, 0) + n


def load_codec(path: str | os.PathLike, device: str = "cpu"):
    from codec.model import FlexiCodec

    return FlexiCodec.from_pretrained(path, map_location=device)


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="flexicodec-lm tokenize",
                                description="Encode a corpus with the codec into LM data.")
    p.add_argument("--data", required=True, help="corpus directory (any data.loaders layout)")
    p.add_argument("--codec", required=True, help="FlexiCodec model directory")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--frame-rate", type=float, nargs="+", help="target rate(s) in Hz")
    g.add_argument("--threshold", type=float, nargs="+", help="merging threshold(s)")
    p.add_argument("--split", default=None, help="comma-separated splits (default: all)")
    p.add_argument("--out", required=True)
    p.add_argument("--shard-size", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    codec = load_codec(a.codec, a.device)
    splits = a.split.split(",") if a.split else None
    settings = ([(r, None) for r in a.frame_rate] if a.frame_rate
                else [(None, t) for t in a.threshold])
    for fr, th in settings:
        info = tokenize_corpus(codec, a.data, a.out, frame_rate=fr, threshold=th,
                               splits=splits, shard_size=a.shard_size,
                               batch_size=a.batch_size, device=a.device)
        print(json.dumps({"dir": str(Path(a.out) / setting_dir_name(fr, th)),
                          **{s: {k: v for k, v in st.items() if k != "reasons"}
                             for s, st in info["splits"].items()}}))
    return 0
