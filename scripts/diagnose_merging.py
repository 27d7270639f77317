"""Does similarity-based merging put tokens where the phonemes are? (issue 4's "why")

For utterances of a corpus split, the frozen ASR's greedy CTC path on the original audio
gives each phoneme's onset frame (12.5 Hz grid); every grouping is then scored by how many
onsets land in each token (codec/eval/allocation.py): empty tokens, phonemes in crowded tokens
(>= 3 onsets), the spread of the per-token load. Groupings compared at each target rate:
- ``layer k``: the codec's merging rule (per-utterance threshold search to the rate,
  ``merging.merge_to_rate``) with ASR layer k's features as the similarity source
  (the shipped codec uses the last layer, ``layer 6``);
- ``ctc posteriors``: the ASR's phoneme posteriors as the similarity source;
- ``fixed k``: every k frames, regardless of content (k = 2 → 6.25 Hz, the baseline);
- ``layer N, max group 4`` (N = the ASR's last layer, the codec's default): the shipped
  rule with groups of at most 4 frames (paper: 8);
- ``layer N, vs group mean``: frame t joins the open group when its feature is similar to
  the group's mean feature (not only to frame t-1: no chaining through slow drifts);
- ``onset oracle``: frames without a phoneme onset join their group first (it reads the
  onsets it is scored on: an upper bound on what content-adaptive merging can gain here).

    python scripts/diagnose_merging.py --data CORPUS --split test_unseen --max-utts 60 \
        --rates 6.25,4 [--asr DIR] [-o OUT_PREFIX]

Prints a Markdown table; ``-o`` also writes OUT_PREFIX.json and OUT_PREFIX.md. CPU, about a
second per utterance.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flexicodec.codec import merging  # noqa: E402
from flexicodec.codec.eval.allocation import (allocation_stats, ctc_onsets, onsets_to_frames,  # noqa: E402
                                              token_loads)
from flexicodec.codec.asr.model import WORD_SEP, PhonemeASR  # noqa: E402
from flexicodec.codec.eval.evaluate import load_utterances, parse_rates  # noqa: E402
from flexicodec.common.atomic import write_report_files  # noqa: E402
from flexicodec.common.pretrained import run_reporting_model_errors  # noqa: E402
from flexicodec.codec.semantic import to_frame_grid  # noqa: E402
from flexicodec.common.constants import BASE_FRAME_RATE, HOP_SIZE, SAMPLE_RATE  # noqa: E402


def _grid(asr: PhonemeASR, feats: torch.Tensor, flen: torch.Tensor, frames: int
          ) -> torch.Tensor:
    return to_frame_grid(feats, flen, asr.feature_rate, torch.tensor([frames]), BASE_FRAME_RATE,
                         frames)


@torch.no_grad()
def utterance_sources(asr: PhonemeASR, audio: np.ndarray
                      ) -> tuple[np.ndarray, dict, int, torch.Tensor]:
    """(onset frames [P], {source name: similarity [1, F]}, F, last-layer features [F, D])
    for one 16 kHz utterance, padded to whole 12.5 Hz frames exactly as the codec feeds its
    semantic model (one ASR pass gives every layer and the CTC logits)."""
    n = audio.shape[0]
    frames = -(-n // HOP_SIZE)
    wav = torch.zeros(1, frames * HOP_SIZE)
    wav[0, :n] = torch.from_numpy(audio)
    lens = torch.tensor([frames * HOP_SIZE])
    layers, flen = asr.all_hidden_states(wav, lens)          # one encoder pass
    logits = asr.head(layers[-1])
    best = logits[0, : int(flen[0])].argmax(-1).tolist()
    skip = tuple(i for i, s in enumerate(asr.vocab) if s == WORD_SEP)
    onsets = onsets_to_frames(ctc_onsets(best, blank=0, skip=skip), asr.feature_rate,
                              BASE_FRAME_RATE)
    sims, last = {}, None
    for k, feats in enumerate(layers):
        last = _grid(asr, feats, flen, frames)
        sims[f"layer {k}"] = merging.frame_similarity(last)
    post = logits.float().softmax(-1)
    sims["ctc posteriors"] = merging.frame_similarity(_grid(asr, post, flen, frames))
    # onset oracle: frames with fewer onsets are more "similar" (join first); a seeded
    # jitter breaks ties so the rate search can land on any token count
    count = np.bincount(np.clip(onsets, 0, frames - 1), minlength=frames).astype(np.float32)
    jitter = np.random.default_rng(frames).uniform(0, 0.5, frames).astype(np.float32)
    oracle = torch.from_numpy(1.0 - count - jitter)[None]
    oracle[:, 0] = -float("inf")
    sims["onset oracle"] = oracle
    return onsets, sims, frames, last[0]


def merge_vs_group_mean(feats: torch.Tensor, threshold: float, max_group: int
                        ) -> torch.Tensor:
    """new_group [F] bool for one utterance: frame t joins the open group when the cosine of
    its feature with the group's mean (normalised) feature is >= ``threshold``."""
    f = torch.nn.functional.normalize(feats.float(), dim=-1)
    new = torch.ones(f.shape[0], dtype=torch.bool)
    acc, count = f[0].clone(), 1
    for t in range(1, f.shape[0]):
        sim = float(torch.dot(torch.nn.functional.normalize(acc, dim=0), f[t]))
        if sim >= threshold and count < max_group:
            new[t] = False
            acc += f[t]
            count += 1
        else:
            acc, count = f[t].clone(), 1
    return new


def group_mean_to_rate(feats: torch.Tensor, rate: float, max_group: int) -> merging.Merge:
    """The group-mean rule at the threshold (bisection) whose rate is nearest ``rate``."""
    F_ = feats.shape[0]
    mask = torch.ones(1, F_, dtype=torch.bool)
    target = F_ * rate / BASE_FRAME_RATE
    best = None
    lo, hi = -1.0, 1.0
    for _ in range(20):
        mid = (lo + hi) / 2
        new = merge_vs_group_mean(feats, mid, max_group)
        n = int(new.sum())
        if best is None or abs(n - target) < abs(int(best.sum()) - target):
            best = new
        lo, hi = (lo, mid) if n >= target else (mid, hi)
    return merging.merge_from_boundaries(best[None], mask, torch.tensor([float("nan")]))


def diagnose(asr: PhonemeASR, audios: list[np.ndarray], rates: list[float], max_group: int = 8
             ) -> dict:
    """{rate: {grouping: allocation_stats + achieved rate}} pooled over ``audios``."""
    loads: dict[tuple[float, str], list[np.ndarray]] = {}
    n_tok: dict[tuple[float, str], int] = {}
    n_frames = 0
    last = f"layer {len(asr.layers)}"       # the codec's default semantic layer
    for audio in tqdm(audios, desc="utterances"):
        onsets, sims, frames, feats_last = utterance_sources(asr, audio)
        n_frames += frames
        mask = torch.ones(1, frames, dtype=torch.bool)
        for r in rates:
            groupings = {name: merging.merge_to_rate(sim, mask, r, max_group, BASE_FRAME_RATE)
                         for name, sim in sims.items()}
            k = max(1, round(BASE_FRAME_RATE / r))
            groupings[f"fixed {k}"] = merging.merge_fixed(mask, k)
            groupings[f"{last}, max group 4"] = merging.merge_to_rate(
                sims[last], mask, r, 4, BASE_FRAME_RATE)
            groupings[f"{last}, vs group mean"] = group_mean_to_rate(feats_last, r, max_group)
            for name, m in groupings.items():
                nt = int(m.num_tokens[0])
                loads.setdefault((r, name), []).append(
                    token_loads(m.group_index[0], onsets, nt))
                n_tok[(r, name)] = n_tok.get((r, name), 0) + nt
    out: dict = {}
    for (r, name), v in loads.items():
        st = allocation_stats(v)
        st["frame_rate"] = n_tok[(r, name)] * BASE_FRAME_RATE / max(1, n_frames)
        out.setdefault(f"{r:g}", {})[name] = st
    return out


def markdown(result: dict) -> str:
    lines = []
    for r, rows in result["rates"].items():
        lines += [f"\nTarget {r} Hz ({result['utterances']} utterances, "
                  f"{result['phonemes_per_second']:.1f} phoneme onsets per second):\n",
                  "| grouping | rate (Hz) | phonemes / token | empty tokens | phonemes in "
                  "crowded tokens (>=3) | load std | tokens with 0/1/2/3/4+ |",
                  "|---|---|---|---|---|---|---|"]
        for name, s in sorted(rows.items(), key=lambda kv: kv[1]["crowded_phoneme_share"]):
            h = "/".join(f"{100 * s['histogram'][k]:.0f}" for k in ("0", "1", "2", "3", "4+"))
            lines.append(f"| {name} | {s['frame_rate']:.2f} | {s['phonemes_per_token']:.2f} | "
                         f"{100 * s['empty_token_share']:.1f} % | "
                         f"{100 * s['crowded_phoneme_share']:.1f} % | {s['load_std']:.2f} | "
                         f"{h} % |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="corpus directory")
    ap.add_argument("--split", default="test_unseen")
    ap.add_argument("--max-utts", type=int, default=60)
    ap.add_argument("--rates", default="6.25,4", help="target rates in Hz, comma-separated")
    ap.add_argument("--asr", default=None, help="ASR directory (default: the shipped one)")
    ap.add_argument("-o", "--out", default=None, help="output prefix for .json and .md")
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    asr = PhonemeASR.from_pretrained(a.asr).eval() if a.asr else PhonemeASR.from_pretrained()
    asr.eval()
    utts = load_utterances(a.data, a.split, a.max_utts)
    audios = [u["audio"] for u in utts]
    rates = parse_rates(a.rates)
    seconds = sum(x.shape[0] for x in audios) / SAMPLE_RATE
    res = diagnose(asr, audios, rates)
    any_rate = next(iter(res.values()))
    result = {"data": a.data, "split": a.split, "utterances": len(audios),
              "seconds": seconds,
              "phonemes_per_second": next(iter(any_rate.values()))["phonemes"] / seconds,
              "rates": res}
    md = markdown(result)
    print(md)
    if a.out:
        write_report_files(a.out, result, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_reporting_model_errors("diagnose_merging", main,
                                                errors=(ValueError, FileNotFoundError)))
