"""Write a codec directory (``FlexiCodec.from_pretrained`` loads it) from a portable training
state, e.g. to evaluate a run that is still training:

    python scripts/export_portable.py checkpoints/codec_v2 --asr checkpoints/asr_v2 -o OUT_DIR
    flexicodec eval --model OUT_DIR --data CORPUS --split test --rates 12.5

The generator weights are the run's current (not EMA) weights; the frozen ASR must be the one
the run was trained with (checked by identity).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    import torch

    from flexicodec.codec.portable import (PortableStateError, codec_from_portable,
                                           read_portable_info)
    from flexicodec.common.pretrained import CheckpointError

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("state", help="portable state directory (codec.portable)")
    ap.add_argument("--asr", required=True, help="the frozen ASR the run was trained with")
    ap.add_argument("-o", "--out", required=True, help="codec directory to write")
    a = ap.parse_args(argv)
    try:
        info = read_portable_info(a.state)
        codec = codec_from_portable(a.state, a.asr)
    except (PortableStateError, CheckpointError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    codec.save_pretrained(a.out, dtype=torch.float16)
    print(f"wrote {a.out} (step {info['step']}, {info['train_seconds'] / 60:.1f} training "
          f"minutes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
