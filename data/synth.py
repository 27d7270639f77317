"""Speech synthesizers used to build our corpus: flite, festival and espeak-ng.

Each speaker is one (engine, voice) pair with an id like ``flite_slt``,
``festival_kal_diphone`` or ``espeak_en-us+m3``. :func:`list_speakers` discovers what is
installed on this machine. :func:`synthesize` turns a batch of texts into 16 kHz mono float32
waveforms, loudness-normalised with long silences trimmed (:func:`postprocess`), optionally
each at its own speaking rate (``paces``) and level (``levels_db``).

Private prefix: where the engines are unpacked from .deb files into a directory (see
``scripts/device_synth_env.sh``) set ``FLEXICODEC_SYNTH_PREFIX=DIR``; binaries, libraries and
data are then taken from ``DIR/usr/...`` only (never silently from the system).
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf

from flexicodec.common.constants import SAMPLE_RATE
from flexicodec.data.audio import AudioError, resample, to_mono
from flexicodec.data.variants import VoiceVariant, apply_variant, draw_variant, parse_variant_id, variant_id

PREFIX_ENV = "FLEXICODEC_SYNTH_PREFIX"
ENGINES = ("flite", "festival", "espeak")
#: engines whose voices are recordings of real speakers (espeak-ng's are formant-synthesized
#: variants already): the corpus builder derives pitch- and formant-shifted speakers from them
RECORDED_ENGINES = ("flite", "festival")
FLITE_VOICES = ("kal", "kal16", "awb", "rms", "slt")
FESTIVAL_VOICES = ("kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts")
#: festival voices of other languages (Debian's festvox packages; scripts/fetch_synth_debs.sh
#: other) and their language: they read the English sentences with their own language's
#: text front-end, so their speech is new voices for the codec but does not match an
#: English transcript (the corpus keeps them in train and marks their rows' voice_language)
FESTIVAL_OTHER_VOICES = {"hy_fi_mv_diphone": "fi", "suo_fi_lj_diphone": "fi",
                         "pc_diphone": "it", "lp_diphone": "it", "czech_machac": "cs",
                         "czech_dita": "cs", "czech_krb": "cs", "czech_ph": "cs",
                         "upc_ca_ona_hts": "ca"}
ESPEAK_ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-029",
                  "en-gb-x-gbcwmd", "en-us-nyc")
ESPEAK_VARIANTS = tuple(f"m{i}" for i in range(1, 8)) + tuple(f"f{i}" for i in range(1, 6))
_MULTIARCH = "x86_64-linux-gnu"
ESPEAK_WPM = 175                  # espeak-ng's default speaking rate (words per minute)
PACE_LIMITS = (0.5, 2.0)          # speaking-rate factors every engine renders
#: flite voices whose built-in duration_stretch is not 1; ``--setf duration_stretch``
#: replaces the built-in value, so a pace scales this one
FLITE_DURATION_STRETCH = {"kal": 1.1, "kal16": 1.1}


class SynthError(RuntimeError):
    """A synthesizer is missing or failed on an input."""


@dataclass(frozen=True)
class Speaker:
    """One synthetic voice: ``id`` (e.g. ``espeak_en-us+m3``), ``engine`` and engine ``voice``;
    a derived speaker (``flite_slt~v2``, :func:`derive_speakers`) also has the ``variant``
    applied to the voice's output."""
    id: str
    engine: str
    voice: str
    variant: VoiceVariant | None = None

    @property
    def base_id(self) -> str:
        """Id of the engine voice (the id itself unless this is a derived speaker)."""
        return f"{self.engine}_{self.voice}"

    @property
    def language(self) -> str:
        """Language of the voice's text front-end: "en" except the festival voices of
        :data:`FESTIVAL_OTHER_VOICES`."""
        return FESTIVAL_OTHER_VOICES.get(self.voice, "en") if self.engine == "festival" \
            else "en"

    @property
    def slug(self) -> str:
        """File-system-safe form of the id (``+`` → ``-``)."""
        return re.sub(r"[^A-Za-z0-9_.-]", "-", self.id)


@dataclass
class PostprocessConfig:
    """Output conditioning of every synthesized utterance."""
    sample_rate: int = SAMPLE_RATE
    target_rms_db: float = -23.0      # RMS of the non-silent frames after normalisation
    peak: float = 0.95                # never exceed this absolute peak
    silence_db: float = -40.0         # frames this far below the loudest frame are silence
    frame_ms: float = 10.0
    max_silence_s: float = 0.3        # internal silences longer than this are shortened to it
                                      # (the corpus builder raises it to keep punctuation pauses)
    edge_pad_s: float = 0.05          # silence kept before the first and after the last speech


# --------------------------------------------------------------------------- environment
def synth_prefix() -> Path | None:
    """The private prefix from ``FLEXICODEC_SYNTH_PREFIX`` (checked to exist), or None."""
    p = os.environ.get(PREFIX_ENV)
    if not p:
        return None
    path = Path(p)
    if not (path / "usr").is_dir():
        raise SynthError(f"{PREFIX_ENV}={p}: no usr/ directory there (unpack the .deb files "
                         f"with scripts/device_synth_env.sh)")
    return path


def synth_env() -> dict[str, str]:
    """Environment for engine subprocesses (adds the private prefix's paths when set)."""
    env = dict(os.environ)
    prefix = synth_prefix()
    if prefix is None:
        return env
    usr = prefix / "usr"
    libs = [usr / "lib" / _MULTIARCH, usr / "lib" / _MULTIARCH / "pulseaudio", usr / "lib",
            prefix / "lib" / _MULTIARCH]
    env["PATH"] = os.pathsep.join([str(usr / "bin")] + [p for p in
                                                       env.get("PATH", "").split(os.pathsep) if p])
    env["LD_LIBRARY_PATH"] = os.pathsep.join([str(p) for p in libs] + [
        p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p])
    data = usr / "lib" / _MULTIARCH / "espeak-ng-data"
    if data.is_dir():
        env["ESPEAK_DATA_PATH"] = str(data)
    return env


def find_tool(name: str) -> str:
    """Absolute path of engine binary ``name`` (prefix only when a prefix is set)."""
    prefix = synth_prefix()
    if prefix is not None:
        cand = prefix / "usr" / "bin" / name
        if not cand.is_file():
            raise FileNotFoundError(f"{name} not found in {PREFIX_ENV}={prefix} ({cand})")
        return str(cand)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found on PATH (install it with scripts/setup.sh "
                                f"or set {PREFIX_ENV})")
    return found


def festival_libdir() -> Path:
    """Festival's library directory (init.scm, voices/, dicts/)."""
    prefix = synth_prefix()
    base = (prefix / "usr") if prefix is not None else Path("/usr")
    return base / "share" / "festival"


def _run(cmd: list[str], *, input: str | None = None, timeout: float = 300) -> None:
    try:
        proc = subprocess.run(cmd, input=input, capture_output=True, text=True,
                              env=synth_env(), timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise SynthError(f"{cmd[0]} timed out after {timeout} s") from exc
    if proc.returncode != 0:
        raise SynthError(f"{' '.join(cmd[:4])} ... failed ({proc.returncode}): "
                         f"{(proc.stderr or proc.stdout).strip()[-500:]}")


# --------------------------------------------------------------------------- discovery
def _flite_voices() -> list[str]:
    exe = find_tool("flite")
    proc = subprocess.run([exe, "-lv"], capture_output=True, text=True, env=synth_env(),
                          timeout=30)
    avail = set((proc.stdout + proc.stderr).replace("Voices available:", "").split())
    return [v for v in FLITE_VOICES if v in avail]


#: festival's compiled-in data directory; the voices of other languages load their files
#: from it by name, so they work only where it is the library festival runs with
FESTIVAL_DATADIR = Path("/usr/share/festival")


def _festival_voices() -> list[str]:
    find_tool("festival")
    libdir = festival_libdir()
    found = {p.parent.parent.name for p in (libdir / "voices").glob("*/*/festvox/*.scm")}
    other = [v for v in FESTIVAL_OTHER_VOICES if v in found]
    if other and FESTIVAL_DATADIR.resolve() != libdir.resolve():
        logging.getLogger(__name__).warning(
            "festival voices %s are left out: they read their files from %s, which is not "
            "the festival library in use (%s); scripts/device_synth_env.sh links it where "
            "there is no system festival", ", ".join(other), FESTIVAL_DATADIR, libdir)
        other = []
    return [v for v in FESTIVAL_VOICES if v in found] + other


def _espeak_voices() -> list[str]:
    exe = find_tool("espeak-ng")
    env = synth_env()
    out = subprocess.run([exe, "--voices=en"], capture_output=True, text=True, env=env,
                         timeout=30).stdout
    accents = set()
    for line in out.splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 5 and not cols[4].startswith("mb/"):  # MBROLA voices: not installable
            accents.add(cols[1])
    var_out = subprocess.run([exe, "--voices=variant"], capture_output=True, text=True,
                             env=env, timeout=30).stdout
    variants = {Path(line.split()[4]).name for line in var_out.splitlines()[1:]
                if len(line.split()) >= 5}
    return [f"{a}+{v}" for a in ESPEAK_ACCENTS if a in accents
            for v in ESPEAK_VARIANTS if v in variants]


@lru_cache(maxsize=None)
def _discover(engine: str, prefix: str | None) -> tuple[Speaker, ...]:
    try:
        voices = {"flite": _flite_voices, "festival": _festival_voices,
                  "espeak": _espeak_voices}[engine]()
    except FileNotFoundError:
        return ()
    return tuple(Speaker(f"{engine}_{v}", engine, v) for v in voices)


def list_speakers(engines: tuple[str, ...] | list[str] | None = None) -> list[Speaker]:
    """Every speaker actually available here for ``engines`` (default: all), in a fixed
    order. Raises ValueError for an unknown engine name."""
    engines = tuple(engines) if engines else ENGINES
    bad = [e for e in engines if e not in ENGINES]
    if bad:
        raise ValueError(f"unknown engine(s) {bad}; choose from {list(ENGINES)}")
    out: list[Speaker] = []
    for e in engines:
        out.extend(_discover(e, os.environ.get(PREFIX_ENV)))
    return out


def derive_speakers(base: Speaker, n: int) -> list[Speaker]:
    """The ``n`` derived speakers of recorded voice ``base`` (ids ``<base>~v1..vn``; see
    :mod:`flexicodec.data.variants`). ValueError for an espeak-ng voice or a derived ``base``."""
    if base.variant is not None or base.engine not in RECORDED_ENGINES:
        raise ValueError(f"{base.id}: only voices of {RECORDED_ENGINES} have derived speakers")
    return [Speaker(variant_id(base.id, k), base.engine, base.voice, draw_variant(base.id, k))
            for k in range(1, n + 1)]


def get_speaker(speaker_id: str) -> Speaker:
    """Speaker by id (``flite_slt``, ``espeak_en-us+m3``, derived ``flite_slt~v2``, ...),
    checked to be available."""
    parsed = parse_variant_id(speaker_id)
    if parsed is not None:
        return derive_speakers(get_speaker(parsed[0]), parsed[1])[-1]
    engine = speaker_id.split("_", 1)[0]
    if engine not in ENGINES:
        raise ValueError(f"{speaker_id!r}: unknown engine prefix (expected one of {ENGINES})")
    for s in list_speakers([engine]):
        if s.id == speaker_id:
            return s
    raise ValueError(f"speaker {speaker_id!r} is not available on this machine")


# --------------------------------------------------------------------------- synthesis
def _scheme_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _espeak_rate(pace: float) -> list[str]:
    """espeak-ng speaking-rate arguments for ``pace`` (words per minute, default 175)."""
    return [] if pace == 1.0 else ["-s", str(int(round(ESPEAK_WPM * pace)))]


def _flite_rate(voice: str, pace: float) -> list[str]:
    """flite speaking-rate arguments for ``pace``: the voice's duration stretch / pace."""
    stretch = FLITE_DURATION_STRETCH.get(voice, 1.0) / pace
    return [] if pace == 1.0 else ["--setf", f"duration_stretch={stretch:.6g}"]


def _festival_rate(pace: float) -> str:
    """Scheme setting festival's speaking rate for ``pace`` before one SynthText: the
    global ``Duration_Stretch`` (the voice's own value / pace; diphone and cluster voices)
    and hts_engine's speed ``-r`` (HTS voices, which ignore ``Duration_Stretch``); each voice
    reads only its own one."""
    return (f"(Parameter.set 'Duration_Stretch (/ flexicodec_stretch {pace:.6g}))\n"
            f"(set! hts_engine_params (append flexicodec_hts_params "
            f"(list (list \"-r\" {pace:.6g}))))")


def _synth_files(texts: list[str], speaker: Speaker, tmp: Path,
                 paces: list[float]) -> list[Path]:
    """Engine wavs of ``texts`` in ``tmp``. No text is ever parsed as a command-line option
    (a sentence starting with "-"): espeak-ng reads each text from a file (``-f``, the same
    audio as the text argument), flite's ``-t`` takes the next argument as the text verbatim
    (``-f`` would split it into utterances differently), festival reads a Scheme string."""
    outs = [tmp / f"{i:05d}.wav" for i in range(len(texts))]
    if speaker.engine == "flite":
        exe = find_tool("flite")
        for t, o, pace in zip(texts, outs, paces):
            _run([exe, "-voice", speaker.voice, *_flite_rate(speaker.voice, pace),
                  "-o", str(o), "-t", t])
    elif speaker.engine == "espeak":
        exe = find_tool("espeak-ng")
        for i, (t, o, pace) in enumerate(zip(texts, outs, paces)):
            (tmp / f"{i:05d}.txt").write_text(t + "\n", encoding="utf-8")
            _run([exe, "-v", speaker.voice, *_espeak_rate(pace), "-w", str(o),
                  "-f", str(tmp / f"{i:05d}.txt")])
            # (-q would suppress the -w output)
    elif speaker.engine == "festival":
        # one festival process for the whole batch: voice loading dominates per-call cost
        paced = any(p != 1.0 for p in paces)   # at pace 1 the script is the engine default
        lines = [f"(voice_{speaker.voice})"]
        if paced:
            lines += ["(defvar hts_engine_params nil)",  # unbound unless an HTS voice loaded
                      "(defvar flexicodec_hts_params hts_engine_params)",
                      "(defvar flexicodec_stretch (if (Parameter.get 'Duration_Stretch) "
                      "(Parameter.get 'Duration_Stretch) 1))"]
        for t, o, pace in zip(texts, outs, paces):
            if paced:
                lines.append(_festival_rate(pace))
            lines.append(f"(utt.save.wave (SynthText {_scheme_string(t)}) "
                         f"{_scheme_string(str(o))} 'riff)")
        script = tmp / "batch.scm"
        script.write_text("\n".join(lines) + "\n")
        _run([find_tool("festival"), "--libdir", str(festival_libdir()), "-b", str(script)],
             timeout=60 + 30 * len(texts))
    else:
        raise ValueError(f"unknown engine {speaker.engine!r}")
    return outs


def _per_text(values: list[float] | None, n: int, default: float, name: str) -> list[float]:
    """``values`` checked to hold one finite number per text, or ``default`` for each."""
    if values is None:
        return [default] * n
    out = [float(v) for v in values]
    if len(out) != n or not all(np.isfinite(out)):
        raise ValueError(f"{name}: expected {n} finite numbers (one per text), got {values!r}")
    return out


def synthesize(texts: list[str], speaker: Speaker | str,
               config: PostprocessConfig | None = None, paces: list[float] | None = None,
               levels_db: list[float] | None = None) -> list[np.ndarray]:
    """Synthesize each text with ``speaker``; returns float32 mono arrays [T] at
    ``config.sample_rate`` (16 kHz), loudness-normalised and silence-trimmed.

    ``paces`` (optional, one per text) is the speaking rate relative to the engine's
    default (1.0; 1.35 = 35 % faster, 0.75 = slower; valid range ``PACE_LIMITS``);
    ``levels_db`` (optional, one per text) overrides ``config.target_rms_db``.
    A derived speaker (``speaker.variant``) renders each text at ``pace x variant.tempo``
    and applies :func:`flexicodec.data.variants.apply_variant` (pitch and formant shift) to the
    engine's output, before the same :func:`postprocess` as every voice.

    Raises SynthError if an engine fails or produces no speech for a text.
    """
    config = config or PostprocessConfig()
    if isinstance(speaker, str):
        speaker = get_speaker(speaker)
    if isinstance(texts, str):
        raise TypeError("synthesize expects a list of texts")
    for t in texts:
        if not t or not t.strip():
            raise ValueError("cannot synthesize an empty text")
    paces = _per_text(paces, len(texts), 1.0, "paces")
    levels = _per_text(levels_db, len(texts), config.target_rms_db, "levels_db")
    if not all(PACE_LIMITS[0] <= p <= PACE_LIMITS[1] for p in paces):
        raise ValueError(f"paces must lie in {PACE_LIMITS}, got {paces}")
    if not texts:
        return []
    variant = speaker.variant
    if variant is not None:
        paces = [p * variant.tempo for p in paces]
        if not all(PACE_LIMITS[0] <= p <= PACE_LIMITS[1] for p in paces):
            raise ValueError(f"paces x {speaker.id}'s tempo {variant.tempo} must lie in "
                             f"{PACE_LIMITS}, got {paces}")
    with tempfile.TemporaryDirectory(prefix="flexicodec-synth-") as d:
        files = _synth_files([re.sub(r"\s+", " ", t).strip() for t in texts], speaker, Path(d),
                             paces)
        out = []
        for t, f, level in zip(texts, files, levels):
            if not f.is_file() or f.stat().st_size <= 44:
                raise SynthError(f"{speaker.id} produced no audio for {t[:60]!r}")
            x, sr = sf.read(str(f), dtype="float32", always_2d=False)
            try:
                x = to_mono(x)
                if variant is not None:
                    x = apply_variant(resample(x, sr, config.sample_rate), config.sample_rate,
                                      variant)
                    sr = config.sample_rate
                out.append(postprocess(x, sr, replace(config, target_rms_db=level)))
            except AudioError as exc:
                raise SynthError(f"{speaker.id} on {t[:60]!r}: {exc}") from exc
    return out


# --------------------------------------------------------------------------- conditioning
def postprocess(x: np.ndarray, sr: int, config: PostprocessConfig | None = None) -> np.ndarray:
    """Resample mono ``x`` [T] to ``config.sample_rate``, trim leading/trailing silence
    (keeping ``edge_pad_s``), shorten internal silences to ``max_silence_s`` and normalise
    loudness (RMS of speech frames → ``target_rms_db``, peak ≤ ``peak``). Returns float32 [T'].

    Raises AudioError for empty, non-finite or all-silent input.
    """
    c = config or PostprocessConfig()
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 1 or x.size == 0:
        raise AudioError(f"expected non-empty mono audio, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise AudioError("audio contains NaN or infinite samples")
    x = resample(x, sr, c.sample_rate)
    sr = c.sample_rate
    hop = max(1, int(sr * c.frame_ms / 1000))
    n = len(x) // hop
    if n == 0:
        raise AudioError("audio shorter than one analysis frame")
    frames = x[: n * hop].reshape(n, hop)
    rms = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-20)
    db = 20 * np.log10(rms)
    if db.max() < -80:
        raise AudioError("audio is silent")
    voiced = db > db.max() + c.silence_db
    idx = np.flatnonzero(voiced)
    pad = int(round(c.edge_pad_s * 1000 / c.frame_ms))
    max_sil = int(round(c.max_silence_s * 1000 / c.frame_ms))
    keep = np.zeros(n, dtype=bool)
    keep[max(0, idx[0] - pad): min(n, idx[-1] + pad + 1)] = True
    # shorten internal silent runs longer than max_sil frames to max_sil frames (centred)
    i = idx[0]
    while i <= idx[-1]:
        if not voiced[i]:
            j = i
            while j <= idx[-1] and not voiced[j]:
                j += 1
            run = j - i
            if run > max_sil:
                drop_from = i + max_sil // 2
                keep[drop_from: drop_from + run - max_sil] = False
            i = j
        else:
            i += 1
    y = frames[keep].reshape(-1)
    speech_rms = float(np.sqrt(np.mean(frames[voiced].astype(np.float64) ** 2)))
    gain = 10 ** (c.target_rms_db / 20) / max(speech_rms, 1e-8)
    peak = float(np.max(np.abs(y))) * gain
    if peak > c.peak:
        gain *= c.peak / peak
    return (y * gain).astype(np.float32)


__all__ = ["Speaker", "PostprocessConfig", "SynthError", "list_speakers", "get_speaker",
           "derive_speakers", "RECORDED_ENGINES",
           "synthesize", "postprocess", "synth_env", "synth_prefix", "find_tool",
           "festival_libdir", "ENGINES", "PREFIX_ENV", "PACE_LIMITS"]
