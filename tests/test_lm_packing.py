"""Packed training rows: the plan packs every item once within its row; the packed batch's
loss, per-position outputs and gradients equal those of the same sequences one per row; the
trainer's first loss is the same packed or padded."""
from __future__ import annotations

import json

import pytest
import torch

from flexicodec.lm.data import pack_batches
from flexicodec.lm.layout import IGNORE, build_sequence, collate, collate_packed
from flexicodec.lm.train import TrainConfig, run_training
from tests.test_lm_core import synthetic_utts, tiny_lm

torch.set_num_threads(1)


def test_pack_batches_plan():
    lengths = [int(x) for x in torch.randint(5, 60, (300,), generator=torch.Generator()
                                             .manual_seed(0))]
    plan = pack_batches(lengths, 128, 4, seed=1, epoch=0)
    rows = [r for b in plan for r in b]
    assert sorted(i for r in rows for i in r) == list(range(300))     # each item once
    assert all(sum(lengths[i] for i in r) <= 128 for r in rows)
    assert all(len(b) == 4 for b in plan[:-1]) and 1 <= len(plan[-1]) <= 4
    fill = sum(lengths) / (len(rows) * 128)
    assert fill > 0.9, fill                                            # rows are full
    assert plan == pack_batches(lengths, 128, 4, seed=1, epoch=0)      # deterministic
    assert plan != pack_batches(lengths, 128, 4, seed=1, epoch=1)      # reshuffled per epoch
    with pytest.raises(ValueError, match="longer than a packed row"):
        pack_batches([10, 200], 128, 4, 0, 0)


def test_packed_loss_equals_unpacked():
    m = tiny_lm(seed=2)
    utts = synthetic_utts(7, seed=3)
    items = [build_sequence(m.vocab, t, r, c, n) for (t, c, n), r in
             zip(utts, [12.5, 6.25, 8.33, 6.25, 3.0, 12.5, 5.0])]
    padded = collate(items)
    rows = [items[:3], items[3:4], items[4:]]        # uneven rows, padding at each end
    packed = collate_packed(rows, row_length=max(sum(map(len, r)) for r in rows) + 5)
    assert "attention_mask" not in packed
    with torch.no_grad():
        a = m.loss(padded)
        b = m.loss(packed)
        out_p = m(padded["input_ids"], padded["length_in"], padded["attention_mask"],
                  padded["position_ids"])
        out_k = m(packed["input_ids"], packed["length_in"], None, packed["position_ids"])
    for k in ("n_text", "n_semantic", "n_length"):
        assert int(a[k]) == int(b[k]) > 0
    for k in ("text_sum", "semantic_sum", "length_sum", "loss"):
        assert float(a[k]) == pytest.approx(float(b[k]), rel=1e-5), k
    # position by position: every sequence sees only itself
    row_of = [r for r, row in enumerate(rows) for _ in row]     # items are in row order
    for j, (r, (start, n)) in enumerate(zip(row_of, _spans(rows))):
        assert torch.allclose(out_k.logits[r, start:start + n], out_p.logits[j, :n], atol=1e-4)
        assert torch.allclose(out_k.length_logits[r, start:start + n],
                              out_p.length_logits[j, :n], atol=1e-4)
    # without the restart of position ids the sequences would see each other: not equal
    leaky = dict(packed, position_ids=torch.arange(packed["input_ids"].shape[1])
                 .expand_as(packed["input_ids"]).contiguous())
    with torch.no_grad():
        c = m.loss(leaky)
    assert float(c["semantic_sum"]) != pytest.approx(float(a["semantic_sum"]), rel=1e-4)
    assert (packed["labels"][packed["input_ids"] == 0] == IGNORE).all()


def _spans(rows):
    for row in rows:
        p = 0
        for it in row:
            yield p, len(it)
            p += len(it)


def test_packed_gradients_equal_unpacked():
    m = tiny_lm(seed=0)
    items = [build_sequence(m.vocab, t, 6.25, c, n) for t, c, n in synthetic_utts(4, seed=7)]
    grads = []
    for batch in (collate(items), collate_packed([items[:1], items[1:]], 256)):
        m.zero_grad()
        m.loss(batch)["loss"].backward()
        grads.append({k: p.grad.clone() for k, p in m.named_parameters()})
    for k in grads[0]:
        assert torch.allclose(grads[0][k], grads[1][k], rtol=1e-4, atol=1e-7), k


def test_trainer_packed_first_step_loss(tmp_path):
    """The trainer's first logged loss is the same packed (one row) or padded (one item per
    row), and it logs throughput and model FLOPs."""
    utts = synthetic_utts(4, seed=7)
    logs = {}
    for pack in (0, 256):
        m = tiny_lm(seed=0)
        items = [build_sequence(m.vocab, t, 6.25, c, n) for t, c, n in utts]
        cfg = TrainConfig(lr=1e-2, warmup_steps=0, max_steps=1, batch_tokens=4096,
                          max_batch=8, log_every=1, eval_every=100, save_every=100,
                          weight_decay=0.0, mixed_precision="no", pack_length=pack,
                          max_len=256)
        run_training(m.train(), items, [1.0] * 4, [], cfg, tmp_path / f"run{pack}")
        logs[pack] = json.loads((tmp_path / f"run{pack}" / "metrics.jsonl").read_text()
                                .splitlines()[0])
    a, b = logs[0], logs[256]
    for k in ("loss", "text_loss", "semantic_loss", "length_loss"):
        assert a[k] == pytest.approx(b[k], rel=1e-5), k
    for r in (a, b):
        assert r["tokens_per_s"] > 0 and r["model_tflops_per_s"] > 0 and "mfu" not in r
    # the same tokens counted either way (host-side count from the plan)
    assert a["tokens_per_s"] / a["model_tflops_per_s"] == pytest.approx(
        b["tokens_per_s"] / b["model_tflops_per_s"], rel=1e-6)


def test_pack_length_must_hold_max_len():
    with pytest.raises(ValueError, match="pack_length"):
        TrainConfig(pack_length=512, max_len=1024)
    assert TrainConfig(pack_length=1024, max_len=1024, batch_tokens=4096).rows_per_batch == 4


def test_gpu_preset_is_a_100m_packed_lm():
    """configs/lm/gpu.yaml: >= 100 M parameters (without the input embedding), phoneme
    input, packed rows that hold its longest sequence, compile and SDPA."""
    from flexicodec.lm.model import SpeechLM, model_config_from_dict
    from flexicodec.lm.train import load_config

    model_d, tcfg = load_config("configs/lm/gpu.yaml")
    mcfg = model_config_from_dict(model_d, num_text=80, semantic_size=4096, max_group=8)
    with torch.device("meta"):
        m = SpeechLM(mcfg)
    n = m.num_parameters() - m.backbone.get_input_embeddings().weight.numel()
    assert n >= 100e6, n
    assert mcfg.text_input == "phoneme" and mcfg.max_positions >= tcfg.pack_length
    assert tcfg.pack_length >= tcfg.max_len and tcfg.rows_per_batch >= 8
    assert tcfg.compile and tcfg.attention == "sdpa" and tcfg.peak_flops == 989e12


def test_trainer_compiled_packed_step_matches_eager(tmp_path):
    """train.compile traces the packed forward (eager backend here: the tracing, not the
    kernels) and gives the eager losses; the state-dict names stay those of the model."""
    utts = synthetic_utts(6, seed=5)
    logs, names = {}, {}
    for comp in (False, True):
        m = tiny_lm(seed=0)
        items = [build_sequence(m.vocab, t, 6.25, c, n) for t, c, n in utts]
        cfg = TrainConfig(lr=1e-3, warmup_steps=0, max_steps=2, batch_tokens=256,
                          log_every=1, eval_every=100, save_every=100, mixed_precision="no",
                          pack_length=128, max_len=128, compile=comp, compile_backend="eager")
        res = run_training(m.train(), items, [1.0] * 6, [], cfg, tmp_path / f"run{comp}")
        logs[comp] = [json.loads(x)["loss"] for x in
                      (tmp_path / f"run{comp}" / "metrics.jsonl").read_text().splitlines()]
        names[comp] = list(res["model"].state_dict())
    assert logs[True] == pytest.approx(logs[False], rel=1e-5) and len(logs[True]) == 2
    assert names[True] == names[False]
