"""Do the acoustic codebooks fit an unheard voice's latents worse than a training voice's?

At 12.5 Hz (threshold 1.0) the codec quantizes the acoustic residual (the acoustic token
minus the semantic latent) with its RVQ: stage i projects what is left to a few dimensions
(``z_e``), picks the codebook vector of highest cosine similarity and subtracts that
vector's projection back. For each utterance of a corpus split this reports, per voice:

- the mean cosine similarity of each stage's ``z_e`` to the vector it picked (1: exact
  direction; a codebook that does not cover a voice's latents gives lower values);
- the mel distance to the original (:func:`flexicodec.codec.eval.evaluate.mel_distance`) and
  PESQ-WB of the decode with the first N stages for each N of ``--stages`` (default 0, 1, 8,
  12; 0: semantic tokens only), as ``flexicodec eval --num-quantizers N`` decodes, and of
  the decode of the unquantized latent (``latent``: the acoustic encoder's tokens as they
  enter the RVQ, as if it had infinitely many stages): how much of the loss is the
  quantizer's and how much the encoder's and decoder's;
- each stage's codebook use over the split (``flexicodec eval``'s: the perplexity of its
  code histogram, the codebook size if every code is used equally often, and the number of
  codes used at all), and the energy of the residual left after each stage relative to
  what enters the RVQ.

Run it on a split of training voices (``test``) and one of unheard voices (``test_unseen``):
if the unheard voice's cosines match the training voices' while its mel distances do not,
the loss lies in the encoder and decoder, not in the codebooks.

    python scripts/diagnose_quantization.py --model CODEC --data CORPUS --split test_unseen \
        --max-utts 40 [--stages 0,1,8,12] [-o OUT_PREFIX]

Prints a Markdown table; ``-o`` also writes OUT_PREFIX.json and OUT_PREFIX.md.
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flexicodec.codec.eval.evaluate import (codebook_usage, load_utterances,  # noqa: E402
                                             mel_distance)
from flexicodec.codec.eval.metrics import pesq_wb, scored_mean  # noqa: E402
from flexicodec.codec.model import FlexiCodec  # noqa: E402
from flexicodec.common.atomic import write_report_files  # noqa: E402
from flexicodec.common.pretrained import run_reporting_model_errors  # noqa: E402
from flexicodec.common.constants import SAMPLE_RATE  # noqa: E402

@torch.no_grad()
def decode_ways(model, audio: np.ndarray, stages: list[int]) -> dict:
    """One utterance [T] encoded at 12.5 Hz (``model.encode``, all stages): ``{"audio": {N:
    its codes decoded with the first N stages [T], "latent": the decode of the unquantized
    acoustic tokens (the acoustic aggregator's output, seen by a forward hook) [T]},
    "cosine": [mean cosine of each RVQ stage's projected residual (its ``in_proj`` output)
    to the code it got], "residual_left": [energy of the residual after stage i relative to
    the RVQ's input], "codes": acoustic codes [n_q, T']}``."""
    z_e, tokens, res = [], [], []

    def seen(mod, inp, out):
        res.append(inp[0])
        z_e.append(out)
    hooks = [stage.in_proj.register_forward_hook(seen) for stage in model.rvq.stages]
    hooks.append(model.acoustic_aggregator.register_forward_hook(
        lambda mod, inp, out: tokens.append(out)))
    try:
        codes = model.encode(audio, SAMPLE_RATE, threshold=1.0)
    finally:
        for h in hooks:
            h.remove()
    if len(tokens) != 1:
        raise ValueError(f"an utterance of {len(audio) / SAMPLE_RATE:.1f} s was encoded in "
                         f"{len(tokens)} chunks; this diagnosis wants one")
    t = int(codes.token_mask[0].sum())
    cosine = [float(torch.nn.functional.cosine_similarity(
                  z[0, :t].float(), stage.codebook(c[:t]).float(), dim=-1).mean())
              for stage, z, c in zip(model.rvq.stages, z_e, codes.acoustic_codes[0])]
    # the residual's energy left after stage i, relative to what enters the RVQ
    e0 = res[0][0, :t].float().pow(2).sum()
    after = [r[0, :t].float().pow(2).sum() for r in res[1:]]
    last = res[-1][0, :t].float() - model.rvq.stages[-1].decode(codes.acoustic_codes[0, -1:, :t]
                                                                )[0].float()
    left = [float(e / e0) for e in after + [last.pow(2).sum()]]
    n = len(audio)
    out = {str(k): model.decode_from_codes(codes.semantic_codes, codes.acoustic_codes[:, :k],
                                           codes.token_lengths)[0, :n] for k in stages}
    out["latent"] = model.decode_from_latent(tokens[0][:, :t], codes.token_lengths[:, :t])[0, :n]
    return {"audio": {k: a.float().cpu().numpy() for k, a in out.items()}, "cosine": cosine,
            "residual_left": left, "codes": codes.acoustic_codes[0, :, :t].cpu().numpy()}


def diagnose(model, utts: list[dict], stages: list[int]) -> dict:
    """Per voice (and ``all``): mean mel distance and PESQ-WB of the decode with each stage
    count, and mean cosine per RVQ stage, over ``utts`` (``load_utterances`` dicts)."""
    mel = defaultdict(lambda: defaultdict(list))
    pq = defaultdict(lambda: defaultdict(list))
    cos = defaultdict(list)
    left = defaultdict(list)
    all_codes = []
    for u in tqdm(utts, desc="decoding", leave=False):
        got = decode_ways(model, u["audio"], stages)
        voice = u["speaker"].split("~")[0] or "?"
        for key in (voice, "all"):
            for k, a in got["audio"].items():
                mel[key][k].append(mel_distance(u["audio"], a[: len(u["audio"])]))
                pq[key][k].append(pesq_wb(u["audio"], a[: len(u["audio"])]))
            cos[key].append(got["cosine"])
            left[key].append(got["residual_left"])
        all_codes.append(got["codes"])
    rows = []
    for voice in sorted(mel, key=lambda v: (v == "all", v)):
        rows.append({"voice": voice, "utterances": len(cos[voice]),
                     "mel": {k: float(np.mean(v)) for k, v in mel[voice].items()},
                     "pesq_wb": {k: scored_mean(v)[0] for k, v in pq[voice].items()},
                     "cosine": np.mean(np.array(cos[voice]), axis=0).round(4).tolist(),
                     "residual_left": np.mean(np.array(left[voice]), axis=0).round(4).tolist()})
    return {"stages": stages, "rows": rows,
            "codebook_use": codebook_usage(all_codes, model.config.rvq_codebook_size),
            "tokens": int(sum(c.shape[1] for c in all_codes))}


def markdown(result: dict, title: str) -> str:
    stages = result["stages"]
    n_q = len(result["rows"][0]["cosine"]) if result["rows"] else 0
    keys = [str(k) for k in stages] + ["latent"]
    names = [f"{k} stages" for k in stages] + ["unquantized"]

    def pesq(v):
        return "–" if v is None else f"{v:.2f}"
    head = ("| voice | utterances | " + " | ".join(f"mel dist, {n}" for n in names) + " | "
            + " | ".join(f"PESQ-WB, {n}" for n in names)
            + " | cosine to code, stage 1..{} |".format(n_q))
    lines = [f"# {title}", "", head, "|" + "---|" * (3 + 2 * len(keys))]
    for r in result["rows"]:
        lines.append(f"| {r['voice']} | {r['utterances']} | "
                     + " | ".join(f"{r['mel'][k]:.3f}" for k in keys) + " | "
                     + " | ".join(pesq(r["pesq_wb"][k]) for k in keys) + " | "
                     + " ".join(f"{c:.2f}" for c in r["cosine"]) + " |")
    lines += ["", "Energy of the acoustic residual left after stage i, relative to the RVQ's "
              "input (mean over utterances; 1: the codes carry none of it):", "",
              "| voice | " + " | ".join(str(i + 1) for i in range(n_q)) + " |",
              "|---|" + "---|" * n_q]
    lines += [f"| {r['voice']} | " + " | ".join(f"{v:.2f}" for v in r["residual_left"]) + " |"
              for r in result["rows"] if r["voice"] == "all"]
    use = result["codebook_use"]
    lines += ["", f"Codebook use over the split's {result['tokens']} tokens (perplexity of the "
              f"code histogram / codes used):", "",
              "| stage | " + " | ".join(str(i + 1) for i in range(len(use))) + " |",
              "|---|" + "---|" * len(use),
              "| perplexity | " + " | ".join(f"{u['perplexity']:.0f}" for u in use) + " |",
              "| codes used | " + " | ".join(str(u["used"]) for u in use) + " |"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="diagnose_quantization", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="FlexiCodec directory")
    ap.add_argument("--data", required=True, help="corpus directory")
    ap.add_argument("--split", default="test_unseen")
    ap.add_argument("--max-utts", type=int, default=40)
    ap.add_argument("--stages", default="0,1,8,12", help="RVQ stage counts to decode with")
    ap.add_argument("-o", "--out", default=None, help="output prefix (.json and .md)")
    a = ap.parse_args(argv)
    torch.set_grad_enabled(False)
    model = FlexiCodec.from_pretrained(a.model).eval()
    try:
        stages = sorted({int(s) for s in a.stages.split(",") if s.strip()})
    except ValueError:
        ap.error(f"--stages wants comma-separated integers, got {a.stages!r}")
    if not stages or not all(0 <= k <= model.config.n_q for k in stages):
        ap.error(f"--stages must lie in [0, {model.config.n_q}], got {a.stages!r}")
    utts = load_utterances(a.data, a.split, a.max_utts)
    result = {"model": a.model, "data": a.data, "split": a.split, **diagnose(model, utts, stages)}
    md = markdown(result, f"Acoustic codebooks per voice: {a.split} ({len(utts)} utterances, "
                          f"12.5 Hz)")
    print(md)
    if a.out:
        write_report_files(a.out, result, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_reporting_model_errors("diagnose_quantization", main,
                                                errors=(ValueError, FileNotFoundError)))
