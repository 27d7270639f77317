"""asr-train: trains on the tiny corpus, saves a loadable model, resumes exactly, and its
helpers (batch plan, time budget, YAML validation) behave."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from flexicodec.codec.asr.model import PhonemeASR
from flexicodec.codec.asr.train import load_asr_yaml, main, train_asr
from flexicodec.common.atomic import read_jsonl
from flexicodec.common.training import TimeBudget, epoch_batches

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


def test_train_save_and_transcribe(tiny_corpus, tmp_path):
    res = train_asr(str(ROOT / "configs/asr/tiny.yaml"), str(tiny_corpus), str(tmp_path / "run"),
                    max_steps=30, out_model=str(tmp_path / "asr"), cpu=True)
    assert res["step"] == 30 and res["finished"] and 0.0 <= res["valid_per"] <= 1.5
    rows = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert rows[-1]["loss"] < rows[0]["loss"]          # CTC loss falls
    asr = PhonemeASR.from_pretrained(tmp_path / "asr")
    vocab = json.loads((tmp_path / "run" / "asr_config.json").read_text())["vocab"]
    assert asr.vocab == vocab and "ə" in vocab
    assert isinstance(asr.transcribe(torch.zeros(1, 16000))[0], str)


def test_resume_is_exact(tiny_corpus, tmp_path, monkeypatch):
    from flexicodec.common import heap
    monkeypatch.setattr(heap, "_release", False)            # --release-memory: reset after
    released = []
    release = heap.release_free_heap
    monkeypatch.setattr(heap, "release_free_heap", lambda: released.append(1) or release())
    cfg = str(ROOT / "configs/asr/tiny.yaml")
    train_asr(cfg, str(tiny_corpus), str(tmp_path / "a"), max_steps=8, cpu=True)
    part = train_asr(cfg, str(tiny_corpus), str(tmp_path / "b"), max_steps=8, cpu=True,
                     stop_after=4)
    assert part["step"] == 4 and not part["finished"]
    assert released == []
    # through the CLI entry point this time, giving freed memory back after every step
    assert main(["--config", cfg, "--data", str(tiny_corpus), "--run-dir", str(tmp_path / "b"),
                 "--max-steps", "8", "--resume", "--cpu", "--release-memory"]) == 0
    assert len(released) == 4                               # steps 5-8
    la = [r["loss"] for r in read_jsonl(tmp_path / "a/metrics.jsonl") if "loss" in r]
    lb = [r["loss"] for r in read_jsonl(tmp_path / "b/metrics.jsonl") if "loss" in r]
    assert la == lb
    wa = load_file(str(tmp_path / "a/checkpoints/step_00000008/model.safetensors"))
    wb = load_file(str(tmp_path / "b/checkpoints/step_00000008/model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # without --out-model the CLI writes the final model to RUN/model
    final = PhonemeASR.from_pretrained(tmp_path / "b" / "model")
    assert all(torch.equal(final.state_dict()[k].float(), wb[k].float()) for k in wb)


def test_batch_plan_budget_and_yaml(tmp_path):
    lengths = [float(i % 7) for i in range(50)]
    a = epoch_batches(lengths, 8, seed=1, epoch=0)
    assert a == epoch_batches(lengths, 8, seed=1, epoch=0)
    assert a != epoch_batches(lengths, 8, seed=1, epoch=1)
    assert len(a) == 6 and all(len(b) == 8 for b in a)
    assert len({i for b in a for i in b}) == 48
    with pytest.raises(ValueError):
        epoch_batches([], 4, 0, 0)
    b = TimeBudget(None)
    assert not b.should_stop()
    b = TimeBudget(1e-4, reserve_s=0.0)      # 6 ms
    time.sleep(0.01)
    assert b.should_stop()
    b = TimeBudget(10.0, reserve_s=30.0)
    assert not b.should_stop()
    # compilation in the first steps and evaluation pauses are not "the slowest step"
    b = TimeBudget(1.0, reserve_s=0.0)
    time.sleep(0.05)
    b.tick()                                   # a slow first (compiling) step
    for _ in range(TimeBudget.warmup_ticks):
        b.tick()
    assert b.slowest < 0.05
    time.sleep(0.05)
    b.skip()                                   # an evaluation
    b.tick()
    assert b.slowest < 0.05
    time.sleep(0.03)
    b.tick()                                   # a real slow step counts
    assert b.slowest >= 0.03
    model, train = load_asr_yaml(ROOT / "configs/asr/small.yaml")
    assert model["d_model"] == 256 and train.batch_size >= 32
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"model": {"d_modle": 3}, "train": {}}))
    with pytest.raises(ValueError, match="unknown keys"):
        load_asr_yaml(bad)
    bad.write_text(yaml.safe_dump({"model": {"vocab": ["a"]}}))
    with pytest.raises(ValueError, match="vocab"):
        load_asr_yaml(bad)


def test_spec_augment_masks_within_bounds():
    from flexicodec.codec.asr.train import SpecAugmentConfig, spec_augment
    torch.manual_seed(0)
    f = spec_augment(SpecAugmentConfig(freq_masks=2, freq_width=10, time_masks=2,
                                       time_width=0.1))
    out = f(torch.ones(4, 80, 200), torch.tensor([200, 100, 50, 10]))
    zero_bins = (out == 0).all(2).sum(1)
    zero_frames = (out == 0).all(1).sum(1)
    assert (zero_bins <= 20).all() and zero_bins.sum() > 0
    assert zero_frames.tolist()[3] <= 2 and (zero_frames <= torch.tensor([40, 20, 10, 2])).all()
    assert (out[:, :, :][out != 0] == 1).all()


def test_asr_eval_scores_a_split_like_the_trainer(tiny_corpus, tmp_path, capsys):
    """flexicodec asr-eval: PER of a trained ASR on a split, the trainer's own scoring (the
    valid split gives the trainer's final valid PER), JSON + report files; a missing model
    is a one-line error."""
    from flexicodec.codec.asr.evaluate import main as asr_eval

    res = train_asr(str(ROOT / "configs/asr/tiny.yaml"), str(tiny_corpus), str(tmp_path / "run"),
                    max_steps=6, out_model=str(tmp_path / "asr"), cpu=True)
    assert asr_eval(["--model", str(tmp_path / "asr"), "--data", str(tiny_corpus),
                     "--split", "valid", "-o", str(tmp_path / "per")]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["split"] == "valid" and out["eval_utts"] > 0 and out["left_out"] == 0
    assert out["per"] == pytest.approx(res["valid_per"], abs=1e-6)
    spk = out["per_speaker"]           # per speaker: counts add up, PERs bracket the total
    assert sum(v["utts"] for v in spk.values()) == out["eval_utts"]
    pers = [v["per"] for v in spk.values()]
    assert min(pers) - 1e-9 <= out["per"] <= max(pers) + 1e-9
    assert "valid_per_speaker" not in res
    assert json.loads((tmp_path / "per.json").read_text())["per"] == out["per"]
    assert "PER %" in (tmp_path / "per.md").read_text()
    assert asr_eval(["--model", str(tmp_path / "none"), "--data", str(tiny_corpus)]) == 2
    assert "asr-eval: error" in capsys.readouterr().err


def test_init_from_fine_tunes_a_trained_asr(tiny_corpus, tmp_path):
    """--init-from: a new run that starts from the trained ASR's weights (its step-0 valid
    PER equals the trained model's), keeps its config and vocabulary over the YAML's, and
    refuses a vocabulary that lacks the train split's symbols."""
    from flexicodec.codec.asr.model import PhonemeASRConfig
    from flexicodec.codec.asr.train import evaluate_per, init_asr
    from flexicodec.common.pretrained import config_to_dict

    cfg = str(ROOT / "configs/asr/tiny.yaml")
    base = train_asr(cfg, str(tiny_corpus), str(tmp_path / "base"), max_steps=10,
                     out_model=str(tmp_path / "asr"), cpu=True)
    trained = PhonemeASR.from_pretrained(tmp_path / "asr")
    assert main(["--config", str(ROOT / "configs/asr/small.yaml"), "--data", str(tiny_corpus),
                 "--run-dir", str(tmp_path / "ft"), "--max-steps", "3", "--cpu",
                 "--init-from", str(tmp_path / "asr"), "--set", "train.num_workers=0",
                 "--set", "train.batch_size=4"]) == 0
    ft_cfg = json.loads((tmp_path / "ft" / "asr_config.json").read_text())
    assert ft_cfg == config_to_dict(trained.config)      # not small.yaml's d_model 256
    tuned = PhonemeASR.from_pretrained(tmp_path / "ft" / "model")
    changed = [k for k, v in trained.state_dict().items()
               if not torch.equal(v, tuned.state_dict()[k])]
    assert changed                                          # it trained
    # at step 0 the new run is the trained model: same valid PER as the base run's end
    from flexicodec.codec.asr.train import corpus_split
    _, valid_set, _ = corpus_split(str(tiny_corpus), "valid", 20.0)
    start = init_asr(str(tmp_path / "asr"), ["ə"])
    assert evaluate_per(start, valid_set, 4, "cpu", None)["per"] == pytest.approx(
        base["valid_per"], abs=1e-6)
    # a vocabulary without the corpus' symbols is refused by name
    small = PhonemeASR(PhonemeASRConfig(**{**config_to_dict(trained.config),
                                           "vocab": ["<blank>", "<unk>", " ", "a"]}))
    small.save_pretrained(tmp_path / "small_vocab")
    with pytest.raises(ValueError, match="outside its vocabulary"):
        train_asr(cfg, str(tiny_corpus), str(tmp_path / "bad"), max_steps=2, cpu=True,
                  init_from=str(tmp_path / "small_vocab"))


def test_stop_file_ends_a_run_without_a_time_limit(tmp_path):
    stop = tmp_path / "STOP"
    stop.touch()                               # left from an earlier run: removed
    b = TimeBudget(None, stop_file=stop)
    assert not stop.exists() and not b.should_stop()
    stop.touch()
    assert b.should_stop()
