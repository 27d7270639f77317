"""Encode a corpus with the codec: the training data of the speech LM AND the acoustic stage.

``flexicodec-lm tokenize --data CORPUS --codec DIR (--frame-rate HZ [HZ ...] | --threshold T
[T ...]) [--split train,valid] --out DIR [--batch-size N] [--num-workers N]``
(``flexicodec-tts encode-corpus`` is the same command.)

Output (one folder per frame rate / threshold, several side by side)::

    OUT/rate_6.25/info.json              codec identity, FSQ size, max_group, RVQ size, counts
    OUT/rate_6.25/<split>/shard_00000/   datasets.save_to_disk, written atomically

Columns: id, text (normalized), phonemes (the LM's phoneme tokens of the text,
``flexicodec.lm.phoneme_tokenizer.text_to_phonemes``), speaker, duration, semantic_codes [T'] int32,
token_lengths [T'] int16, acoustic_codes [n_q][T'] int16, frame_rate (achieved),
num_frames. The LM config's ``text_input`` decides whether training reads ``phonemes`` or
``text``; both are always written (espeak-ng phonemises all texts of a split in one call).

One pass for all settings: the audio of each utterance is loaded once (a torch DataLoader with
``num_workers`` processes), the codec's frame features (acoustic encoder + frozen semantic
model) are computed once per batch, and only merging + quantization run per setting
(:func:`encode_settings`). Utterances are sorted by duration (longest first) so batches are
padded little, then cut into shards of ``shard_size``; a rerun skips the shards already
written for every setting (resumable; a setting added later encodes only what it lacks).
Unreadable or unusable utterances are skipped and counted (log and info.json).
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from flexicodec.common.atomic import atomic_path, atomic_write_text
from flexicodec.common.constants import BASE_FRAME_RATE, SAMPLE_RATE
from flexicodec.data.audio import AudioError, load_audio
from flexicodec.lm.data import INFO_NAME
from flexicodec.lm.phoneme_tokenizer import DEFAULT_VOICE

log = logging.getLogger(__name__)
#: version of the shard layout (2: duration-sorted shards with acoustic codes; 3: + phonemes)
TOKENIZE_FORMAT = 3
MIN_SAMPLES = SAMPLE_RATE // 10


@dataclass(frozen=True)
class Setting:
    """One output folder: a target frame rate (Hz) or a merging threshold."""

    frame_rate: float | None = None
    threshold: float | None = None

    def __post_init__(self):
        if (self.frame_rate is None) == (self.threshold is None):
            raise ValueError("give exactly one of frame_rate or threshold")
        if self.frame_rate is not None and not 0 < self.frame_rate <= BASE_FRAME_RATE:
            raise ValueError(f"frame_rate must be in (0, {BASE_FRAME_RATE}] Hz, got "
                             f"{self.frame_rate}")
        if self.threshold is not None and not 0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")

    @property
    def name(self) -> str:
        return setting_dir_name(self.frame_rate, self.threshold)


def setting_dir_name(frame_rate: float | None, threshold: float | None) -> str:
    if (frame_rate is None) == (threshold is None):
        raise ValueError("give exactly one of frame_rate or threshold")
    return f"rate_{frame_rate:g}" if frame_rate is not None else f"thr_{threshold:g}"


def _features():
    import datasets

    return datasets.Features({
        "id": datasets.Value("string"), "text": datasets.Value("string"),
        "phonemes": datasets.Sequence(datasets.Value("string")),
        "speaker": datasets.Value("string"), "duration": datasets.Value("float32"),
        "semantic_codes": datasets.Sequence(datasets.Value("int32")),
        "token_lengths": datasets.Sequence(datasets.Value("int16")),
        "acoustic_codes": datasets.Sequence(datasets.Sequence(datasets.Value("int16"))),
        "frame_rate": datasets.Value("float32"), "num_frames": datasets.Value("int32")})


# ---------------------------------------------------------------- encoding
@torch.no_grad()
def encode_settings(codec: Any, wav: torch.Tensor, lengths: torch.Tensor,
                    settings: Sequence[Setting], num_quantizers: int | None = None) -> list:
    """Encode one padded batch at several settings, sharing the frame features.

    wav [B, T] float32 16 kHz zero-padded, lengths [B] → one ``flexicodec.codec.model.EncodedCodes``
    per setting (semantic_codes [B, T'], acoustic_codes [B, n_q, T'], token_lengths [B, T'],
    ...), identical to ``codec.encode(..., frame_rate=/threshold=)`` per setting.
    Uses FlexiCodec's public stages ``frame_features_chunked`` → ``make_merge`` →
    ``quantize`` so the encoder and the semantic model run once for all settings.
    """
    from flexicodec.codec.model import EncodedCodes

    n = codec.config.n_q if num_quantizers is None else int(num_quantizers)
    if not 0 <= n <= codec.config.n_q:
        raise ValueError(f"num_quantizers must be in [0, {codec.config.n_q}], got {n}")
    if codec.training:
        raise RuntimeError("encode_settings needs the codec in eval mode (codec.eval())")
    ff = codec.frame_features_chunked(wav, lengths)
    out = []
    for s in settings:
        merge = codec.make_merge(ff, s.threshold, s.frame_rate)
        q = codec.quantize(ff, merge, n)
        out.append(EncodedCodes(
            semantic_codes=q["semantic_codes"], acoustic_codes=q["acoustic_codes"],
            token_lengths=merge.token_lengths, token_mask=merge.token_mask,
            frame_rate=merge.frame_rate(codec.frame_rate_base), threshold=merge.threshold,
            num_frames=ff.num_frames, num_samples=lengths))
    return out


def _check_codes(sem: torch.Tensor, lens: torch.Tensor, ac: torch.Tensor, semantic_size: int,
                 max_group: int, codebook_size: int) -> str | None:
    if sem.numel() == 0:
        return "no tokens"
    if sem.min() < 0 or sem.max() >= semantic_size:
        return "semantic code out of range"
    if lens.min() < 1 or lens.max() > max_group:
        return "token length out of range"
    if ac.numel() and (ac.min() < 0 or ac.max() >= codebook_size):
        return "acoustic code out of range"
    return None


# ---------------------------------------------------------------- audio loading
class AudioFiles(torch.utils.data.Dataset):
    """Item i: ``(i, wav float32 [T] tensor | None, error message | None)`` — 16 kHz mono via
    ``flexicodec.data.audio.load_audio``; unreadable / too short / too long files give an error string."""

    def __init__(self, paths: Sequence[str], min_samples: int = MIN_SAMPLES):
        self.paths = list(paths)
        self.min_samples = min_samples

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            w, _ = load_audio(self.paths[i], SAMPLE_RATE, min_samples=self.min_samples)
        except AudioError as exc:
            return i, None, str(exc)
        return i, torch.from_numpy(np.ascontiguousarray(w)), None


def collate_audio_files(items: list) -> dict:
    """→ {"wav": [B, T] zero-padded, "lengths": [B], "index": [B] (loaded items),
    "bad": [(index, message), ...]} (B may be 0)."""
    good = [(i, w) for i, w, err in items if w is not None]
    bad = [(i, err) for i, w, err in items if w is None]
    T = max((w.numel() for _, w in good), default=0)
    wav = torch.zeros(len(good), T)
    for k, (_, w) in enumerate(good):
        wav[k, : w.numel()] = w
    return {"wav": wav, "lengths": torch.tensor([w.numel() for _, w in good], dtype=torch.long),
            "index": [i for i, _ in good], "bad": bad}


def default_batch_size(device: str | torch.device) -> int:
    return 64 if torch.device(device).type == "cuda" else 16


def default_num_workers() -> int:
    return min(8, os.cpu_count() or 1)


# ---------------------------------------------------------------- bookkeeping
def _new_stats() -> dict:
    return {"utterances": 0, "skipped": 0, "tokens": 0, "seconds": 0.0, "reasons": {}}


def _skip(stats: dict, reason: str, what: Any) -> None:
    log.debug("skip %s: %s", what, reason)
    stats["skipped"] += 1
    stats["reasons"][reason] = stats["reasons"].get(reason, 0) + 1


def _merge(total: dict, part: dict) -> None:
    for k in ("utterances", "skipped", "tokens", "seconds"):
        total[k] += part[k]
    for r, n in part["reasons"].items():
        total["reasons"][r] = total["reasons"].get(r, 0) + n


def _shard_done(d: Path) -> bool:
    return (d / "dataset_info.json").is_file() and (d / "shard_stats.json").is_file()


def _open_setting(root: Path, info: dict) -> dict:
    """Create ``root`` with ``info`` or check an existing one matches (codec, layout)."""
    info_path = root / INFO_NAME
    if info_path.is_file():
        old = json.loads(info_path.read_text())
        for k in ("codec_identity", "semantic_vocab_size", "max_group", "rvq_codebook_size",
                  "num_quantizers", "format", "shard_size", "phoneme_voice"):
            if old.get(k) != info[k]:
                raise ValueError(f"{root} holds data written with other settings ({k}: "
                                 f"{old.get(k)} vs {info[k]}); use a new --out (or the same "
                                 f"--shard-size / --num-quantizers / --phoneme-voice / codec as "
                                 f"before)")
        info = {**info, "splits": old.get("splits", {})}
    else:
        info = {**info, "splits": {}}  # a dict of its own for every setting
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(info_path, json.dumps(info, indent=1))
    return info


def _write_shard(shard_dir: Path, cols: dict, stats: dict) -> None:
    from datasets import Dataset

    with atomic_path(shard_dir) as tmp:
        Dataset.from_dict(cols, features=_features()).save_to_disk(str(tmp))
        (tmp / "shard_stats.json").write_text(json.dumps(stats))


# ---------------------------------------------------------------- the pass
def tokenize_corpus(codec: Any, corpus: str | os.PathLike, out: str | os.PathLike, *,
                    frame_rates: Sequence[float] | None = None,
                    thresholds: Sequence[float] | None = None,
                    splits: list[str] | None = None, shard_size: int = 500,
                    batch_size: int | None = None, num_workers: int | None = None,
                    num_quantizers: int | None = None,
                    phoneme_voice: str = DEFAULT_VOICE,
                    device: str | torch.device = "cpu") -> dict[str, dict]:
    """Tokenize ``corpus`` into ``out/rate_X`` (per frame rate) or ``out/thr_T`` (per
    threshold) in one pass over the audio. Returns {setting dir name: info dict}; each info
    has per-split stats incl. ``audio_seconds_per_s`` (throughput of this run)."""
    from tqdm.auto import tqdm

    from flexicodec.data.loaders import detect_layout, load_corpus

    settings = ([Setting(frame_rate=float(r)) for r in frame_rates or []]
                + [Setting(threshold=float(t)) for t in thresholds or []])
    if not settings:
        raise ValueError("give at least one frame rate or threshold")
    if len({s.name for s in settings}) != len(settings):
        raise ValueError(f"duplicate settings: {[s.name for s in settings]}")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    device = torch.device(device)
    batch_size = batch_size or default_batch_size(device)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    num_workers = default_num_workers() if num_workers is None else int(num_workers)
    n_q = codec.config.n_q if num_quantizers is None else int(num_quantizers)
    if not 0 <= n_q <= codec.config.n_q:
        raise ValueError(f"num_quantizers must be in [0, {codec.config.n_q}], got {n_q}")
    sem_size, max_group = int(codec.semantic_vocab_size), int(codec.max_group)
    cb_size = int(codec.config.rvq_codebook_size)
    base_info = {"codec_identity": str(codec.identity),
                 "codec_model_type": getattr(codec, "model_type", ""),
                 "semantic_vocab_size": sem_size, "max_group": max_group,
                 "rvq_codebook_size": cb_size, "num_quantizers": n_q,
                 "format": TOKENIZE_FORMAT, "shard_size": shard_size,
                 "phoneme_voice": phoneme_voice}
    roots = {s.name: Path(out) / s.name for s in settings}
    infos = {s.name: _open_setting(roots[s.name], {**base_info, "target_frame_rate":
                                                    s.frame_rate, "threshold": s.threshold})
             for s in settings}
    codec = codec.to(device).eval()
    layout = detect_layout(Path(corpus))
    explicit = splits is not None
    if splits is None:
        splits = ["train", "valid", "test"] if layout == "corpus" else ["train"]
    for split in splits:
        try:
            ds = load_corpus(corpus, split=split if layout == "corpus" else None,
                             decode=False, check="header", english_speech_only=True)
        except ValueError as exc:
            if explicit:
                raise
            log.warning("split %s: %s (skipped)", split, exc)
            continue
        t0 = time.time()
        audio_paths = list(ds["audio"])
        texts = [str(t or "") for t in ds["text"]]
        speakers = [str(s or "") for s in ds["speaker"]]
        durations = [float(d or 0.0) for d in ds["duration"]]
        phonemes = _phonemes_of(texts, phoneme_voice, max(1, num_workers))
        order = sorted(range(len(ds)), key=lambda i: (-durations[i], i))
        shards = [order[lo:lo + shard_size] for lo in range(0, len(order), shard_size)]
        stats = {s.name: _new_stats() for s in settings}
        # which settings each shard still needs
        todo: list[tuple[int, list[Setting]]] = []
        for k, rows in enumerate(shards):
            need = []
            for s in settings:
                d = roots[s.name] / split / f"shard_{k:05d}"
                if _shard_done(d):
                    _merge(stats[s.name], json.loads((d / "shard_stats.json").read_text()))
                else:
                    need.append(s)
            if need:
                todo.append((k, need))
        # batches of loadable rows (empty text skipped before any audio is read)
        batches, batch_shard, pending = [], [], {}
        for k, need in todo:
            cols = {s.name: {c: [] for c in _features()} for s in need}
            st = {s.name: _new_stats() for s in need}
            rows = []
            for i in shards[k]:
                why = ("empty text" if not texts[i].strip()
                       else "no phonemes" if not phonemes[i] else None)
                if why is None:
                    rows.append(i)
                else:
                    for s in need:
                        _skip(st[s.name], why, audio_paths[i])
            for b in range(0, len(rows), batch_size):
                batches.append(rows[b:b + batch_size])
                batch_shard.append(k)
            pending[k] = {"need": need, "cols": cols, "stats": st,
                          "empty": len(shards[k]) - len(rows),
                          "left": (len(rows) + batch_size - 1) // batch_size}
        n_todo = sum(len(shards[k]) for k, _ in todo)
        bar = tqdm(total=n_todo, desc=f"tokenize {split} ({', '.join(s.name for s in settings)})",
                   unit="utt")

        def finish(k: int) -> None:
            p = pending.pop(k)
            for s in p["need"]:
                _write_shard(roots[s.name] / split / f"shard_{k:05d}", p["cols"][s.name],
                             p["stats"][s.name])
                _merge(stats[s.name], p["stats"][s.name])

        for k in [k for k, p in pending.items() if p["left"] == 0]:
            bar.update(len(shards[k]))
            finish(k)
        audio_s = 0.0
        if batches:
            loader = torch.utils.data.DataLoader(
                AudioFiles(audio_paths), batch_sampler=batches, num_workers=num_workers,
                collate_fn=collate_audio_files, pin_memory=device.type == "cuda",
                prefetch_factor=4 if num_workers > 0 else None)
            for bi, batch in enumerate(loader):
                k = batch_shard[bi]
                p = pending[k]
                for i, err in batch["bad"]:
                    for s in p["need"]:
                        _skip(p["stats"][s.name], "audio", err)
                if batch["index"]:
                    wav = batch["wav"].to(device, non_blocking=True)
                    lengths = batch["lengths"].to(device, non_blocking=True)
                    encs = encode_settings(codec, wav, lengths, p["need"], n_q)
                    audio_s += float(batch["lengths"].sum()) / SAMPLE_RATE
                    for s, enc in zip(p["need"], encs):
                        _collect(enc, batch["index"], p["cols"][s.name], p["stats"][s.name],
                                 audio_paths, texts, phonemes, speakers, durations,
                                 (sem_size, max_group, cb_size))
                bar.update(len(batch["index"]) + len(batch["bad"]))
                el = max(1e-9, time.time() - t0)
                bar.set_postfix(audio_s_per_s=f"{audio_s / el:.1f}")
                p["left"] -= 1
                if p["left"] == 0:
                    bar.update(p["empty"])
                    finish(k)
        bar.close()
        if pending:
            raise RuntimeError(f"internal error: shards {sorted(pending)} were not finished")
        wall = time.time() - t0
        for s in settings:
            st = stats[s.name]
            if st["skipped"]:
                log.warning("tokenize %s %s: skipped %d of %d utterances (%s)", s.name, split,
                            st["skipped"], len(ds), st["reasons"])
            st["avg_frame_rate"] = st["tokens"] / max(1e-9, st["seconds"])
            prev = infos[s.name]["splits"].get(split, {})
            # throughput of the run that encoded (the rest of) this setting's split
            st["audio_seconds_per_s"] = (audio_s / max(1e-9, wall)
                                         if any(s in need for _, need in todo)
                                         else prev.get("audio_seconds_per_s", 0.0))
            infos[s.name]["splits"][split] = st
            atomic_write_text(roots[s.name] / INFO_NAME, json.dumps(infos[s.name], indent=1))
            log.info("tokenize %s %s: %d utterances, %.2f tokens/s", s.name, split,
                     st["utterances"], st["avg_frame_rate"])
        log.info("tokenize %s: %.1f s of audio encoded in %.1f s (%.1f audio-s/s, %d settings)",
                 split, audio_s, wall, audio_s / max(1e-9, wall), len(settings))
    return infos


def _phonemes_of(texts: list[str], voice: str, workers: int = 1) -> list[list[str]]:
    """Phoneme tokens of every text: each distinct text phonemised once, in ``workers``
    espeak-ng processes at a time (one call per slice of the texts)."""
    from concurrent.futures import ThreadPoolExecutor

    from flexicodec.lm.phoneme_tokenizer import text_to_phonemes

    distinct = sorted({t for t in texts if t.strip()})
    if not distinct:
        return [[] for _ in texts]
    t0 = time.time()
    n = max(1, min(workers, len(distinct)))
    slices = [distinct[k::n] for k in range(n)]
    with ThreadPoolExecutor(n) as pool:          # the work is in espeak-ng subprocesses
        parts = list(pool.map(lambda sl: text_to_phonemes(sl, voice), slices))
    by_text = {t: p for sl, ps in zip(slices, parts) for t, p in zip(sl, ps)}
    log.info("phonemised %d distinct texts in %.1f s (espeak-ng voice %s, %d processes)",
             len(distinct), time.time() - t0, voice, n)
    return [by_text.get(t, []) for t in texts]


def _collect(enc, index: list[int], cols: dict, stats: dict, paths, texts, phonemes,
             speakers, durations, sizes: tuple[int, int, int]) -> None:
    """Append the rows of one encoded batch (codes moved to the CPU once)."""
    sem_all, len_all = enc.semantic_codes.cpu(), enc.token_lengths.cpu()
    ac_all, mask_all = enc.acoustic_codes.cpu(), enc.token_mask.cpu()
    rate_all, frames_all = enc.frame_rate.cpu(), enc.num_frames.cpu()
    for b, i in enumerate(index):
        m = mask_all[b]
        sem, lens, ac = sem_all[b][m], len_all[b][m], ac_all[b][:, m]
        why = _check_codes(sem, lens, ac, *sizes)
        if why is not None:
            _skip(stats, why, paths[i])
            continue
        cols["id"].append(Path(paths[i]).stem)
        cols["text"].append(texts[i])
        cols["phonemes"].append(phonemes[i])
        cols["speaker"].append(speakers[i])
        cols["duration"].append(durations[i])
        cols["semantic_codes"].append(sem.tolist())
        cols["token_lengths"].append(lens.tolist())
        cols["acoustic_codes"].append(ac.tolist())
        cols["frame_rate"].append(float(rate_all[b]))
        cols["num_frames"].append(int(frames_all[b]))
        stats["utterances"] += 1
        stats["tokens"] += int(sem.numel())
        stats["seconds"] += durations[i]


def load_codec(path: str | os.PathLike, device: str = "cpu"):
    from flexicodec.codec.model import FlexiCodec

    return FlexiCodec.from_pretrained(path, map_location=device)


def build_parser(prog: str = "flexicodec-lm tokenize"):
    import argparse

    p = argparse.ArgumentParser(prog=prog, description="Encode a corpus with the codec into "
                                "the training data of the LM and the acoustic stage.")
    p.add_argument("--data", required=True, help="corpus directory (any data.loaders layout)")
    p.add_argument("--codec", default=None,
                   help="FlexiCodec model directory (default: the shipped codec)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--frame-rate", type=float, nargs="+", help="target rate(s) in Hz")
    g.add_argument("--threshold", type=float, nargs="+", help="merging threshold(s)")
    p.add_argument("--split", default=None, help="comma-separated splits (default: all)")
    p.add_argument("-o", "--out", required=True, help="output directory (one rate_* folder per "
                   "setting)")
    p.add_argument("--shard-size", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=None,
                   help="utterances per batch (default 64 on CUDA, 16 on CPU)")
    p.add_argument("--num-workers", type=int, default=None,
                   help=f"audio loading processes (default min(8, cores) = "
                        f"{default_num_workers()}; 0 = main process)")
    p.add_argument("--num-quantizers", type=int, default=None,
                   help="acoustic RVQ codebooks to store (default: all of the codec's)")
    p.add_argument("--phoneme-voice", default=DEFAULT_VOICE,
                   help="espeak-ng voice of the phonemes column (the LM's phoneme input)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p


def main(argv: list[str] | None = None, prog: str = "flexicodec-lm tokenize") -> int:
    p = build_parser(prog)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if a.codec is None:
        from flexicodec.common.models import default_dir
        a.codec = default_dir("codec")
    from flexicodec.common.pretrained import CheckpointError

    try:
        codec = load_codec(a.codec, a.device)
    except (CheckpointError, FileNotFoundError) as exc:
        p.error(f"cannot load the codec: {exc}")
    splits = a.split.split(",") if a.split else None
    try:
        infos = tokenize_corpus(codec, a.data, a.out, frame_rates=a.frame_rate,
                                thresholds=a.threshold, splits=splits, shard_size=a.shard_size,
                                batch_size=a.batch_size, num_workers=a.num_workers,
                                num_quantizers=a.num_quantizers,
                                phoneme_voice=a.phoneme_voice, device=a.device)
    except (ValueError, FileNotFoundError) as exc:
        p.error(str(exc))
    for name, info in infos.items():
        print(json.dumps({"dir": str(Path(a.out) / name),
                          **{s: {k: v for k, v in st.items() if k != "reasons"}
                             for s, st in info["splits"].items()}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
