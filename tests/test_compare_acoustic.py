"""tts.compare_acoustic end to end on CPU with tiny random models (codec, LM, a masked and a
flow stage) and the tiny synthetic corpus: resynthesis against the codec's reconstructions
and TTS from text, for every stage; the CLI writes its report."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from flexicodec.codec.config import FlexiCodecConfig
from flexicodec.codec.model import FlexiCodec
from flexicodec.lm.model import SpeechLM, SpeechLMConfig
from flexicodec.lm.text_tokenizer import train_text_tokenizer
from flexicodec.tts.acoustic import AcousticConfig, AcousticModel
from flexicodec.tts.acoustic_flow import FlowAcousticModel, FlowConfig
from flexicodec.tts.compare_acoustic import (RECON, compare, load_clips, main, pair_prompts, parse_stage,
                                             to_markdown)
from flexicodec.tts.pipeline import TTS, SynthesisOptions

torch.set_num_threads(1)

TEXTS = ["the quick brown fox jumps over the lazy dog", "hello there, how are you today",
         "one two three four five six seven"] * 4


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    torch.manual_seed(0)
    codec = FlexiCodec(FlexiCodecConfig.tiny()).eval()
    tok = train_text_tokenizer(TEXTS, tmp_path_factory.mktemp("tok"), vocab_size=50)
    lm = SpeechLM(SpeechLMConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                                 intermediate_size=64, num_text=tok.vocab_size,
                                 semantic_size=codec.semantic_vocab_size,
                                 max_group=codec.max_group, max_positions=256,
                                 text_input="bpe")).eval()
    sizes = dict(semantic_vocab_size=codec.semantic_vocab_size, n_q=codec.config.n_q,
                 max_group=codec.max_group)
    masked = AcousticModel(AcousticConfig.tiny(codebook_size=codec.config.rvq_codebook_size,
                                               **sizes)).eval()
    flow = FlowAcousticModel(FlowConfig.tiny(latent_dim=codec.config.latent_dim, steps=2,
                                             **sizes)).eval()
    return codec, (lm, tok), masked, flow


def test_compare_reports_every_stage_against_reconstructions(models, tiny_corpus):
    codec, lm, masked, flow = models
    clips = load_clips(tiny_corpus, None, 6)
    assert len(clips) == 6 and all(c["wav"].dtype == np.float32 for c in clips)
    speakers = [c["speaker"] for c in clips]
    assert speakers[0] == speakers[1]            # speakers with a second recording first
    for c in clips:   # random models make noise; pocketsphinx is slow on long noise
        c["wav"] = c["wav"][:16000]
    opts = SynthesisOptions(max_tokens_per_sentence=6)
    res = compare(codec, lm, {"masked": (masked, {}), "flow": (flow, {})}, clips=clips,
                  sentences=["Hello there."], frame_rates=(12.5,), seed=0,
                  speaker_sim=True, dnsmos=False, workers=1, options=opts)
    assert res["stages"]["masked"]["kind"] == "masked" and res["stages"]["flow"]["kind"] == "flow"
    table = res["resynthesis"]["12.5"]
    assert set(table) == {RECON, "masked", "flow"}
    n = table[RECON]["n"]
    assert n == 6 - res["resynthesis_skipped"] and n >= 2
    for system, row in table.items():
        assert row["n"] == n and 0.0 <= row["wer"] and row["dnsmos_ovrl"] is None
        assert row["speaker_similarity"] is None or -1.0 <= row["speaker_similarity"] <= 1.0
        if system != RECON:
            assert row["delta_wer"] == pytest.approx(row["wer"] - table[RECON]["wer"])
    assert set(res["tts"]) == {"masked", "flow"}
    assert res["tts"]["flow"]["rates"]["12.5"]["n"] == 1
    md = to_markdown(res)
    assert "| 12.5 | reconstruction |" in md and "| 12.5 | flow |" in md
    assert "| 12.5 | masked | 1 |" in md      # the TTS table


def test_compare_cli_writes_report(models, tiny_corpus, tmp_path):
    codec, lm, masked, flow = models
    d = TTS(codec, lm, masked).save_pretrained(tmp_path / "m")
    flow.save_pretrained(tmp_path / "flow")
    sents = tmp_path / "held_out.txt"
    sents.write_text("Hello there.\n")
    out = tmp_path / "out"
    assert main(["--codec", str(d / "codec"), "--lm", str(d / "lm"),
                 "--stage", f"masked={d / 'acoustic'}", "--stage", f"flow={tmp_path / 'flow'}",
                 "--corpus", str(tiny_corpus), "--sentences", str(sents), "--limit", "2",
                 "--rates", "12.5", "--flow-steps", "1", "--max-tokens", "6",
                 "--no-speaker-sim",
                 "--no-dnsmos", "--device", "cpu", "-o", str(out)]) == 0
    res = json.loads((out / "compare_acoustic.json").read_text())
    assert set(res["resynthesis"]["12.5"]) == {RECON, "masked", "flow"}
    assert res["stage_dirs"]["flow"] == str(tmp_path / "flow")
    assert "ΔDNSMOS" in (out / "compare_acoustic.md").read_text()


def test_compare_argument_errors(models):
    assert parse_stage("flow=/x") == ("flow", __import__("pathlib").Path("/x"))
    for bad in ("flow", "=x", f"{RECON}=/x"):
        with pytest.raises(ValueError):
            parse_stage(bad)
    assert pair_prompts(["a", "b", "a", "a"]) == [2, None, 3, 0]
    codec, lm, masked, _ = models
    with pytest.raises(ValueError, match="nothing to measure"):
        compare(codec, lm, {"masked": (masked, {})}, speaker_sim=False, dnsmos=False)
    with pytest.raises(ValueError, match="second|two recordings"):
        from flexicodec.tts.compare_acoustic import resynthesis
        tts = TTS(codec, lm, masked)
        resynthesis({"masked": tts}, [{"wav": np.zeros(16000, np.float32), "text": "a",
                                       "speaker": "s"}], (12.5,), 0, 4.0)
    with pytest.raises(SystemExit):
        main(["--codec", "c", "--lm", "l", "--stage", "a=x", "-o", "o"])   # no data
