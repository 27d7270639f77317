"""Flow-matching acoustic stage: training on codes dequantized by the real (tiny) codec lowers
the loss, sampling (Euler / midpoint, guidance, prompt infilling), I/O, the kind dispatch."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import synth_code_rows

from flexicodec.codec.config import FlexiCodecConfig
from flexicodec.codec.model import FlexiCodec
from flexicodec.common.atomic import read_jsonl
from flexicodec.tts.acoustic_flow import FlowAcousticModel, FlowConfig, latent_stats, predict_latent
from flexicodec.tts.codes_data import (AcousticCodesDataset, CodesDataError, CropConfig, collate_codes,
                                       crop_window, load_codes_dataset)
from flexicodec.tts.stages import load_acoustic, stage_kind
from flexicodec.tts.train_acoustic import TrainConfig, check_codec_matches, flow_batch, load_config, train

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def codec():
    torch.manual_seed(0)
    return FlexiCodec(FlexiCodecConfig.tiny()).eval()


def flow_config(codec, **kw) -> FlowConfig:
    base = dict(semantic_vocab_size=codec.semantic_vocab_size,
                latent_dim=codec.config.latent_dim, n_q=codec.config.n_q,
                max_group=codec.max_group)
    return FlowConfig.tiny(**{**base, **kw})


def synth_rows(codec, n: int, seed: int = 0):
    """Codes where acoustic = f(semantic, length, speaker): learnable, speaker-dependent."""
    c = codec.config
    return synth_code_rows(n, semantic_vocab_size=codec.semantic_vocab_size,
                           max_group=c.max_group, n_q=c.n_q,
                           codebook_size=c.rvq_codebook_size, seed=seed)


@pytest.fixture(scope="module")
def codes_dir(tmp_path_factory, codec):
    import datasets
    d = tmp_path_factory.mktemp("codes") / "codes"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(synth_rows(codec, 40)),
                          "valid": datasets.Dataset.from_dict(synth_rows(codec, 4, seed=9))}
                         ).save_to_disk(str(d))
    return d


@pytest.fixture(scope="module")
def trained(codec, codes_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    mc, _ = load_config("configs/tts/acoustic_flow_tiny.yaml")
    assert mc == flow_config(codec, cond_drop_prob=mc.cond_drop_prob)   # the shipped tiny YAML
    tc = TrainConfig(batch_size=8, lr=3e-3, warmup_steps=10, max_steps=500, log_every=10,
                     save_every=250, eval_every=250, eval_batches=2, max_tokens=24,
                     stats_rows=1000)   # every row
    summary = train(mc, tc, codes_dir, run, cpu=True, codec=codec)
    return run, summary, tc, mc


def test_flow_training_loss_falls_and_saves(trained, codec, codes_dir):
    run, summary, _, mc = trained
    assert summary["step"] == 500 and summary["stop_reason"] == "max_steps"
    logs = [r for r in read_jsonl(run / "metrics.jsonl") if "loss" in r]
    assert logs[0]["step"] == 1 and logs[-1]["step"] == 500
    assert "accuracy" not in logs[-1]
    first = sum(r["loss"] for r in logs[:3]) / 3
    last = sum(r["loss"] for r in logs[-3:]) / 3
    assert last < 0.6 * first
    vals = [r["val_loss"] for r in read_jsonl(run / "metrics.jsonl") if "val_loss" in r]
    assert vals[-1] < vals[0]
    assert json.loads((run / "model" / "config.json").read_text())["config"]["kind"] == "flow"
    assert stage_kind(run / "model") == "flow"
    model = load_acoustic(run / "model")
    assert isinstance(model, FlowAcousticModel) and model.config == mc
    # the latent normalisation was measured on the data's dequantized codes and saved
    ds = load_codes_dataset(codes_dir, "train")
    rows = [ds[i] for i in range(len(ds))]
    lat = torch.cat([codec.latent_from_codes(r["semantic_codes"], r["acoustic_codes"],
                                             r["token_lengths"])[0] for r in rows])
    assert torch.allclose(model.latent_mean, lat.mean(0), atol=1e-4)
    assert torch.allclose(model.latent_std, lat.std(0), atol=1e-4)
    from flexicodec.tts.speakers import load_speakers
    assert set(load_speakers(run / "model")) == {"spk0", "spk1"}


def test_flow_resume_continues(trained, codes_dir, codec):
    run, _, tc, mc = trained
    tc2 = TrainConfig(**{**tc.__dict__, "max_steps": 510})
    summary = train(mc, tc2, codes_dir, run, resume=True, cpu=True, codec=codec)
    assert summary["step"] == 510
    steps = [r["step"] for r in read_jsonl(run / "metrics.jsonl") if "loss" in r]
    assert 510 in steps and steps.count(1) == 1


def _items(codec, n=3, cut=8):
    rows = synth_rows(codec, n, seed=5)
    items = []
    for k in range(n):
        sem = torch.tensor(rows["semantic_codes"][k])
        ln = torch.tensor(rows["token_lengths"][k])
        ac = torch.tensor(rows["acoustic_codes"][k])
        lat = codec.latent_from_codes(sem, ac, ln)[0].transpose(0, 1)     # [D, T]
        items.append({"prompt_semantic": sem[:cut], "prompt_lengths": ln[:cut],
                      "prompt_acoustic": lat[:, :cut], "semantic": sem[cut:],
                      "lengths": ln[cut:], "gold": lat[:, cut:]})
    return items


def test_flow_sampling_learns_and_is_seeded(trained, codec):
    run, _, _, _ = trained
    model = load_acoustic(run / "model")
    items = _items(codec)
    g = lambda k: torch.Generator().manual_seed(k)  # noqa: E731
    out = predict_latent(model, items, generator=g(0))
    for it, lat in zip(items, out):
        assert lat.shape == it["gold"].shape and lat.dtype == torch.float32
        assert torch.isfinite(lat).all()
    # the trained stage's samples are much closer to the truth than an untrained stage's
    # (with the same latent normalisation) on held-out codes
    def err(outs):
        return sum(float((o - it["gold"]).pow(2).mean()) for o, it in zip(outs, items))
    fresh = FlowAcousticModel(model.config)
    fresh.set_latent_stats(model.latent_mean, model.latent_std)
    untrained = err(predict_latent(fresh.eval(), items, generator=g(0)))
    assert err(out) < 0.7 * untrained
    # both samplers, with and without guidance, work; they are different integrators
    eu = predict_latent(model, items, sampler="euler", steps=8, generator=g(0))
    mid0 = predict_latent(model, items, guidance_scale=0.0, generator=g(0))
    assert err(eu) < 0.7 * untrained and err(mid0) < 0.7 * untrained
    assert not torch.allclose(eu[0], out[0]) and not torch.allclose(mid0[0], out[0])
    # seeds: same seed → same latent, another seed → another one
    again = predict_latent(model, items, generator=g(0))
    assert all(torch.equal(a, b) for a, b in zip(out, again))
    other = predict_latent(model, items, generator=g(1))
    assert not torch.allclose(other[0], out[0])
    # batched == one by one (padding does not leak)
    one = predict_latent(model, items[1:2], generator=g(0))
    assert one[0].shape == out[1].shape
    # prompt copied verbatim, padding zero
    from flexicodec.tts.acoustic import build_batch
    b = build_batch(items[:2], acoustic_dtype=torch.float32)
    full = model.generate(b["semantic"], b["lengths"], b["prompt_acoustic"].transpose(1, 2),
                          b["prompt_len"], generator=g(0))
    assert torch.equal(full[0, :8], items[0]["prompt_acoustic"].transpose(0, 1))
    pad = b["lengths"] == 0
    assert pad.any() and torch.equal(full[pad], torch.zeros_like(full[pad]))
    # the decoded latent is audio of the right length
    audio = codec.decode_from_latent(out[0].transpose(0, 1), items[0]["lengths"])
    assert audio.shape[-1] == int(items[0]["lengths"].sum()) * 1280


def test_windows_with_context_give_the_whole_utterance_latent(codec, codes_dir):
    """The trainer's flow batch: windows cropped after dequantizing with the semantic
    decoder's context equal the latent of the whole utterance."""
    ds = load_codes_dataset(codes_dir, "train")
    ctx = codec.latent_context_tokens()
    data = AcousticCodesDataset(ds, codec.config.n_q, CropConfig(max_tokens=12), seed=3,
                                context=ctx)
    batch = collate_codes([data[i] for i in range(6)])
    assert (batch["offset"] > 0).any() and (batch["core"] == 12).all()
    fb = flow_batch(codec, batch)
    assert fb["latent"].shape == (6, 12, codec.config.latent_dim)
    plain = AcousticCodesDataset(ds, codec.config.n_q, CropConfig(max_tokens=12), seed=3)
    for i in range(6):
        item = plain[i]   # same random crop and prompt (same seed, same draws)
        row = ds[i]
        whole = codec.latent_from_codes(row["semantic_codes"], row["acoustic_codes"],
                                        row["token_lengths"])[0]
        sem = torch.tensor(row["semantic_codes"])
        # find the crop: the masked-stage item holds the same window's codes
        starts = [s for s in range(sem.numel() - 11) if torch.equal(sem[s:s + 12],
                                                                      item["semantic"])]
        assert starts and item["prompt_len"] == int(fb["prompt_len"][i])
        s = starts[0]
        assert torch.equal(fb["semantic"][i], item["semantic"])
        assert torch.allclose(fb["latent"][i], whole[s:s + 12], atol=1e-5)
    x = torch.arange(10).view(2, 5)
    assert crop_window(x, torch.tensor([1, 0]), torch.tensor([3, 2])).tolist() == \
        [[1, 2, 3], [5, 6, 0]]


def test_flow_bad_inputs(codec, codes_dir, tmp_path):
    model = FlowAcousticModel(flow_config(codec))
    item = {"semantic": [1, 2], "lengths": [1, 2]}
    with pytest.raises(ValueError, match="sampler"):
        predict_latent(model, [item], sampler="rk4")
    with pytest.raises(ValueError, match="at least one step"):
        predict_latent(model, [item], steps=0)
    with pytest.raises(ValueError, match="guidance"):
        predict_latent(model, [item], guidance_scale=float("nan"))
    with pytest.raises(ValueError, match="dims"):
        predict_latent(model, [{**item, "prompt_semantic": [1], "prompt_lengths": [1],
                                "prompt_acoustic": torch.zeros(5, 1)}])
    with pytest.raises(ValueError, match="semantic codes outside"):
        predict_latent(model, [{"semantic": [10_000], "lengths": [1]}])
    with pytest.raises(ValueError, match="kind"):
        FlowConfig(kind="masked")
    with pytest.raises(ValueError, match="std > 0"):
        model.set_latent_stats(torch.zeros(codec.config.latent_dim),
                               torch.zeros(codec.config.latent_dim))
    with pytest.raises(ValueError, match="two tokens"):
        latent_stats(torch.zeros(1, 1, 4), torch.ones(1, 1, dtype=torch.bool))
    tc = TrainConfig(max_steps=1, batch_size=2, max_tokens=8)
    with pytest.raises(ValueError, match="--codec"):
        train(flow_config(codec), tc, codes_dir, tmp_path / "r", cpu=True)
    with pytest.raises(CodesDataError, match="latent_dim"):
        check_codec_matches(flow_config(codec, latent_dim=16), codec, None)
    with pytest.raises(CodesDataError, match="tokenized with codec"):
        check_codec_matches(flow_config(codec), codec, {"codec_identity": "0123"})
    cfg = tmp_path / "c.yaml"
    cfg.write_text("kind: flow\nmodel: {d_model: 32, steps_per_level: [1]}\n")
    with pytest.raises(ValueError, match="steps_per_level"):
        load_config(cfg)
    cfg.write_text("kind: diffusion\n")
    with pytest.raises(ValueError, match="kind"):
        load_config(cfg)
    cfg.write_text("kind: masked\nmodel: {kind: flow}\n")
    with pytest.raises(ValueError, match="contradicts"):
        load_config(cfg)
    mc, _ = load_config("configs/tts/acoustic_masked_gpu.yaml")
    mf, _ = load_config("configs/tts/acoustic_flow_gpu.yaml")
    assert mc.kind == "masked" and mf.kind == "flow"
