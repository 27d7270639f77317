"""File-level helpers on top of :class:`flexicodec.codec.model.FlexiCodec` (used by the CLI).

- :func:`load_codec` — a codec directory (default: the shipped one) on a device.
- :func:`collect_inputs` — files/folders → (audio path, output stem) pairs.
- :func:`encode_files`, :func:`decode_files`, :func:`reconstruct_files` — with tqdm progress
  and a :class:`RateSummary` (average frame rate and bitrate achieved).

Bitrate = average token rate × (log2(FSQ codebook) + n_q·log2(RVQ codebook) + log2(max_group));
the last term is the cost of sending each token's length (frames it stands for), counted
even at 12.5 Hz where every length is 1.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from flexicodec.codec.codes_file import CodesFile, load_codes, save_codes
from flexicodec.codec.model import FlexiCodec
from flexicodec.data.audio import find_audio_files, load_audio, write_audio

log = logging.getLogger("flexicodec")


def load_codec(model_dir: str | os.PathLike | None = None, device: str = "cpu") -> FlexiCodec:
    """Load a codec directory (``None`` = the default ``codec`` of the models directory)."""
    if model_dir is None:
        from flexicodec.common.models import default_dir
        model_dir = default_dir("codec")       # FileNotFoundError with a clear message
    model = FlexiCodec.from_pretrained(model_dir, map_location=device)
    return model.to(device).eval()


def collect_inputs(paths: list[str | os.PathLike], suffixes=None) -> list[tuple[Path, Path]]:
    """(file, output stem relative to the output folder) for files and folders of files.

    Files inside a given folder keep their relative sub-path; a given file keeps its name.
    ``suffixes`` (e.g. ``(".npz",)``) selects other files than audio."""
    out = []
    for p in map(Path, paths):
        if suffixes is None:
            files = find_audio_files(p)
        elif p.is_file():
            files = [p]
        elif p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.suffix.lower() in suffixes)
            if not files:
                raise FileNotFoundError(f"{p}: no {'/'.join(suffixes)} files found")
        else:
            raise FileNotFoundError(f"{p}: no such file or directory")
        for f in files:
            rel = f.relative_to(p).with_suffix("") if p.is_dir() else Path(f.stem)
            out.append((f, rel))
    stems = [r for _, r in out]
    if len(set(stems)) != len(stems):
        raise ValueError("two inputs would write the same output name; pass folders or rename")
    return out


@dataclass
class RateSummary:
    files: int = 0
    tokens: int = 0
    seconds: float = 0.0        # of 12.5 Hz frames
    bits_per_token: float = 0.0

    def add(self, tokens: int, frames: int, frame_rate_base: float) -> None:
        self.files += 1
        self.tokens += tokens
        self.seconds += frames / frame_rate_base

    @property
    def frame_rate(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    @property
    def bitrate(self) -> float:
        return self.frame_rate * self.bits_per_token

    def __str__(self) -> str:
        return (f"{self.files} file(s): average frame rate {self.frame_rate:.2f} Hz, bitrate "
                f"{self.bitrate:.0f} bit/s ({self.bits_per_token:.1f} bits per token incl. "
                f"length)")


def _encode_one(model: FlexiCodec, path: Path, threshold, frame_rate, num_quantizers):
    wav, sr = load_audio(path, model.sample_rate)
    codes = model.encode(wav, sr, threshold=threshold, frame_rate=frame_rate,
                         num_quantizers=num_quantizers)
    return codes


def encode_files(model: FlexiCodec, inputs: list, out_dir: str | os.PathLike,
                 threshold: float | None = None, frame_rate: float | None = None,
                 num_quantizers: int | None = None) -> RateSummary:
    """Encode audio files/folders to ``out_dir/<name>.npz``."""
    out_dir = Path(out_dir)
    n = model.config.n_q if num_quantizers is None else num_quantizers
    summary = RateSummary(bits_per_token=model.config.bits_per_token(n))
    for path, rel in tqdm(collect_inputs(inputs), desc="encode", unit="file"):
        codes = _encode_one(model, path, threshold, frame_rate, num_quantizers)
        save_codes(out_dir / rel.with_suffix(".npz"),
                   CodesFile.from_encoded(codes, model, frame_rate))
        summary.add(int(codes.token_mask.sum()), int(codes.num_frames.sum()),
                    model.frame_rate_base)
    return summary


def decode_files(model: FlexiCodec, inputs: list, out_dir: str | os.PathLike) -> int:
    """Decode codes files (or folders of them) to ``out_dir/<name>.wav``; returns the count.
    A file holding B > 1 utterances writes ``<name>_<i>.wav``."""
    out_dir = Path(out_dir)
    count = 0
    for path, rel in tqdm(collect_inputs(inputs, suffixes=(".npz",)), desc="decode",
                          unit="file"):
        cf = load_codes(path)
        cf.check_model(model)
        audio = model.decode_from_codes(*cf.to_tensors(model.device))
        for b in range(cf.batch_size):
            name = rel if cf.batch_size == 1 else rel.with_name(f"{rel.name}_{b}")
            y = audio[b, : int(cf.num_samples[b])].float().cpu().numpy()
            write_audio(out_dir / name.with_suffix(".wav"), y, model.sample_rate)
            count += 1
    return count


def reconstruct_files(model: FlexiCodec, inputs: list, out_dir: str | os.PathLike,
                      threshold: float | None = None, frame_rate: float | None = None,
                      num_quantizers: int | None = None) -> RateSummary:
    """Encode + decode audio files/folders to ``out_dir/<name>.wav``."""
    out_dir = Path(out_dir)
    n = model.config.n_q if num_quantizers is None else num_quantizers
    summary = RateSummary(bits_per_token=model.config.bits_per_token(n))
    for path, rel in tqdm(collect_inputs(inputs), desc="reconstruct", unit="file"):
        codes = _encode_one(model, path, threshold, frame_rate, num_quantizers)
        (audio,) = model.decode(codes)
        write_audio(out_dir / rel.with_suffix(".wav"), audio.float().cpu().numpy(),
                    model.sample_rate)
        summary.add(int(codes.token_mask.sum()), int(codes.num_frames.sum()),
                    model.frame_rate_base)
    return summary


@torch.no_grad()
def group_boundaries(model: FlexiCodec, path: str | os.PathLike, threshold=None,
                     frame_rate=None):
    """(audio [T] numpy, token_lengths [T'] numpy, codes) for plotting one file."""
    wav, sr = load_audio(path, model.sample_rate)
    codes = model.encode(wav, sr, threshold=threshold, frame_rate=frame_rate)
    return wav, codes.token_lengths[0].cpu().numpy(), codes


def calibrate_threshold_on_corpus(model: FlexiCodec, data: str | os.PathLike,
                                  split: str = "valid", frame_rate: float = 6.25,
                                  max_utts: int = 200, device: str = "cpu") -> dict:
    """The one global merging threshold whose average rate, pooled over the first
    ``max_utts`` utterances of ``split``, is nearest ``frame_rate`` (Hz) — the paper's
    inference mode, where each utterance then gets its own rate by content. Returns
    ``{"threshold", "frame_rate" (achieved, pooled), "target_frame_rate", "utterances"}``."""
    from flexicodec.codec import merging
    from flexicodec.codec.train import corpus_similarities
    from flexicodec.data.loaders import AudioDataset, load_corpus

    if max_utts < 1:
        raise ValueError(f"max_utts must be >= 1, got {max_utts}")
    ds = load_corpus(data, split=split, sample_rate=model.sample_rate, check="header",
                     progress=False)
    sims = corpus_similarities(model, AudioDataset(ds, sample_rate=model.sample_rate), device,
                               max_utts)
    thr = merging.calibrate_threshold(sims, frame_rate, model.max_group)
    return {"threshold": round(thr, 6), "target_frame_rate": frame_rate,
            "frame_rate": merging.pooled_rate(sims, thr, model.max_group),
            "utterances": len(sims), "split": split}
