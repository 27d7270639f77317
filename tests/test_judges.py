"""The model judges of the evaluations (codec.metrics): resemblyzer speaker similarity and
speechmos DNSMOS on real synthesized speech, their NaN / missing-package behaviour, and the
paired bootstrap over SIM and DNSMOS."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from flexicodec.codec.eval import metrics

torch.set_num_threads(1)

SENTENCE_A = "The quick brown fox jumps over the lazy dog near the river bank."
SENTENCE_B = "She sells sea shells by the sea shore every summer morning."
#: DNSMOS tiles clips shorter than 9.01 s and scores 9.01-s windows with a 1-s hop: a clip
#: of 4.8 s tiles to 9.6 s, one window, so the test stays fast
DNSMOS_CLIP_S = 4.8


@pytest.fixture(scope="module")
def voices() -> dict[str, np.ndarray]:
    """16 kHz clips: two sentences by flite slt, sentence A by flite rms and espeak-ng."""
    from flexicodec.data.synth import list_speakers, synthesize
    have = {s.id for s in list_speakers()}
    need = ("flite_slt", "flite_rms", "espeak_en-us+m1")
    if not all(v in have for v in need):
        pytest.skip(f"needs the synthesizers of {need} (run scripts/setup.sh)")
    slt_a, slt_b = synthesize([SENTENCE_A, SENTENCE_B], "flite_slt")
    return {"slt_a": slt_a, "slt_b": slt_b, "rms_a": synthesize([SENTENCE_A], "flite_rms")[0],
            "espeak_a": synthesize([SENTENCE_A], "espeak_en-us+m1")[0]}


def test_speaker_similarity_same_voice_beats_other_voices(voices):
    emb = {k: metrics.speaker_embedding(v) for k, v in voices.items()}
    for e in emb.values():
        assert e.shape == (metrics.SPEAKER_EMBEDDING_DIM,) and np.isfinite(e).all()
        assert np.linalg.norm(e) == pytest.approx(1.0, abs=1e-4)
    sim = metrics.cosine_similarity
    itself = sim(metrics.speaker_embedding(voices["slt_a"].copy()), emb["slt_a"])
    same = sim(emb["slt_a"], emb["slt_b"])                       # same voice, other sentence
    other = [sim(emb["slt_a"], emb["rms_a"]), sim(emb["slt_a"], emb["espeak_a"]),
             sim(emb["slt_b"], emb["rms_a"])]                   # other voices
    print(f"SIM itself {itself:.3f}, same voice {same:.3f}, other voices "
          f"{', '.join(f'{o:.3f}' for o in other)}")
    assert itself == pytest.approx(1.0, abs=1e-5)
    assert same > 0.85 and same > max(other) + 0.15
    # the cached encoder is the one model of this process
    assert metrics.voice_encoder() is metrics.voice_encoder()


def test_speaker_similarity_unscorable_is_nan(voices):
    for silent in (np.zeros(0, np.float32), np.zeros(16000, np.float32),
                   np.full(16000, np.nan, np.float32)):
        assert np.isnan(metrics.speaker_embedding(silent)).all()
    good = metrics.speaker_embedding(voices["slt_a"])
    assert np.isnan(metrics.cosine_similarity(metrics.speaker_embedding(np.zeros(8000)), good))
    assert np.isnan(metrics.cosine_similarity(np.zeros(4), np.ones(4)))   # zero vector


def test_dnsmos_clean_beats_noisy(voices):
    n = int(DNSMOS_CLIP_S * metrics.SAMPLE_RATE)
    clean = np.concatenate([voices["slt_a"], voices["slt_b"]])[:n]
    noisy = clean + np.random.default_rng(0).normal(0, 0.1, n).astype(np.float32)
    c, z = metrics.dnsmos(clean), metrics.dnsmos(noisy)        # noisy exceeds [-1, 1]: clipped
    print(f"DNSMOS clean {c}, noisy {z}")
    assert set(c) == set(metrics.DNSMOS_KEYS)
    assert all(1.0 <= v <= 5.0 for v in (*c.values(), *z.values()))
    assert c["ovrl"] > z["ovrl"] + 0.3 and c["bak"] > z["bak"] + 1.0
    assert all(np.isnan(v) for v in metrics.dnsmos(np.zeros(0, np.float32)).values())
    both = metrics.audio_judges((clean, False, True))
    assert both["embedding"] is None and both["dnsmos"] == pytest.approx(c)
    means = metrics.dnsmos_means([c, z, metrics.dnsmos(np.zeros(0))])
    assert means["unscored"] == 1 and means["ovrl"] == pytest.approx((c["ovrl"] + z["ovrl"]) / 2)


def test_missing_judge_package_is_a_clear_error(monkeypatch, tmp_path):
    from flexicodec.codec.eval.evaluate import evaluate_codec
    monkeypatch.setitem(sys.modules, "speechmos.dnsmos", None)   # import now fails
    with pytest.raises(ModuleNotFoundError, match=r"speechmos.*pip install -e '\.\[eval\]'"):
        metrics.check_judges(dnsmos=True)
    metrics.check_judges(speaker_sim=True, dnsmos=False)         # the other judge is there
    # the evaluation fails on it before touching the model or the data
    with pytest.raises(ModuleNotFoundError, match="--no-dnsmos"):
        evaluate_codec(None, str(tmp_path / "no_corpus"), device="cpu", progress=False)


def test_paired_bootstrap_compares_sim_and_dnsmos():
    from flexicodec.codec.eval.evaluate import paired_bootstrap
    utts = []
    for i in range(6):
        t = "one two three"
        utts.append({"text": t,
                     "good": {"hyp": t, "hyp_rvq1": t, "stoi": 0.9,
                              "speaker_similarity": 0.9 + 0.01 * i, "dnsmos": {"ovrl": 3.0}},
                     "bad": {"hyp": t, "hyp_rvq1": t, "stoi": 0.9,
                             "speaker_similarity": 0.7 + 0.01 * i, "dnsmos": {"ovrl": 2.5}},
                     "unscored": {"hyp": t, "hyp_rvq1": t, "stoi": 0.9,
                                  "speaker_similarity": float("nan") if i == 0 else 0.8,
                                  "dnsmos": None}})
    c = paired_bootstrap({"per_utterance": utts}, "good", "bad", n_boot=300)
    assert c["sim"]["delta"] == pytest.approx(0.2) and c["sim"]["p_a_better"] == 1.0
    assert c["sim"]["ci_low"] == pytest.approx(0.2) and c["dnsmos"]["delta"] == pytest.approx(0.5)
    assert c["dnsmos"]["p_a_better"] == 1.0
    # a condition with any unscored utterance is not compared on that metric
    u = paired_bootstrap({"per_utterance": utts}, "good", "unscored", n_boot=10)
    assert "sim" not in u and "dnsmos" not in u and "stoi" in u


def test_codec_eval_reports_dnsmos(tiny_corpus, tmp_path):
    """flexicodec eval with DNSMOS on (speaker similarity off): originals and reconstructions
    scored, in the JSON and the table; one utterance, in-process, to stay fast."""
    from flexicodec.codec.asr.model import PhonemeASR, PhonemeASRConfig
    from flexicodec.codec.config import FlexiCodecConfig
    from flexicodec.codec.eval.evaluate import evaluate_codec, write_report
    from flexicodec.codec.model import FlexiCodec
    torch.manual_seed(0)
    cfg = FlexiCodecConfig.tiny()
    cfg.semantic.asr_path = str(PhonemeASR(PhonemeASRConfig.tiny()).save_pretrained(
        tmp_path / "asr"))
    res = evaluate_codec(FlexiCodec(cfg), str(tiny_corpus), "train", [12.5], max_utts=1,
                         workers=1, device="cpu", progress=False, speaker_sim=False)
    _, mpath = write_report(res, tmp_path / "eval")
    (c,), pu = res["conditions"], res["per_utterance"][0]
    od = res["original_dnsmos"]
    print(f"DNSMOS original {od}, untrained codec {pu[c['condition']]['dnsmos']}")
    assert od["unscored"] == 0 and pu["dnsmos_original"]["ovrl"] == pytest.approx(od["ovrl"])
    assert 1 <= c["dnsmos_ovrl"] <= 5 and c["dnsmos_unscored"] == 0
    assert c["dnsmos_ovrl"] < od["ovrl"]            # an untrained codec sounds worse
    assert pu[c["condition"]]["dnsmos"]["bak"] == pytest.approx(c["dnsmos_bak"])
    assert c["speaker_similarity"] is None and pu[c["condition"]]["speaker_similarity"] is None
    assert res["speaker_similarity"] == "not computed (--no-speaker-sim)"
    table = mpath.read_text()
    assert f"| {c['dnsmos_ovrl']:.2f} | " in table and f"OVRL {od['ovrl']:.2f}" in table
