"""Move trained codecs off the GPU machine within its return limits (64 MiB per call).

A codec directory holds a copy of the frozen ASR (``semantic.*`` weights). Two codecs (the
dynamic one and the fixed-rate baseline) plus their ASR copies do not fit one return, so on
the device ``pack`` writes the codec's own weights (fp16) without the ASR copy, and here
``unpack`` puts the ASR weights back from the ASR directory the codec was trained with and
saves an ordinary, self-contained codec directory (``FlexiCodec.from_pretrained`` loads it).

    python scripts/device/transport.py pack CODEC_DIR OUT_FILE.safetensors
    python scripts/device/transport.py unpack PACKED.safetensors ASR_DIR OUT_CODEC_DIR
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, safe_open, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from flexicodec.codec.asr.model import PhonemeASR  # noqa: E402
from flexicodec.codec.config import FlexiCodecConfig  # noqa: E402
from flexicodec.codec.model import FlexiCodec  # noqa: E402
from flexicodec.common.pretrained import config_from_dict  # noqa: E402

ASR_PREFIX = "semantic.asr."


def pack(codec_dir: str, out_file: str) -> None:
    model = FlexiCodec.from_pretrained(codec_dir)
    meta = FlexiCodec.read_config(codec_dir)
    state = {k: v.detach().to(torch.float16 if v.is_floating_point() else v.dtype).contiguous()
             for k, v in model.state_dict().items() if not k.startswith(ASR_PREFIX)}
    asr_keys = [k for k in model.state_dict() if k.startswith(ASR_PREFIX)]
    if not asr_keys:
        raise SystemExit(f"{codec_dir}: no '{ASR_PREFIX}*' weights; nothing to strip")
    save_file(state, out_file, metadata={"flexicodec_config": json.dumps(meta)})
    n = sum(v.numel() for v in state.values())
    print(f"packed {codec_dir}: {n / 1e6:.2f} M params (fp16) without {len(asr_keys)} ASR tensors")


def unpack(packed: str, asr_dir: str, out_dir: str) -> None:
    with safe_open(packed, "pt") as f:
        meta = json.loads(f.metadata()["flexicodec_config"])
    cfg = config_from_dict(FlexiCodecConfig, meta["config"])
    cfg.semantic.asr_path = str(asr_dir)
    model = FlexiCodec(cfg)  # loads the ASR weights from asr_dir
    state = load_file(packed)
    own = model.state_dict()
    missing = sorted(k for k in own if k not in state and not k.startswith(ASR_PREFIX))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise SystemExit(f"{packed}: does not match the codec config (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]})")
    asr = PhonemeASR.from_pretrained(asr_dir)
    for k, v in asr.state_dict().items():
        if not torch.equal(own[ASR_PREFIX + k].float(), v.float()):
            raise SystemExit(f"{asr_dir}: ASR weights differ from the ones the codec was built "
                             f"with ({k})")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=False)
    model.save_pretrained(out_dir)
    print(f"unpacked {packed} -> {out_dir} (identity {FlexiCodec.read_config(out_dir)['identity']})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pack")
    a.add_argument("codec_dir")
    a.add_argument("out_file")
    b = sub.add_parser("unpack")
    b.add_argument("packed")
    b.add_argument("asr_dir")
    b.add_argument("out_dir")
    args = p.parse_args()
    if args.cmd == "pack":
        pack(args.codec_dir, args.out_file)
    else:
        unpack(args.packed, args.asr_dir, args.out_dir)


if __name__ == "__main__":
    main()
