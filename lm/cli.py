"""``flexicodec-lm``: train-tokenizer, tokenize, train, finetune, generate.

``flexicodec-lm generate --model LM_DIR --codec CODEC_DIR --text "..." [--text "..."]
--frame-rate 6.25 --out codes.npz [--adapter DIR] [--prompt-wav W --prompt-text T]
[--greedy] [--temperature 0.8 --top-k 50 --top-p 0.95 --repetition-penalty 1.1]
[--max-tokens N]`` writes the codec's codes file (``flexicodec.codec.codes_file``: semantic codes and
token lengths of each text, no acoustic stages) atomically; ``flexicodec decode codes.npz
-o out/ --model CODEC_DIR`` turns it into audio (semantic-only; the full TTS with acoustic
codes is ``flexicodec-tts``).
"""
from __future__ import annotations

import json
import logging
import sys

import torch

SUBCOMMANDS = {
    "train-tokenizer": "flexicodec.lm.text_tokenizer",
    "tokenize": "flexicodec.lm.tokenize",
    "train": "flexicodec.lm.train",
    "finetune": "flexicodec.lm.finetune",
    "generate": "flexicodec.lm.cli",
}


def generate_main(argv: list[str] | None = None) -> int:
    import argparse

    from flexicodec.codec.codes_file import CodesFile, save_codes
    from flexicodec.common.constants import SAMPLE_RATE
    from flexicodec.data.audio import load_audio
    from flexicodec.lm.cache_modes import add_lm_cache_flag, lm_cache_settings
    from flexicodec.lm.generate import SamplingConfig, VoicePrompt, generate
    from flexicodec.lm.model import load_lm

    p = argparse.ArgumentParser(prog="flexicodec-lm generate",
                                description="Text → the codec's codes file (semantic codes + "
                                            "token lengths, .npz).")
    p.add_argument("--model", default=None, help="LM directory (default: the shipped LM)")
    p.add_argument("--text", required=True, action="append",
                   help="text to speak (repeat for a batch: one utterance each)")
    p.add_argument("--frame-rate", type=float, required=True, help="rate bucket (Hz)")
    p.add_argument("-o", "--out", required=True, help="output .npz")
    p.add_argument("--codec", default=None, help="the LM's codec directory (checked; its "
                                                  "codes file is written; default with the "
                                                  "shipped LM: the shipped codec)")
    p.add_argument("--adapter", default=None, help="LoRA adapter directory (merged in)")
    p.add_argument("--prompt-wav", default=None)
    p.add_argument("--prompt-text", default=None)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--max-tokens", type=int, default=1000)
    p.add_argument("--greedy", action="store_true")
    p.add_argument("--seed", type=int, default=None)
    add_lm_cache_flag(p)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args(argv)
    if (a.prompt_wav is None) != (a.prompt_text is None):
        p.error("--prompt-wav and --prompt-text go together")
    if a.model is None:                      # the shipped LM goes with the shipped codec
        from flexicodec.common.pretrained import default_checkpoint
        a.model = str(default_checkpoint("lm", "LM"))
        a.codec = a.codec or str(default_checkpoint("codec", "codec"))
    if not a.codec:
        p.error("--codec is needed: the output is that codec's codes file")
    from flexicodec.common.pretrained import CheckpointError
    from flexicodec.lm.text_tokenizer import TokenizerError
    from flexicodec.lm.tokenize import load_codec

    try:
        codec = load_codec(a.codec, a.device)
        model, tok = load_lm(a.model, codec=codec, map_location=a.device)
    except CheckpointError as exc:
        p.error(str(exc))
    if a.adapter:
        from flexicodec.lm.finetune import base_identity, load_adapter
        model = load_adapter(model, a.adapter, merge=True, base_id=base_identity(a.model))
    prompt = None
    if a.prompt_wav:
        wav, _ = load_audio(a.prompt_wav, SAMPLE_RATE)
        enc = codec.encode([wav], SAMPLE_RATE, frame_rate=a.frame_rate, num_quantizers=0)
        m = enc.token_mask[0].bool()
    try:
        pieces = [tok.encode(t) for t in a.text]
        prompt_pieces = tok.encode(a.prompt_text) if a.prompt_wav else None
    except TokenizerError as exc:
        p.error(str(exc))
    if a.prompt_wav:
        prompt = VoicePrompt(prompt_pieces, enc.semantic_codes[0][m].cpu(),
                             enc.token_lengths[0][m].cpu())
    s = SamplingConfig(temperature=a.temperature, top_k=a.top_k, top_p=a.top_p,
                       repetition_penalty=a.repetition_penalty, greedy=a.greedy,
                       max_tokens=a.max_tokens, seed=a.seed, **lm_cache_settings(a.lm_cache))
    res = generate(model, pieces, a.frame_rate, s, prompt=prompt)
    codes = CodesFile.from_tokens(codec, [r.semantic_codes.numpy() for r in res],
                                  [r.token_lengths.numpy() for r in res], res[0].frame_rate)
    out = save_codes(a.out, codes)
    print(json.dumps({"out": str(out), "tokens": [int(r.semantic_codes.numel()) for r in res],
                      "seconds": [r.num_frames / codec.frame_rate_base for r in res],
                      "truncated": [r.truncated for r in res]}))
    return 0


def _main(argv: list[str] | None = None) -> int:
    import importlib

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        print("usage: flexicodec-lm {" + ",".join(SUBCOMMANDS) + "} ...", file=sys.stderr)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"unknown subcommand {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "generate":
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
        return generate_main(rest)
    return importlib.import_module(SUBCOMMANDS[cmd]).main(rest) or 0


def main(argv: list[str] | None = None) -> int:
    """``flexicodec-lm``: a missing model or a broken weight file is a one-line error (exit 2)."""
    from flexicodec.common.pretrained import run_reporting_model_errors

    return run_reporting_model_errors("flexicodec-lm", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
