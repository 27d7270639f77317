"""Distributed training on 2 CPU processes (gloo) for every trainer: ASR, codec, LM (+ LoRA
finetune), acoustic stage. Each run is launched with ``accelerate launch --config_file
configs/accelerate/cpu_2proc.yaml`` through the ``flexicodec.common.distributed`` digest hook, so every rank
writes a SHA-256 of its weights after each checkpoint save; both ranks must agree. The
2-process checkpoint is then resumed on 1 process: the loaded weights must equal the saved
ones, the step counter must advance and the loss stay finite."""
from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from flexicodec.common.distributed import (ReplicaMismatchError, compare_replica_digests,
                                           read_replica_digests, rescale_position, shard_batches,
                                           shard_dataset)
from flexicodec.common.atomic import read_jsonl

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
ACCEL_CFG = REPO / "configs" / "accelerate" / "cpu_2proc.yaml"
TIMEOUT = 240


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(nproc: int, trainer: str, args: list[str], digests: Path) -> str:
    """Run ``trainer`` on ``nproc`` CPU processes with the digest hook; returns its output."""
    hook = ["-m", "flexicodec.common.distributed", "run", "--replica-digests", str(digests), trainer]
    if nproc == 1:
        cmd = [sys.executable, *hook]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ACCEL_CFG), "--num_processes", str(nproc),
               "--main_process_port", str(_free_port()), *hook]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)}
    p = subprocess.Popen(cmd + args + ["--cpu"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = p.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)          # the launcher and its workers
        out, _ = p.communicate()
        pytest.fail(f"{' '.join(cmd + args)} hung for {TIMEOUT} s:\n{out[-6000:]}")
    assert p.returncode == 0, f"{' '.join(cmd + args)} failed ({p.returncode}):\n{out[-6000:]}"
    return out


def check_two_then_one(run: Path, digests2: Path, digests1: Path, step2: int, step1: int):
    """Both ranks identical at every save; the 1-process resume loaded step2's weights and
    checkpointed at step1 with finite losses after the resume."""
    saved = compare_replica_digests(digests2)
    assert sorted(read_replica_digests(digests2)) == [0, 1]
    assert step2 in saved
    recs = read_replica_digests(digests1)
    assert list(recs) == [0]
    loads = [r for r in recs[0] if r["event"] == "load"]
    assert len(loads) == 1 and loads[0]["step"] == step2 and loads[0]["world"] == 1
    assert loads[0]["digests"] == saved[step2]          # resumed exactly the saved weights
    saves = [r for r in recs[0] if r["event"] == "save"]
    assert saves and saves[-1]["step"] == step1
    assert saves[-1]["digests"] != saved[step2]          # ... and kept training
    latest = run / "checkpoints" / (run / "latest").read_text().strip()
    state = json.loads((latest / "trainer_state.json").read_text())
    assert state["step"] == step1 and state["num_processes"] == 1
    losses = [r["loss"] for r in read_jsonl(run / "metrics.jsonl")
              if "loss" in r and r["step"] > step2]
    assert losses and all(math.isfinite(v) for v in losses)


# ------------------------------------------------------------------------------------------
# helpers (fast, no processes)
# ------------------------------------------------------------------------------------------
def test_shard_and_rescale():
    plan = [[i] for i in range(7)]
    parts = [shard_batches(plan, r, 2) for r in range(2)]
    assert parts == [[[0], [2], [4]], [[1], [3], [5]]]     # tail dropped: equal counts
    assert shard_batches(plan, 0, 1) == plan
    with pytest.raises(ValueError, match="rank"):
        shard_batches(plan, 2, 2)
    assert rescale_position(3, 2, 1) == 6                   # 6 batches consumed globally
    assert rescale_position(3, 1, 2) == 1
    assert rescale_position(6, 2, 4, multiple=2) == 2
    with pytest.raises(ValueError):
        rescale_position(1, 0, 1)


def test_shard_dataset_map_and_streaming():
    import datasets
    ds = datasets.Dataset.from_dict({"i": list(range(10))})
    parts = [list(shard_dataset(ds, r, 3)["i"]) for r in range(3)]
    assert sorted(sum(parts, [])) == list(range(10)) and all(parts)
    stream = ds.to_iterable_dataset(num_shards=2)          # a streaming corpus of 2 files
    got = [[row["i"] for row in shard_dataset(stream, r, 2)] for r in range(2)]
    assert sorted(got[0] + got[1]) == list(range(10)) and set(got[0]).isdisjoint(got[1])
    with pytest.raises(ValueError, match="cannot be split"):
        shard_dataset(ds.select(range(2)), 0, 3)
    with pytest.raises(TypeError, match="datasets.Dataset"):
        shard_dataset(list(range(4)), 0, 2)


def test_digest_comparison_detects_mismatch(tmp_path):
    for rank, d in ((0, "aa"), (1, "bb")):
        (tmp_path / f"rank{rank}.jsonl").write_text(json.dumps(
            {"event": "save", "step": 2, "rank": rank, "world": 2,
             "digests": {"model_0": d}}) + "\n")
    with pytest.raises(ReplicaMismatchError, match="step 2"):
        compare_replica_digests(tmp_path)


RESUME_SCRIPT = """
import json, sys, torch
from flexicodec.common.distributed import load_state_any_world
from flexicodec.common.training import make_accelerator
acc = make_accelerator(cpu=True)
torch.manual_seed(123)
model = acc.prepare(torch.nn.Linear(3, 2))
before = torch.get_rng_state()
saved = load_state_any_world(acc, sys.argv[1])
changed = not torch.equal(before, torch.get_rng_state())
w = acc.unwrap_model(model).weight.detach().flatten().tolist()
with open(f"{sys.argv[2]}/rank{acc.process_index}.json", "w") as f:
    json.dump({"saved": saved, "w": w, "draw": torch.rand(3).tolist(), "changed": changed}, f)
"""


def test_load_state_on_more_processes(tmp_path):
    """A 1-process checkpoint loads on 2 processes: same weights; rank 0 continues the saved
    RNG stream, rank 1 (no saved RNG file; plain accelerate would leave its RNG untouched)
    is re-seeded to its own deterministic stream."""
    from flexicodec.common.training import make_accelerator
    acc = make_accelerator(cpu=True)
    torch.manual_seed(0)
    model = acc.prepare(torch.nn.Linear(3, 2))
    acc.save_state(str(tmp_path / "ckpt"))
    expect_w = model.weight.detach().flatten().tolist()
    expect_draw = torch.rand(3).tolist()
    script = tmp_path / "resume.py"
    script.write_text(RESUME_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    outs = []
    for run in range(2):                                # twice: the reseed is deterministic
        d = tmp_path / f"out{run}"
        d.mkdir()
        p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
                            "2", "--master_port", str(_free_port()), str(script),
                            str(tmp_path / "ckpt"), str(d)], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=TIMEOUT)
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        outs.append([json.loads((d / f"rank{r}.json").read_text()) for r in range(2)])
    r0, r1 = outs[0]
    assert r0["saved"] == r1["saved"] == 1
    assert r0["w"] == r1["w"] == pytest.approx(expect_w)
    assert r0["draw"] == pytest.approx(expect_draw)
    assert r0["changed"] and r1["changed"]
    assert r1["draw"] != r0["draw"] and outs[1][1]["draw"] == r1["draw"]


# ------------------------------------------------------------------------------------------
# the four trainers on 2 processes, then resumed on 1
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def asr_dir(tmp_path_factory) -> Path:
    from flexicodec.codec.asr.model import PhonemeASR, PhonemeASRConfig
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("asr") / "asr"
    PhonemeASR(PhonemeASRConfig.tiny()).save_pretrained(d)
    return d


def test_asr_trainer(tiny_corpus, tmp_path):
    run = tmp_path / "run"
    base = ["--config", "configs/asr/tiny.yaml", "--data", str(tiny_corpus), "--run-dir",
            str(run), "--max-steps", "4"]
    launch(2, "flexicodec.codec.asr.train", base + ["--stop-after", "2"], tmp_path / "d2")
    launch(1, "flexicodec.codec.asr.train", base + ["--resume"], tmp_path / "d1")
    check_two_then_one(run, tmp_path / "d2", tmp_path / "d1", 2, 4)


def test_codec_trainer(tiny_corpus, asr_dir, tmp_path):
    from flexicodec.codec.config import PRESETS
    model = {k: list(v) if isinstance(v, tuple) else v for k, v in PRESETS["tiny"].items()}
    train = dict(batch_size=2, segment_seconds=1.0, warmup_steps=2, max_steps=4, disc_start=2,
                 warmup_fixed_steps=1, log_every=1, eval_every=1000, save_every=1000,
                 max_eval_utts=1, num_workers=0, seed=0,
                 mel_loss=dict(n_ffts=[256, 512], hops=[64, 128], n_mels=[20, 40]),
                 discriminator=dict(periods=[2, 3], mpd_channels=[8, 16],
                                    mrd_resolutions=[[256, 64, 256]], mrd_channels=8))
    cfg = tmp_path / "codec.yaml"
    cfg.write_text(yaml.safe_dump({"model": model, "train": train}))
    run = tmp_path / "run"
    base = ["--config", str(cfg), "--data", str(tiny_corpus), "--run-dir", str(run),
            "--asr", str(asr_dir), "--max-steps", "4"]
    launch(2, "flexicodec.codec.train", base + ["--stop-after", "3"], tmp_path / "d2")  # GAN from step 2
    launch(1, "flexicodec.codec.train", base + ["--resume"], tmp_path / "d1")
    check_two_then_one(run, tmp_path / "d2", tmp_path / "d1", 3, 4)


@pytest.fixture(scope="module")
def lm_data(tiny_corpus, tmp_path_factory) -> Path:
    """The tiny corpus tokenized at 12.5 Hz by a tiny random codec."""
    from flexicodec.codec.config import FlexiCodecConfig
    from flexicodec.codec.model import FlexiCodec
    from flexicodec.lm.cli import main as lm_main
    root = tmp_path_factory.mktemp("lmdata")
    torch.manual_seed(0)
    FlexiCodec(FlexiCodecConfig.tiny()).save_pretrained(root / "codec")
    assert lm_main(["tokenize", "--data", str(tiny_corpus), "--codec", str(root / "codec"),
                    "--out", str(root / "tok"), "--split", "train,valid",
                    "--frame-rate", "12.5", "--batch-size", "4"]) == 0
    return root / "tok"


def test_lm_trainer_and_finetune(lm_data, tmp_path):
    cfg = tmp_path / "lm.yaml"
    d = yaml.safe_load((REPO / "configs" / "lm" / "tiny.yaml").read_text())
    # packed rows of 256 positions, 2 per micro-batch: a few batches per rank and epoch
    d["train"].update(batch_tokens=512, pack_length=256, max_len=256, log_every=1,
                      eval_every=3, save_every=3)
    cfg.write_text(yaml.safe_dump(d))
    run = tmp_path / "run"
    base = ["--config", str(cfg), "--data", str(lm_data), "--run-dir", str(run)]
    out = launch(2, "flexicodec.lm.train", base + ["--max-steps", "3"], tmp_path / "d2")
    summary = json.loads(next(l for l in reversed(out.splitlines()) if l.startswith("{")))
    assert summary["step"] == 3 and math.isfinite(summary["eval_semantic_loss"])
    rows = [r for r in read_jsonl(run / "metrics.jsonl") if "tokens_per_s" in r]
    assert rows and all(r["num_processes"] == 2 for r in rows)
    launch(1, "flexicodec.lm.train", base + ["--max-steps", "5", "--resume"], tmp_path / "d1")
    check_two_then_one(run, tmp_path / "d2", tmp_path / "d1", 3, 5)
    # ... and back on 2 processes (more than the checkpoint's 1): both load step 5's weights
    launch(2, "flexicodec.lm.train", base + ["--max-steps", "6", "--resume"], tmp_path / "d3")
    step5 = compare_replica_digests(tmp_path / "d1")[5]
    assert compare_replica_digests(tmp_path / "d3", event="load") == {5: step5}
    assert 6 in compare_replica_digests(tmp_path / "d3")
    # LoRA finetune of the result on 2 processes: adapters identical on both ranks
    launch(2, "flexicodec.lm.finetune", ["--model", str(run / "model"), "--data", str(lm_data),
                              "--run-dir", str(tmp_path / "adapter.run"), "--out-model",
                              str(tmp_path / "adapter"), "--max-steps", "2", "--rank", "2",
                              "--config", str(cfg)],
           tmp_path / "df")
    assert 2 in compare_replica_digests(tmp_path / "df")
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()


@pytest.fixture(scope="module")
def codes_dir(tmp_path_factory) -> Path:
    """A random acoustic-codes dataset in the tiny acoustic config's vocabulary."""
    import datasets
    m = yaml.safe_load((REPO / "configs" / "tts" / "acoustic_tiny.yaml").read_text())["model"]
    g = torch.Generator().manual_seed(0)

    def rows(n):
        out = {k: [] for k in ("id", "speaker", "text", "frame_rate", "semantic_codes",
                               "token_lengths", "acoustic_codes")}
        for i in range(n):
            T = int(torch.randint(12, 30, (1,), generator=g))
            out["id"].append(f"u{i}")
            out["speaker"].append(f"spk{i % 2}")
            out["text"].append(f"utterance {i}")
            out["frame_rate"].append(12.5)
            out["semantic_codes"].append(
                torch.randint(0, m["semantic_vocab_size"], (T,), generator=g).tolist())
            out["token_lengths"].append(
                torch.randint(1, m["max_group"] + 1, (T,), generator=g).tolist())
            out["acoustic_codes"].append(
                torch.randint(0, m["codebook_size"], (m["n_q"], T), generator=g).tolist())
        return datasets.Dataset.from_dict(out)

    d = tmp_path_factory.mktemp("codes") / "codes"
    datasets.DatasetDict({"train": rows(32), "valid": rows(4)}).save_to_disk(str(d))
    return d


def test_acoustic_trainer(codes_dir, tmp_path):
    cfg = tmp_path / "ac.yaml"
    d = yaml.safe_load((REPO / "configs" / "tts" / "acoustic_tiny.yaml").read_text())
    d["train"].update(batch_size=4, log_every=1, save_every=1000, eval_every=1000,
                      eval_batches=1)
    cfg.write_text(yaml.safe_dump(d))
    run = tmp_path / "run"
    base = ["--config", str(cfg), "--data", str(codes_dir), "--run-dir", str(run)]
    launch(2, "flexicodec.tts.train_acoustic", base + ["--max-steps", "3"], tmp_path / "d2")
    launch(1, "flexicodec.tts.train_acoustic", base + ["--max-steps", "5", "--resume"], tmp_path / "d1")
    check_two_then_one(run, tmp_path / "d2", tmp_path / "d1", 3, 5)
