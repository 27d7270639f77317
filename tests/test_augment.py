"""Timbre augmentation (flexicodec.codec.augment): neutral settings give the crop back, the
formant scale moves the spectrum the way it says, levels and lengths are kept, the draw is
seeded, only the chosen fraction changes, bad settings fail clearly."""
from __future__ import annotations

import math

import pytest
import torch

from flexicodec.codec.augment import TimbreAugmentConfig, timbre_augment

SR = 16000


def _speechlike(batch: int = 4, seconds: float = 1.0) -> torch.Tensor:
    """Harmonics of 120 Hz under two formant-like resonances, varying over time: [B, T]."""
    t = torch.arange(int(SR * seconds)) / SR
    x = torch.zeros_like(t)
    for k in range(1, 60):
        f = 120.0 * k
        amp = math.exp(-((f - 700) / 250) ** 2) + 0.6 * math.exp(-((f - 1800) / 300) ** 2) + 0.02
        x = x + amp * torch.sin(2 * math.pi * f * t + k)
    x = 0.1 * x / x.abs().max() * (1 + 0.3 * torch.sin(2 * math.pi * 3 * t))
    return x[None].repeat(batch, 1)


def _centroid(y: torch.Tensor) -> torch.Tensor:
    spec = torch.stft(y, 1024, 256, window=torch.hann_window(1024), return_complex=True).abs()
    f = torch.fft.rfftfreq(1024, 1 / SR)
    return (spec * f[None, :, None]).sum((1, 2)) / spec.sum((1, 2))


def _aug(x, seed=0, **kw):
    return timbre_augment(x, TimbreAugmentConfig(**{"prob": 1.0, **kw}),
                          torch.Generator().manual_seed(seed), SR)


def test_neutral_settings_return_the_crop():
    x = _speechlike()
    y = _aug(x, formant_range=(1.0, 1.0), eq_db=0.0, tilt_db=0.0)
    assert y.shape == x.shape and torch.allclose(y, x, atol=1e-5)
    assert torch.equal(timbre_augment(x, TimbreAugmentConfig(prob=0.0), torch.Generator(), SR), x)


def test_formant_scale_moves_the_spectrum_and_keeps_level_and_f0():
    x = _speechlike()
    c0 = _centroid(x)[0]
    up = _aug(x, formant_range=(1.15, 1.15), eq_db=0.0, tilt_db=0.0)
    down = _aug(x, formant_range=(0.87, 0.87), eq_db=0.0, tilt_db=0.0)
    assert _centroid(up)[0] > c0 * 1.05 and _centroid(down)[0] < c0 * 0.95
    rms = lambda v: v.square().mean(-1).sqrt()          # noqa: E731
    assert torch.allclose(rms(up), rms(x), rtol=1e-4)
    # the harmonics stay at multiples of 120 Hz: the spectrum's peak bin is one of them
    peak = torch.fft.rfft(up[0]).abs().argmax().item()   # 1-Hz bins over a 1-s crop
    assert peak % 120 == 0


def test_draws_are_seeded_and_only_the_chosen_fraction_changes():
    x = _speechlike(batch=64) * 9.0                                   # near full scale
    a, b, c = _aug(x, seed=1), _aug(x, seed=1), _aug(x, seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.abs().max() <= 0.99 + 1e-6
    half = timbre_augment(x, TimbreAugmentConfig(prob=0.5), torch.Generator().manual_seed(3), SR)
    same = (half == x).all(-1)
    assert 0 < int(same.sum()) < 64                                    # some kept, some not
    changed = ~same
    assert ((half[changed] - x[changed]).abs().amax(-1) > 1e-3).all()


@pytest.mark.parametrize("kw", [{"prob": 1.5}, {"formant_range": [1.2, 1.1]},
                                {"formant_range": [0.3, 1.0]}, {"eq_db": -1.0},
                                {"lifter": 1}, {"hop": 2048}, {"peak": 0.0}])
def test_bad_settings_fail_clearly(kw):
    with pytest.raises(ValueError, match="timbre_augment"):
        TimbreAugmentConfig(**kw)


def test_augment_report_on_a_corpus(tiny_corpus, tmp_path):
    """scripts/augment_report.py: SIM of augmented to original below 1, WER of both, the
    voice-pair scale, report files; a missing split is one error line."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "augment_report.py"
    out = tmp_path / "rep"
    r = subprocess.run([sys.executable, str(script), "--data", str(tiny_corpus), "--split",
                        "test_unseen", "--max-utts", "4", "-o", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rep = json.loads(out.with_suffix(".json").read_text())
    assert rep["utterances"] == 4 and rep["timbre_augment"]["prob"] == 1.0
    assert 0.0 < rep["sim_augmented_to_original"] < 0.999
    assert 0.0 <= rep["wer_original"] and 0.0 <= rep["wer_augmented"]
    assert rep["pairs_same_speaker"] + rep["pairs_derived_speaker"] + \
        rep["pairs_other_voice"] == 6                                   # 4 choose 2
    assert "SIM, augmented to its original" in out.with_suffix(".md").read_text()
    assert rep["codec_mel_original"] is None                            # no --model
    # --model: a codec's mel distance on the originals and on the augmented audio
    from flexicodec.codec.config import FlexiCodecConfig
    from flexicodec.codec.model import FlexiCodec
    torch.manual_seed(0)
    FlexiCodec(FlexiCodecConfig.tiny()).save_pretrained(tmp_path / "codec")
    r = subprocess.run([sys.executable, str(script), "--data", str(tiny_corpus), "--split",
                        "test_unseen", "--max-utts", "2", "--model", str(tmp_path / "codec"),
                        "--num-quantizers", "1", "-o", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rep = json.loads(out.with_suffix(".json").read_text())
    assert rep["codec_mel_original"] > 0 and rep["codec_mel_augmented"] > 0
    assert rep["num_quantizers"] == 1 and "codec mel distance, augmented" in r.stdout
    bad = subprocess.run([sys.executable, str(script), "--data", str(tiny_corpus), "--split",
                          "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "augment_report: error:" in bad.stderr
