"""Discriminators and losses: shapes, gradients, loss behaviour."""
from __future__ import annotations

import pytest
import torch

from flexicodec.codec.discriminators import CodecDiscriminator, DiscriminatorConfig
from flexicodec.codec.losses import (MelLossConfig, MultiResolutionMelLoss, discriminator_loss,
                                     feature_matching_loss, generator_adv_loss)

torch.set_num_threads(1)


def _tone(f, n=8000):
    return torch.sin(2 * torch.pi * f * torch.arange(n) / 16000)[None] * 0.5


def test_mel_loss_orders_distortions():
    loss = MultiResolutionMelLoss(MelLossConfig(n_ffts=(256, 512), hops=(64, 128),
                                                n_mels=(20, 40)))
    x = _tone(300)
    assert loss(x, x).item() == 0.0
    near = loss(x * 0.9, x).item()
    far = loss(_tone(2000), x).item()
    assert 0 < near < far
    # length mismatch is cropped, not an error
    assert loss(torch.cat([x, x[:, :100]], 1), x).item() == 0.0
    with pytest.raises(ValueError):
        MultiResolutionMelLoss(MelLossConfig(n_ffts=(256,), hops=(64, 32), n_mels=(20,)))


def test_discriminator_shapes_and_gan_losses():
    torch.manual_seed(0)
    disc = CodecDiscriminator(DiscriminatorConfig.tiny())
    wav = torch.randn(2, 4001) * 0.1
    logits, fmaps = disc(wav)
    assert len(logits) == len(fmaps) == 3            # 2 periods + 1 resolution
    assert all(lg.shape[0] == 2 for lg in logits)
    fake = (torch.randn(2, 4001) * 0.1).requires_grad_()
    fl, ff = disc(fake)
    for kind in ("hinge", "lsgan"):
        d = discriminator_loss([lg.detach() for lg in logits], [f.detach() for f in fl], kind)
        assert torch.isfinite(d) and d.item() > 0
    g = generator_adv_loss(fl) + feature_matching_loss(fmaps, ff)
    g.backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    assert feature_matching_loss(fmaps, fmaps).item() == 0.0
    with pytest.raises(ValueError):
        generator_adv_loss(fl, "wgan")
    with pytest.raises(ValueError):
        disc(wav[0])


def test_discriminator_learns_to_separate():
    """A few D steps on real tone vs noise make hinge D-loss fall."""
    torch.manual_seed(0)
    disc = CodecDiscriminator(DiscriminatorConfig.tiny())
    opt = torch.optim.Adam(disc.parameters(), lr=3e-3)
    real = torch.cat([_tone(220, 4000), _tone(330, 4000)])
    fake = torch.randn(2, 4000) * 0.3
    losses = []
    for _ in range(30):
        loss = discriminator_loss(disc(real)[0], disc(fake)[0])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


# ---- the training step: frozen discriminators in the generator's pass, D windows ----------

def _parts(seed: int = 0, **train):
    """StepParts of a tiny codec (random frozen ASR) as the trainer builds them."""
    from flexicodec.codec.config import FlexiCodecConfig
    from flexicodec.codec.model import FlexiCodec
    from flexicodec.codec.train import CodecTrainConfig, StepParts, compact_buffers, schedule
    from flexicodec.common.training import make_accelerator

    torch.manual_seed(seed)
    tc = CodecTrainConfig(batch_size=2, segment_seconds=0.8, disc_start=0, warmup_steps=1,
                          mel_loss=MelLossConfig(n_ffts=(256, 512), hops=(64, 128),
                                                 n_mels=(20, 40)),
                          discriminator=DiscriminatorConfig.tiny(), **train)
    model = FlexiCodec(FlexiCodecConfig.tiny())
    compact_buffers(model)
    disc = CodecDiscriminator(tc.discriminator)
    mel = MultiResolutionMelLoss(tc.mel_loss)
    g_params = [p for p in model.parameters() if p.requires_grad]
    opt_g = torch.optim.AdamW(g_params, lr=1e-3, betas=tuple(tc.betas))
    opt_d = torch.optim.AdamW(disc.parameters(), lr=1e-3, betas=tuple(tc.betas))
    sched_g = torch.optim.lr_scheduler.LambdaLR(opt_g, schedule(tc, 1, 100))
    sched_d = torch.optim.lr_scheduler.LambdaLR(opt_d, schedule(tc, 1, 100))
    return StepParts(make_accelerator("no", cpu=True), model, disc, mel, opt_g, opt_d, sched_g,
                     sched_d, g_params, None, tc, torch.Generator())


def _reference_step(p, wav, how, on_backward):
    """The step before the discriminators were frozen in the generator's pass (one
    discriminator pass over [real; fake] with gradients for everything), up to the
    generator's backward."""
    from flexicodec.codec.losses import match_length
    from flexicodec.codec.train import _split

    acc, tc, w = p.accelerator, p.tc, p.tc.loss_weights
    out = p.model(wav, None, **how)
    y_hat = match_length(out.audio.float(), wav.shape[-1])
    l_mel = p.mel_loss(y_hat, wav)
    logits, _ = p.disc(torch.cat([wav, y_hat.detach()]))
    real_logits, fake_logits = _split(logits, wav.shape[0])
    d_loss = discriminator_loss(real_logits, fake_logits, tc.gan_kind)
    p.opt_d.zero_grad(set_to_none=True)
    acc.backward(d_loss)
    acc.clip_grad_norm_(p.disc.parameters(), tc.grad_clip_d)
    p.opt_d.step()
    p.sched_d.step()
    g_loss = w.mel * l_mel
    for name, weight in (("commit", w.commit), ("codebook", w.codebook),
                         ("distill", w.distill)):
        g_loss = g_loss + weight * getattr(out, f"{name}_loss").float()
    logits, fmaps = p.disc(torch.cat([wav, y_hat]))
    _, fake_logits = _split(logits, wav.shape[0])
    real_fmaps, fake_fmaps = zip(*(_split(f, wav.shape[0]) for f in fmaps))
    g_loss = g_loss + w.adv * generator_adv_loss(fake_logits, tc.gan_kind) + \
        w.feature_matching * feature_matching_loss(real_fmaps, fake_fmaps)
    p.opt_g.zero_grad(set_to_none=True)
    acc.backward(g_loss)
    on_backward()
    return g_loss.detach(), d_loss.detach()


def _speech_like(B: int = 2, frames: int = 10, seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(frames * 1280) / 16000
    f0 = 120 + 80 * torch.rand(B, 1, generator=g)
    return (0.3 * torch.sin(2 * torch.pi * f0 * t) * (1 + torch.sin(2 * torch.pi * 3 * t))
            + 0.02 * torch.randn(B, t.numel(), generator=g))


@pytest.mark.parametrize("how", [{"threshold": 1.0}, {"frame_rate": 6.0}],
                         ids=["12.5Hz", "dynamic"])
def test_generator_pass_freezes_discriminators(how):
    """Frozen discriminators (and the real half without gradients) in the generator's pass
    give the generator the same gradients as the former pass with gradients for all, and
    leave the discriminators' .grad None; the padded token axis (dynamic rate) changes
    nothing. Eager reference against the trainer's eager step; the compiled step is held
    to the eager one by tests/test_train_codec.py::test_compiled_step_matches_eager (whose
    discriminators also use windows and the frozen pass)."""
    from flexicodec.codec.train import train_step

    wav = _speech_like()
    ref, new = _parts(), _parts()
    new.model.load_state_dict(ref.model.state_dict())
    new.disc.load_state_dict(ref.disc.state_dict())
    grads = {}

    def snap(key, parts):
        grads[key] = ({n: q.grad.clone() for n, q in parts.model.named_parameters()
                       if q.grad is not None},
                      [q.grad for q in parts.disc.parameters()])

    torch.manual_seed(7)
    g_ref, d_ref = _reference_step(ref, wav, how, lambda: snap("ref", ref))
    torch.manual_seed(7)
    _, l_mel, g_new, _, logs = train_step(
        new, wav, None, None, how, True,
        mark=lambda name: snap("new", new) if name == "generator_backward" else None)
    assert torch.allclose(logs["d_loss"], d_ref, rtol=1e-4, atol=1e-6)
    assert torch.allclose(g_new, g_ref, rtol=1e-4, atol=1e-6)
    (gr, dr), (gn, dn) = grads["ref"], grads["new"]
    assert gr.keys() == gn.keys() and len(gr) > 20
    for name in gr:
        scale = gr[name].abs().max().item() + 1e-8
        assert torch.allclose(gn[name], gr[name], rtol=1e-3, atol=1e-4 * scale), name
    assert any(g is not None for g in dr)      # the former pass did fill them
    assert all(g is None for g in dn)          # none reach the discriminators now
    assert all(q.grad is None for q in new.disc.parameters())
    assert all(q.requires_grad for q in new.disc.parameters())      # restored


def test_disc_windows_shapes_alignment_and_identity():
    from flexicodec.codec.train import disc_windows

    B, T, L = 4, 5000, 1200
    real = (torch.arange(T, dtype=torch.float32)[None] + 10000 * torch.arange(B)[:, None])
    fake = 2 * real + 1
    rw, fw = disc_windows(real, fake, L, torch.Generator().manual_seed(0))
    assert rw.shape == fw.shape == (B, L)
    assert torch.equal(fw, 2 * rw + 1)                       # same offsets in both
    offsets = rw[:, 0] - 10000 * torch.arange(B)
    for b in range(B):                                       # contiguous slices of item b
        o = int(offsets[b])
        assert 0 <= o <= T - L and torch.equal(rw[b], real[b, o:o + L])
    again, _ = disc_windows(real, fake, L, torch.Generator().manual_seed(0))
    other, _ = disc_windows(real, fake, L, torch.Generator().manual_seed(1))
    assert torch.equal(again, rw) and not torch.equal(other, rw)
    # with lengths, the window stays inside each item (an item shorter than it starts at 0)
    lengths = torch.tensor([5000, 2000, 1200, 700])
    for seed in range(20):
        rw, _ = disc_windows(real, fake, L, torch.Generator().manual_seed(seed), lengths)
        o = rw[:, 0] - 10000 * torch.arange(B)
        assert (o >= 0).all() and (o + L <= torch.maximum(lengths, torch.tensor(L))).all()
        assert o[2] == 0 and o[3] == 0
    # 0 (or a window covering the crop) is the whole crop: the inputs themselves
    for window in (0, T, T + 5):
        a, b = disc_windows(real, fake, window, None)
        assert a is real and b is fake
    with pytest.raises(ValueError, match="differ"):
        disc_windows(real, fake[:, :-1], L, None)


def test_step_with_disc_windows_and_disc_every():
    """train.disc_segment_seconds: the discriminators see [B, window] (their update [2B,
    window]) while the mel loss covers the crop; the windows follow the step's seed.
    train.disc_every=2: the discriminators update on every second step, their schedule still
    steps every step. Bad values are refused."""
    from flexicodec.codec.train import CodecTrainConfig, train_step

    p = _parts(disc_segment_seconds=0.25, disc_every=2)
    seen = []
    p.disc.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape)))
    wav = _speech_like()
    mel_inputs = []
    p.mel_loss.register_forward_pre_hook(lambda m, args: mel_inputs.append(args[0].shape))
    d_losses = []
    for step in range(4):
        *_, logs = train_step(p, wav, None, None, {"threshold": 1.0}, True, step=step)
        d_losses.append("d_loss" in logs)
    assert d_losses == [True, False, True, False]
    assert seen == [(4, 4000), (2, 4000), (2, 4000), (2, 4000), (2, 4000)] * 2
    assert all(s[-1] == wav.shape[-1] for s in mel_inputs)
    assert p.sched_d.last_epoch == 4 and p.sched_g.last_epoch == 4
    with pytest.raises(ValueError, match="disc_segment_seconds"):
        CodecTrainConfig(segment_seconds=1.0, disc_segment_seconds=1.5)
    with pytest.raises(ValueError, match="disc_every"):
        CodecTrainConfig(disc_every=0)


def test_step_with_disc_batch_size():
    """train.disc_batch_size: the discriminators (update and the generator's pass) see the
    first n items of the batch, windowed as before, while the mel loss covers the whole
    batch. Bad values are refused."""
    from flexicodec.codec.train import CodecTrainConfig, train_step

    p = _parts(disc_segment_seconds=0.25, disc_batch_size=1)
    seen, mel_inputs = [], []
    p.disc.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape)))
    p.mel_loss.register_forward_pre_hook(lambda m, args: mel_inputs.append(args[0].shape))
    wav = _speech_like()
    B = wav.shape[0]
    assert B > 1
    *_, logs = train_step(p, wav, None, None, {"threshold": 1.0}, True, step=0)
    assert "d_loss" in logs and "adv_loss" in logs
    # the update's [real; fake] pass, then the generator's real and fake passes
    assert seen == [(2, 4000), (1, 4000), (1, 4000)]
    assert all(s[0] == B and s[-1] == wav.shape[-1] for s in mel_inputs)
    # the same window of the same item as without the option
    q = _parts(disc_segment_seconds=0.25)
    got = []
    q.disc.register_forward_pre_hook(lambda m, args: got.append(args[0]))
    p_in = []
    p.disc.register_forward_pre_hook(lambda m, args: p_in.append(args[0]))
    train_step(q, wav, None, None, {"threshold": 1.0}, True, step=1)
    train_step(p, wav, None, None, {"threshold": 1.0}, True, step=1)
    assert torch.equal(p_in[0][0], got[0][0])                  # item 0's real window
    for bad in (-1, 5):
        with pytest.raises(ValueError, match="disc_batch_size"):
            CodecTrainConfig(batch_size=4, disc_batch_size=bad)


def test_mpd_layouts_are_one_discriminator():
    """mpd_layout "1d" (periods folded into the batch) is the "2d" discriminator: same
    state dict, outputs equal up to a permutation with the batch first, so the trainer's
    [real; fake] split, the D loss, the adversarial and feature-matching losses and the
    gradients all agree."""
    from flexicodec.codec.train import _split

    cfg = DiscriminatorConfig(periods=(2, 3, 5), mpd_channels=(4, 8, 8),
                              mrd_resolutions=((256, 64, 256),), mrd_channels=4)
    torch.manual_seed(0)
    two_d = CodecDiscriminator(cfg)
    one_d = CodecDiscriminator(DiscriminatorConfig(**{**cfg.__dict__, "mpd_layout": "1d"}))
    one_d.load_state_dict(two_d.state_dict())          # same parameter names and shapes
    real, fake = torch.randn(2, 4001) * 0.1, torch.randn(2, 4001) * 0.1   # padded periods
    both = torch.cat([real, fake])
    (l2, f2), (l1, f1) = two_d(both), one_d(both)
    for p, a, b in zip(cfg.periods, l2, l1):          # 2d [B, C, L, p], 1d [B, p, C, L]
        assert b.shape[:2] == (4, p)
        assert torch.allclose(a.permute(0, 3, 1, 2), b, atol=1e-5)
    for fa, fb in zip(f2[:3], f1[:3]):
        for a, b in zip(fa, fb):
            assert torch.allclose(a.permute(0, 3, 1, 2), b, atol=1e-5)
    d2 = discriminator_loss(*_split(l2, 2))
    d1 = discriminator_loss(*_split(l1, 2))
    assert torch.allclose(d2, d1, atol=1e-6)
    d2.backward()
    d1.backward()
    for (n, a), b in zip(two_d.named_parameters(), one_d.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-5, rtol=1e-4), n
    fm2 = feature_matching_loss(two_d(real)[1], two_d(fake)[1])
    fm1 = feature_matching_loss(one_d(real)[1], one_d(fake)[1])
    assert torch.allclose(fm2, fm1, atol=1e-6)
    assert torch.allclose(generator_adv_loss(_split(l2, 2)[1]),
                          generator_adv_loss(_split(l1, 2)[1]), atol=1e-6)
    with pytest.raises(ValueError, match="mpd_layout"):
        CodecDiscriminator(DiscriminatorConfig(**{**cfg.__dict__, "mpd_layout": "3d"}))


def test_residual_loss_weight_adds_the_rvq_residual():
    """train.loss_weights.residual > 0 adds that multiple of the RVQ's residual loss to the
    generator's loss (and logs it); at 0, the default, the step has no such term."""
    from flexicodec.codec.train import LossWeights, train_step

    wav = _speech_like()
    off, on = _parts(), _parts(loss_weights=LossWeights(residual=0.5))
    on.model.load_state_dict(off.model.state_dict())
    on.disc.load_state_dict(off.disc.state_dict())
    how = {"threshold": 1.0}
    torch.manual_seed(7)
    _, _, g_off, _, logs_off = train_step(off, wav, None, None, how, True)
    torch.manual_seed(7)
    _, _, g_on, _, logs_on = train_step(on, wav, None, None, how, True)
    assert "residual_loss" not in logs_off and float(logs_on["residual_loss"]) > 0
    assert torch.allclose(g_on - g_off, 0.5 * logs_on["residual_loss"], rtol=1e-4, atol=1e-6)
