"""Tie a portable codec training state to another frozen ASR of the same architecture, so
its run continues with that ASR's features instead of starting over:

    flexicodec asr-train --config configs/asr/small.yaml --data CORPUS --run-dir RUN \
        --init-from flexicodec_pretrained/asr --out-model NEW_ASR
    python scripts/rebase_portable_asr.py checkpoints/codec_v2 --asr NEW_ASR
    flexicodec train ... --asr NEW_ASR --portable-state checkpoints/codec_v2 --resume

Only ``state.json`` changes (the weights stay; the change is recorded in its
``semantic_history``). See :func:`flexicodec.codec.portable.rebase_semantic`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    from flexicodec.codec.portable import PortableStateError, rebase_semantic

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("state", help="portable state directory (codec.portable)")
    ap.add_argument("--asr", required=True, help="the trained ASR directory to continue with")
    a = ap.parse_args(argv)
    try:
        info = rebase_semantic(a.state, a.asr)
    except PortableStateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    last = info["semantic_history"][-1]
    print(f"{a.state}: step {last['step']}, ASR {last['previous']} -> {last['identity']} "
          f"({a.asr})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
