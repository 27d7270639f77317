"""The speech LM's text input, chosen by ``SpeechLMConfig.text_input``:

- ``"phoneme"`` (default): espeak-ng phoneme tokens with word boundaries, stress and
  punctuation (:mod:`flexicodec.lm.phoneme_tokenizer`), vocabulary in ``phoneme_vocab.json``;
- ``"bpe"``: sentencepiece pieces of the normalised text (:mod:`flexicodec.lm.text_tokenizer`), model
  in ``text_tokenizer.model``. LMs saved before ``text_input`` existed are ``bpe``.

Both tokenizers have ``encode(text) -> ids``, ``vocab_size``, ``path`` and ``text_input``;
the file sits beside the LM's ``config.json`` under the name below.
"""
from __future__ import annotations

import os
from pathlib import Path

from flexicodec.lm.phoneme_tokenizer import VOCAB_FILE, PhonemeTokenizer
from flexicodec.lm.text_tokenizer import TOKENIZER_FILE, TextTokenizer

TEXT_INPUTS = ("phoneme", "bpe")
#: the value of LMs saved before the field existed
LEGACY_TEXT_INPUT = "bpe"
_FILES = {"phoneme": VOCAB_FILE, "bpe": TOKENIZER_FILE}


def check_text_input(value: str) -> str:
    if value not in TEXT_INPUTS:
        raise ValueError(f"text_input must be one of {TEXT_INPUTS}, got {value!r}")
    return value


def tokenizer_file(text_input: str) -> str:
    """File name of the tokenizer of ``text_input`` beside a model / in a run."""
    return _FILES[check_text_input(text_input)]


def load_tokenizer(path: str | os.PathLike, text_input: str):
    """The tokenizer of ``text_input`` from a file, or a directory holding its file."""
    path = Path(path)
    if path.is_dir():
        path = path / tokenizer_file(text_input)
    cls = PhonemeTokenizer if check_text_input(text_input) == "phoneme" else TextTokenizer
    return cls(path)
