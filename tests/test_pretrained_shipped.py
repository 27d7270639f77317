"""The default models (the models directory, flexicodec_pretrained/ in a checkout): present, small enough, consistent, and
loadable with no arguments."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from flexicodec.codec.asr.model import PhonemeASR
from flexicodec.codec.model import FlexiCodec
from flexicodec.common.pretrained import CheckpointError, PretrainedMixin
from flexicodec.common.models import default_dir, models_dir

torch.set_num_threads(1)

SHIPPED = ("asr", "codec", "codec_fixed_6.25hz", "lm", "acoustic")


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_file_fits_the_limit(name):
    files = [p for p in default_dir(name).rglob("*") if p.is_file()]
    assert files
    too_big = [(p.name, p.stat().st_size) for p in files if p.stat().st_size > 16 * 2**20]
    assert not too_big


def test_no_argument_loads_the_shipped_models_and_they_agree():
    codec = FlexiCodec.from_pretrained()
    meta = json.loads((default_dir("codec") / "config.json").read_text())
    assert codec.identity == meta["identity"]
    asr = PhonemeASR.from_pretrained()
    # the ASR's recorded identity is the hash of its weights, which codecs record for it
    from flexicodec.codec.semantic import asr_weights_identity
    assert asr.identity == asr_weights_identity(asr) == codec.config.semantic.asr_identity
    # the codec's frozen semantic model is the shipped ASR
    own = codec.state_dict()
    for k, v in asr.state_dict().items():
        assert torch.equal(own["semantic.asr." + k].float(), v.float()), k
    # the LM and the acoustic stage were trained on this codec's tokens
    lm_meta = json.loads((default_dir("lm") / "config.json").read_text())
    assert lm_meta["config"]["codec_identity"] == codec.identity
    from flexicodec.tts.acoustic import AcousticModel
    ac = AcousticModel.from_pretrained()
    assert ac.config.semantic_vocab_size == codec.semantic_vocab_size


def test_shipped_codec_meets_a_target_rate():
    from flexicodec.data.synth import list_speakers, synthesize
    if not any(s.id == "flite_slt" for s in list_speakers()):
        pytest.fail("flite (voice slt) is required: run scripts/setup.sh")
    wav = synthesize(["The birch canoe slid on the smooth planks, and the sheet was glued "
                      "to the dark blue background."], "flite_slt")[0]
    codec = FlexiCodec.from_pretrained()
    full = codec.encode(wav, 16000, threshold=1.0)
    half = codec.encode(wav, 16000, frame_rate=6.25)
    assert float(full.frame_rate[0]) == pytest.approx(12.5)
    assert float(half.frame_rate[0]) == pytest.approx(6.25, rel=0.05)
    n = int(half.token_mask[0].sum())
    assert int(half.token_lengths[0, :n].sum()) == int(full.token_mask[0].sum())
    audio = codec.decode_from_codes(half.semantic_codes, half.acoustic_codes,
                                    half.token_lengths)
    assert np.isfinite(audio.detach().numpy()).all()


def test_class_without_shipped_checkpoint_says_so():
    class Unshipped(PretrainedMixin):
        model_type = "x"

    with pytest.raises(CheckpointError, match="no shipped"):
        Unshipped.from_pretrained()
    assert models_dir().is_dir()


def test_codec_v2_training_state_fits_its_asr():
    """checkpoints/codec_v2 (the run in progress) is tied to checkpoints/asr_v2: the state's
    recorded semantic identity is that ASR's and its discriminators are the configs' (stage 1
    and 2), so the documented continue command loads it."""
    from pathlib import Path

    from flexicodec.codec.config import SemanticConfig
    from flexicodec.codec.portable import read_portable_info, semantic_identity
    from flexicodec.codec.semantic import build_semantic

    root = Path(__file__).resolve().parents[1]
    info = read_portable_info(root / "checkpoints" / "codec_v2")
    sem = build_semantic(SemanticConfig(asr_path=str(root / "checkpoints" / "asr_v2")))
    assert semantic_identity(sem) == info["semantic_identity"]
    assert info["semantic_history"][-1]["identity"] == info["semantic_identity"]
    # and its discriminators are the ones configs/codec/v2.yaml builds (layout aside)
    from flexicodec.codec.discriminators import same_weights
    from flexicodec.codec.train import load_train_section
    from flexicodec.common.pretrained import config_to_dict
    for config in ("v2.yaml", "v2_stage2.yaml"):
        tc = load_train_section(root / "configs" / "codec" / config)
        assert same_weights(config_to_dict(tc.discriminator), info["discriminator_config"])
