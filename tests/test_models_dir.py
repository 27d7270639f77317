"""The models directory, weight-file errors, and codecs that refer to their ASR by identity."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flexicodec.codec.asr.model import PhonemeASR, PhonemeASRConfig
from flexicodec.codec.config import FlexiCodecConfig
from flexicodec.codec.model import ASR_PREFIX, FlexiCodec
from flexicodec.common.models import CHECKOUT_MODELS, MODELS_ENV, ModelsDirError, default_dir, \
    models_dir
from flexicodec.common.pretrained import CheckpointError, WeightFileError, state_dict_identity

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------
# the models directory
# ------------------------------------------------------------------------------------------
def test_models_dir_is_the_env_var_else_the_checkout_folder(tmp_path, monkeypatch):
    monkeypatch.delenv(MODELS_ENV, raising=False)
    assert models_dir() == CHECKOUT_MODELS == REPO / "flexicodec_pretrained"
    assert not (CHECKOUT_MODELS / "__init__.py").exists()      # a data folder, not a package
    assert default_dir("asr") == CHECKOUT_MODELS / "asr"
    shutil.copytree(CHECKOUT_MODELS / "asr", tmp_path / "asr")
    monkeypatch.setenv(MODELS_ENV, str(tmp_path))
    assert models_dir() == tmp_path and default_dir("asr") == tmp_path / "asr"
    with pytest.raises(ModelsDirError, match=f"no 'codec' model.*{MODELS_ENV}"):
        default_dir("codec")
    monkeypatch.setenv(MODELS_ENV, str(tmp_path / "nope"))
    with pytest.raises(ModelsDirError, match=f"models directory not found \\({MODELS_ENV}="):
        models_dir()


def _run(args, env_extra=None, cwd=None):
    import os
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                          cwd=cwd or REPO, timeout=600)


def test_cli_without_models_dir_is_a_one_line_error(tmp_path):
    p = _run(["-m", "flexicodec.codec.cli", "encode", str(tmp_path), "-o", str(tmp_path / "o")],
             {MODELS_ENV: str(tmp_path / "missing")})
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and MODELS_ENV in lines[0] and "Traceback" not in p.stderr


# ------------------------------------------------------------------------------------------
# truncated / corrupt weight files
# ------------------------------------------------------------------------------------------
def test_truncated_or_corrupt_weight_file_names_the_file(tmp_path):
    d = tmp_path / "asr"
    shutil.copytree(default_dir("asr"), d)
    weights = d / "model.safetensors"
    data = weights.read_bytes()
    assert PhonemeASR.from_pretrained(d).identity           # the copy is whole
    weights.write_bytes(data[: len(data) // 2])              # a cut file
    with pytest.raises(WeightFileError, match="truncated or corrupt") as e:
        PhonemeASR.from_pretrained(d)
    assert str(weights) in str(e.value) and "\n" not in str(e.value)
    weights.write_bytes(b"\xff" * 64 + data[64:])            # a garbage header
    with pytest.raises(WeightFileError, match="corrupt weight file") as e:
        PhonemeASR.from_pretrained(d)
    assert str(weights) in str(e.value)


def test_cli_with_a_cut_codec_shard_is_a_one_line_error(tmp_path):
    d = tmp_path / "codec"
    shutil.copytree(default_dir("codec"), d)
    shard = sorted(d.glob("model-*.safetensors"))[1]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 1000])
    wav = tmp_path / "a.wav"
    import numpy as np
    import soundfile as sf
    sf.write(wav, np.zeros(16000, dtype="float32"), 16000)
    p = _run(["-m", "flexicodec.codec.cli", "encode", str(wav), "-o", str(tmp_path / "o"),
              "--model", str(d)])
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and str(shard) in lines[0], p.stderr
    assert "SafetensorError" not in p.stderr and "Traceback" not in p.stderr


# ------------------------------------------------------------------------------------------
# codecs refer to their frozen ASR by identity
# ------------------------------------------------------------------------------------------
@pytest.fixture()
def tiny_asr_dir(tmp_path):
    torch.manual_seed(0)
    cfg = FlexiCodecConfig.tiny().semantic.asr_config
    from flexicodec.common.pretrained import config_from_dict
    asr = PhonemeASR(config_from_dict(PhonemeASRConfig, cfg))
    return asr.save_pretrained(tmp_path / "store" / "my_asr")


def _tiny_codec(asr_dir: Path) -> FlexiCodec:
    cfg = FlexiCodecConfig.tiny()
    cfg.semantic.asr_path = str(asr_dir)
    torch.manual_seed(1)
    return FlexiCodec(cfg)


def test_asr_path_under_flexicodec_pretrained_names_the_models_directory(
        tmp_path, tiny_asr_dir, monkeypatch):
    """The presets' and configs' ``asr_path: flexicodec_pretrained/asr`` works from any working
    directory and follows $FLEXICODEC_MODELS; other relative paths stay relative."""
    from flexicodec.codec.train import build_codec_config
    from flexicodec.common.models import resolve_models_path

    models = tmp_path / "models"
    shutil.copytree(tiny_asr_dir, models / "asr")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv(MODELS_ENV, str(models))
    assert resolve_models_path("flexicodec_pretrained/asr") == models / "asr"
    assert resolve_models_path("runs/asr") == Path("runs/asr")
    assert resolve_models_path(tiny_asr_dir) == tiny_asr_dir
    cfg = FlexiCodecConfig.tiny()
    cfg.semantic.asr_path = "flexicodec_pretrained/asr"
    codec = FlexiCodec(cfg)
    assert cfg.semantic.asr_source == str((models / "asr").resolve())
    assert state_dict_identity(codec.semantic.asr.state_dict()) == state_dict_identity(
        PhonemeASR.from_pretrained(tiny_asr_dir).state_dict())
    # the trainer's config check resolves it too (configs/codec/*.yaml name it this way)
    yaml = elsewhere / "codec.yaml"
    yaml.write_text("model:\n  semantic: {source: asr, asr_path: flexicodec_pretrained/asr}\n")
    assert build_codec_config(str(yaml), None, None).semantic.asr_path == str(models / "asr")
    monkeypatch.setenv(MODELS_ENV, str(tmp_path / "missing"))
    with pytest.raises(ModelsDirError):
        resolve_models_path("flexicodec_pretrained/asr")


def test_saved_codec_holds_no_asr_tensors_and_round_trips(tmp_path, tiny_asr_dir, monkeypatch):
    monkeypatch.setenv(MODELS_ENV, str(tmp_path / "store"))
    codec = _tiny_codec(tiny_asr_dir)
    d = codec.save_pretrained(tmp_path / "runs" / "codec")
    assert not (tmp_path / "runs" / f"asr-{codec.config.semantic.asr_identity}").exists()
    from safetensors.torch import load_file
    saved = {k for f in d.glob("*.safetensors") for k in load_file(str(f))}
    assert saved and not any(k.startswith(ASR_PREFIX) for k in saved)
    meta = json.loads((d / "config.json").read_text())
    asr_ident = state_dict_identity(PhonemeASR.from_pretrained(tiny_asr_dir).state_dict())
    assert meta["config"]["semantic"]["asr_identity"] == asr_ident
    assert meta["identity"] == codec.identity

    # found through the recorded source, and again from the models directory once moved
    back = FlexiCodec.from_pretrained(d)
    assert back.identity == codec.identity
    for (k, a), (k2, b) in zip(codec.state_dict().items(), back.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    moved = tmp_path / "store" / "asr_moved"
    shutil.move(str(tiny_asr_dir), moved)
    back = FlexiCodec.from_pretrained(d)
    assert torch.equal(back.semantic.asr.state_dict()[next(iter(back.semantic.asr.state_dict()))],
                       codec.semantic.asr.state_dict()[next(iter(codec.semantic.asr.state_dict()))])
    wav = torch.randn(1, 16000) * 0.1
    with torch.no_grad():
        a = codec.encode(wav, 16000)
        b = back.encode(wav, 16000)
    assert torch.equal(a.semantic_codes, b.semantic_codes)


def test_missing_or_other_asr_is_a_clear_error(tmp_path, tiny_asr_dir, monkeypatch):
    monkeypatch.setenv(MODELS_ENV, str(tmp_path / "empty"))
    (tmp_path / "empty").mkdir()
    d = _tiny_codec(tiny_asr_dir).save_pretrained(tmp_path / "runs" / "codec")
    ident = json.loads((d / "config.json").read_text())["config"]["semantic"]["asr_identity"]
    # another ASR (other weights) given explicitly is refused
    torch.manual_seed(5)
    other = PhonemeASR(PhonemeASR.from_pretrained(tiny_asr_dir).config).save_pretrained(
        tmp_path / "other_asr")
    with pytest.raises(CheckpointError, match=f"the codec needs {ident}"):
        FlexiCodec.from_pretrained(d, asr=str(other))
    assert FlexiCodec.from_pretrained(d, asr=str(tiny_asr_dir)).config.semantic.asr_identity \
        == ident
    shutil.rmtree(tiny_asr_dir)
    with pytest.raises(CheckpointError, match=f"needs the ASR with identity {ident}.*"
                                              f"{MODELS_ENV}.*--asr"):
        FlexiCodec.from_pretrained(d)


def test_codec_without_a_findable_asr_saves_it_once_beside(tmp_path, monkeypatch):
    monkeypatch.setenv(MODELS_ENV, str(tmp_path / "empty"))
    (tmp_path / "empty").mkdir()
    torch.manual_seed(0)
    codec = FlexiCodec(FlexiCodecConfig.tiny())          # an ASR built from config only
    d = codec.save_pretrained(tmp_path / "out" / "codec")
    ident = codec.config.semantic.asr_identity
    beside = tmp_path / "out" / f"asr-{ident}"
    assert (beside / "config.json").is_file()
    codec.save_pretrained(tmp_path / "out" / "codec2")   # found now: not written twice
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [beside.name, "codec",
                                                                     "codec2"]
    assert FlexiCodec.from_pretrained(d).identity == codec.identity


def test_shipped_codecs_load_through_the_legacy_branch(tmp_path):
    """The shipped codecs still hold an ASR copy; it is checked against the identity their
    config records, and it is the shipped ASR's weights."""
    asr = PhonemeASR.from_pretrained()
    for name in ("codec", "codec_fixed_6.25hz"):
        meta = json.loads((default_dir(name) / "config.json").read_text())
        assert meta["config"]["semantic"]["asr_identity"] == state_dict_identity(asr.state_dict())
    d = tmp_path / "codec"
    shutil.copytree(default_dir("codec"), d)
    codec = FlexiCodec.from_pretrained(d)
    assert codec.identity == json.loads((d / "config.json").read_text())["identity"]
    # a copy whose recorded identity does not match its embedded ASR is refused
    meta = json.loads((d / "config.json").read_text())
    meta["config"]["semantic"]["asr_identity"] = "0" * 16
    (d / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="embedded ASR copy has identity"):
        FlexiCodec.from_pretrained(d)
