"""The frame-merging rule (codec/merging.py) on synthetic similarity patterns."""

import pytest
import torch

from flexicodec.codec import merging

torch.set_num_threads(1)


def _feats(B=3, T=40, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    # piecewise-constant segments with a little noise → realistic similarity structure
    base = torch.randn(B, T // 4, D, generator=g).repeat_interleave(4, dim=1)
    return base + 0.3 * torch.randn(B, T, D, generator=g)


def _mask(lengths, T):
    return torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]


def test_lengths_cover_frames_and_respect_max_group():
    x = _feats()
    mask = _mask([40, 31, 7], 40)
    sim = merging.frame_similarity(x)
    for thr in (-1.0, 0.0, 0.5, 0.9, 0.99):
        m = merging.merge_by_threshold(sim, mask, thr, max_group=8)
        assert torch.equal(m.token_lengths.sum(1), mask.sum(1))
        assert (m.token_lengths[m.token_mask] >= 1).all()
        assert (m.token_lengths <= 8).all()
        assert torch.equal(m.token_mask, m.token_lengths > 0)
        # padding only at the end of each row
        assert not (m.token_mask[:, 1:] & ~m.token_mask[:, :-1]).any()
    # threshold -1: everything joins, so groups are exactly max_group long
    m = merging.merge_by_threshold(sim, mask, -1.0, max_group=8)
    assert m.token_lengths[0].tolist() == [8] * 5


def test_threshold_one_means_no_merging_even_for_identical_frames():
    x = torch.ones(2, 12, 4)  # cosine similarity exactly 1 everywhere
    mask = _mask([12, 5], 12)
    m = merging.merge_by_threshold(merging.frame_similarity(x), mask, 1.0, 8)
    assert torch.equal(m.token_lengths.sum(1), torch.tensor([12, 5]))
    assert m.token_lengths[m.token_mask].eq(1).all()
    assert torch.allclose(m.frame_rate(), torch.tensor([12.5, 12.5]))
    m = merging.merge_by_threshold(merging.frame_similarity(x), mask, 0.999, 8)
    assert m.token_lengths[0].tolist() == [8, 4]


def test_token_count_monotone_in_threshold():
    x = _feats(B=2, T=60)
    mask = _mask([60, 60], 60)
    sim = merging.frame_similarity(x)
    counts = [merging.merge_by_threshold(sim, mask, t, 8).num_tokens
              for t in torch.linspace(-1, 1, 41)]
    for a, b in zip(counts, counts[1:]):
        assert (b >= a).all()
    assert counts[0].tolist() == [8, 8] and counts[-1].tolist() == [60, 60]


@pytest.mark.parametrize("target", [3.0, 5.0, 6.25, 8.3, 10.0])
def test_merge_to_rate_hits_target(target):
    x = _feats(B=3, T=100, seed=1)
    mask = _mask([100, 100, 80], 100)
    m = merging.merge_to_rate(merging.frame_similarity(x), mask, target, 8)
    rates = m.frame_rate()
    # one token of 100 frames is 0.125 Hz; the nearest achievable count is within a token
    assert ((rates - target).abs() <= 12.5 / 80 + 1e-6).all(), rates
    # the reported threshold reproduces the grouping
    again = merging.merge_by_threshold(merging.frame_similarity(x), mask, m.threshold, 8)
    assert torch.equal(again.token_lengths, m.token_lengths)


def test_merge_to_rate_at_or_above_base_rate_is_unmerged():
    x = _feats()
    mask = _mask([40, 40, 40], 40)
    m = merging.merge_to_rate(merging.frame_similarity(x), mask, 12.5, 8)
    assert m.token_lengths.eq(1).all()
    with pytest.raises(ValueError):
        merging.merge_to_rate(merging.frame_similarity(x), mask, 0.0, 8)


@pytest.mark.parametrize("target", [4.0, 6.25, 8.33])
def test_calibrated_global_threshold_reaches_pooled_rate(target):
    x = _feats(B=4, T=120, seed=2)
    lens = [120, 90, 60, 33]
    sims = [merging.frame_similarity(x[i:i + 1, :n])[0] for i, n in enumerate(lens)]
    thr = merging.calibrate_threshold(sims, target, 8)
    # the one threshold, applied to every utterance, gives the pooled rate within a token
    mask = _mask(lens, 120)
    m = merging.merge_by_threshold(merging.frame_similarity(x), mask, thr, 8)
    pooled = float(m.num_tokens.sum()) * 12.5 / sum(lens)
    assert abs(pooled - target) <= 12.5 / sum(lens) * 2 + 1e-6, (thr, pooled)
    # per utterance the rate varies with content (it is a threshold, not rate control)
    assert m.frame_rate().std() > 0
    with pytest.raises(ValueError):
        merging.calibrate_threshold([], target, 8)


def test_fixed_groups_and_lengths_round_trip():
    mask = _mask([10, 7], 10)
    m = merging.merge_fixed(mask, 2)
    assert m.token_lengths[0].tolist() == [2] * 5
    assert m.token_lengths[1].tolist() == [2, 2, 2, 1, 0]
    assert torch.isinf(m.threshold).all()
    back = merging.merge_from_lengths(m.token_lengths, 10)
    assert torch.equal(back.group_index, m.group_index)
    assert torch.equal(back.frame_mask, m.frame_mask)


def test_aggregator_starts_as_mean_and_expand_positions():
    x = _feats(B=2, T=20, D=6)
    mask = _mask([20, 13], 20)
    m = merging.merge_by_threshold(merging.frame_similarity(x), mask, 0.6, 4)
    agg = merging.GroupAggregator(6)
    pooled = agg(x, m)
    for b in range(2):
        start = 0
        for j, n in enumerate(m.token_lengths[b].tolist()):
            if n == 0:
                assert pooled[b, j].abs().max() == 0
                continue
            assert torch.allclose(pooled[b, j], x[b, start:start + n].mean(0), atol=1e-5)
            start += n
    frames = merging.expand_tokens(pooled, m)
    assert frames.shape == x.shape
    assert frames[1, 13:].abs().max() == 0
    pos, glen = merging.position_in_group(m)
    assert (pos < glen)[mask].all() and (glen[mask] >= 1).all()
    # gradients reach the query (it learns away from mean pooling)
    pooled.sum().backward()
    assert agg.query.grad is not None and agg.query.grad.abs().sum() > 0
