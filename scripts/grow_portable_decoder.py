"""Grow the Vocos decoder of a portable codec training state by identity ConvNeXt blocks, so
its run continues with more decoder capacity and no setback (the grown codec decodes exactly
as before; the new blocks' layer scale starts at 0):

    python scripts/grow_portable_decoder.py checkpoints/codec_v2 --decoder-layers 12
    flexicodec train ... --portable-state checkpoints/codec_v2

In place and atomic; recorded in ``state.json``'s ``growth_history``. See
:mod:`flexicodec.codec.grow`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    from flexicodec.codec.grow import grow_portable_decoder
    from flexicodec.codec.portable import PortableStateError

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("state", help="portable state directory (codec.portable)")
    ap.add_argument("--decoder-layers", type=int, required=True,
                    help="the decoder's ConvNeXt blocks after growing (more than now)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the new blocks' weights")
    a = ap.parse_args(argv)
    try:
        info = grow_portable_decoder(a.state, a.decoder_layers, a.seed)
    except PortableStateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    old, new = info["growth_history"][-1]["decoder_layers"]
    print(f"{a.state}: step {info['step']}, decoder blocks {old} -> {new}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
