"""FlexiCodec: a dynamic frame-rate neural speech codec, and a speech-LM TTS stack on top.

The public surface::

    from flexicodec import FlexiCodec, TTS, SpeechLM

    codec = FlexiCodec.from_pretrained()          # the default codec of the models directory
    tts = TTS.from_pretrained()                   # codec + speech LM + acoustic stage

Subpackages (one job each, lower layers never import higher ones):
``flexicodec.common`` (checkpoint I/O, atomic writes, training loop and distributed helpers,
the models directory) < ``flexicodec.data`` (corpora, audio, text) < ``flexicodec.codec``
(the codec; ``.asr`` its frozen semantic ASR, ``.eval`` evaluation and diagnostics) <
``flexicodec.lm`` (the speech LM) < ``flexicodec.tts`` (synthesis, server) <
``flexicodec.benchmarks``. The names above are imported lazily, on first use, so
``import flexicodec`` does not load torch.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name → module that defines it
_PUBLIC = {
    "FlexiCodec": "flexicodec.codec.model",
    "SpeechLM": "flexicodec.lm.model",
    "TTS": "flexicodec.tts.pipeline",
}
__all__ = ["FlexiCodec", "SpeechLM", "TTS", "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from flexicodec.codec.model import FlexiCodec
    from flexicodec.lm.model import SpeechLM
    from flexicodec.tts.pipeline import TTS


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'flexicodec' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
