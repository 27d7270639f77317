"""``flexicodec`` command line: encode, decode, reconstruct, plot; and dispatch of
``asr-train`` / ``train`` / ``eval`` to their modules (each exposes ``main(argv)``).

Examples::

    flexicodec encode speech/ -o codes/ --frame-rate 6.25
    flexicodec decode codes/ -o decoded/
    flexicodec reconstruct a.wav b.flac -o out/ --threshold 0.51 --num-quantizers 4
    flexicodec plot a.wav -o a.png
    flexicodec calibrate --data corpus/ --frame-rate 6.25     # → {"threshold": ..., ...}
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

DISPATCH = {"asr-train": "flexicodec.codec.asr.train", "asr-eval": "flexicodec.codec.asr.evaluate",
            "train": "flexicodec.codec.train", "eval": "flexicodec.codec.eval.evaluate"}


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="codec directory (default: the shipped flexicodec_pretrained/codec)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")


def _add_rate(p: argparse.ArgumentParser, quantizers: bool = True) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--threshold", type=float, default=None,
                   help="merging threshold (1.0 = no merging = 12.5 Hz; default: the model's)")
    g.add_argument("--frame-rate", type=float, default=None,
                   help="target average frame rate in Hz (threshold searched per file)")
    if quantizers:
        p.add_argument("--num-quantizers", type=int, default=None,
                       help="acoustic RVQ stages to keep (0 = semantic tokens only)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="flexicodec", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("encode", help="audio files/folders → .npz codes files")
    p.add_argument("inputs", nargs="+")
    p.add_argument("-o", "--out", required=True, help="output folder")
    _add_rate(p)
    _add_common(p)
    p = sub.add_parser("decode", help=".npz codes files/folders → .wav")
    p.add_argument("inputs", nargs="+")
    p.add_argument("-o", "--out", required=True, help="output folder")
    _add_common(p)
    p = sub.add_parser("reconstruct", help="audio → codes → audio (.wav, same names)")
    p.add_argument("inputs", nargs="+")
    p.add_argument("-o", "--out", required=True, help="output folder")
    _add_rate(p)
    _add_common(p)
    p = sub.add_parser("plot", help="log-mel spectrogram with merged-group boundaries")
    p.add_argument("input")
    p.add_argument("-o", "--out", required=True, help="output .png")
    _add_rate(p, quantizers=False)
    _add_common(p)
    p = sub.add_parser("calibrate", help="the global merging threshold that gives a target "
                       "average rate on a corpus split (pooled over its utterances)")
    p.add_argument("--data", required=True, help="corpus directory")
    p.add_argument("--split", default="valid")
    p.add_argument("--frame-rate", type=float, required=True, help="target rate in Hz")
    p.add_argument("--max-utts", type=int, default=200)
    _add_common(p)
    for name, module in DISPATCH.items():
        sub.add_parser(name, help=f"run {module} (arguments passed through)", add_help=False)
    return ap


def _main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DISPATCH:
        module = importlib.import_module(DISPATCH[argv[0]])
        return module.main(argv[1:]) or 0
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from flexicodec.codec.api import decode_files, encode_files, group_boundaries, load_codec, \
        reconstruct_files
    from flexicodec.codec.codes_file import CodesFileError
    from flexicodec.common.pretrained import CheckpointError
    from flexicodec.data.audio import AudioError

    try:
        model = load_codec(args.model, args.device)
        if args.command == "encode":
            s = encode_files(model, args.inputs, args.out, args.threshold, args.frame_rate,
                             args.num_quantizers)
            print(s)
        elif args.command == "decode":
            n = decode_files(model, args.inputs, args.out)
            print(f"decoded {n} file(s) into {args.out}")
        elif args.command == "reconstruct":
            s = reconstruct_files(model, args.inputs, args.out, args.threshold,
                                  args.frame_rate, args.num_quantizers)
            print(s)
        elif args.command == "plot":
            from flexicodec.codec.eval.plot import plot_groups
            wav, lengths, codes = group_boundaries(model, args.input, args.threshold,
                                                   args.frame_rate)
            plot_groups(wav, lengths, args.out, model.sample_rate, model.frame_rate_base)
            print(f"wrote {args.out} ({int((lengths > 0).sum())} tokens, "
                  f"{float(codes.frame_rate[0]):.2f} Hz)")
        elif args.command == "calibrate":
            import json

            from flexicodec.codec.api import calibrate_threshold_on_corpus
            print(json.dumps(calibrate_threshold_on_corpus(
                model, args.data, args.split, args.frame_rate, args.max_utts, args.device)))
    except (FileNotFoundError, CheckpointError, CodesFileError, AudioError, ValueError) as exc:
        print(f"flexicodec {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    """``flexicodec``: a missing model or a broken weight file is a one-line error (exit 2)."""
    from flexicodec.common.pretrained import run_reporting_model_errors

    return run_reporting_model_errors("flexicodec", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
