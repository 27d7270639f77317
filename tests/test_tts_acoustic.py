"""Acoustic stage: training lowers the loss, masked decoding fills valid codes, I/O."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import synth_code_rows

from flexicodec.common.pretrained import CheckpointError
from flexicodec.common.atomic import read_jsonl
from flexicodec.tts.acoustic import AcousticConfig, AcousticModel, build_batch, predict_acoustic
from flexicodec.tts.codes_data import CodesDataError, load_codes_dataset
from flexicodec.tts.speakers import load_speakers, pick_prompt
from flexicodec.tts.train_acoustic import TrainConfig, load_config, train

torch.set_num_threads(1)

CFG = AcousticConfig.tiny()


def synth_rows(n: int, seed: int = 0, rates=(12.5, 6.25)):
    """Codes where acoustic = f(semantic, length, speaker): learnable, speaker-dependent."""
    return synth_code_rows(n, semantic_vocab_size=CFG.semantic_vocab_size,
                           max_group=CFG.max_group, n_q=CFG.n_q,
                           codebook_size=CFG.codebook_size, seed=seed, rates=rates)


@pytest.fixture(scope="module")
def codes_dir(tmp_path_factory):
    import datasets
    d = tmp_path_factory.mktemp("codes") / "codes"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(synth_rows(60)),
                          "valid": datasets.Dataset.from_dict(synth_rows(4, seed=9))}
                         ).save_to_disk(str(d))
    return d


@pytest.fixture(scope="module")
def trained(codes_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    tc = TrainConfig(batch_size=8, lr=3e-3, warmup_steps=5, max_steps=400, log_every=10,
                     save_every=200, eval_every=200, eval_batches=1, max_tokens=32)
    summary = train(CFG, tc, codes_dir, run, cpu=True)
    return run, summary, tc


def test_training_loss_falls_and_saves(trained):
    run, summary, _ = trained
    logs = [r for r in read_jsonl(run / "metrics.jsonl") if "loss" in r]
    assert logs[0]["step"] == 1 and logs[-1]["step"] == 400
    assert logs[-1]["loss"] < 0.6 * logs[0]["loss"]
    assert summary["val_accuracy"] > 0.3
    model = AcousticModel.from_pretrained(run / "model")
    assert model.config.n_q == CFG.n_q
    spk = load_speakers(run / "model")
    assert set(spk) == {"spk0", "spk1"}
    p = pick_prompt(spk["spk1"], 6.0)
    assert p.frame_rate == 6.25
    s, ln, ac = p.tensors()
    assert ac.shape == (CFG.n_q, s.numel())
    assert (run / "latest").read_text().strip() == "step_00000400"


def test_resume_continues(trained, codes_dir):
    run, _, tc = trained
    tc2 = TrainConfig(**{**tc.__dict__, "max_steps": 410})
    summary = train(CFG, tc2, codes_dir, run, resume=True, cpu=True)
    assert summary["step"] == 410
    steps = [r["step"] for r in read_jsonl(run / "metrics.jsonl") if "loss" in r]
    assert 410 in steps and steps.count(1) == 1  # did not restart from step 1


def test_masked_decoding_fills_valid_codes(trained):
    run, _, _ = trained
    model = AcousticModel.from_pretrained(run / "model")
    rows = synth_rows(3, seed=5)
    items = []
    for k in range(3):
        sem = torch.tensor(rows["semantic_codes"][k])
        ln = torch.tensor(rows["token_lengths"][k])
        ac = torch.tensor(rows["acoustic_codes"][k])
        cut = 8
        items.append({"prompt_semantic": sem[:cut], "prompt_lengths": ln[:cut],
                      "prompt_acoustic": ac[:, :cut], "semantic": sem[cut:],
                      "lengths": ln[cut:], "gold": ac[:, cut:]})
    out = predict_acoustic(model, items, temperature=0.0)  # greedy: accuracy of the model
    correct = total = 0
    for it, codes in zip(items, out):
        assert codes.shape == it["gold"].shape
        assert codes.dtype == torch.long
        assert int(codes.min()) >= 0 and int(codes.max()) < CFG.codebook_size
        correct += int((codes == it["gold"]).sum())
        total += codes.numel()
    assert correct / total > 0.4  # learned the synthetic mapping (chance is 1/32)
    # sampling: same seed -> same codes, another seed -> other codes
    s1, s2, s3 = (predict_acoustic(model, items, generator=torch.Generator().manual_seed(k))
                  for k in (3, 3, 4))
    assert all(torch.equal(a, b) for a, b in zip(s1, s2))
    assert not all(torch.equal(a, b) for a, b in zip(s1, s3))
    # prompt codes are kept verbatim in generate()
    b = build_batch(items[:1])
    full = model.generate(b["semantic"], b["lengths"], b["prompt_acoustic"], b["prompt_len"],
                          generator=torch.Generator().manual_seed(0))
    assert torch.equal(full[0, :, :8], items[0]["prompt_acoustic"])


def test_bad_inputs(tmp_path, codes_dir):
    import datasets
    model = AcousticModel(CFG)
    with pytest.raises(ValueError, match="no semantic tokens"):
        predict_acoustic(model, [{"semantic": [], "lengths": []}])
    with pytest.raises(ValueError, match="differ"):
        predict_acoustic(model, [{"semantic": [1, 2], "lengths": [1]}])
    with pytest.raises(ValueError, match="semantic codes outside"):
        predict_acoustic(model, [{"semantic": [10_000], "lengths": [1]}])
    with pytest.raises(ValueError, match="quantizers"):
        predict_acoustic(model, [{"semantic": [1], "lengths": [1], "prompt_semantic": [1],
                                  "prompt_lengths": [1], "prompt_acoustic": [[1]]}])
    d = tmp_path / "noac"
    datasets.Dataset.from_dict({"semantic_codes": [[1]], "token_lengths": [[1]]}
                               ).save_to_disk(str(d))
    with pytest.raises(CodesDataError, match="acoustic_codes"):
        load_codes_dataset(d)
    with pytest.raises(CodesDataError, match="no such"):
        load_codes_dataset(tmp_path / "missing")
    with pytest.raises(CheckpointError):
        AcousticModel.from_pretrained(tmp_path)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {d_model: 64, bogus: 1}\n")
    with pytest.raises(ValueError, match="bogus"):
        load_config(cfg)
    cfg.write_text(json.dumps({"model": {"n_q": 2, "d_model": 32}}))
    mc, tc = load_config(cfg)
    assert mc.n_q == 2 and isinstance(tc, TrainConfig)
