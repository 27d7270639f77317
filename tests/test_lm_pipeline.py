"""Speech LM end to end on the tiny corpus with a tiny random codec: tokenize (two rates in one
pass, acoustic and phoneme columns stored, resumable, a rate added later, bad files counted)
→ train-tokenizer → train (CLI; BPE and phoneme input) → generate (CLI) → the codec's codes
file → ``flexicodec decode``."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from flexicodec.codec.cli import main as codec_main
from flexicodec.codec.codes_file import load_codes
from flexicodec.codec.config import FlexiCodecConfig
from flexicodec.codec.model import FlexiCodec
from flexicodec.common.pretrained import CheckpointError
from flexicodec.lm.cli import main as lm_main
from flexicodec.lm.data import load_tokenized, read_info
from flexicodec.lm.model import SpeechLM, load_lm
from flexicodec.lm.tokenize import Setting, collate_audio_files, encode_settings

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def codec_dir(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("codec") / "codec"
    FlexiCodec(FlexiCodecConfig.tiny()).save_pretrained(d)
    return d


def test_tokenize_train_generate(tiny_corpus, codec_dir, tmp_path):
    corpus = tmp_path / "corpus"
    shutil.copytree(tiny_corpus, corpus)
    # one utterance made too short to encode (valid header, 50 samples): skipped, counted
    rows = [json.loads(l) for l in (corpus / "metadata.jsonl").read_text().splitlines()]
    bad = next(r for r in rows if r["split"] == "train")
    sf.write(corpus / bad["audio"], np.zeros(50, dtype=np.float32), 16000)
    held = next(s for s in ("valid", "test") if any(r["split"] == s for r in rows))
    tok = tmp_path / "tok"
    args = ["tokenize", "--data", str(corpus), "--codec", str(codec_dir), "--out", str(tok),
            "--split", f"train,{held}", "--shard-size", "8", "--batch-size", "4"]
    # one pass for both rates, audio loaded by a worker process
    assert lm_main(args + ["--frame-rate", "12.5", "6.25", "--num-workers", "1"]) == 0
    info = json.loads((tok / "rate_6.25" / "info.json").read_text())
    codec = FlexiCodec.from_pretrained(codec_dir)
    assert info["codec_identity"] == codec.identity
    assert info["rvq_codebook_size"] == codec.config.rvq_codebook_size
    assert info["num_quantizers"] == codec.config.n_q
    assert info["splits"]["train"]["skipped"] == 1
    assert info["splits"]["train"]["reasons"] == {"audio": 1}
    assert info["splits"]["train"]["audio_seconds_per_s"] > 0
    ds_hi, ds_lo = (load_tokenized(tok / f"rate_{r}", "train") for r in ("12.5", "6.25"))
    n_train = sum(r["split"] == "train" for r in rows) - 1
    assert len(ds_hi) == len(ds_lo) == n_train
    assert ds_lo.features["acoustic_codes"].feature.feature.dtype == "int16"
    durs = list(ds_lo["duration"])
    assert durs == sorted(durs, reverse=True)  # shards are sorted by duration
    from flexicodec.lm.phoneme_tokenizer import text_to_phonemes
    assert ds_lo["phonemes"] == text_to_phonemes(ds_lo["text"])   # the LM's phoneme input
    assert info["phoneme_voice"] == "en-us"
    for row in ds_lo:
        T = len(row["semantic_codes"])
        assert T == len(row["token_lengths"]) > 0
        assert max(row["semantic_codes"]) < codec.semantic_vocab_size
        assert 1 <= min(row["token_lengths"]) and max(row["token_lengths"]) <= codec.max_group
        assert sum(row["token_lengths"]) == row["num_frames"]
        ac = np.asarray(row["acoustic_codes"])
        assert ac.shape == (codec.config.n_q, T)
        assert 0 <= ac.min() and ac.max() < codec.config.rvq_codebook_size
    tokens = lambda ds: sum(len(r["semantic_codes"]) for r in ds)  # noqa: E731
    assert tokens(ds_lo) < tokens(ds_hi)
    info_hi = json.loads((tok / "rate_12.5" / "info.json").read_text())
    for inf, ds in ((info_hi, ds_hi), (info, ds_lo)):  # each folder counts its own tokens
        assert inf["splits"]["train"]["tokens"] == tokens(ds)
    assert info_hi["splits"]["train"]["avg_frame_rate"] > 12.0
    assert abs(info["splits"]["train"]["avg_frame_rate"] - 6.25) < 1.0
    # the stored codes are the codec's: decoding a row gives audio of its length
    r0 = ds_lo[0]
    audio = codec.decode_from_codes(torch.tensor(r0["semantic_codes"])[None],
                                    torch.tensor(r0["acoustic_codes"])[None],
                                    torch.tensor(r0["token_lengths"])[None])
    assert audio.shape[-1] == r0["num_frames"] * 1280
    # a rerun skips the finished shards (not rewritten); a rate added later encodes only it
    shard = tok / "rate_6.25" / "train" / "shard_00000"
    stamp = (shard / "shard_stats.json").stat().st_mtime_ns
    assert lm_main(args + ["--frame-rate", "6.25", "8.33", "--num-workers", "0"]) == 0
    assert (shard / "shard_stats.json").stat().st_mtime_ns == stamp
    assert len(load_tokenized(tok / "rate_8.33", "train")) == n_train
    assert json.loads((tok / "rate_6.25" / "info.json").read_text())["splits"]["train"] \
        == info["splits"]["train"]  # counts of resumed shards are kept
    assert read_info(str(tok))["codec_identity"] == codec.identity
    with pytest.raises(SystemExit):  # another shard size would mix two layouts
        lm_main(args[:-4] + ["--shard-size", "5", "--frame-rate", "6.25"])

    # tokenizer + LM training through the CLI (both rates at once)
    assert lm_main(["train-tokenizer", "--data", str(corpus), "--out", str(tmp_path / "spm"),
                    "--vocab-size", "200"]) == 0
    run = tmp_path / "run"
    assert lm_main(["train", "--config", "configs/lm/tiny.yaml", "--data", str(tok),
                    "--run-dir", str(run), "--max-steps", "6", "--cpu", "--valid-split", held,
                    "--tokenizer", str(tmp_path / "spm"), "--text-input", "bpe"]) == 0
    logs = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("eval_semantic_loss" in r for r in logs)
    model, tk = load_lm(run / "model", codec=codec)
    assert model.config.codec_identity == codec.identity
    assert model.config.text_input == "bpe" and tk.text_input == "bpe"
    assert (run / "model" / "text_tokenizer.model").is_file()

    # phoneme input (the config's default): vocabulary built from the phonemes column,
    # stored beside the model; packed rows
    prun = tmp_path / "prun"
    assert lm_main(["train", "--config", "configs/lm/tiny.yaml", "--data", str(tok),
                    "--run-dir", str(prun), "--max-steps", "4", "--cpu",
                    "--valid-split", held]) == 0
    pmodel, ptk = load_lm(prun / "model", codec=codec)
    assert pmodel.config.text_input == "phoneme" and ptk.text_input == "phoneme"
    vocab = json.loads((prun / "model" / "phoneme_vocab.json").read_text())
    seen = {p for r in load_tokenized(tok, "train") for p in r["phonemes"]}
    assert vocab["symbols"][0] == "<unk>" and set(vocab["symbols"][1:]) == seen
    assert pmodel.config.num_text == len(vocab["symbols"])

    out = tmp_path / "codes.npz"
    wav = corpus / rows[0]["audio"]
    for m in (run / "model", prun / "model"):
        assert lm_main(["generate", "--model", str(m), "--codec", str(codec_dir),
                        "--text", "Hello there, 2 cats.", "--text", "Dr. Smith's 3rd cat!",
                        "--frame-rate", "6.25", "--out", str(out),
                        "--max-tokens", "20", "--seed", "0", "--prompt-wav", str(wav),
                        "--prompt-text", rows[0]["text"]]) == 0
        # the codec's own codes file: two utterances, lengths per token, no acoustic stages
        cf = load_codes(out)
        cf.check_model(codec)
        assert cf.semantic_codes.shape == cf.token_lengths.shape and cf.batch_size == 2
        assert cf.num_quantizers == 0 and cf.acoustic_codes.shape[1] == 0
        assert cf.target_frame_rate == 6.25
        for b in range(2):
            n = int((cf.token_lengths[b] > 0).sum())
            assert 1 <= n <= 20 and (cf.token_lengths[b, n:] == 0).all()
            assert cf.num_frames[b] == cf.token_lengths[b].sum()
            assert cf.num_samples[b] == cf.num_frames[b] * 1280
        # ... which `flexicodec decode` turns into audio of those frames
        dec = tmp_path / f"dec_{m.parent.name}"
        assert codec_main(["decode", str(out), "-o", str(dec), "--model", str(codec_dir)]) == 0
        for b in range(2):
            y, sr = sf.read(dec / f"codes_{b}.wav")
            assert sr == 16000 and y.shape[0] == cf.num_samples[b]

    torch.manual_seed(1)
    other = FlexiCodec(FlexiCodecConfig.tiny())
    with pytest.raises(CheckpointError, match="identity"):
        SpeechLM.from_pretrained(run / "model", codec=other)


def test_encode_settings_equals_encode_per_rate(codec_dir):
    """One feature pass for several settings gives exactly codec.encode at each setting."""
    codec = FlexiCodec.from_pretrained(codec_dir).eval()
    g = np.random.default_rng(0)
    wavs = [(0.1 * g.standard_normal(n)).astype(np.float32) for n in (40000, 23000, 9000)]
    b = collate_audio_files([(i, torch.from_numpy(w), None) for i, w in enumerate(wavs)]
                            + [(3, None, "x.wav: unreadable")])
    assert b["index"] == [0, 1, 2] and b["bad"] == [(3, "x.wav: unreadable")]
    settings = [Setting(frame_rate=12.5), Setting(frame_rate=6.25), Setting(threshold=0.9)]
    encs = encode_settings(codec, b["wav"], b["lengths"], settings)
    for s, e in zip(settings, encs):
        ref = codec.encode(wavs, 16000, threshold=s.threshold, frame_rate=s.frame_rate)
        for f in ("semantic_codes", "acoustic_codes", "token_lengths", "token_mask",
                  "frame_rate", "num_frames", "num_samples"):
            assert torch.equal(getattr(ref, f), getattr(e, f)), (s, f)
    assert encs[1].token_mask.sum() < encs[0].token_mask.sum()
    with pytest.raises(ValueError, match="exactly one"):
        Setting()
    with pytest.raises(ValueError, match="frame_rate"):
        Setting(frame_rate=20.0)
    with pytest.raises(RuntimeError, match="eval"):
        encode_settings(codec.train(), b["wav"], b["lengths"], settings)
