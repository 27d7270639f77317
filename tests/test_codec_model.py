"""FlexiCodec model + API: shapes, rates, batching, round trips, bad inputs, plug-ins."""
import math
import subprocess

import numpy as np
import pytest
import torch

from flexicodec.codec.codes_file import CodesFile, CodesFileError, load_codes, save_codes
from flexicodec.codec.config import PRESETS, FlexiCodecConfig, SemanticConfig
from flexicodec.codec.model import FlexiCodec
from flexicodec.common.pretrained import CheckpointError
from flexicodec.data.audio import AudioError, load_audio

torch.set_num_threads(1)

TEXT = ("The quick brown fox jumps over the lazy dog. Then it runs away into the forest, "
        "looking for something to eat before night falls.")


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    """~7.6 s of real (synthetic) speech from flite, 16 kHz mono float32."""
    path = tmp_path_factory.mktemp("speech") / "fox.wav"
    subprocess.run(["flite", "-voice", "slt", "-t", TEXT, "-o", str(path)], check=True)
    wav, sr = load_audio(path)
    assert sr == 16000 and wav.shape[0] > 6 * 16000
    return wav


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return FlexiCodec(FlexiCodecConfig.tiny()).eval()


def test_training_forward_shapes_and_gradients(model, speech):
    model.train()
    try:
        wav = torch.from_numpy(np.stack([speech[:40000], speech[20000:60000]]))
        out = model(wav, torch.tensor([40000, 30000]), threshold=None)
        F = math.ceil(40000 / 1280)
        assert out.audio.shape == (2, 40000)
        Tp = out.semantic_codes.shape[1]
        assert out.acoustic_codes.shape[:2] == (2, model.config.n_q)
        assert out.acoustic_codes.shape[2] == Tp and out.token_lengths.shape == (2, Tp)
        assert out.token_lengths.sum(1).tolist() == [F, math.ceil(30000 / 1280)]
        assert 12.5 / model.max_group <= out.frame_rate <= 12.5
        loss = out.audio.abs().mean() + out.commit_loss + out.codebook_loss + out.distill_loss
        for v in (out.commit_loss, out.codebook_loss, out.distill_loss):
            assert v.dim() == 0 and torch.isfinite(v)
        loss.backward()
        assert model.encoder.conv_out.parametrizations.weight.original1.grad is not None
        assert model.fsq.proj_in.weight.grad is not None
        assert all(p.grad is None for p in model.semantic.parameters())  # frozen
        assert not model.semantic.asr.training
        # fixed 12.5 Hz training mode
        out = model(wav, None, threshold=1.0, num_quantizers=1)
        assert out.frame_rate == 12.5 and out.acoustic_codes.shape[1] == 1
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


def test_threshold_rates_monotone_and_unmerged(model, speech):
    rates = []
    for thr in (1.0, 0.99, 0.95, 0.91, 0.85, 0.8, 0.5):
        c = model.encode(speech, 16000, threshold=thr)
        assert int(c.token_lengths.sum()) == int(c.num_frames[0]) == math.ceil(len(speech) / 1280)
        assert (c.token_lengths[c.token_mask] >= 1).all()
        assert (c.token_lengths <= model.max_group).all()
        rates.append(float(c.frame_rate[0]))
    assert rates[0] == 12.5
    assert all(b <= a for a, b in zip(rates, rates[1:])), rates
    assert rates[-1] < rates[0]


@pytest.mark.parametrize("target", [6.25, 8.3])
def test_target_frame_rate_within_5_percent(model, speech, target):
    c = model.encode(speech, 16000, frame_rate=target)
    assert abs(float(c.frame_rate[0]) - target) <= 0.05 * target, c.frame_rate
    again = model.encode(speech, 16000, threshold=float(c.threshold[0]))
    assert torch.equal(again.token_lengths, c.token_lengths)


def test_batch_equals_single(model, speech):
    a, b = speech, speech[30000:75000]
    both = model.encode([a, b], 16000, frame_rate=6.25)
    for i, x in enumerate((a, b)):
        one = model.encode(x, 16000, frame_rate=6.25)
        item = both.item(i)
        assert torch.equal(item.token_lengths, one.token_lengths)
        assert torch.equal(item.semantic_codes, one.semantic_codes)
        assert torch.equal(item.acoustic_codes, one.acoustic_codes)
    audio = model.decode(both)
    ref = model.decode(model.encode(b, 16000, frame_rate=6.25))[0]
    assert audio[1].shape == ref.shape == (len(b),)
    assert torch.allclose(audio[1], ref, atol=1e-4)


def test_save_load_and_codes_file_round_trip(model, speech, tmp_path):
    d = model.save_pretrained(tmp_path / "codec")
    loaded = FlexiCodec.from_pretrained(d)
    assert loaded.identity == FlexiCodec.read_config(d)["identity"]
    c1 = model.encode(speech, 16000, frame_rate=6.25)
    c2 = loaded.encode(speech, 16000, frame_rate=6.25)
    for k in ("semantic_codes", "acoustic_codes", "token_lengths"):
        assert torch.equal(getattr(c1, k), getattr(c2, k))
    cf = CodesFile.from_encoded(c2, loaded, target_frame_rate=6.25)
    path = save_codes(tmp_path / "x.npz", cf)
    back = load_codes(path)
    assert back.model_identity == loaded.identity and back.target_frame_rate == 6.25
    for k in ("semantic_codes", "acoustic_codes", "token_lengths", "num_samples"):
        assert np.array_equal(getattr(back, k), getattr(cf, k))
    back.check_model(loaded)
    a1 = loaded.decode_from_codes(*back.to_tensors())
    a2 = loaded.decode_from_codes(c2.semantic_codes, c2.acoustic_codes, c2.token_lengths)
    assert torch.equal(a1, a2) and a1.shape[1] == int(c2.num_frames[0]) * 1280
    torch.manual_seed(1)
    other = FlexiCodec(FlexiCodecConfig.tiny()).eval()
    with pytest.raises(CodesFileError, match="made by"):
        back.check_model(other)
    with pytest.raises(CheckpointError):
        FlexiCodec.from_pretrained(tmp_path / "nope")
    with pytest.raises(CodesFileError):
        load_codes(tmp_path / "nope.npz")


def test_semantic_only_decode_and_quantizer_counts(model, speech):
    c0 = model.encode(speech[:32000], 16000, num_quantizers=0)
    assert c0.acoustic_codes.shape == (1, 0, c0.semantic_codes.shape[1])
    a0 = model.decode_from_codes(c0.semantic_codes, c0.acoustic_codes, c0.token_lengths)
    assert a0.shape == (1, 25 * 1280) and torch.isfinite(a0).all()
    full = model.encode(speech[:32000], 16000)
    one = model.encode(speech[:32000], 16000, num_quantizers=1)
    assert torch.equal(one.acoustic_codes[:, 0], full.acoustic_codes[:, 0])
    a1 = model.decode_from_codes(full.semantic_codes, full.acoustic_codes[:, :1],
                                 full.token_lengths)
    assert not torch.allclose(a1, a0)
    with pytest.raises(ValueError):
        model.encode(speech[:32000], 16000, num_quantizers=model.config.n_q + 1)
    with pytest.raises(ValueError, match="lie in"):
        model.decode_from_codes(full.semantic_codes + 10 ** 6, full.acoustic_codes,
                                full.token_lengths)
    bad = full.token_lengths.clone()
    bad[0, 0] = 0
    with pytest.raises(ValueError):
        model.decode_from_codes(full.semantic_codes, full.acoustic_codes, bad)


def test_bad_and_odd_inputs(model, speech):
    with pytest.raises(AudioError, match="empty"):
        model.encode(np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioError, match="NaN"):
        model.encode(np.full(16000, np.nan, np.float32), 16000)
    with pytest.raises(AudioError):
        model.encode(speech, 0)
    with pytest.raises(ValueError, match="not both"):
        model.encode(speech, 16000, threshold=0.9, frame_rate=6.25)
    silent = model.encode(np.zeros(32000, np.float32), 16000)      # handled: merges fully
    assert int(silent.token_lengths.sum()) == 25
    one = model.encode(np.array([0.1], np.float32), 16000)          # one sample → one frame
    assert one.token_lengths.tolist() == [[1]] and model.decode(one)[0].shape == (1,)
    x = speech[:32000]
    stereo = np.stack([x, x])                                       # [C, T]
    c_st = model.encode(stereo, 16000, multichannel=True)
    c_mono = model.encode(x, 16000)
    assert torch.equal(c_st.semantic_codes, c_mono.semantic_codes)
    c_sf = model.encode(stereo.T.copy(), 16000)                     # [T, C] soundfile layout
    assert torch.equal(c_sf.semantic_codes, c_mono.semantic_codes)
    for sr in (8000, 48000):                                        # any rate is resampled
        import soxr
        y = soxr.resample(x, 16000, sr).astype(np.float32)
        c = model.encode(torch.from_numpy(y), sr)
        assert int(c.num_frames[0]) == 25


def test_long_audio_chunked_matches_unchunked(model, speech):
    """Chunked encoding has no seams: the acoustic stream (local receptive fields, covered by
    the context) and the semantic features (the ASR runs in grid-aligned windows, so a
    frame's feature does not depend on the input's length) equal the unchunked ones, and so
    do the codes."""
    long = np.concatenate([speech, speech[::-1], speech])          # ~23 s
    wav = torch.from_numpy(long)[None]
    lengths = torch.tensor([len(long)])
    assert len(long) / 16000 > model.config.semantic_window_seconds + \
        model.config.semantic_context_seconds          # the windowed ASR path is exercised
    with torch.no_grad():
        whole = model.frame_features(wav, lengths)
        chunked = model.frame_features_chunked(wav, lengths, chunk_seconds=6.0,
                                               context_seconds=3.0)
    assert torch.equal(whole.frame_mask, chunked.frame_mask)
    assert torch.allclose(whole.latent, chunked.latent, atol=1e-4)
    assert torch.allclose(whole.target, chunked.target, atol=1e-5)
    assert torch.allclose(whole.semantic, chunked.semantic, atol=1e-4)
    kw = dict(threshold=1.0, num_quantizers=2)
    c = model.encode(long, 16000, chunk_seconds=6.0, context_seconds=3.0, **kw)
    u = model.encode(long, 16000, chunk_seconds=1000.0, **kw)
    assert int(c.token_lengths.sum()) == math.ceil(len(long) / 1280)
    assert torch.equal(c.semantic_codes, u.semantic_codes)
    assert (c.acoustic_codes == u.acoustic_codes).float().mean() > 0.99
    t = torch
    a = model.synthesize
    # decoding long sequences in chunks equals decoding at once
    with t.no_grad():
        ff = model.frame_features(wav)
        merge = model.make_merge(ff, 1.0)
        q = model.quantize(ff, merge, 2)
        y1 = a(q["tokens"], merge, chunk_frames=10 ** 6)
        y2 = a(q["tokens"], merge, chunk_frames=60)
    assert torch.allclose(y1, y2, atol=1e-4)


def test_presets_match_yaml_and_fixed_rate_mode(model, speech):
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    for name in PRESETS:
        assert FlexiCodecConfig.from_yaml(root / "configs/codec" / f"{name}.yaml") == \
            FlexiCodecConfig.preset(name)
    c = model.encode(speech, 16000, fixed_group=2)
    assert c.token_lengths[0, :-1].eq(2).all()
    assert abs(float(c.frame_rate[0]) - 6.25) < 0.1
    cfg = FlexiCodecConfig.tiny()
    assert cfg.bits_per_token(2) == pytest.approx(math.log2(64) + 2 * math.log2(64) + 3)


def test_hf_plugin_semantic_source(tmp_path, speech):
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model
    torch.manual_seed(0)
    w2v = Wav2Vec2Model(Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2))
    w2v.save_pretrained(tmp_path / "w2v")
    Wav2Vec2FeatureExtractor(do_normalize=True).save_pretrained(tmp_path / "w2v")
    cfg = FlexiCodecConfig.tiny(semantic=SemanticConfig(source="hf",
                                                        hf_path=str(tmp_path / "w2v"),
                                                        layer=1))
    codec = FlexiCodec(cfg).eval()
    assert codec.semantic.feature_rate == 50.0 and codec.semantic.feature_dim == 32
    assert not any(k.startswith("semantic.") for k in codec.state_dict())
    x = speech[:48000]
    c = codec.encode([x, x[:20000]], 16000, frame_rate=6.25)
    single = codec.encode(x[:20000], 16000, frame_rate=6.25)
    assert torch.equal(c.item(1).semantic_codes, single.semantic_codes)
    d = codec.save_pretrained(tmp_path / "codec")
    again = FlexiCodec.from_pretrained(d).encode(x, 16000, frame_rate=6.25)
    assert torch.equal(again.semantic_codes, c.item(0).semantic_codes)
    with pytest.raises(FileNotFoundError, match="no local transformers model"):
        FlexiCodec(FlexiCodecConfig.tiny(semantic=SemanticConfig(
            source="hf", hf_path=str(tmp_path / "missing"))))


def test_fresh_encoder_latent_depends_on_its_input():
    """Signal propagation at initialisation: two different inputs give clearly different
    latents (with PyTorch's default conv init they differed by ~5.5 %: the latent was a
    near-constant bias vector, the acoustic path never started learning and the RVQ
    collapsed; He init gives ~60-70 %)."""
    from flexicodec.codec.encoder import AcousticEncoder

    torch.manual_seed(0)
    enc = AcousticEncoder(8, (4, 4, 5, 8, 2), 256, "elu")
    nf = torch.tensor([25, 25])
    x1, x2 = torch.randn(2, 2, 1280 * 25) * 0.1
    with torch.no_grad():
        e1, e2 = enc(x1, nf), enc(x2, nf)
    assert float((e1 - e2).norm() / e1.norm()) > 0.3


def _decode_from_codes_before_latent_api(model, sem, ac, lens):
    """``FlexiCodec.decode_from_codes`` as it was before the latent API (the reference for
    bit-exactness): dequantize and synthesize in one body."""
    from flexicodec.codec import merging
    mask = lens > 0
    sem = sem.masked_fill(~mask, 0)
    ac = ac.masked_fill(~mask[:, None, :], 0)
    merge = merging.merge_from_lengths(lens)
    with torch.no_grad():
        sem_q = model.fsq.decode(sem) * mask[..., None]
        sem_lat = model.semantic_decoder(sem_q, mask)
        tokens = sem_lat + model.rvq.decode(ac).to(sem_lat.dtype) * mask[..., None]
        return model.synthesize(tokens, merge)


def test_latent_api_shares_the_codes_path_bit_for_bit(model, speech):
    """decode_from_codes == the pre-latent implementation == decode_from_latent(latent of
    the codes), exactly, for a padded batch; encode_latent's latent decodes to the codes'
    audio; a window's latent matches the whole utterance's away from the window's ends."""
    codes = model.encode([speech[:30000], speech[10000:52000]], 16000, frame_rate=8.33)
    sem, ac, lens = codes.semantic_codes, codes.acoustic_codes, codes.token_lengths
    assert not bool(codes.token_mask.all())          # really padded
    ref = _decode_from_codes_before_latent_api(model, sem, ac, lens)
    out = model.decode_from_codes(sem, ac, lens)
    assert torch.equal(out, ref)
    latent = model.latent_from_codes(sem, ac, lens)
    assert latent.shape == (*sem.shape, model.config.latent_dim)
    assert torch.equal(latent[~codes.token_mask], torch.zeros_like(latent[~codes.token_mask]))
    assert torch.equal(model.decode_from_latent(latent, lens), ref)
    # the latent is continuous: a perturbation changes the audio, and more quantizers move it
    assert not torch.equal(model.decode_from_latent(latent + 0.1, lens), ref)
    lat1 = model.latent_from_codes(sem, ac[:, :1], lens)
    assert not torch.allclose(lat1, latent)
    # encode_latent: codes + their latent
    codes2, lat2 = model.encode_latent(speech[:30000], 16000, frame_rate=8.33)
    n = int(codes.token_mask[0].sum())
    assert torch.equal(codes2.semantic_codes[0], sem[0, :n])
    assert torch.allclose(lat2[0], latent[0, :n], atol=1e-5)
    assert torch.equal(model.decode_from_latent(lat2[0], codes2.token_lengths[0])[0],
                       model.decode_from_codes(codes2.semantic_codes[0], codes2.acoustic_codes[0],
                                               codes2.token_lengths[0])[0])
    # windows: exact beyond the semantic decoder's receptive field
    ctx = model.latent_context_tokens()
    a, b = 2, n - 1
    win = model.latent_from_codes(sem[:1, a:b], ac[:1, :, a:b], lens[:1, a:b])
    assert torch.allclose(win[0, ctx:-ctx], latent[0, a + ctx:b - ctx], atol=1e-5)
    assert not torch.allclose(win[0, :ctx], latent[0, a:a + ctx], atol=1e-5)
    with pytest.raises(ValueError, match="expected"):
        model.decode_from_latent(latent[..., :5], lens)
    with pytest.raises(ValueError, match="padding"):
        model.decode_from_latent(latent[:1, :4], torch.tensor([[1, 0, 2, 1]]))
    with pytest.raises(ValueError, match="finite"):
        model.decode_from_latent(torch.full_like(latent, float("nan")), lens)
@pytest.mark.parametrize("how", [{"frame_rate": 4.0}, {"frame_rate": 9.0}, {"fixed_group": 3},
                                 {"threshold": 1.0}],
                         ids=["4Hz", "9Hz", "fixed3", "12.5Hz"])
@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
def test_padded_token_axis_matches_unpadded(speech, how, lengths):
    """pad_tokens=True (the trainer's compiled path): the token-level modules see [B, F]
    whatever the merging, and audio, losses, codes and gradients are those of the unpadded
    tokens."""
    torch.manual_seed(0)
    model = FlexiCodec(FlexiCodecConfig.tiny()).train()
    F_ = 16
    wav = torch.from_numpy(np.stack([speech[i * 8000:i * 8000 + F_ * 1280] for i in range(3)]))
    wl = torch.tensor([F_ * 1280, 11 * 1280 - 300, 7 * 1280]) if lengths else None
    seen = []
    hooks = [m.register_forward_pre_hook(lambda m, a: seen.append(tuple(a[0].shape[:2])))
             for m in (model.semantic_decoder, model.rvq)]
    outs, grads = [], []
    for pad in (False, True):
        seen.clear()
        torch.manual_seed(1)                 # quantizer dropout draws the same
        model.zero_grad(set_to_none=True)
        out = model(wav, wl, pad_tokens=pad, **how)
        loss = out.audio.pow(2).mean() + out.commit_loss + out.codebook_loss + out.distill_loss
        loss.backward()
        outs.append((out, loss.detach(), list(seen)))
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()
                      if p.grad is not None})
    for h in hooks:
        h.remove()
    (a, la, seen_a), (b, lb, seen_b) = outs
    tp = a.token_lengths.shape[1]
    assert seen_b == [(3, F_), (3, F_)] and seen_a == [(3, tp), (3, tp)]
    if "frame_rate" in how and how["frame_rate"] < 10:
        assert tp < F_                       # the unpadded axis depends on the content
    assert b.token_lengths.shape == (3, F_) and b.semantic_codes.shape == (3, F_)
    assert b.acoustic_codes.shape == (3, 2, F_)
    assert torch.equal(b.token_lengths[:, :tp], a.token_lengths)
    assert not b.token_lengths[:, tp:].any() and not b.token_mask[:, tp:].any()
    assert torch.equal(b.semantic_codes[:, :tp], a.semantic_codes)
    assert torch.equal(b.acoustic_codes[:, :, :tp], a.acoustic_codes)
    assert torch.allclose(b.audio, a.audio, atol=1e-5)
    for name in ("commit_loss", "codebook_loss", "residual_loss", "distill_loss"):
        assert torch.allclose(getattr(b, name), getattr(a, name), rtol=1e-5, atol=1e-7), name
    assert torch.allclose(lb, la, rtol=1e-5) and float(b.frame_rate) == float(a.frame_rate)
    ga, gb = grads
    assert ga.keys() == gb.keys()
    for n in ga:
        assert torch.allclose(gb[n], ga[n], rtol=1e-4,
                              atol=1e-6 * (ga[n].abs().max().item() + 1e-8)), n


def test_merge_pad_tokens():
    from flexicodec.codec import merging
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    m = merging.merge_fixed(mask, 2)
    p = m.pad_tokens(6)
    assert p.token_lengths.tolist() == [[2, 2, 2, 0, 0, 0], [2, 2, 0, 0, 0, 0]]
    assert p.group_index.tolist() == [[0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 6, 6]]
    assert torch.equal(p.frame_rate(), m.frame_rate()) and m.pad_tokens(3) is m
    with pytest.raises(ValueError, match="cannot pad"):
        m.pad_tokens(2)


def test_rvq_residual_loss_is_what_the_used_stages_leave():
    """ResidualVQ's residual_loss: |x - quantized|^2 per dimension over valid positions, of
    the stages each item used (quantizer dropout included); padding does not count; its
    gradient reaches the input and the stages' output projections."""
    from flexicodec.codec.quantize import ResidualVQ
    torch.manual_seed(0)
    rvq = ResidualVQ(16, 3, 32, 4)
    x = torch.randn(2, 5, 16, requires_grad=True)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    rvq.eval()
    for n in (0, 1, 3):
        out, codes, _, _, res = rvq(x, mask, n)
        want = ((x - out).pow(2).mean(-1) * mask).sum() / mask.sum()
        assert torch.allclose(res, want) and codes.shape == (2, n, 5)
    assert torch.allclose(rvq(x, mask, 0)[4], (x.pow(2).mean(-1) * mask).sum() / mask.sum())
    x2 = x.detach().clone()
    x2[1, 3:] = 100.0                                     # padding: no effect
    assert torch.allclose(rvq(x2, mask, 2)[4], rvq(x.detach(), mask, 2)[4])
    rvq.train()
    out, _, _, _, res = rvq(x, mask)                      # dropout: per-item stage counts
    assert torch.allclose(res, ((x - out).pow(2).mean(-1) * mask).sum() / mask.sum())
    res.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert rvq.stages[0].out_proj.weight.grad.abs().sum() > 0
