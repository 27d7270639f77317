"""Derived speakers (data/variants.py): deterministic draws, measured pitch / formant / tempo
changes of real synthesized speech, levels without clipping, and held-out voices whose
variants never leave test_unseen."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from flexicodec.data.corpus import CorpusConfig, build_corpus, iter_plan, read_metadata, resolve_speakers
from flexicodec.data.synth import Speaker, derive_speakers, get_speaker, list_speakers, synthesize
from flexicodec.data.text import load_sentences
from flexicodec.data.variants import (FORMANT_DOWN, FORMANT_UP, PITCH_SEMITONES, TEMPO_RANGE,
                                      VoiceVariant, apply_variant, draw_variant, parse_variant_id,
                                      time_stretch, variant_id)

torch.set_num_threads(1)
SR = 16000
SPEAKERS = {s.id: s for s in list_speakers()}
TEXT = "The quick brown fox jumps over the lazy dog, then runs into the woods."


def _need(sid: str) -> Speaker:
    if sid not in SPEAKERS:
        pytest.skip(f"{sid} not installed")
    return SPEAKERS[sid]


def _with(base: Speaker, semitones: float, formant: float, tempo: float = 1.0) -> Speaker:
    return Speaker(variant_id(base.id, 1), base.engine, base.voice,
                   VoiceVariant(1, semitones, formant, tempo))


def f0_median(x: np.ndarray) -> float:
    """Median F0 (Hz) of the clearly voiced 40 ms frames (normalised autocorrelation
    peak > 0.6 between 60 and 400 Hz)."""
    n, lo, hi = 640, SR // 400, SR // 60
    f0 = []
    for s in range(0, len(x) - n, 160):
        fr = x[s:s + n].astype(np.float64)
        fr = fr - fr.mean()
        e = float(fr @ fr)
        if e <= 1e-6:
            continue
        ac = np.correlate(fr, fr, "full")[n - 1:] / e
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] > 0.6:
            f0.append(SR / lag)
    assert len(f0) > 50
    return float(np.median(f0))


def _envelope(x: np.ndarray, n: int = 512) -> np.ndarray:
    """Cepstrally smoothed long-term log power spectrum of the speech frames."""
    w = np.hanning(n)
    fr = np.stack([x[s:s + n] * w for s in range(0, len(x) - n, 128)])
    e = (fr ** 2).sum(1)
    p = (np.abs(np.fft.rfft(fr[e > e.max() * 1e-3], axis=1)) ** 2).mean(0)
    c = np.fft.irfft(np.log(p + 1e-12))
    c[30:-30] = 0
    return np.fft.rfft(c).real


def envelope_scale(base: np.ndarray, other: np.ndarray) -> float:
    """The frequency scale s (0.8-1.25) that best maps the envelope of ``base`` onto that of
    ``other`` (correlation of log spectra, 300-5000 Hz)."""
    a, b = _envelope(base), _envelope(other)
    bins = np.arange(len(a))
    band = (bins * SR / 512 > 300) & (bins * SR / 512 < 5000)
    grid = np.arange(0.8, 1.25, 0.005)
    corr = [np.corrcoef(np.interp(bins / s, bins, a)[band], b[band])[0, 1] for s in grid]
    return float(grid[int(np.argmax(corr))])


def _speech_db(x) -> float:
    frames = x[: len(x) // 160 * 160].reshape(-1, 160).astype(np.float64)
    db = 10 * np.log10(np.mean(frames ** 2, axis=1) + 1e-20)
    return float(10 * np.log10(np.mean(10 ** (db[db > db.max() - 40] / 10))))


def test_draws_are_deterministic_distinct_and_in_range():
    a = [draw_variant("flite_slt", k) for k in range(1, 9)]
    assert a == [draw_variant("flite_slt", k) for k in range(1, 9)]
    assert a != [draw_variant("flite_awb", k) for k in range(1, 9)]
    assert len({(v.semitones, v.formant) for v in a}) == len(a)
    for v in a:
        assert PITCH_SEMITONES[0] <= abs(v.semitones) <= PITCH_SEMITONES[1]
        assert (v.semitones > 0) == (v.index % 2 == 1)
        assert (FORMANT_UP[0] <= v.formant <= FORMANT_UP[1]
                or FORMANT_DOWN[0] <= v.formant <= FORMANT_DOWN[1])
        assert TEMPO_RANGE[0] <= v.tempo <= TEMPO_RANGE[1]
    # four consecutive variants: every combination of pitch and formant direction
    assert {(v.semitones > 0, v.formant > 1) for v in a[:4]} == {(True, True), (False, True),
                                                                 (True, False), (False, False)}
    with pytest.raises(ValueError):
        draw_variant("flite_slt", 0)
    assert parse_variant_id("festival_kal_diphone~v12") == ("festival_kal_diphone", 12)
    assert parse_variant_id("espeak_en-us+m3") is None


def test_derived_speaker_ids():
    slt = _need("flite_slt")
    d = derive_speakers(slt, 3)
    assert [s.id for s in d] == ["flite_slt~v1", "flite_slt~v2", "flite_slt~v3"]
    assert all(s.base_id == "flite_slt" and s.voice == "slt" for s in d)
    assert get_speaker("flite_slt~v2") == d[1]
    assert d[1].slug == "flite_slt-v2"
    esp = next((s for s in SPEAKERS.values() if s.engine == "espeak"), None)
    if esp is not None:
        with pytest.raises(ValueError, match="only voices of"):
            derive_speakers(esp, 2)


def test_time_stretch_length_and_pitch():
    t = np.arange(SR) / SR
    x = (0.5 * np.sin(2 * np.pi * 150 * t) * (1 + 0.3 * np.sin(2 * np.pi * 3 * t)))
    for factor in (0.8, 1.26):
        y = time_stretch(x, factor, SR)
        assert len(y) == round(SR * factor)
        assert f0_median(y) == pytest.approx(150, rel=0.02)


@pytest.mark.parametrize("sid", ["flite_slt", "festival_kal_diphone"])
def test_variant_shifts_pitch_and_formants(sid):
    """Pitch up/down moves the measured median F0 by 2**(semitones/12) and leaves the
    spectral envelope in place; a formant shift moves the envelope by its factor and leaves
    F0 alone; every output keeps the level conditioning (no clipping)."""
    base = _need(sid)
    ref = synthesize([TEXT], base)[0]
    f0 = f0_median(ref)
    cases = [(3.0, 1.0), (-3.0, 1.0), (0.0, 1.1), (0.0, 0.9), (2.0, 1.08)]
    outs = [synthesize([TEXT], _with(base, s, f))[0] for s, f in cases]
    for (semi, formant), y in zip(cases, outs):
        assert f0_median(y) / f0 == pytest.approx(2 ** (semi / 12), rel=0.04), (semi, formant)
        assert envelope_scale(ref, y) == pytest.approx(formant, abs=0.025), (semi, formant)
        assert abs(len(y) - len(ref)) < 0.03 * len(ref)
        assert np.abs(y).max() <= 0.95 + 1e-4
        assert np.mean(np.abs(y) > 0.94) < 1e-3          # no flat-topped (clipped) stretch
        assert _speech_db(y) == pytest.approx(-23.0, abs=1.5)


def test_variant_tempo_and_determinism():
    base = _need("flite_slt")
    ref = synthesize([TEXT], base)[0]
    slow, fast = (synthesize([TEXT], _with(base, 2.0, 1.0, tempo))[0] for tempo in (0.92, 1.08))
    assert len(slow) / len(ref) == pytest.approx(1 / 0.92, abs=0.04)
    assert len(fast) / len(ref) == pytest.approx(1 / 1.08, abs=0.04)
    v = get_speaker("flite_slt~v1")
    a, b = synthesize([TEXT, "One more, short."], v), synthesize([TEXT, "One more, short."], v)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert len(a[0]) / len(ref) == pytest.approx(1 / v.variant.tempo, abs=0.05)
    assert not np.array_equal(a[0][: len(ref)], ref[: len(a[0])])
    # apply_variant alone: same length, finite, pitch-neutral at 0 semitones and factor 1
    same = apply_variant(ref, SR, VoiceVariant(1, 0.0, 1.0, 1.0))
    assert np.array_equal(same, ref)


def test_unseen_voice_variants_stay_in_test_unseen(tmp_path):
    """A derived speaker is held out exactly when its voice is: in the speaker list, in the
    plan and in a built corpus; naming a derived speaker as held out is refused."""
    cfg = CorpusConfig(hours=14 / 3600, seed=0, speakers=("flite_slt", "flite_rms"),
                       unseen_speakers=("flite_rms",), voice_variants=2, batch_size=2,
                       sentences_per_item=(1, 1))
    try:
        speakers, unseen = resolve_speakers(cfg)
    except ValueError:
        pytest.skip("flite voices not installed")
    assert {s.id for s in speakers} == {"flite_slt", "flite_slt~v1", "flite_slt~v2",
                                        "flite_rms", "flite_rms~v1", "flite_rms~v2"}
    assert unseen == {"flite_rms", "flite_rms~v1", "flite_rms~v2"}
    tasks = [next(p) for p in [iter_plan(cfg, speakers, unseen, load_sentences()[:3000])]
             for _ in range(120)]
    assert {t.speaker.id for t in tasks} == {s.id for s in speakers}
    for t in tasks:
        held = t.speaker.base_id == "flite_rms"
        assert all((it.split == "test_unseen") == held for it in t.items), t.speaker.id
    for bad in ({"unseen_speakers": ("flite_rms~v1",)}, {"speakers": ("flite_slt~v2",)},
                {"voice_variants": -1}):
        with pytest.raises(ValueError):
            CorpusConfig(hours=1.0, **bad)
    build_corpus(tmp_path / "c", cfg, workers=2, progress=False)
    rows = read_metadata(tmp_path / "c")
    assert any(r["variant"] for r in rows) and any(r["variant"] is None for r in rows)
    for r in rows:
        assert (r["base_speaker"] == "flite_rms") == (r["split"] == "test_unseen"), r
        assert r["speaker"] == (variant_id(r["base_speaker"], r["variant"]["index"])
                                if r["variant"] else r["base_speaker"])
        if r["variant"]:
            assert r["variant"] == get_speaker(r["speaker"]).variant.as_dict()
        info = sf.info(str(tmp_path / "c" / r["audio"]))
        assert info.samplerate == SR and info.subtype == "PCM_16"
    # a variant count other than the corpus' is refused on resume
    with pytest.raises(ValueError, match="other settings.*voice_variants"):
        build_corpus(tmp_path / "c", CorpusConfig(**{**cfg.__dict__, "voice_variants": 3}),
                     workers=1, progress=False)
