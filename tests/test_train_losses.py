"""Discriminators and losses: shapes, gradients, loss behaviour."""
from __future__ import annotations

import pytest
import torch

from codec.discriminators import CodecDiscriminator, DiscriminatorConfig
from codec.losses import (MelLossConfig, MultiResolutionMelLoss, discriminator_loss,
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
