from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from flexicodec.data.audio import AudioError
from flexicodec.data.synth import (PREFIX_ENV, PostprocessConfig, SynthError, list_speakers, postprocess,
                                   synth_env, synthesize)

torch.set_num_threads(1)
SPEAKERS = {s.id: s for s in list_speakers()}
ONE_PER_ENGINE = [sid for sid in ("flite_slt", "festival_kal_diphone",
                                  "festival_cmu_us_slt_arctic_hts", "espeak_en-us+m3")]


@pytest.mark.parametrize("sid", ONE_PER_ENGINE)
def test_synthesize_engine(sid):
    if sid not in SPEAKERS:
        pytest.skip(f"{sid} not installed")
    wavs = synthesize(["The quick brown fox jumps over the lazy dog.", "One more, short."],
                      SPEAKERS[sid])
    assert len(wavs) == 2
    for x in wavs:
        assert x.dtype == np.float32 and x.ndim == 1
        assert 0.5 * 16000 < len(x) < 6 * 16000
        assert np.all(np.isfinite(x)) and np.abs(x).max() <= 0.95 + 1e-4
        rms = np.sqrt(np.mean(x ** 2))
        assert 0.01 < rms < 0.3
    assert len(wavs[0]) > len(wavs[1])


@pytest.mark.parametrize("sid", ONE_PER_ENGINE + ["flite_kal"])
def test_pace_changes_duration(sid):
    """Duration scales as 1/pace on every engine (flite_kal and the festival diphone voices
    have a built-in duration stretch of 1.1 that the pace must scale, not replace)."""
    if sid not in SPEAKERS:
        pytest.skip(f"{sid} not installed")
    text = "The quick brown fox jumps over the lazy dog, then runs into the woods."
    slow, plain, fast = synthesize([text] * 3, SPEAKERS[sid], paces=[0.75, 1.0, 1.35])
    assert len(slow) / len(plain) == pytest.approx(1 / 0.75, abs=0.1)
    assert len(fast) / len(plain) == pytest.approx(1 / 1.35, abs=0.07)


@pytest.mark.parametrize("sid", ONE_PER_ENGINE)
def test_text_starting_with_dash(sid):
    """A sentence starting with "-" (or looking like an engine option) is spoken, never
    parsed as a command-line option; the phonemizer reads it too."""
    if sid not in SPEAKERS:
        pytest.skip(f"{sid} not installed")
    texts = ["- and, - are emoticons.", "-w is not a file name here.", "--help me now."]
    wavs = synthesize(texts, SPEAKERS[sid])
    plain = synthesize(["and, are emoticons."], SPEAKERS[sid])[0]
    assert len(wavs) == 3 and all(len(x) > 0.4 * 16000 for x in wavs)
    assert len(wavs[0]) > 0.6 * len(plain)
    from flexicodec.data.text import phonemize
    assert all(phonemize(texts))


def test_synthesize_levels_and_pace_checks():
    if "flite_slt" not in SPEAKERS:
        pytest.skip("flite not installed")
    quiet, loud = synthesize(["Hello there.", "Hello there."], SPEAKERS["flite_slt"],
                             levels_db=[-33.0, -17.0])
    gain_db = 20 * np.log10(np.sqrt(np.mean(loud ** 2)) / np.sqrt(np.mean(quiet ** 2)))
    assert 14.0 < gain_db <= 16.01 and np.abs(loud).max() <= 0.95 + 1e-4
    with pytest.raises(ValueError, match="paces"):
        synthesize(["a b c"], SPEAKERS["flite_slt"], paces=[1.0, 1.0])
    with pytest.raises(ValueError, match="paces must lie"):
        synthesize(["a b c"], SPEAKERS["flite_slt"], paces=[5.0])


def test_list_speakers_ids():
    if not SPEAKERS:
        pytest.skip("no synthesizer installed")
    for sid, s in SPEAKERS.items():
        assert sid == f"{s.engine}_{s.voice}"
        assert "mb-" not in s.voice  # MBROLA voices are never listed
    with pytest.raises(ValueError, match="unknown engine"):
        list_speakers(["mbrola"])


def test_postprocess_trims_and_normalizes():
    sr = 16000
    t = np.arange(int(0.5 * sr)) / sr
    tone = (0.01 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    sil = np.zeros(sr, dtype=np.float32)  # 1 s silences: at the edges and inside
    x = np.concatenate([sil, tone, sil, tone, sil])
    y = postprocess(x, sr, PostprocessConfig())
    # 2 x 0.5 s tone + one internal gap shortened to 0.3 s + 2 x 0.05 s edge padding
    assert abs(len(y) / sr - 1.4) < 0.03
    assert abs(20 * np.log10(np.sqrt(np.mean(y[y != 0] ** 2))) - (-23.0)) < 1.0
    # resampling from 32 kHz
    y32 = postprocess(np.repeat(x, 2), 32000)
    assert abs(len(y32) - len(y)) < 200
    with pytest.raises(AudioError):
        postprocess(np.zeros(16000, dtype=np.float32), sr)
    with pytest.raises(AudioError):
        postprocess(np.full(100, np.nan, dtype=np.float32), sr)


def test_empty_text_rejected():
    if "flite_slt" not in SPEAKERS:
        pytest.skip("flite not installed")
    with pytest.raises(ValueError):
        synthesize(["  "], SPEAKERS["flite_slt"])


def test_bad_prefix_is_an_error(monkeypatch, tmp_path):
    monkeypatch.setenv(PREFIX_ENV, str(tmp_path / "nope"))
    with pytest.raises(SynthError, match="no usr/"):
        synth_env()


@pytest.mark.skipif(not os.environ.get("FLEXICODEC_TEST_SYNTH_DEBS"),
                    reason="set FLEXICODEC_TEST_SYNTH_DEBS=DIR (from fetch_synth_debs.sh)")
def test_engines_from_private_prefix(tmp_path):
    """All engines run from a dpkg -x prefix in a clean environment (env -i)."""
    debs = os.environ["FLEXICODEC_TEST_SYNTH_DEBS"]
    root = Path(__file__).resolve().parents[1]
    script = (f"source scripts/device_synth_env.sh {debs} {tmp_path}/prefix >/dev/null && "
              "python -c 'from data.synth import list_speakers, synthesize;"
              "s=list_speakers(); e={x.engine for x in s}; assert e=={\"flite\",\"festival\",\"espeak\"}, e;"
              "[synthesize([\"hello from the prefix\"], x) for x in s if x.id in "
              "(\"flite_slt\",\"festival_cmu_us_slt_arctic_hts\",\"espeak_en-gb+f2\")]; print(\"ok\", len(s))'")
    py = os.path.dirname(shutil.which("python") or "/usr/bin/python")
    proc = subprocess.run(["env", "-i", f"HOME={tmp_path}", f"PATH={py}:/bin:/usr/bin",
                           "bash", "-c", script], cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().startswith("ok")


def test_voices_of_other_languages_need_festivals_own_data_dir(tmp_path, monkeypatch, caplog):
    """A prefix's festival voices of other languages are listed only where festival's
    compiled-in data directory is that prefix's library (they load files from it by name);
    elsewhere they are left out with a warning, and the English voices stay."""
    from flexicodec.data import synth

    prefix = tmp_path / "prefix"
    (prefix / "usr" / "bin").mkdir(parents=True)
    (prefix / "usr" / "bin" / "festival").write_text("")
    voices = prefix / "usr" / "share" / "festival" / "voices"
    for lang, v in (("english", "kal_diphone"), ("finnish", "hy_fi_mv_diphone")):
        (voices / lang / v / "festvox").mkdir(parents=True)
        (voices / lang / v / "festvox" / f"{v}.scm").write_text("")
    monkeypatch.setenv(synth.PREFIX_ENV, str(prefix))
    with caplog.at_level("WARNING"):
        got = synth.list_speakers(["festival"])
    assert [s.id for s in got] == ["festival_kal_diphone"]
    assert "hy_fi_mv_diphone" in caplog.text
    monkeypatch.setattr(synth, "FESTIVAL_DATADIR", prefix / "usr" / "share" / "festival")
    synth._discover.cache_clear()
    got = synth.list_speakers(["festival"])
    assert [(s.id, s.language) for s in got] == [("festival_kal_diphone", "en"),
                                                 ("festival_hy_fi_mv_diphone", "fi")]
    synth._discover.cache_clear()
