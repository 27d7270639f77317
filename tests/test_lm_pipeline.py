"""Speech LM end to end on the tiny corpus with a tiny random codec: tokenize (two rates,
resumable, bad files counted) → train-tokenizer → train (CLI) → generate (CLI)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from codec.config import FlexiCodecConfig
from codec.model import FlexiCodec
from codec.pretrained import CheckpointError
from lm.cli import main as lm_main
from lm.data import load_tokenized, read_info
from lm.model import SpeechLM, load_lm

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
    tok = tmp_path / "tok"
    args = ["tokenize", "--data", str(corpus), "--codec", str(codec_dir), "--out", str(tok),
            "--split", "train,test", "--shard-size", "8", "--batch-size", "4"]
    assert lm_main(args + ["--frame-rate", "12.5", "6.25"]) == 0
    info = json.loads((tok / "rate_6.25" / "info.json").read_text())
    codec = FlexiCodec.from_pretrained(codec_dir)
    assert info["codec_identity"] == codec.identity
    assert info["splits"]["train"]["skipped"] == 1
    ds_hi, ds_lo = (load_tokenized(tok / f"rate_{r}", "train") for r in ("12.5", "6.25"))
    n_train = sum(r["split"] == "train" for r in rows) - 1
    assert len(ds_hi) == len(ds_lo) == n_train
    for row in ds_lo:
        assert len(row["semantic_codes"]) == len(row["token_lengths"]) > 0
        assert max(row["semantic_codes"]) < codec.semantic_vocab_size
        assert 1 <= min(row["token_lengths"]) and max(row["token_lengths"]) <= codec.max_group
        assert sum(row["token_lengths"]) == row["num_frames"]
    tokens = lambda ds: sum(len(r["semantic_codes"]) for r in ds)  # noqa: E731
    assert tokens(ds_lo) < tokens(ds_hi)
    # a rerun skips the finished shards (not rewritten)
    shard = tok / "rate_6.25" / "train" / "shard_00000"
    stamp = (shard / "shard_stats.json").stat().st_mtime_ns
    assert lm_main(args + ["--frame-rate", "6.25"]) == 0
    assert (shard / "shard_stats.json").stat().st_mtime_ns == stamp
    assert read_info(str(tok))["codec_identity"] == codec.identity

    # tokenizer + LM training through the CLI (both rates at once)
    assert lm_main(["train-tokenizer", "--data", str(corpus), "--out", str(tmp_path / "spm"),
                    "--vocab-size", "200"]) == 0
    run = tmp_path / "run"
    assert lm_main(["train", "--config", "configs/lm/tiny.yaml", "--data", str(tok),
                    "--run-dir", str(run), "--max-steps", "6", "--cpu", "--valid-split", "test",
                    "--tokenizer", str(tmp_path / "spm")]) == 0
    logs = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("eval_semantic_loss" in r for r in logs)
    model, tk = load_lm(run / "model", codec=codec)
    assert model.config.codec_identity == codec.identity

    out = tmp_path / "codes.npz"
    wav = corpus / rows[0]["audio"]
    assert lm_main(["generate", "--model", str(run / "model"), "--codec", str(codec_dir),
                    "--text", "Hello there, 2 cats.", "--frame-rate", "6.25", "--out", str(out),
                    "--max-tokens", "20", "--seed", "0", "--prompt-wav", str(wav),
                    "--prompt-text", rows[0]["text"]]) == 0
    z = np.load(out)
    assert z["semantic_codes"].shape == z["token_lengths"].shape
    assert 1 <= len(z["semantic_codes"]) <= 20
    audio = codec.decode_from_codes(torch.from_numpy(z["semantic_codes"])[None],
                                    torch.zeros(1, 0, len(z["semantic_codes"]), dtype=torch.long),
                                    torch.from_numpy(z["token_lengths"])[None])
    assert audio.shape[-1] == int(z["token_lengths"].sum()) * 1280

    torch.manual_seed(1)
    other = FlexiCodec(FlexiCodecConfig.tiny())
    with pytest.raises(CheckpointError, match="identity"):
        SpeechLM.from_pretrained(run / "model", codec=other)
