"""Saved voices: a named voice prompt stored as codec codes + transcript + metadata.

A voice store is a directory with one folder per voice::

    VOICES/NAME/codes.npz    # codec.codes_file format: the prompt encoded at each rate of
                             # VOICE_FRAME_RATES, one row each (semantic [B, T'], acoustic
                             # [B, n_q, T'], token_lengths [B, T'], 0 on padding)
    VOICES/NAME/voice.json   # {"format_version", "name", "text", "created", "frame_rates",
                             #  "model_identity", "num_quantizers", "source": {...}}

No pickle. A voice is written into a hidden staging folder and renamed into place, so a
reader never sees half a voice and two writers of one name cannot both win; removal renames
the folder away before deleting it. Names are 1-64 characters of letters, digits, ``_`` and
``-`` starting with a letter or digit: never a path. ``TTS(..., voices=VoiceStore(DIR))``
lets ``speaker=NAME`` use them (:meth:`VoiceStore.prompts` gives the prompts the pipeline
picks a rate from, like a shipped speaker's).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from flexicodec.codec.codes_file import CodesFile, CodesFileError, concat_codes, load_codes, save_codes
from flexicodec.common.atomic import atomic_write_text
from flexicodec.common.constants import BASE_FRAME_RATE, SAMPLE_RATE
from flexicodec.tts.speakers import VoicePrompt

FORMAT_VERSION = 1
#: rates a saved voice is encoded at (the pipeline picks the one nearest the request)
VOICE_FRAME_RATES = (BASE_FRAME_RATE, 8.33, 6.25)
CODES_NAME = "codes.npz"
INFO_NAME = "voice.json"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
VOICES_ENV = "FLEXICODEC_VOICES"


class VoiceError(ValueError):
    """A saved voice that cannot be used (unreadable, or made by another codec)."""


class VoiceNameError(VoiceError):
    """A voice name that is not allowed (it could name a path, or is too long)."""


class VoiceNotFoundError(VoiceError):
    """No saved voice of that name."""


class VoiceExistsError(VoiceError):
    """A voice of that name is already saved (or it names a shipped speaker)."""


def default_voices_dir() -> Path:
    """``$FLEXICODEC_VOICES``, else ``$XDG_DATA_HOME/flexicodec/voices`` (default
    ``~/.local/share/flexicodec/voices``)."""
    if os.environ.get(VOICES_ENV):
        return Path(os.environ[VOICES_ENV])
    data = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data) / "flexicodec" / "voices"


def check_name(name: str) -> str:
    """``name`` when it is a valid voice name, else :class:`VoiceNameError`."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise VoiceNameError(
            f"invalid voice name {str(name)[:80]!r}: use 1-64 letters, digits, '_' or '-', "
            f"starting with a letter or digit")
    return name


def encode_voice(tts, prompt_wav, text: str,
                 frame_rates: tuple[float, ...] = VOICE_FRAME_RATES) -> CodesFile:
    """Encode a voice prompt with ``tts``'s codec at each of ``frame_rates`` → a codes file of
    ``len(frame_rates)`` rows (``flexicodec.tts.acoustic``'s number of quantizers). ``prompt_wav``: a
    path or an ``(array, sample_rate)`` pair; checked like any prompt (length, silence,
    transcript): raises ``TTSError`` or ``flexicodec.data.audio.AudioError``."""
    tts.check_prompt_text(text)
    wav = tts.prompt_waveform(prompt_wav)
    x = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))[None].to(tts.device)
    rows = []
    with torch.no_grad():
        for rate in frame_rates:
            enc = tts.codec.encode(x, SAMPLE_RATE, frame_rate=float(rate),
                                   num_quantizers=tts.acoustic.config.n_q)
            rows.append(CodesFile.from_encoded(enc.item(0), tts.codec, float(rate)))
    return concat_codes(rows)


class VoiceStore:
    """The saved voices under ``directory`` (created on the first :meth:`add`)."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)

    def _dir(self, name: str) -> Path:
        return self.directory / check_name(name)

    def exists(self, name: str) -> bool:
        """Whether voice ``name`` is saved (False for a name that is not a valid one)."""
        return bool(NAME_RE.fullmatch(str(name))) and (self.directory / name / INFO_NAME
                                                       ).is_file()

    def names(self) -> list[str]:
        """Saved voice names, sorted (hidden staging folders are not voices)."""
        if not self.directory.is_dir():
            return []
        return sorted(p.name for p in self.directory.iterdir()
                      if NAME_RE.fullmatch(p.name) and (p / INFO_NAME).is_file())

    def info(self, name: str) -> dict:
        """The voice's ``voice.json``; :class:`VoiceNotFoundError` when there is none."""
        path = self._dir(name) / INFO_NAME
        if not path.is_file():
            raise VoiceNotFoundError(f"no saved voice {name!r} in {self.directory}")
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise VoiceError(f"saved voice {name!r}: unreadable {INFO_NAME} ({exc})") from exc

    def add(self, name: str, codes: CodesFile, text: str, source: dict | None = None) -> dict:
        """Save ``codes`` (from :func:`encode_voice`) and ``text`` as voice ``name``; returns
        its info. :class:`VoiceExistsError` when the name is taken (nothing is replaced)."""
        final = self._dir(name)
        if final.exists():
            raise VoiceExistsError(f"a voice named {name!r} already exists; remove it first")
        info = {"format_version": FORMAT_VERSION, "name": name, "text": text,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "frame_rates": [round(float(r), 4) for r in codes.frame_rate],
                "model_identity": codes.model_identity,
                "num_quantizers": int(codes.num_quantizers), "source": source or {}}
        self.directory.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.new", dir=self.directory))
        try:
            save_codes(staging / CODES_NAME, codes)
            atomic_write_text(staging / INFO_NAME, json.dumps(info, indent=1,
                                                              ensure_ascii=False))
            try:
                os.rename(staging, final)   # fails when ``final`` appeared meanwhile
            except OSError as exc:
                if final.exists():
                    raise VoiceExistsError(f"a voice named {name!r} already exists; remove it "
                                           f"first") from exc
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return info

    def remove(self, name: str) -> None:
        """Delete voice ``name``; :class:`VoiceNotFoundError` when there is none."""
        path = self._dir(name)
        if not (path / INFO_NAME).is_file():
            raise VoiceNotFoundError(f"no saved voice {name!r} in {self.directory}")
        trash = Path(tempfile.mkdtemp(prefix=f".{name}.del", dir=self.directory)) / "x"
        try:
            os.rename(path, trash)
        except FileNotFoundError as exc:  # removed by someone else meanwhile
            raise VoiceNotFoundError(f"no saved voice {name!r} in {self.directory}") from exc
        finally:
            shutil.rmtree(trash.parent, ignore_errors=True)

    def prompts(self, name: str, codec) -> list[VoicePrompt]:
        """Voice ``name`` as one prompt per stored rate, checked to be ``codec``'s codes."""
        info = self.info(name)
        try:
            codes = load_codes(self._dir(name) / CODES_NAME)
            codes.check_model(codec)
        except CodesFileError as exc:
            raise VoiceError(f"saved voice {name!r} cannot be used: {exc}") from exc
        out = []
        for b in range(codes.batch_size):
            n = int((codes.token_lengths[b] > 0).sum())
            out.append(VoicePrompt(info["text"], float(codes.frame_rate[b]),
                                   codes.semantic_codes[b, :n].tolist(),
                                   codes.token_lengths[b, :n].tolist(),
                                   codes.acoustic_codes[b, :, :n].tolist()))
        return out


def add_voice(tts, name: str, prompt_wav, text: str, source: dict | None = None) -> dict:
    """Encode ``prompt_wav`` + ``text`` with ``tts`` and save it in ``flexicodec.tts.voices`` as ``name``
    (refused when ``name`` is a shipped speaker's: one name, one voice). Returns its info."""
    if tts.voices is None:
        raise VoiceError("this pipeline has no voice store (TTS(..., voices=VoiceStore(DIR)))")
    check_name(name)
    if name in tts.speakers:
        raise VoiceExistsError(f"{name!r} is a shipped speaker; choose another name")
    if tts.voices.exists(name):  # before the encoding work
        raise VoiceExistsError(f"a voice named {name!r} already exists; remove it first")
    return tts.voices.add(name, encode_voice(tts, prompt_wav, text), text, source)
