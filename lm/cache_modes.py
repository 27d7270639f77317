"""The ways the speech LM keeps its KV cache during generation, by name: one vocabulary for
``--lm-cache`` on every command (``flexicodec-lm generate``, ``flexicodec-tts``, the server,
the TTS benchmark) and for ``SynthesisOptions.lm_cache``. Each name stands for
:class:`flexicodec.lm.generate.SamplingConfig` fields; all give the same tokens. No torch
import: command lines build their parsers with it.
"""
from __future__ import annotations

#: the ways the LM keeps its KV cache, by name (``--lm-cache`` of every command, TTS
#: ``SynthesisOptions.lm_cache``) → SamplingConfig fields. All give the same tokens.
LM_CACHES: dict[str, dict] = {
    "dynamic": dict(static_cache=False, compile=False),                 # DynamicCache
    "static": dict(static_cache=True, compile=False),                   # fixed-shape steps
    "compiled": dict(static_cache=True, compile=True),                  # + torch.compile
    "cudagraphs": dict(static_cache=True, compile=True, compile_mode="reduce-overhead"),
}


def _cache_list(text: str) -> list[str]:
    """``--lm-cache a,b,...`` → the list of modes; an unknown or missing mode is an error."""
    import argparse

    modes = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in modes if m not in LM_CACHES]
    if bad or not modes:
        raise argparse.ArgumentTypeError(f"unknown {bad or text!r}; choose from "
                                         f"{', '.join(LM_CACHES)}")
    return modes


def add_lm_cache_flag(parser, several: bool = False) -> None:
    """``--lm-cache`` on a command line: one mode (default dynamic) or, ``several=True``, a
    comma list of modes parsed into a list (a benchmark's side-by-side)."""
    names = ", ".join(LM_CACHES)
    if several:
        parser.add_argument("--lm-cache", default="dynamic", type=_cache_list,
                            metavar="MODE[,MODE...]",
                            help=f"the LM's KV cache, one measurement per mode: {names}")
    else:
        parser.add_argument("--lm-cache", default="dynamic", choices=list(LM_CACHES),
                            help="the LM's KV cache: dynamic, static (fixed-shape steps), "
                                 "compiled (torch.compile'd steps: compiles once, then faster) "
                                 "or cudagraphs (compiled with CUDA graphs); the same tokens")


def lm_cache_settings(name: str) -> dict:
    """The SamplingConfig fields of the LM cache mode ``name`` (a :data:`LM_CACHES` key)."""
    if name not in LM_CACHES:
        raise ValueError(f"unknown LM cache {name!r}; choose from {', '.join(LM_CACHES)}")
    return {"compile_mode": None, **LM_CACHES[name]}

