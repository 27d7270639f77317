"""TTS pipeline end to end with the real (tiny, random) FlexiCodec, LM and acoustic stage:
audio, streaming == offline, seeds, bad inputs, CLI; and the acoustic trainer on
``flexicodec-tts encode-corpus`` (= ``flexicodec-lm tokenize``) output of the real codec."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from flexicodec.codec.config import FlexiCodecConfig
from flexicodec.codec.model import FlexiCodec
from flexicodec.data.audio import AudioError
from flexicodec.lm.model import SpeechLM, SpeechLMConfig
from flexicodec.lm.text_tokenizer import train_text_tokenizer
from flexicodec.tts.acoustic import AcousticConfig, AcousticModel
from flexicodec.tts.pipeline import TTS, SynthesisOptions, TTSError
from flexicodec.tts.speakers import load_speakers, save_speakers

torch.set_num_threads(1)
HOP = 1280


@pytest.fixture(scope="module")
def codec():
    torch.manual_seed(0)
    return FlexiCodec(FlexiCodecConfig.tiny()).eval()


def acoustic_config(codec) -> AcousticConfig:
    """The tiny acoustic stage sized for ``codec``'s vocabularies."""
    return AcousticConfig.tiny(semantic_vocab_size=codec.semantic_vocab_size,
                               n_q=codec.config.n_q, codebook_size=codec.config.rvq_codebook_size,
                               max_group=codec.max_group)


def voice_wav(seconds: float = 1.5, f0: float = 140.0) -> np.ndarray:
    """A voiced-like test signal: harmonics with a slow vibrato and an amplitude envelope."""
    t = np.arange(int(seconds * 16000)) / 16000.0
    ph = 2 * np.pi * np.cumsum(f0 * (1 + 0.05 * np.sin(2 * np.pi * 3 * t))) / 16000.0
    x = sum(np.sin(k * ph) / k for k in range(1, 6)) * (0.5 + 0.5 * np.sin(2 * np.pi * 2 * t))
    return (0.2 * x).astype(np.float32)


TEXTS = ["the quick brown fox jumps over the lazy dog", "hello there, how are you today",
         "speech synthesis with a dynamic frame rate", "one two three four five six seven",
         "she sells sea shells by the sea shore"] * 4


@pytest.fixture(scope="module")
def tts(tmp_path_factory, codec):
    d = tmp_path_factory.mktemp("tok")
    tok = train_text_tokenizer(TEXTS, d, vocab_size=60)
    torch.manual_seed(0)
    lm = SpeechLM(SpeechLMConfig(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                                 intermediate_size=128, num_text=tok.vocab_size,
                                 semantic_size=codec.semantic_vocab_size,
                                 max_group=codec.max_group, max_positions=512,
                                 text_input="bpe")).eval()
    acoustic = AcousticModel(acoustic_config(codec)).eval()
    # the shipped-speaker prompt is real codec output (the codec's encode API)
    prompts = []
    for rate in (12.5, 6.25):
        enc = codec.encode(voice_wav(), 16000, frame_rate=rate).item(0)
        prompts.append({"text": "hello there", "frame_rate": float(enc.frame_rate[0]),
                        "semantic_codes": enc.semantic_codes[0].tolist(),
                        "token_lengths": enc.token_lengths[0].tolist(),
                        "acoustic_codes": enc.acoustic_codes[0].tolist()})
    adir = tmp_path_factory.mktemp("ac") / "acoustic"
    acoustic.save_pretrained(adir)
    save_speakers(adir, {"alice": prompts})
    opts = SynthesisOptions(max_tokens_per_sentence=40)
    return TTS(codec, (lm, tok), AcousticModel.from_pretrained(adir),
               speakers=load_speakers(adir), options=opts)


@pytest.fixture(scope="module")
def tts_flow(tts, codec):
    """The same pipeline with a (tiny, random) flow-matching acoustic stage."""
    from flexicodec.tts.acoustic_flow import FlowAcousticModel, FlowConfig, latent_stats
    torch.manual_seed(0)
    flow = FlowAcousticModel(FlowConfig.tiny(
        semantic_vocab_size=codec.semantic_vocab_size, latent_dim=codec.config.latent_dim,
        n_q=codec.config.n_q, max_group=codec.max_group))
    s, ln, ac = tts.speakers["alice"][0].tensors()
    flow.set_latent_stats(*latent_stats(codec.latent_from_codes(s, ac, ln),
                                        torch.ones(1, s.numel(), dtype=torch.bool)))
    return TTS(codec, (tts.lm, tts.tokenizer), flow.eval(), speakers=tts.speakers,
               options=SynthesisOptions(max_tokens_per_sentence=40))


def test_flow_stage_stream_equals_offline_and_loads_by_kind(tts_flow, tts, tmp_path):
    """The flow stage in the pipeline: streaming == offline for one seed, seeds matter, the
    stage reaches the audio, and TTS.from_pretrained picks the stage from acoustic/config.json."""
    from flexicodec.tts.acoustic_flow import FlowAcousticModel
    text = "Speech synthesis with a dynamic frame rate. One two three."
    a, _ = tts_flow.synthesize(text, seed=3, frame_rate=12.5)
    assert np.all(np.isfinite(a)) and np.abs(a).max() > 1e-3
    chunks = list(tts_flow.stream(text, seed=3, frame_rate=12.5))
    assert len(chunks) > 2
    assert np.array_equal(np.concatenate(chunks), a)
    assert np.array_equal(tts_flow.synthesize(text, seed=3, frame_rate=12.5)[0], a)
    c, _ = tts_flow.synthesize(text, seed=4, frame_rate=12.5)
    assert not (a.size == c.size and np.array_equal(a, c))
    # same LM tokens (same seed), other acoustic stage → other audio of the same length
    m, _ = tts.synthesize(text, seed=3, frame_rate=12.5)
    assert m.size == a.size and not np.allclose(m, a)
    # flow options reach the sampler
    import dataclasses
    euler = TTS(tts_flow.codec, (tts_flow.lm, tts_flow.tokenizer), tts_flow.acoustic,
                speakers=tts_flow.speakers,
                options=dataclasses.replace(tts_flow.options, flow_sampler="euler",
                                            flow_steps=2, guidance_scale=0.0))
    e, _ = euler.synthesize(text, seed=3, frame_rate=12.5)
    assert e.size == a.size and not np.array_equal(e, a)
    # prompts from audio and re-encoded at a threshold give the flow stage its latent prompt
    audio2, _ = tts_flow.synthesize("Hello there.", speaker="alice", threshold=0.9, seed=0)
    assert audio2.size > 0 and np.all(np.isfinite(audio2))
    d = tts_flow.save_pretrained(tmp_path / "models")
    assert json.loads((d / "acoustic" / "config.json").read_text())["config"]["kind"] == "flow"
    loaded = TTS.from_pretrained(d, options=tts_flow.options)
    assert isinstance(loaded.acoustic, FlowAcousticModel)
    assert np.array_equal(loaded.synthesize(text, seed=3, frame_rate=12.5)[0], a)
    # a flow stage sized for another codec is refused
    bad = FlowAcousticModel(dataclasses.replace(tts_flow.acoustic.config, latent_dim=16))
    with pytest.raises(TTSError, match="latent_dim"):
        TTS(tts_flow.codec, (tts_flow.lm, tts_flow.tokenizer), bad)


def test_render_tokens_both_stages(tts, tts_flow, codec):
    """The acoustic stage + codec on given tokens (the LM bypassed): length, seeds, prompt."""
    enc = codec.encode(voice_wav(2.0, 180.0), 16000, frame_rate=8.33).item(0)
    sem, ln = enc.semantic_codes[0], enc.token_lengths[0]
    prompt = tts.speakers["alice"][0].tensors()
    for t in (tts, tts_flow):
        x = t.render_tokens(sem, ln, prompt=prompt, seed=1)
        assert x.dtype == np.float32 and x.size == int(ln.sum()) * HOP
        assert np.array_equal(t.render_tokens(sem, ln, prompt=prompt, seed=1), x)
        assert not np.array_equal(t.render_tokens(sem, ln, seed=1), x)
    with pytest.raises(TTSError, match="matching"):
        tts.render_tokens(sem, ln[:-1])


def test_end_to_end_audio(tts):
    audio, sr = tts.synthesize("Hello there. The dog jumps!", seed=0)
    assert sr == 16000 and audio.dtype == np.float32 and audio.ndim == 1
    assert np.all(np.isfinite(audio)) and np.abs(audio).max() > 1e-3
    # two sentences: each 1..40 tokens of 1..8 frames, plus a 200 ms pause
    assert 2 * HOP + 3200 <= audio.size <= 2 * 40 * 8 * HOP + 3200
    assert audio.size % HOP == (3200 % HOP)
    # no clicks at the edges: fades to zero
    assert abs(audio[0]) < 0.05 and abs(audio[-1]) < 0.05
    outs = tts.synthesize(["One two.", "Three four."], speaker="alice", seed=1)
    assert isinstance(outs, list) and len(outs) == 2 and all(o[0].size > 0 for o in outs)


def test_stream_equals_offline_and_seed(tts):
    text = "Speech synthesis with a dynamic frame rate. One two three."
    a, _ = tts.synthesize(text, seed=3, frame_rate=12.5)
    chunks = list(tts.stream(text, seed=3, frame_rate=12.5))
    assert len(chunks) > 2  # really chunked
    assert np.array_equal(np.concatenate(chunks), a)
    assert tts.last_timing["first_chunk_s"] <= tts.last_timing["total_s"]
    b, _ = tts.synthesize(text, seed=3, frame_rate=12.5)
    assert np.array_equal(a, b)
    c, _ = tts.synthesize(text, seed=4, frame_rate=12.5)
    assert not (a.size == c.size and np.array_equal(a, c))
    # the LM on a StaticCache: the same audio, offline and streamed
    import dataclasses
    static = TTS(tts.codec, (tts.lm, tts.tokenizer), tts.acoustic, speakers=tts.speakers,
                 options=dataclasses.replace(tts.options, lm_cache="static"))
    assert np.array_equal(static.synthesize(text, seed=3, frame_rate=12.5)[0], a)
    assert np.array_equal(np.concatenate(list(static.stream(text, seed=3, frame_rate=12.5))), a)


def test_prompt_wav(tts, tmp_path):
    t = np.arange(48000) / 48000.0
    wav = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    p = tmp_path / "ref48k.wav"
    sf.write(p, wav, 48000)  # another sample rate: resampled
    audio, _ = tts.synthesize("Hello there.", prompt_wav=p, prompt_text="hello there", seed=0)
    assert audio.size > 0 and np.all(np.isfinite(audio))
    audio2, _ = tts.synthesize("Hello there.", prompt_wav=p, prompt_text="hello there",
                               threshold=0.9, seed=0)
    assert audio2.size > 0


def test_bad_inputs(tts, tmp_path):
    import dataclasses
    phoneme_lm = SpeechLM(dataclasses.replace(tts.lm.config, text_input="phoneme"))
    with pytest.raises(TTSError, match="text input"):   # a BPE tokenizer for a phoneme LM
        TTS(tts.codec, (phoneme_lm, tts.tokenizer), tts.acoustic)
    with pytest.raises(TTSError, match="empty"):
        tts.synthesize("   ")
    with pytest.raises(TTSError, match="speakable"):
        tts.synthesize("?!... ---")
    with pytest.raises(TTSError, match="unknown speaker"):
        tts.synthesize("hello", speaker="nobody")
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(32000, dtype=np.float32), 16000)
    with pytest.raises(TTSError, match="silent"):
        tts.synthesize("hello", prompt_wav=silent, prompt_text="hello")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    with pytest.raises(AudioError, match="unreadable"):
        tts.synthesize("hello", prompt_wav=bad, prompt_text="hello")
    loud = tmp_path / "loud.wav"
    sf.write(loud, 0.3 * np.ones(32000, dtype=np.float32), 16000)
    with pytest.raises(TTSError, match="transcript"):
        tts.synthesize("hello", prompt_wav=loud)
    with pytest.raises(TTSError, match="not both"):
        tts.synthesize("hello", frame_rate=6.25, threshold=0.9)
    with pytest.raises(TTSError, match="frame_rate"):
        tts.synthesize("hello", frame_rate=50)


def test_evaluate_reports_every_rate(tts, tmp_path):
    from flexicodec.tts.evaluate import evaluate, to_markdown
    old = tts.options.max_tokens_per_sentence
    tts.options.max_tokens_per_sentence = 6  # short random audio keeps pocketsphinx fast
    try:
        # DNSMOS (~3 s a clip here) is tested in test_evaluate_judges below
        res = evaluate(tts, ["Hello there.", "One two three."], frame_rates=(12.5, 6.25),
                       stream_every=1, out_dir=tmp_path, dnsmos=False, workers=1)
    finally:
        tts.options.max_tokens_per_sentence = old
    assert set(res["rates"]) == {"12.5", "6.25"}
    for r in res["rates"].values():
        assert 0.0 <= r["wer"] and r["rtf"] > 0 and 0 < r["rtf_ar"] < r["rtf"]
        assert r["first_chunk_s"] > 0
        # SIM against the default speaker's prompt; random audio may hold no speech for the
        # speaker encoder's VAD: then NaN, counted as unscored
        sims = np.array([u["speaker_similarity"] for u in r["per_utterance"]], float)
        assert r["speaker_similarity_unscored"] == int(np.isnan(sims).sum())
        assert r["dnsmos_ovrl"] is None and r["prompt_dnsmos"] is None
    assert "'alice'" in res["speaker_similarity"] and res["speaker_prompt"] == "alice"
    assert res["dnsmos_judge"] == "not computed (--no-dnsmos)"
    assert len(list((tmp_path / "wavs").glob("*.wav"))) == 4
    md = to_markdown(res)
    assert "| 6.25 | 2 |" in md and "| SIM | DNSMOS |" in md


def test_evaluate_judges(tts):
    """The TTS eval's SIM reference is the decoded voice prompt; DNSMOS of the synthesized
    audio and of the prompt; without a shipped speaker SIM is reported as not computed."""
    from flexicodec.tts.evaluate import evaluate, prompt_audio, to_markdown
    ref = prompt_audio(tts, "alice", 12.5)
    assert ref.dtype == np.float32 and ref.size >= 0.5 * voice_wav().size
    old = tts.options.max_tokens_per_sentence
    tts.options.max_tokens_per_sentence = 6
    try:
        res = evaluate(tts, ["Hello there."], frame_rates=(12.5,), speaker="alice",
                       stream_every=0, workers=1)
        bare = TTS(tts.codec, (tts.lm, tts.tokenizer), tts.acoustic, speakers={},
                   options=tts.options)
        assert prompt_audio(bare, None, 12.5) is None
        res_bare = evaluate(bare, ["Hello there."], frame_rates=(12.5,), stream_every=0,
                            dnsmos=False, workers=1)
    finally:
        tts.options.max_tokens_per_sentence = old
    r = res["rates"]["12.5"]
    assert 1 <= r["dnsmos_ovrl"] <= 5 and 1 <= r["dnsmos_bak"] <= 5 and r["dnsmos_unscored"] == 0
    assert 1 <= r["prompt_dnsmos"]["ovrl"] <= 5
    assert r["per_utterance"][0]["dnsmos"]["sig"] == pytest.approx(r["dnsmos_sig"])
    assert f"| {r['dnsmos_ovrl']:.2f} |" in to_markdown(res)
    assert "decoded voice prompt scores OVRL" in to_markdown(res)
    assert res_bare["speaker_similarity"].startswith("not computed (no reference audio")
    rb = res_bare["rates"]["12.5"]
    assert rb["speaker_similarity"] is None and rb["per_utterance"][0]["speaker_similarity"] is None


def test_cli_argument_errors(capsys):
    from flexicodec.tts.cli import main
    with pytest.raises(SystemExit):
        main(["hello"])  # no -o
    with pytest.raises(SystemExit):
        main(["hello", "-o", "x.wav", "--frame-rate", "6", "--threshold", "0.9"])
    with pytest.raises(SystemExit):
        main(["-o", "x.wav"])  # no text


def test_acoustic_trainer_on_tokenized_real_codec(tiny_corpus, codec, tmp_path):
    """encode-corpus (= lm tokenize) with the real codec at two rates → train-acoustic reads
    TOK/rate_*/<split>/shard_N directly → model + speaker prompts → the TTS speaks with them."""
    from flexicodec.common.atomic import read_jsonl
    from flexicodec.tts.cli import main as tts_main
    from flexicodec.tts.codes_data import CodesDataError, load_codes_dataset
    from flexicodec.tts.train_acoustic import TrainConfig, train

    codec_dir = tmp_path / "codec"
    codec.save_pretrained(codec_dir)
    tok = tmp_path / "tok"
    assert tts_main(["encode-corpus", "--data", str(tiny_corpus), "--codec", str(codec_dir),
                     "--out", str(tok), "--split", "train,valid", "--frame-rate", "12.5",
                     "6.25", "--batch-size", "4", "--num-workers", "0"]) == 0
    assert sorted(p.name for p in tok.iterdir()) == ["rate_12.5", "rate_6.25"]
    ds = load_codes_dataset(tok, "train")  # both rate folders at once
    n_train = sum(json.loads(l)["split"] == "train"
                  for l in (tiny_corpus / "metadata.jsonl").read_text().splitlines())
    assert len(ds) == 2 * n_train
    assert len(load_codes_dataset(f"{tok}/rate_12.5,{tok}/rate_6.25", "train")) == len(ds)
    assert len(load_codes_dataset(tok / "rate_6.25", "train")) == n_train

    mc = acoustic_config(codec)
    tc = TrainConfig(batch_size=4, lr=3e-3, warmup_steps=2, max_steps=6, log_every=1,
                     save_every=100, eval_every=3, eval_batches=1, max_tokens=32,
                     speakers_per=1)
    run = tmp_path / "run"
    summary = train(mc, tc, tok, run, cpu=True)
    assert summary["step"] == 6 and np.isfinite(summary["val_loss"])
    logs = [r for r in read_jsonl(run / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in logs] == [1, 2, 3, 4, 5, 6]
    model = AcousticModel.from_pretrained(run / "model")
    speakers = load_speakers(run / "model")
    corpus_speakers = {json.loads(l)["speaker"] for l in
                       (tiny_corpus / "metadata.jsonl").read_text().splitlines()
                       if json.loads(l)["split"] == "train"}
    assert set(speakers) == corpus_speakers
    name = sorted(speakers)[0]
    rates = sorted(p.frame_rate for p in speakers[name])
    assert len(rates) == 2 and rates[0] < 8 < rates[1]  # one prompt per stored rate
    s, ln, ac = speakers[name][0].tensors()
    assert ac.shape == (codec.config.n_q, s.numel())
    # the stored prompt codes are the codec's: they decode, and the trained stage speaks
    assert codec.decode_from_codes(s[None], ac[None], ln[None]).shape[-1] == int(ln.sum()) * HOP
    tk = train_text_tokenizer(TEXTS, tmp_path / "spm", vocab_size=60)
    torch.manual_seed(0)
    lm = SpeechLM(SpeechLMConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                                 intermediate_size=64, num_text=tk.vocab_size,
                                 semantic_size=codec.semantic_vocab_size,
                                 max_group=codec.max_group, max_positions=256,
                                 text_input="bpe")).eval()
    t = TTS(codec, (lm, tk), model, speakers=speakers,
            options=SynthesisOptions(max_tokens_per_sentence=8))
    audio, sr = t.synthesize("Hello there.", speaker=name, frame_rate=6.25, seed=0)
    assert sr == 16000 and audio.size > 0 and np.all(np.isfinite(audio))

    # a model config that does not fit the codec is refused before training
    with pytest.raises(CodesDataError, match="codebook_size"):
        train(AcousticConfig.tiny(semantic_vocab_size=codec.semantic_vocab_size,
                                  n_q=codec.config.n_q, codebook_size=32),
              tc, tok, tmp_path / "bad", cpu=True)
    with pytest.raises(CodesDataError, match="n_q"):
        train(acoustic_config(codec).__class__(**{**acoustic_config(codec).__dict__,
                                                  "n_q": codec.config.n_q + 1}),
              tc, tok, tmp_path / "bad", cpu=True)
    with pytest.raises(CodesDataError, match="no 'test' shards"):
        load_codes_dataset(tok, "test")
    # tokenize output of an older format (no acoustic codes) is refused with a clear message
    old = tmp_path / "old" / "rate_12.5"
    shutil.copytree(tok / "rate_12.5", old)
    shard = old / "train" / "shard_00000"
    from datasets import load_from_disk
    stripped = load_from_disk(str(shard)).remove_columns("acoustic_codes")
    stripped.save_to_disk(str(tmp_path / "stripped"))
    shutil.rmtree(shard)
    shutil.move(str(tmp_path / "stripped"), str(shard))
    with pytest.raises(CodesDataError, match="flexicodec-lm tokenize"):
        load_codes_dataset(old, "train")
