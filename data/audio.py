"""Audio input/output: the one place the project reads, resamples and writes audio.

soundfile reads/writes, soxr resamples; no torchaudio. Every loader, the codec API and the
TTS pipeline go through these functions so bad input is reported the same way everywhere.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from flexicodec.common.atomic import atomic_path
from flexicodec.common.constants import SAMPLE_RATE

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".opus", ".aiff", ".aif")

#: files longer than this are refused by default (seconds); callers may raise it
DEFAULT_MAX_SECONDS = 3600.0


class AudioError(ValueError):
    """Raised for audio that cannot be used (unreadable, empty, NaN, too long, ...)."""


def to_mono(x: np.ndarray) -> np.ndarray:
    """Downmix ``x`` [T] or [T, C] (soundfile layout) to mono [T] by averaging channels."""
    x = np.asarray(x)
    if x.ndim == 1:
        return x
    if x.ndim == 2:
        return x.mean(axis=1)
    raise AudioError(f"expected audio of shape [T] or [T, C], got {x.shape}")


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Resample mono float audio [T] from ``sr_in`` to ``sr_out`` with soxr (HQ)."""
    if sr_in <= 0 or sr_out <= 0:
        raise AudioError(f"invalid sample rate {sr_in} -> {sr_out}")
    x = np.asarray(x, dtype=np.float32)
    if sr_in == sr_out or x.size == 0:
        return x
    return soxr.resample(x, sr_in, sr_out, quality="HQ").astype(np.float32, copy=False)


def check_audio(x: np.ndarray, sample_rate: int, *, name: str = "audio",
                max_seconds: float | None = DEFAULT_MAX_SECONDS, min_samples: int = 1) -> None:
    """Raise :class:`AudioError` if mono ``x`` [T] is empty, non-finite or too long."""
    if x.ndim != 1:
        raise AudioError(f"{name}: expected mono audio [T], got shape {x.shape}")
    if x.size < min_samples:
        raise AudioError(f"{name}: audio is empty or too short ({x.size} samples, "
                         f"need at least {min_samples})")
    if not np.all(np.isfinite(x)):
        raise AudioError(f"{name}: audio contains NaN or infinite samples")
    if max_seconds is not None and x.size > max_seconds * sample_rate:
        raise AudioError(f"{name}: audio is {x.size / sample_rate:.1f} s long, over the "
                         f"{max_seconds:.0f} s limit")


def load_audio(path: str | os.PathLike, target_sr: int | None = SAMPLE_RATE, *,
               max_seconds: float | None = DEFAULT_MAX_SECONDS,
               min_samples: int = 1) -> tuple[np.ndarray, int]:
    """Read an audio file as mono float32 [T] in [-1, 1], resampled to ``target_sr``.

    Returns ``(audio, sample_rate)``. Raises :class:`AudioError` with the file name for a
    missing, unreadable, empty, non-finite or over-long file. ``target_sr=None`` keeps the
    file's rate.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such audio file")
    try:
        info = sf.info(str(path))
    except Exception as exc:  # soundfile raises several types for corrupt data
        raise AudioError(f"{path}: unreadable audio ({exc})") from exc
    if max_seconds is not None and info.frames > max_seconds * info.samplerate:
        raise AudioError(f"{path}: audio is {info.frames / info.samplerate:.1f} s long, over "
                         f"the {max_seconds:.0f} s limit")
    try:
        x, sr = sf.read(str(path), dtype="float32", always_2d=False)
    except Exception as exc:
        raise AudioError(f"{path}: unreadable audio ({exc})") from exc
    x = to_mono(x).astype(np.float32, copy=False)
    check_audio(x, sr, name=str(path), max_seconds=max_seconds, min_samples=min_samples)
    if target_sr is not None and sr != target_sr:
        x = resample(x, sr, target_sr)
        sr = target_sr
    return x, sr


def prepare_waveform(x: np.ndarray, sample_rate: int, target_sr: int = SAMPLE_RATE, *,
                     name: str = "audio", max_seconds: float | None = None) -> np.ndarray:
    """Bring in-memory audio to mono float32 [T] at ``target_sr``.

    ``x`` may be [T], [T, C] (soundfile layout) or [C, T] with C <= 8 (torch layout).
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 2 and x.shape[0] <= 8 and x.shape[1] > x.shape[0]:
        x = x.T  # [C, T] -> [T, C]
    x = to_mono(x)
    check_audio(x, sample_rate, name=name, max_seconds=max_seconds)
    return resample(x, sample_rate, target_sr)


def write_audio(path: str | os.PathLike, x: np.ndarray, sample_rate: int,
                subtype: str = "PCM_16") -> Path:
    """Write mono audio [T] atomically (temp file + rename); clips to [-1, 1]."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = np.clip(np.asarray(x, dtype=np.float32).reshape(-1), -1.0, 1.0)
    with atomic_path(path) as tmp:
        sf.write(tmp, x, sample_rate, subtype=subtype, format=_format_for(path))
    return path


def concat_with_pauses(parts: list[np.ndarray], pauses_s: list[float],
                       sample_rate: int) -> np.ndarray:
    """Mono clips [T_i] joined in order with ``pauses_s[i]`` seconds of digital silence
    between clip i and i+1 (``len(pauses_s) == len(parts) - 1``). Returns float32 [T]."""
    if not parts or len(pauses_s) != len(parts) - 1:
        raise ValueError(f"need one pause between each of {len(parts)} clips, got "
                         f"{len(pauses_s)}")
    out = [np.asarray(parts[0], dtype=np.float32)]
    for pause, x in zip(pauses_s, parts[1:]):
        out.append(np.zeros(int(round(pause * sample_rate)), np.float32))
        out.append(np.asarray(x, dtype=np.float32))
    return np.concatenate(out)


def _format_for(path: Path) -> str:
    ext = path.suffix.lower().lstrip(".")
    return {"wav": "WAV", "flac": "FLAC", "ogg": "OGG"}.get(ext, "WAV")


def find_audio_files(root: str | os.PathLike) -> list[Path]:
    """All audio files below ``root`` (or ``[root]`` if it is a file), sorted.

    Raises FileNotFoundError if nothing is found, so a wrong path fails loudly.
    """
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such file or directory")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS
                   and p.is_file())
    if not files:
        raise FileNotFoundError(f"{root}: no audio files found ({', '.join(AUDIO_EXTENSIONS)})")
    return files
