"""Codec trainer: a tiny model learns (mel loss on a real utterance falls), resume is exact,
fixed-group baseline runs, bad configs fail clearly."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from flexicodec.codec.asr.model import PhonemeASR, PhonemeASRConfig
from flexicodec.codec.config import PRESETS
from flexicodec.codec.losses import MultiResolutionMelLoss
from flexicodec.codec.train import build_codec_config, load_train_section, train_codec
from flexicodec.common.atomic import read_jsonl
from flexicodec.common.training import seed_everything

torch.set_num_threads(1)

TRAIN = dict(batch_size=2, segment_seconds=1.0, lr_g=2e-3, lr_d=1e-3, warmup_steps=2,
             max_steps=30, disc_start=10, warmup_fixed_steps=10, log_every=1, eval_every=1000,
             save_every=1000, max_eval_utts=2, eval_seconds=2.0, num_workers=0, seed=0,
             mel_loss=dict(n_ffts=[256, 512], hops=[64, 128], n_mels=[20, 40]),
             discriminator=dict(periods=[2, 3], mpd_channels=[8, 16],
                                mrd_resolutions=[[256, 64, 256]], mrd_channels=8))


def _yaml(path: Path, **train) -> Path:
    model = {k: list(v) if isinstance(v, tuple) else v for k, v in PRESETS["tiny"].items()}
    path.write_text(yaml.safe_dump({"model": model, "train": {**TRAIN, **train}}))
    return path


@pytest.fixture(scope="module")
def asr_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("asr") / "asr"
    PhonemeASR(PhonemeASRConfig.tiny()).save_pretrained(d)
    return d


def _real_utterance(corpus: Path) -> torch.Tensor:
    from flexicodec.data.loaders import load_corpus
    from flexicodec.data.audio import load_audio
    ds = load_corpus(corpus, split="valid")
    wav, _ = load_audio(ds[0]["audio"], 16000)
    return torch.from_numpy(wav[: 3 * 16000])[None]


def _mel_of(model, wav) -> float:
    loss = MultiResolutionMelLoss()
    model.eval()
    with torch.no_grad():
        out = model(wav, None, threshold=1.0)
    return loss(out.audio, wav).item()


def _portable_after_two_steps(tiny_corpus, asr_dir, tmp_path) -> tuple[str, Path]:
    """A tiny run's config (4 steps, re-warm over 2) and the portable state it left after
    stopping at step 2."""
    cfg = str(_yaml(tmp_path / "c.yaml", max_steps=4, disc_start=1, warmup_fixed_steps=100,
                    rewarm_steps=2))
    port = tmp_path / "portable"
    train_codec(cfg, str(tiny_corpus), str(tmp_path / "a"), asr=str(asr_dir), cpu=True,
                stop_after=2, portable_state=str(port))
    return cfg, port


def test_tiny_codec_learns(tiny_corpus, asr_dir, tmp_path):
    from flexicodec.codec.model import FlexiCodec
    cfg_path = _yaml(tmp_path / "c.yaml")
    seed_everything(0)                       # same initial weights as the trainer's
    initial = FlexiCodec(build_codec_config(str(cfg_path), str(asr_dir), None))
    res = train_codec(str(cfg_path), str(tiny_corpus), str(tmp_path / "run"), asr=str(asr_dir),
                      out_model=str(tmp_path / "codec"), cpu=True)
    assert res["step"] == 30 and res["finished"]
    rows = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "mel_loss" in r]
    assert len(rows) == 30
    assert all(r["threshold"] == 1.0 and r["frame_rate"] == 12.5 for r in rows[:10])
    # after the warm-up each batch draws a target rate and each utterance is merged to it
    # (1 s crops = 13 frames: a token is 0.96 Hz, so the batch mean is within one token)
    assert all(3.0 <= r["target_frame_rate"] <= 12.5 for r in rows[10:])
    assert all(abs(r["frame_rate"] - r["target_frame_rate"]) <= 12.5 / 13 + 1e-6 for r in rows[10:])
    assert min(r["frame_rate"] for r in rows[10:]) < 9.0     # it really merges
    assert not any(r.get("target_frame_rate") for r in rows[:10])
    assert all("d_loss" in r and "fm_loss" in r for r in rows[10:])
    assert not any("d_loss" in r for r in rows[:10])
    wav = _real_utterance(tiny_corpus)
    trained = FlexiCodec.from_pretrained(tmp_path / "codec")
    before, after = _mel_of(initial, wav), _mel_of(trained, wav)
    assert after < 0.9 * before, (before, after)
    # the codec directory is self-contained: the ASR config travelled in
    meta = json.loads((tmp_path / "codec" / "config.json").read_text())
    assert meta["config"]["semantic"]["asr_path"] == ""
    # the exported default threshold was calibrated to default_rate on the valid split
    assert meta["config"]["default_threshold"] != 0.91
    assert -1.0 <= meta["config"]["default_threshold"] < 1.0
    assert meta["config"]["semantic"]["asr_config"]["vocab"] == PhonemeASRConfig.tiny().vocab


def test_resume_is_exact(tiny_corpus, asr_dir, tmp_path):
    # (with timbre augmentation: a resumed step draws the same voices)
    cfg = str(_yaml(tmp_path / "c.yaml", max_steps=6, disc_start=2, warmup_fixed_steps=2,
                    save_every=3, ema_decay=0.9, disc_segment_seconds=0.5,
                    timbre_augment={"prob": 0.5}))
    full = train_codec(cfg, str(tiny_corpus), str(tmp_path / "a"), asr=str(asr_dir), cpu=True)
    part = train_codec(cfg, str(tiny_corpus), str(tmp_path / "b"), asr=str(asr_dir), cpu=True,
                       stop_after=3)
    assert part["step"] == 3 and not part["finished"]
    with pytest.raises(FileExistsError):       # no silent overwrite of a run
        train_codec(cfg, str(tiny_corpus), str(tmp_path / "b"), asr=str(asr_dir), cpu=True)
    rest = train_codec(cfg, str(tiny_corpus), str(tmp_path / "b"), cpu=True, resume=True)
    assert rest["step"] == 6 and full["step"] == 6
    la = [r for r in read_jsonl(tmp_path / "a" / "metrics.jsonl") if "loss" in r]
    lb = [r for r in read_jsonl(tmp_path / "b" / "metrics.jsonl") if "loss" in r]
    for ra, rb in zip(la, lb, strict=True):
        for key in ("loss", "mel_loss", "threshold", "d_loss"):
            assert ra.get(key) == rb.get(key), (ra["step"], key, ra.get(key), rb.get(key))
    wa = load_file(str(tmp_path / "a/checkpoints/step_00000006/model.safetensors"))
    wb = load_file(str(tmp_path / "b/checkpoints/step_00000006/model.safetensors"))
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_fixed_group_baseline_and_config_errors(tiny_corpus, asr_dir, tmp_path):
    cfg = str(_yaml(tmp_path / "c.yaml", max_steps=2, disc_start=1))
    res = train_codec(cfg, str(tiny_corpus), str(tmp_path / "run"), asr=str(asr_dir),
                      fixed_group=2, cpu=True, out_model=str(tmp_path / "base"))
    rows = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "mel_loss" in r]
    assert all(r["threshold"] is None and 6.25 <= r["frame_rate"] <= 6.8  # 13 frames → 7 tokens
               for r in rows)
    assert res["finished"]
    meta = json.loads((tmp_path / "base" / "config.json").read_text())
    assert meta["config"]["fixed_group"] == 2
    with pytest.raises(ValueError, match="--asr"):
        build_codec_config(cfg, None, None)
    bad = tmp_path / "bad.yaml"
    _yaml(bad, gan_kind="wgan")
    with pytest.raises(ValueError, match="gan_kind"):
        load_train_section(bad)
    _yaml(bad, learning_rate=1.0)
    with pytest.raises(ValueError, match="unknown keys"):
        load_train_section(bad)


@pytest.mark.parametrize("name", ["tiny", "small", "base"])
def test_shipped_codec_train_sections_parse(name):
    path = Path(__file__).resolve().parents[1] / "configs" / "codec" / f"{name}.yaml"
    tc = load_train_section(path)
    assert tc.max_steps > tc.disc_start >= 0 and tc.batch_size >= 1


def test_rate_focused_ablation_config_is_small_yaml_at_6_25hz():
    """configs/codec/small_rate_6.25hz.yaml is the shipped recipe with exactly two keys
    changed, and its schedule is the baseline's: a 6.25 Hz target from step 0."""
    from flexicodec.codec.config import FlexiCodecConfig
    from flexicodec.codec.train import sample_merging
    cdir = Path(__file__).resolve().parents[1] / "configs" / "codec"
    base = yaml.safe_load((cdir / "small.yaml").read_text())
    abl = yaml.safe_load((cdir / "small_rate_6.25hz.yaml").read_text())
    assert abl["model"].pop("train_frame_rate_range") == [6.25, 6.25]
    assert (abl["train"].pop("warmup_fixed_steps"), base["train"].pop("warmup_fixed_steps")) \
        == (0, 500)
    assert abl == base
    tc = load_train_section(cdir / "small_rate_6.25hz.yaml")
    cfg = FlexiCodecConfig.from_yaml(cdir / "small_rate_6.25hz.yaml")
    assert [sample_merging(s, tc, cfg) for s in (0, 1, 2000)] == [{"frame_rate": 6.25}] * 3
    shipped = FlexiCodecConfig.from_yaml(cdir / "small.yaml")
    assert sample_merging(0, load_train_section(cdir / "small.yaml"), shipped) == \
        {"threshold": 1.0}


def test_bf16_autocast_steps(tiny_corpus, asr_dir, tmp_path):
    """The GPU precision path (bf16 autocast; STFT and losses kept fp32) runs on CPU too."""
    from accelerate.state import AcceleratorState
    cfg = str(_yaml(tmp_path / "c.yaml", max_steps=3, disc_start=1, warmup_fixed_steps=1))
    AcceleratorState._reset_state(True)     # the precision is process-global in accelerate
    try:
        res = train_codec(cfg, str(tiny_corpus), str(tmp_path / "run"), asr=str(asr_dir),
                          cpu=True, mixed_precision="bf16")
    finally:
        AcceleratorState._reset_state(True)
    rows = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "mel_loss" in r]
    assert res["finished"] and len(rows) == 3
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows) and "d_loss" in rows[-1]


def test_init_from_continues_from_a_trained_codec(tiny_corpus, asr_dir, tmp_path):
    """--init-from starts a new run from a codec directory: step 0 carries its weights
    (ASR included, whatever --asr says), and a mismatched --fixed-group is refused."""
    from flexicodec.codec.model import FlexiCodec

    cfg = str(_yaml(tmp_path / "c.yaml", max_steps=2, disc_start=1, warmup_fixed_steps=0))
    train_codec(cfg, str(tiny_corpus), str(tmp_path / "first"), asr=str(asr_dir), cpu=True,
                out_model=str(tmp_path / "m1"))
    src = FlexiCodec.from_pretrained(tmp_path / "m1")
    res = train_codec(cfg, str(tiny_corpus), str(tmp_path / "cont"), cpu=True, stop_after=1,
                      init_from=str(tmp_path / "m1"), out_model=str(tmp_path / "m2"))
    assert res["step"] == 1
    cont = FlexiCodec.from_pretrained(tmp_path / "m2")
    s_src, s_cont = src.state_dict(), cont.state_dict()
    assert s_src.keys() == s_cont.keys()
    asr_keys = [k for k in s_src if k.startswith("semantic.asr.")]
    assert asr_keys and all(torch.equal(s_src[k], s_cont[k]) for k in asr_keys)  # frozen
    moved = [k for k in s_src if not k.startswith("semantic.asr.")
             and not torch.equal(s_src[k], s_cont[k])]
    assert moved                                 # one step of training changed the generator
    # the continued run's weights stay close to the source: it did start from them
    diffs = [(s_src[k].float() - s_cont[k].float()).abs().max().item() for k in moved]
    assert max(diffs) < 0.05
    with pytest.raises(ValueError, match="fixed"):
        train_codec(cfg, str(tiny_corpus), str(tmp_path / "bad"), cpu=True, fixed_group=2,
                    init_from=str(tmp_path / "m1"))


def test_device_data_crops_match_the_corpus(tiny_corpus, asr_dir):
    """Crops drawn on the device are the corpus' own audio on the frame grid, with the same
    frozen features that encoding computes for the whole utterance."""
    from flexicodec.codec.config import FlexiCodecConfig
    from flexicodec.codec.device_data import build_device_corpus
    from flexicodec.codec.model import FlexiCodec
    from flexicodec.data.audio import load_audio
    from flexicodec.data.loaders import load_corpus

    cfg = FlexiCodecConfig.tiny()
    cfg.semantic.asr_path = str(asr_dir)
    model = FlexiCodec(cfg)
    corpus = build_device_corpus(model, str(tiny_corpus), "train", "cpu", min_frames=10,
                                 progress=False, num_workers=0)
    ds = load_corpus(tiny_corpus, split="train")
    long_enough = [r for r in ds if r["duration"] * 12.5 > 9]
    assert corpus.num_utterances == len(long_enough) > 0
    sampler = corpus.crop_sampler(10)
    wav, target = sampler.sample(6, torch.Generator().manual_seed(0))
    assert wav.shape == (6, 10 * 1280) and target.shape[:2] == (6, 10)
    # locate each crop in its utterance: audio and features agree with a direct computation
    hop = 1280
    for b in range(6):
        found = False
        for u, row in enumerate(long_enough):
            x, _ = load_audio(row["audio"], 16000)
            nf = -(-len(x) // hop)
            padded = torch.nn.functional.pad(torch.from_numpy(x), (0, nf * hop - len(x)))
            for f0 in range(nf - 10 + 1):
                ref = padded[f0 * hop:(f0 + 10) * hop]
                if torch.allclose(ref, wav[b], atol=1.5 / 32768):
                    feats = model.semantic_targets(padded[None], torch.tensor([nf]))[0]
                    assert torch.allclose(feats[f0:f0 + 10], target[b].float(), atol=0.05,
                                          rtol=0.02)
                    found = True
                    break
            if found:
                break
        assert found, f"crop {b} is not a frame-aligned slice of a train utterance"
    # same seed, same crops
    w2, _ = sampler.sample(6, torch.Generator().manual_seed(0))
    assert torch.equal(wav, w2)
    with pytest.raises(ValueError, match="at least"):
        corpus.crop_sampler(10 ** 6)


def test_device_data_training_and_portable_state(tiny_corpus, asr_dir, tmp_path):
    """The device-data path trains, its cache is reused, and a run continued from a portable
    state starts from those weights and step (with a re-warmed learning rate)."""
    from flexicodec.codec.portable import PortableStateError, load_portable_weights, read_portable_info

    cfg = str(_yaml(tmp_path / "c.yaml", max_steps=6, disc_start=2, warmup_fixed_steps=100,
                    data_on_device=True, lr_schedule="constant", rewarm_steps=4,
                    cache_dir=str(tmp_path / "cache")))
    port = tmp_path / "portable"
    first = train_codec(cfg, str(tiny_corpus), str(tmp_path / "a"), asr=str(asr_dir), cpu=True,
                        stop_after=3, portable_state=str(port))
    assert first["step"] == 3 and math.isfinite(first["mel_loss"])
    assert len(list((tmp_path / "cache").glob("device_corpus_train_*.pt"))) == 1
    info = read_portable_info(port)
    assert info["step"] == 3 and info["train_seconds"] > 0
    assert sorted(p.name for p in port.iterdir()) == ["discriminator.safetensors",
                                                     "generator.safetensors", "state.json"]
    second = train_codec(cfg, str(tiny_corpus), str(tmp_path / "b"), asr=str(asr_dir),
                         cpu=True, portable_state=str(port))
    assert second["step"] == 6
    logs = [r for r in read_jsonl(tmp_path / "b" / "metrics.jsonl") if "loss" in r]
    assert logs[0]["step"] == 4
    # re-warm over 4 steps from step 3 (lr_g logged after step k is the next step's)
    assert [r["lr_g"] for r in logs] == pytest.approx([TRAIN["lr_g"] * f for f in
                                                       (2 / 4, 3 / 4, 1.0)])
    assert read_portable_info(port)["step"] == 6
    assert second["train_minutes"] > first["train_minutes"]
    # the discriminators' layout is no part of the state: one saved before the setting
    # existed continues with the 1-d period layout (same weights), other sizes are refused
    import json as _json
    info_file = port / "state.json"
    saved = _json.loads(info_file.read_text())
    saved["discriminator_config"].pop("mpd_layout")
    info_file.write_text(_json.dumps(saved))
    cfg_1d = str(_yaml(tmp_path / "c1d.yaml", max_steps=7, disc_start=2,
                       warmup_fixed_steps=100, data_on_device=True, lr_schedule="constant",
                       rewarm_steps=4, cache_dir=str(tmp_path / "cache"),
                       discriminator={**TRAIN["discriminator"], "mpd_layout": "1d"}))
    third = train_codec(cfg_1d, str(tiny_corpus), str(tmp_path / "c"), asr=str(asr_dir),
                        cpu=True, portable_state=str(port))
    assert third["step"] == 7 and math.isfinite(third["mel_loss"])
    assert read_portable_info(port)["discriminator_config"]["mpd_layout"] == "1d"
    cfg_wide = str(_yaml(tmp_path / "cw.yaml", max_steps=8, disc_start=2,
                         discriminator={**TRAIN["discriminator"], "mpd_channels": [8, 32]}))
    with pytest.raises(ValueError, match="discriminators differ"):
        train_codec(cfg_wide, str(tiny_corpus), str(tmp_path / "d"), asr=str(asr_dir),
                    cpu=True, portable_state=str(port))
    # a portable state only loads into a codec with the same frozen ASR
    from flexicodec.codec.config import FlexiCodecConfig
    from flexicodec.codec.discriminators import CodecDiscriminator, DiscriminatorConfig
    from flexicodec.codec.model import FlexiCodec
    other = FlexiCodec(FlexiCodecConfig.tiny())
    disc = CodecDiscriminator(DiscriminatorConfig(**TRAIN["discriminator"]))
    with pytest.raises(PortableStateError, match="semantic model"):
        load_portable_weights(port, other, disc)
    with pytest.raises(PortableStateError, match="not a portable training state"):
        read_portable_info(tmp_path)
    # scripts/export_portable.py: a codec directory with the state's weights
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from export_portable import main as export_portable
    assert export_portable([str(port), "--asr", str(asr_dir), "-o", str(tmp_path / "x")]) == 0
    exported = FlexiCodec.from_pretrained(tmp_path / "x")
    gen = load_file(str(port / "generator.safetensors"))
    own = exported.state_dict()
    assert all(torch.equal(gen[k].float(), own[k].float()) for k in gen)
    assert export_portable([str(tmp_path), "--asr", str(asr_dir), "-o",
                            str(tmp_path / "y")]) == 2
    # an --asr that is not a trained ASR directory: a clear error, nothing written
    assert export_portable([str(port), "--asr", str(tmp_path / "no_asr"), "-o",
                            str(tmp_path / "z")]) == 2
    assert not (tmp_path / "z").exists()


def test_compiled_step_matches_eager(tiny_corpus, asr_dir, tmp_path):
    """train.compile changes speed, not the computation: the losses of a step agree (after
    an update, Adam amplifies rounding differences of near-zero gradients); the
    discriminators on 0.5-s windows of one of the two items, frozen in the generator's pass. The graphs go through
    dynamo and AOTAutograd (``aot_eager``: every part traced, its backward derived) without
    the inductor's C++ code generation, which would take minutes on a CPU."""
    cfg_e = str(_yaml(tmp_path / "e.yaml", max_steps=1, disc_start=0, warmup_fixed_steps=100,
                      data_on_device=True, cache_dir=str(tmp_path / "cache"),
                      disc_segment_seconds=0.5, disc_batch_size=1))
    cfg_c = str(_yaml(tmp_path / "c.yaml", max_steps=1, disc_start=0, warmup_fixed_steps=100,
                      data_on_device=True, cache_dir=str(tmp_path / "cache"), compile=True,
                      compile_backend="aot_eager", disc_segment_seconds=0.5,
                      disc_batch_size=1))
    # train.compile_mode reduce-overhead (CUDA graphs on a GPU; each step marks its start)
    cfg_g = str(_yaml(tmp_path / "g.yaml", max_steps=1, disc_start=0, warmup_fixed_steps=100,
                      data_on_device=True, cache_dir=str(tmp_path / "cache"), compile=True,
                      compile_backend="aot_eager", compile_mode="reduce-overhead",
                      disc_segment_seconds=0.5, disc_batch_size=1))
    train_codec(cfg_e, str(tiny_corpus), str(tmp_path / "e"), asr=str(asr_dir), cpu=True)
    train_codec(cfg_c, str(tiny_corpus), str(tmp_path / "c"), asr=str(asr_dir), cpu=True)
    train_codec(cfg_g, str(tiny_corpus), str(tmp_path / "g"), asr=str(asr_dir), cpu=True)
    le = [r for r in read_jsonl(tmp_path / "e" / "metrics.jsonl") if "loss" in r]
    for run in ("c", "g"):
        lc = [r for r in read_jsonl(tmp_path / run / "metrics.jsonl") if "loss" in r]
        for a, b in zip(le, lc, strict=True):
            assert a["mel_loss"] == pytest.approx(b["mel_loss"], rel=5e-3), run
            assert a["d_loss"] == pytest.approx(b["d_loss"], rel=5e-3), run
    with pytest.raises(ValueError, match="compile_mode"):
        load_train_section(_yaml(tmp_path / "bad.yaml", compile_mode="fast"))


def test_compile_cache_is_written_once_the_step_has_compiled(tiny_corpus, asr_dir, tmp_path,
                                                             monkeypatch):
    """--compile-cache: written at the run's first logged step and again at the first one
    with the discriminators (their graphs compile later); the first row records how long the
    first step took and how much of it was compilation; an unreadable cache stops the run before it trains."""
    import flexicodec.codec.train as codec_train
    from flexicodec.common.compile_cache import CompileCacheError

    run = tmp_path / "r"
    saved_at = []

    def record(path):
        saved_at.append(len(read_jsonl(run / "metrics.jsonl")))    # rows logged so far
        return 1

    monkeypatch.setattr(codec_train, "save_compile_cache", record)
    cfg = str(_yaml(tmp_path / "c.yaml", max_steps=5, disc_start=2, warmup_fixed_steps=100,
                    compile=True, compile_backend="aot_eager"))
    train_codec(cfg, str(tiny_corpus), str(run), asr=str(asr_dir), cpu=True,
                compile_cache=str(tmp_path / "cc.bin"))
    assert saved_at == [1, 3]          # step 1 (no discriminators yet), step 3 (with them)
    rows = [r for r in read_jsonl(run / "metrics.jsonl") if "loss" in r]
    assert rows[0]["first_step_s"] > 0 and all("first_step_s" not in r for r in rows[1:])
    assert 0 < rows[0]["compile_s"] < rows[0]["first_step_s"]    # this run's graphs only
    (tmp_path / "bad.bin").write_bytes(b"not a cache")
    with pytest.raises(CompileCacheError, match="bad.bin"):
        train_codec(cfg, str(tiny_corpus), str(tmp_path / "b"), asr=str(asr_dir), cpu=True,
                    compile_cache=str(tmp_path / "bad.bin"))
    assert not (tmp_path / "b" / "checkpoints").exists()


def test_init_from_portable_state_starts_a_new_run(tiny_corpus, asr_dir, tmp_path):
    """--init-from PORTABLE: a new run (step 0, fresh optimizers, the schedule from its start)
    with the state's generator and discriminators; --fixed-group 2 from the same state gives
    the fixed 6.25 Hz baseline; the run's portable state records where it came from."""
    from flexicodec.codec.train import schedule
    from flexicodec.codec.portable import read_portable_info

    cfg1 = str(_yaml(tmp_path / "s1.yaml", max_steps=6, disc_start=1, warmup_fixed_steps=100))
    p1, p2 = tmp_path / "p1", tmp_path / "p2"
    train_codec(cfg1, str(tiny_corpus), str(tmp_path / "s1"), asr=str(asr_dir), cpu=True,
                stop_after=2, portable_state=str(p1))
    assert read_portable_info(p1)["step"] == 2
    # learning rates 0: the weights after one step are the state's own
    cfg0 = str(_yaml(tmp_path / "s0.yaml", lr_g=0.0, lr_d=0.0, max_steps=4, disc_start=0,
                     warmup_fixed_steps=0))
    res = train_codec(cfg0, str(tiny_corpus), str(tmp_path / "s0"), asr=str(asr_dir), cpu=True,
                      stop_after=1, init_from=str(p1), portable_state=str(p2))
    assert res["step"] == 1
    info = read_portable_info(p2)
    assert info["step"] == 1 and info["train_seconds"] < read_portable_info(p1)["train_seconds"] \
        + 60
    assert info["init_from"] == {"path": str(p1), "step": 2,
                                 "train_seconds": read_portable_info(p1)["train_seconds"]}
    for name in ("generator.safetensors", "discriminator.safetensors"):
        a, b = load_file(str(p1 / name)), load_file(str(p2 / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    # the stage-2 budget: a fresh schedule from step 0, here for the fixed 6.25 Hz baseline
    cfg2 = str(_yaml(tmp_path / "s2.yaml", max_steps=3, disc_start=0, warmup_fixed_steps=0,
                     warmup_steps=2))
    res = train_codec(cfg2, str(tiny_corpus), str(tmp_path / "fx"), asr=str(asr_dir), cpu=True,
                      stop_after=1, init_from=str(p1), fixed_group=2)
    rows = [r for r in read_jsonl(tmp_path / "fx" / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in rows] == [1] and "d_loss" in rows[0]
    assert 6.25 <= rows[0]["frame_rate"] <= 6.8 and rows[0]["threshold"] is None
    tc = load_train_section(cfg2)
    assert rows[0]["lr_g"] == pytest.approx(TRAIN["lr_g"] * schedule(tc, 2, 3)(1))
    assert json.loads((tmp_path / "fx" / "codec_config.json").read_text())["fixed_group"] == 2
    # --resume continues that run (--init-from no longer applies)
    res = train_codec(cfg2, str(tiny_corpus), str(tmp_path / "fx"), cpu=True, resume=True,
                      init_from=str(p1), fixed_group=2)
    assert res["step"] == 3 and res["finished"]
    # an existing portable state is continued, not mixed with --init-from
    with pytest.raises(ValueError, match="not both"):
        train_codec(cfg0, str(tiny_corpus), str(tmp_path / "x"), asr=str(asr_dir), cpu=True,
                    init_from=str(p1), portable_state=str(p2))
    other = dict(TRAIN["discriminator"], mpd_channels=[8, 8])
    cfg_bad = str(_yaml(tmp_path / "bad.yaml", discriminator=other))
    with pytest.raises(ValueError, match="discriminators differ"):
        train_codec(cfg_bad, str(tiny_corpus), str(tmp_path / "y"), asr=str(asr_dir), cpu=True,
                    init_from=str(p1))


def test_v2_stage2_config():
    """configs/codec/v2_stage2.yaml: the v2 model and recipe; only the schedule differs
    (dynamic merging and discriminators from step 0, half the learning rates, cosine to
    10,000 steps) - the dynamic codec and the --fixed-group 2 baseline share it."""
    from flexicodec.codec.config import FlexiCodecConfig
    from flexicodec.codec.train import sample_merging
    cdir = Path(__file__).resolve().parents[1] / "configs" / "codec"
    v2 = yaml.safe_load((cdir / "v2.yaml").read_text())
    s2 = yaml.safe_load((cdir / "v2_stage2.yaml").read_text())
    assert s2["model"] == v2["model"]
    changed = {k: (v2["train"][k], s2["train"][k]) for k in v2["train"]
               if v2["train"][k] != s2["train"].get(k)}
    assert changed == {"lr_g": (6e-4, 3e-4), "lr_d": (3e-4, 1.5e-4),
                       "lr_schedule": ("exponential", "cosine"), "lr_min_ratio": (0.1, 0.05),
                       "max_steps": (1000000, 10000),
                       "warmup_fixed_steps": (1000000, 0), "disc_start": (2000, 0),
                       "warmup_steps": (500, 300)}
    assert s2["train"].keys() == v2["train"].keys()
    assert v2["train"]["disc_segment_seconds"] == 1.0
    tc = load_train_section(cdir / "v2_stage2.yaml")
    cfg = FlexiCodecConfig.from_yaml(cdir / "v2_stage2.yaml")
    assert "frame_rate" in sample_merging(0, tc, cfg)
    fixed = FlexiCodecConfig.from_yaml(cdir / "v2_stage2.yaml", fixed_group=2)
    assert sample_merging(0, tc, fixed) == {}


def test_portable_state_rebased_onto_a_fine_tuned_asr(tiny_corpus, asr_dir, tmp_path):
    """scripts/rebase_portable_asr.py: a state moves onto another ASR of the same architecture
    and vocabulary (weights untouched, the change recorded), continues training with it and
    keeps the record; the old ASR, a different architecture, or the same ASR again are
    refused."""
    import sys

    from flexicodec.codec.portable import (PortableStateError, SEMANTIC_HISTORY,
                                           read_portable_info, rebase_semantic)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from rebase_portable_asr import main as rebase

    cfg, port = _portable_after_two_steps(tiny_corpus, asr_dir, tmp_path)
    before = read_portable_info(port)
    weights = {n: (port / n).read_bytes() for n in ("generator.safetensors",
                                                    "discriminator.safetensors")}
    tuned = PhonemeASR.from_pretrained(asr_dir)            # a "fine-tuned" copy
    with torch.no_grad():
        tuned.head.weight.add_(0.01)
    tuned.save_pretrained(tmp_path / "asr_ft")
    assert rebase([str(port), "--asr", str(tmp_path / "asr_ft")]) == 0
    after = read_portable_info(port)
    assert after["semantic_identity"] != before["semantic_identity"]
    assert after[SEMANTIC_HISTORY] == [{"step": 2, "train_seconds": before["train_seconds"],
                                        "previous": before["semantic_identity"],
                                        "identity": after["semantic_identity"],
                                        "asr": str(tmp_path / "asr_ft")}]
    assert all((port / n).read_bytes() == b for n, b in weights.items())
    with pytest.raises(PortableStateError, match="already trained with"):
        rebase_semantic(port, tmp_path / "asr_ft")
    # the old ASR no longer fits; the new one continues the run, and the record stays
    with pytest.raises(PortableStateError, match="semantic model"):
        train_codec(cfg, str(tiny_corpus), str(tmp_path / "b"), asr=str(asr_dir), cpu=True,
                    portable_state=str(port))
    res = train_codec(cfg, str(tiny_corpus), str(tmp_path / "c"), asr=str(tmp_path / "asr_ft"),
                      cpu=True, portable_state=str(port))
    assert res["step"] == 4
    final = read_portable_info(port)
    assert final["step"] == 4 and final[SEMANTIC_HISTORY] == after[SEMANTIC_HISTORY]
    # another architecture (or vocabulary) cannot take the codec's place
    big = PhonemeASRConfig.tiny()
    big.d_model *= 2
    PhonemeASR(big).save_pretrained(tmp_path / "asr_big")
    assert rebase([str(port), "--asr", str(tmp_path / "asr_big")]) == 2
    assert read_portable_info(port) == final


def test_profile_steps_write_a_kernel_table(tiny_corpus, asr_dir, tmp_path, monkeypatch):
    """train.profile_steps: the profiled steps of a real run are summarised by operator."""
    import flexicodec.codec.train as codec_train
    from flexicodec.common.profiling import StepProfiler

    monkeypatch.setattr(codec_train, "PROFILE_AFTER", 1)
    cfg = str(_yaml(tmp_path / "c.yaml", max_steps=4, disc_start=0, warmup_fixed_steps=100,
                    profile_steps=2))
    res = train_codec(cfg, str(tiny_corpus), str(tmp_path / "r"), asr=str(asr_dir), cpu=True)
    assert res["step"] == 4
    prof = json.loads((tmp_path / "r" / "profile_step1.json").read_text())
    assert prof["steps"] == 2 and prof["first_step"] == 1 and prof["device"] == "cpu"
    assert prof["wall_ms_per_step"] > 0 and prof["device_busy_pct"] is None
    names = [r["name"] for r in prof["top_operators"]]
    assert any("conv" in n for n in names), names
    pcts = [r["pct"] for r in prof["top_operators"]]
    assert pcts == sorted(pcts, reverse=True) and 0 < sum(pcts) <= 100.0 + 1e-6
    assert prof["top_kernels"] == []
    md = (tmp_path / "r" / "profile_step1.md").read_text()
    assert md.startswith("# Profile: 2 steps from step 1 on cpu") and "| `" in md
    with pytest.raises(ValueError, match="steps must be >= 1"):
        StepProfiler(tmp_path / "p", 0, 0, torch.device("cpu"))
    with pytest.raises(ValueError, match="profile_steps"):
        train_codec(str(_yaml(tmp_path / "b.yaml", profile_steps=-1)), str(tiny_corpus),
                    str(tmp_path / "b"), asr=str(asr_dir), cpu=True)


def test_stop_file_stops_the_run_cleanly(tiny_corpus, asr_dir, tmp_path, monkeypatch):
    """RUN/STOP (a run outliving the command that started it) ends the run after the current
    step with its checkpoint and portable state; a stale one is removed at the start."""
    import flexicodec.codec.train as codec_train
    from flexicodec.codec.portable import read_portable_info

    run = tmp_path / "r"
    run.mkdir()
    (run / "STOP").touch()                           # stale: must not stop the new run

    class TouchAtTwo(codec_train.TimeBudget):
        def tick(self):
            super().tick()
            if self.ticks == 2:
                (run / "STOP").touch()
    monkeypatch.setattr(codec_train, "TimeBudget", TouchAtTwo)
    cfg = str(_yaml(tmp_path / "c.yaml", max_steps=6, disc_start=1, warmup_fixed_steps=100))
    res = train_codec(cfg, str(tiny_corpus), str(run), asr=str(asr_dir), cpu=True,
                      portable_state=str(tmp_path / "port"))
    assert res["step"] == 2 and res["finished"] is False
    assert read_portable_info(tmp_path / "port")["step"] == 2
    assert (run / "latest").exists()


def test_valid_metrics_of_the_ema_weights(tiny_corpus, asr_dir, tmp_path):
    """With an EMA, each evaluation also scores the EMA weights (what exports use); with
    train.eval_quality, STOI and PESQ-WB of both at the first rate."""
    cfg = str(_yaml(tmp_path / "c.yaml", max_steps=2, disc_start=1, warmup_fixed_steps=100,
                    eval_every=2, ema_decay=0.5, eval_quality=True, max_eval_utts=2))
    train_codec(cfg, str(tiny_corpus), str(tmp_path / "r"), asr=str(asr_dir), cpu=True)
    ev = [r for r in read_jsonl(tmp_path / "r" / "metrics.jsonl") if "valid_mel_12.5Hz" in r]
    assert len(ev) == 1
    raw, ema = ev[0]["valid_mel_12.5Hz"], ev[0]["valid_mel_12.5Hz_ema"]
    assert math.isfinite(ema) and ema != raw
    # the EMA weights with the first acoustic stage only (what the other stages add)
    q1 = ev[0]["valid_mel_12.5Hz_q1_ema"]
    assert math.isfinite(q1) and q1 != ema
    # the voices held out of training (test_unseen), both weights
    unseen, unseen_ema = ev[0]["unseen_mel_12.5Hz"], ev[0]["unseen_mel_12.5Hz_ema"]
    assert math.isfinite(unseen) and math.isfinite(unseen_ema) and unseen != raw
    for suffix in ("", "_ema"):
        assert -1.0 <= ev[0][f"valid_stoi_12.5Hz{suffix}"] <= 1.0
        assert 1.0 <= ev[0][f"valid_pesq_12.5Hz{suffix}"] <= 4.7
    assert "valid_stoi_6.25Hz" not in ev[0]                 # the first rate only


def test_valid_quality_scores_the_reconstructions_it_measures(tiny_corpus, asr_dir, tmp_path):
    """valid_mel_loss(quality=True): STOI and PESQ-WB of the very decodes whose mel distance
    it reports (one pass per utterance), equal to judging them apart."""
    from flexicodec.codec.eval.metrics import pesq_wb, stoi
    from flexicodec.codec.model import FlexiCodec
    from flexicodec.codec.train import build_codec_config, valid_mel_loss
    from flexicodec.data.loaders import AudioDataset, collate_audio, load_corpus

    torch.manual_seed(0)
    model = FlexiCodec(build_codec_config(str(_yaml(tmp_path / "c.yaml")), str(asr_dir), None))
    ds = AudioDataset(load_corpus(tiny_corpus, split="valid"), 16000, max_seconds=3.0)
    mel = MultiResolutionMelLoss()
    ev = valid_mel_loss(model, ds, mel, "cpu", 2, (12.5, 6.25), quality=True)
    plain = valid_mel_loss(model, ds, mel, "cpu", 2, (12.5, 6.25))
    assert set(ev) - set(plain) == {"valid_stoi_12.5Hz", "valid_pesq_12.5Hz"}
    assert all(ev[k] == plain[k] for k in plain)
    st, pq = [], []
    model.eval()
    for i in range(min(len(ds), 2)):
        batch = collate_audio([ds[i]])
        with torch.no_grad():
            res = model(batch["wav"], batch["wav_lengths"], frame_rate=12.5)
        ref = batch["wav"][0].numpy()
        deg = res.audio[0, : ref.shape[0]].numpy()
        st.append(stoi(ref, deg))
        pq.append(pesq_wb(ref, deg))
    assert ev["valid_stoi_12.5Hz"] == pytest.approx(sum(st) / len(st))
    assert ev["valid_pesq_12.5Hz"] == pytest.approx(sum(pq) / len(pq))


def test_eager_evaluation_context_restores_cudnn_autotuning():
    from flexicodec.codec.train import eager
    before = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = True
        with eager():
            assert torch.backends.cudnn.benchmark is False
        assert torch.backends.cudnn.benchmark is True
        with pytest.raises(RuntimeError):
            with eager():
                raise RuntimeError("evaluation failed")
        assert torch.backends.cudnn.benchmark is True
    finally:
        torch.backends.cudnn.benchmark = before


def test_portable_state_is_rewritten_with_every_checkpoint(tiny_corpus, asr_dir, tmp_path,
                                                           monkeypatch):
    """The portable state follows the run's checkpoints (a copy can leave the machine at any
    time), and is written once more at the end."""
    import flexicodec.codec.train as codec_train

    written = []
    real = codec_train.save_portable_state

    def spy(directory, codec, disc, info):
        written.append(info["step"])
        return real(directory, codec, disc, info)
    monkeypatch.setattr(codec_train, "save_portable_state", spy)
    cfg = str(_yaml(tmp_path / "c.yaml", max_steps=5, disc_start=1, warmup_fixed_steps=100,
                    save_every=2))
    train_codec(cfg, str(tiny_corpus), str(tmp_path / "r"), asr=str(asr_dir), cpu=True,
                portable_state=str(tmp_path / "port"))
    assert written == [2, 4, 5]


def test_exponential_schedule_anneals_from_a_global_step():
    """train.lr_schedule 'exponential': warm-up, constant until lr_decay_start (a global
    step, also for the discriminators' scheduler that starts at disc_start), then halved
    every lr_half_life steps down to lr_min_ratio; the re-warm ramp multiplies it; a missing
    half-life is refused."""
    from flexicodec.codec.train import CodecTrainConfig, schedule
    tc = CodecTrainConfig(lr_schedule="exponential", warmup_steps=10, lr_decay_start=100,
                          lr_half_life=50, lr_min_ratio=0.1)
    f = schedule(tc, 10, 10 ** 6)
    assert f(4) == pytest.approx(0.5) and f(60) == f(100) == 1.0
    assert f(150) == pytest.approx(0.5) and f(200) == pytest.approx(0.25)
    assert f(10 ** 5) == pytest.approx(0.1)
    assert schedule(tc, 10, 10 ** 6, offset=20)(130) == pytest.approx(0.5)   # global 150
    assert schedule(tc, 10, 10 ** 6, 0, (120, 10))(124) == \
        pytest.approx(0.5 ** (24 / 50) * 0.5)
    # the constant schedule is the exponential one before its start
    const = CodecTrainConfig(lr_schedule="constant", warmup_steps=10)
    assert all(schedule(const, 10, 10 ** 6)(i) == f(i) for i in (0, 5, 50, 100))
    with pytest.raises(ValueError, match="lr_half_life"):
        CodecTrainConfig(lr_schedule="exponential")
    with pytest.raises(ValueError, match="lr_min_ratio"):
        CodecTrainConfig(lr_schedule="exponential", lr_half_life=5, lr_min_ratio=0.0)


def test_grown_decoder_decodes_as_before_and_trains_on(tiny_corpus, asr_dir, tmp_path):
    """scripts/grow_portable_decoder.py: a portable state's decoder gets identity ConvNeXt
    blocks (γ = 0): the grown codec decodes exactly as before, a continued run trains the
    new blocks and keeps the record; growing to no more blocks is refused."""
    import sys

    from flexicodec.codec.grow import grow_portable_decoder
    from flexicodec.codec.portable import (GROWTH_HISTORY, PortableStateError,
                                           codec_from_portable, read_portable_info)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from grow_portable_decoder import main as grow

    def codec_of(port):
        return codec_from_portable(port, asr_dir).eval()

    cfg, port = _portable_after_two_steps(tiny_corpus, asr_dir, tmp_path)
    before = read_portable_info(port)
    layers = before["codec_config"]["decoder_layers"]
    wav = _real_utterance(tiny_corpus)
    with torch.no_grad():
        want = codec_of(port)(wav, None, threshold=1.0).audio
    disc_bytes = (port / "discriminator.safetensors").read_bytes()
    assert grow([str(port), "--decoder-layers", str(layers + 2)]) == 0
    after = read_portable_info(port)
    assert after["codec_config"]["decoder_layers"] == layers + 2
    assert after[GROWTH_HISTORY] == [{"step": 2, "train_seconds": before["train_seconds"],
                                      "decoder_layers": [layers, layers + 2]}]
    assert (port / "discriminator.safetensors").read_bytes() == disc_bytes
    grown = codec_of(port)
    assert len(grown.decoder.backbone.convnext) == layers + 2
    new = grown.decoder.backbone.convnext[layers]
    assert torch.count_nonzero(new.gamma) == 0 and torch.count_nonzero(new.pwconv1.weight) > 0
    with torch.no_grad():
        got = grown(wav, None, threshold=1.0).audio
    assert torch.equal(got, want)
    # the continued run trains the new blocks and keeps the record
    res = train_codec(cfg, str(tiny_corpus), str(tmp_path / "b"), asr=str(asr_dir),
                      cpu=True, portable_state=str(port))
    assert res["step"] == 4
    final = read_portable_info(port)
    assert final[GROWTH_HISTORY] == after[GROWTH_HISTORY]
    assert torch.count_nonzero(codec_of(port).decoder.backbone.convnext[layers].gamma) > 0
    with pytest.raises(PortableStateError, match="growing needs more"):
        grow_portable_decoder(port, layers + 2)
    assert grow([str(port), "--decoder-layers", str(layers)]) == 2
