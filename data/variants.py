"""Derived speakers: pitch- and formant-shifted versions of a recorded synthesizer voice.

The corpus has only a handful of recorded voices (flite, festival); each of them yields
``voice_variants`` derived speakers. Variant ``k`` of voice ``V`` (speaker id ``V~vk``) is a
fixed :class:`VoiceVariant` drawn from (V, k) alone (:func:`draw_variant`), so it is the same
voice in every corpus whatever the corpus seed:

- ``semitones``: pitch shift, magnitude uniform in ``PITCH_SEMITONES`` (1-4), up for odd k,
  down for even k;
- ``formant``: spectral-envelope scale (vocal-tract-length warp), ``> 1`` moves formants up
  (a shorter vocal tract); uniform in ``FORMANT_UP`` or ``FORMANT_DOWN``, the direction
  alternating every second k, so any four consecutive variants cover the four combinations
  of pitch and formant direction;
- ``tempo``: speaking-rate factor in ``TEMPO_RANGE``, multiplying each item's pace (the
  engine renders it: no time-stretch artefacts).

Signal processing (:func:`apply_variant`; numpy + soxr, no external program): the pitch shift
is a WSOLA time stretch by ``b = 2**(semitones/12)`` followed by resampling by ``1/b``
(what sox's ``pitch`` effect does), which scales F0 *and* the spectral envelope by ``b``;
then every STFT frame gets the smooth gain ``E(f * b / formant) / E(f)`` (``E``: the frame's
cepstrally smoothed magnitude envelope), which moves the envelope to the net scale
``formant`` while the harmonics keep F0 x b. A downward pitch shift by resampling leaves the
band above ``8 kHz * b`` empty (6.35 kHz at -4 semitones); levels, trimming and the peak limit
are applied afterwards by :func:`flexicodec.data.synth.postprocess` like for every other item.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass

import numpy as np

from flexicodec.common.constants import SAMPLE_RATE
from flexicodec.data.audio import resample

PITCH_SEMITONES = (1.0, 4.0)     # |pitch shift| of a variant, semitones
FORMANT_UP = (1.03, 1.12)        # spectral-envelope scale when formants move up
FORMANT_DOWN = (0.88, 0.97)      # ... and when they move down
TEMPO_RANGE = (0.92, 1.08)       # speaking-rate factor of a variant
#: the draw design, recorded in corpus.json so a change of it is never resumed silently
DESIGN = {"pitch_semitones": list(PITCH_SEMITONES), "formant_up": list(FORMANT_UP),
          "formant_down": list(FORMANT_DOWN), "tempo": list(TEMPO_RANGE), "version": 1}
VARIANT_SEP = "~v"
_VARIANT_RE = re.compile(r"^(?P<base>.+)~v(?P<k>[1-9][0-9]*)$")


@dataclass(frozen=True)
class VoiceVariant:
    """One derived speaker's transformation: ``index`` (k >= 1), ``semitones`` (pitch
    shift), ``formant`` (spectral-envelope scale, > 1 = formants up), ``tempo`` (speaking
    rate factor)."""
    index: int
    semitones: float
    formant: float
    tempo: float

    def as_dict(self) -> dict:
        return asdict(self)


def variant_id(base_id: str, index: int) -> str:
    """Speaker id of variant ``index`` of voice ``base_id``: ``flite_slt~v3``."""
    return f"{base_id}{VARIANT_SEP}{index}"


def parse_variant_id(speaker_id: str) -> tuple[str, int] | None:
    """``(base_id, index)`` for a variant id, None for a plain voice id."""
    m = _VARIANT_RE.match(speaker_id)
    return (m["base"], int(m["k"])) if m else None


def draw_variant(base_id: str, index: int) -> VoiceVariant:
    """The variant ``index`` (>= 1) of voice ``base_id``: a function of the two only."""
    if index < 1:
        raise ValueError(f"variant index must be >= 1, got {index}")
    key = int.from_bytes(hashlib.sha1(base_id.encode("utf-8")).digest()[:8], "big")
    rng = np.random.default_rng([7, key, index])
    pitch_up = index % 2 == 1                    # k = 1, 3, 5, ...: up
    formant_up = ((index - 1) // 2) % 2 == 0     # k = 1, 2: up; 3, 4: down; ...
    semitones = float(rng.uniform(*PITCH_SEMITONES)) * (1 if pitch_up else -1)
    formant = float(rng.uniform(*(FORMANT_UP if formant_up else FORMANT_DOWN)))
    tempo = float(rng.uniform(*TEMPO_RANGE))
    return VoiceVariant(index, round(semitones, 3), round(formant, 4), round(tempo, 4))


# --------------------------------------------------------------------------- DSP
def _hann(n: int) -> np.ndarray:
    """Periodic Hann window [n] (shifted copies at hop n/2 sum to 1)."""
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)).astype(np.float64)


def time_stretch(x: np.ndarray, factor: float, sr: int = SAMPLE_RATE, frame_ms: float = 30.0,
                 tolerance_ms: float = 10.0) -> np.ndarray:
    """WSOLA time stretch of mono ``x`` [T]: returns ``round(T * factor)`` samples with the
    pitch and spectrum of ``x`` (``factor > 1`` = longer). Each output frame (Hann,
    ``frame_ms``, 50 % overlap) is the input frame within ``tolerance_ms`` of its ideal
    position whose overlapping half best continues the previous one (cross-correlation)."""
    x = np.asarray(x, dtype=np.float64)
    if not 0.25 <= factor <= 4.0:
        raise ValueError(f"time_stretch factor must lie in [0.25, 4], got {factor}")
    out_len = int(round(len(x) * factor))
    if factor == 1.0 or len(x) == 0:
        return x.astype(np.float32)
    n = 2 * int(sr * frame_ms / 2000)
    hs, tol = n // 2, int(sr * tolerance_ms / 1000)
    win = _hann(n)
    pad = n + tol
    xp = np.concatenate([np.zeros(pad), x, np.zeros(pad + n + int(np.ceil(hs / factor)))])
    n_frames = int(np.ceil((out_len + hs) / hs)) + 1
    out = np.zeros(n_frames * hs + n)
    energy_floor = 1e-10 * n
    prev = None
    for k in range(n_frames):
        ideal = pad + int(round((k - 1) * hs / factor))   # frame 0 starts hs before t=0
        ideal = min(max(ideal, tol), len(xp) - n - tol)
        pos = ideal
        if prev is not None:
            # the half of the natural continuation that the new frame overlaps
            target = xp[prev + hs: prev + 2 * hs]
            if float(target @ target) > energy_floor:
                region = xp[ideal - tol: ideal + tol + hs]
                pos = ideal - tol + int(np.argmax(np.correlate(region, target, "valid")))
        out[k * hs: k * hs + n] += win * xp[pos: pos + n]
        prev = pos
    return out[hs: hs + out_len].astype(np.float32)


def shift_pitch(x: np.ndarray, sr: int, semitones: float) -> np.ndarray:
    """Pitch shift of mono ``x`` [T] by ``semitones`` at the same duration (WSOLA stretch by
    ``b = 2**(semitones/12)``, then resampling by ``1/b``): F0 and the whole spectrum scale
    by ``b``. Returns float32 [about T]."""
    if semitones == 0:
        return np.asarray(x, dtype=np.float32)
    b = 2.0 ** (semitones / 12.0)
    y = time_stretch(x, b, sr)
    return resample(y, sr * b, sr)


def warp_envelope(x: np.ndarray, sr: int, factor: float, n_fft: int = 512, hop: int = 128,
                  lifter_ms: float = 1.8, max_gain_db: float = 18.0) -> np.ndarray:
    """Scale the spectral envelope of mono ``x`` [T] in frequency by ``factor`` (> 1: up),
    keeping its harmonics (F0): each STFT frame is multiplied by ``E(f / factor) / E(f)``,
    ``E`` its log-magnitude smoothed by keeping the cepstrum below ``lifter_ms`` (shorter
    than any pitch period up to 550 Hz), the gain limited to ``max_gain_db``. Returns
    float32 [T]."""
    x = np.asarray(x, dtype=np.float64)
    if factor == 1.0 or len(x) == 0:
        return x.astype(np.float32)
    if not 0.5 <= factor <= 2.0:
        raise ValueError(f"envelope factor must lie in [0.5, 2], got {factor}")
    if n_fft % hop:
        raise ValueError(f"hop {hop} must divide n_fft {n_fft}")
    win = _hann(n_fft).astype(np.float32)
    half, r = n_fft // 2, n_fft // hop
    n_frames = int(np.ceil((len(x) + half) / hop)) + 1
    xp = np.concatenate([np.zeros(half), x, np.zeros((n_frames + r) * hop - half - len(x))]
                        ).astype(np.float32)
    idx = np.arange(n_fft)[None, :] + hop * np.arange(n_frames)[:, None]
    spec = np.fft.rfft(xp[idx] * win, axis=1)                       # [F, K]
    mag = np.abs(spec)
    floor = max(float(mag.max()), 1e-12) * 1e-5                   # -100 dB under the peak
    cep = np.fft.irfft(np.log(np.maximum(mag, floor)), n=n_fft, axis=1)
    nc = max(2, int(sr * lifter_ms / 1000))
    cep[:, nc + 1: n_fft - nc] = 0.0
    env = np.fft.rfft(cep, axis=1).real                            # smooth log envelope
    k = np.arange(env.shape[1], dtype=np.float64)
    src = np.clip(k / factor, 0, k[-1])                            # read E at f / factor
    i0 = np.minimum(np.floor(src).astype(int), len(k) - 2)
    frac = (src - i0).astype(np.float32)
    env_w = env[:, i0] * (1 - frac) + env[:, i0 + 1] * frac
    lim = max_gain_db / 20 * np.log(10)
    gain = np.exp(np.clip(env_w - env, -lim, lim))
    frames = np.fft.irfft(spec * gain, n=n_fft, axis=1) * win        # [F, n_fft]
    # weighted overlap-add: hop divides n_fft, so frame k's j-th hop-block lands on block k+j
    blocks = frames.reshape(n_frames, r, hop)
    wblocks = (win.astype(np.float64) ** 2).reshape(r, hop)
    y = np.zeros((n_frames + r, hop))
    norm = np.zeros((n_frames + r, hop))
    for j in range(r):
        y[j: j + n_frames] += blocks[:, j]
        norm[j: j + n_frames] += wblocks[j]
    y, norm = y.reshape(-1), norm.reshape(-1)
    return (y[half: half + len(x)] / np.maximum(norm[half: half + len(x)], 1e-8)
            ).astype(np.float32)


def apply_variant(x: np.ndarray, sr: int, variant: VoiceVariant) -> np.ndarray:
    """Mono ``x`` [T] at ``sr`` spoken by ``variant``: pitch scaled by
    ``2**(semitones/12)`` and spectral envelope by ``formant``, same length (the tempo is
    rendered by the engine). Returns float32 [about T]; levels are left to postprocess."""
    b = 2.0 ** (variant.semitones / 12.0)
    y = shift_pitch(x, sr, variant.semitones)
    return warp_envelope(y, sr, variant.formant / b)


__all__ = ["VoiceVariant", "draw_variant", "variant_id", "parse_variant_id", "apply_variant",
           "shift_pitch", "time_stretch", "warp_envelope", "DESIGN", "PITCH_SEMITONES",
           "FORMANT_UP", "FORMANT_DOWN", "TEMPO_RANGE"]
