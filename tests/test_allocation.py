"""Token allocation analysis (codec/eval/allocation.py) and the merging diagnostic script."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from flexicodec.codec import merging
from flexicodec.codec.eval.allocation import allocation_stats, ctc_onsets, onsets_to_frames, token_loads

torch.set_num_threads(1)


def test_ctc_onsets_and_grid():
    # blank=0; 2 is skipped (word separator); a repeat after a blank is a new emission
    best = [0, 5, 5, 0, 5, 7, 7, 2, 2, 0, 9]
    assert ctc_onsets(best, blank=0, skip=(2,)) == [1, 4, 5, 10]
    assert ctc_onsets([0, 0, 0]) == []
    # 25 Hz features → 12.5 Hz frames: feature frames 2t and 2t+1 lie in frame t
    assert onsets_to_frames([0, 1, 2, 3, 9], 25.0, 12.5).tolist() == [0, 0, 1, 1, 4]


def test_token_loads_and_stats():
    gid = np.array([0, 0, 1, 2, 2, 2])          # 3 tokens over 6 frames
    loads = token_loads(gid, np.array([0, 1, 1, 3, 5, 99]), 3)   # 99 clipped to the last
    assert loads.tolist() == [3, 0, 3] and loads.sum() == 6
    st = allocation_stats([loads, np.array([1, 1])])
    assert st["tokens"] == 5 and st["phonemes"] == 8
    assert st["empty_token_share"] == pytest.approx(1 / 5)
    assert st["crowded_phoneme_share"] == pytest.approx(6 / 8)
    assert sum(st["histogram"].values()) == pytest.approx(1.0)
    even = allocation_stats([np.full(10, 2)])
    assert even["load_std"] == 0 and even["empty_token_share"] == 0
    with pytest.raises(ValueError):
        allocation_stats([])


def test_content_following_groups_score_better():
    """Dense speech, a pause, dense speech: groups that follow the content leave no token
    empty and crowd no phoneme; fixed pairs spend tokens on the pause and crowd the speech."""
    onsets = np.array([0, 0, 1, 1, 2, 2, 3, 3, 12, 12, 13, 13, 14, 14, 15, 15])
    mask = torch.ones(1, 16, dtype=torch.bool)
    fixed = merging.merge_fixed(mask, 2)
    lengths = torch.tensor([[1, 1, 1, 1, 8, 1, 1, 1, 1]])
    follow = merging.merge_from_lengths(lengths)
    s_fixed = allocation_stats([token_loads(fixed.group_index[0], onsets, 8)])
    s_follow = allocation_stats([token_loads(follow.group_index[0], onsets, 9)])
    assert s_fixed["empty_token_share"] == pytest.approx(0.5)
    assert s_fixed["crowded_phoneme_share"] == 1.0
    assert s_follow["crowded_phoneme_share"] == 0.0
    assert s_follow["empty_token_share"] == pytest.approx(1 / 9)


def _script():
    path = Path(__file__).resolve().parents[1] / "scripts" / "diagnose_merging.py"
    spec = importlib.util.spec_from_file_location("diagnose_merging", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_diagnose_merging_invariants(tiny_corpus):
    """Every grouping of an utterance sees the same phoneme onsets; rate control lands on
    the target; fixed pairs give 6.25 Hz; the Markdown table lists every grouping."""
    from flexicodec.codec.asr.model import PhonemeASR, PhonemeASRConfig
    from flexicodec.codec.eval.evaluate import load_utterances
    mod = _script()
    torch.manual_seed(0)
    asr = PhonemeASR(PhonemeASRConfig.tiny()).eval()
    audios = [u["audio"] for u in load_utterances(str(tiny_corpus), "train", 3)]
    res = mod.diagnose(asr, audios, [6.25])
    rows = res["6.25"]
    n = len(asr.layers)
    assert {"fixed 2", "layer 0", f"layer {n}", "ctc posteriors", "onset oracle",
            f"layer {n}, max group 4", f"layer {n}, vs group mean"} <= set(rows)
    phonemes = {s["phonemes"] for s in rows.values()}
    assert len(phonemes) == 1
    frames = sum(-(-len(a) // 1280) for a in audios)
    for name, s in rows.items():
        assert s["tokens"] == pytest.approx(s["frame_rate"] * frames / 12.5)
        assert abs(s["frame_rate"] - 6.25) < 0.8, name
    # the group-mean rule's new_group flags start every group exactly once
    feats = torch.randn(20, 8)
    new = mod.merge_vs_group_mean(feats, 0.0, 4)
    assert new[0] and new.sum() >= 5          # max group 4 → at least 20/4 groups
    md = mod.markdown({"rates": res, "utterances": 3, "phonemes_per_second": 1.0})
    assert all(f"| {name} |" in md for name in rows)
