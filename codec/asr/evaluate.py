"""``flexicodec asr-eval``: phoneme error rate of a trained PhonemeASR on a corpus split.

    flexicodec asr-eval --model flexicodec_pretrained/asr --data CORPUS --split test_unseen \\
        [--max-utts N] [--batch-size 16] [--device cpu] [-o OUT]

The ASR is the codec's frozen semantic stream, so its PER on speakers it never heard
(``test_unseen``) bounds what the codec's semantic tokens can carry for such voices; this
is the number to compare before and after retraining it. Greedy CTC decoding, the same
scoring as the trainer's validation (``flexicodec.codec.asr.train.evaluate_per``), overall
and per speaker (a derived speaker of the corpus counts as its own). Prints one JSON object;
``-o OUT`` also writes ``OUT.json`` and ``OUT.md``.
"""
from __future__ import annotations

import argparse
import json
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flexicodec asr-eval", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="trained ASR directory (asr-train --out-model)")
    p.add_argument("--data", required=True, help="corpus directory (with a phonemes column)")
    p.add_argument("--split", default="test_unseen",
                   choices=["train", "valid", "test", "test_unseen"])
    p.add_argument("--max-utts", type=int, default=None, help="first N utterances of the split")
    p.add_argument("--max-seconds", type=float, default=30.0,
                   help="utterances longer than this, or without phonemes, are left out "
                        "(counted as left_out)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("-o", "--out", default=None, help="output prefix (writes .json and .md)")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    import torch

    from flexicodec.codec.asr.model import PhonemeASR
    from flexicodec.codec.asr.train import corpus_split, evaluate_per
    from flexicodec.common.atomic import write_report_files
    from flexicodec.common.pretrained import CheckpointError

    try:
        model = PhonemeASR.from_pretrained(a.model).to(a.device)
        _, dataset, dropped = corpus_split(a.data, a.split, a.max_seconds)
    except (FileNotFoundError, CheckpointError, ValueError) as exc:
        print(f"flexicodec asr-eval: error: {exc}", file=sys.stderr)
        return 2
    res = evaluate_per(model, dataset, a.batch_size, torch.device(a.device), a.max_utts,
                       desc=f"PER {a.split}")        # no_grad and eval mode inside
    res = {"model": str(a.model), "data": str(a.data), "split": a.split, **res,
           "left_out": dropped}
    print(json.dumps(res))
    if a.out:
        rows = "".join(f"| {k} | {v['utts']} | {100 * v['per']:.1f} |\n"
                       for k, v in res["per_speaker"].items())
        md = (f"# ASR phoneme error rate: {a.split}\n\n{a.model}: **{100 * res['per']:.1f} %** "
              f"over {res['eval_utts']} utterances\n\n| speaker | utterances | PER % |\n"
              f"|---|---|---|\n{rows}")
        write_report_files(a.out, res, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
