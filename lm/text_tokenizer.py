"""Sentencepiece text tokenizer of the speech LM, trained on normalized corpus text.

All text goes through :func:`flexicodec.data.text.normalize_text` first (the same normaliser the corpus
builder and TTS use), then sentencepiece. The model file is saved beside the LM as
``text_tokenizer.model``.
"""
from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Iterable

from flexicodec.common.atomic import atomic_path

log = logging.getLogger(__name__)
TOKENIZER_FILE = "text_tokenizer.model"


class TokenizerError(ValueError):
    """Tokenizer training or loading failed."""


def _normalize(text: str) -> str:
    from flexicodec.data.text import normalize_text

    return normalize_text(text)


class TextTokenizer:
    """A loaded sentencepiece model. ``encode`` normalizes text first."""

    text_input = "bpe"

    def __init__(self, path: str | os.PathLike):
        import sentencepiece as spm

        path = Path(path)
        if path.is_dir():
            path = path / TOKENIZER_FILE
        if not path.is_file():
            raise TokenizerError(f"{path}: no sentencepiece model")
        self.path = path
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.Load(str(path))
        except (OSError, RuntimeError) as exc:
            raise TokenizerError(f"{path}: not a sentencepiece model ({exc})") from exc

    @property
    def vocab_size(self) -> int:
        return int(self.sp.GetPieceSize())

    def encode(self, text: str, normalize: bool = True) -> list[int]:
        """Text → piece ids [n]. Raises TokenizerError for text that is empty after
        normalization."""
        if not isinstance(text, str):
            raise TokenizerError(f"expected a string, got {type(text).__name__}")
        norm = _normalize(text) if normalize else text
        ids = list(self.sp.EncodeAsIds(norm))
        if not ids:
            raise TokenizerError(f"text {text!r} is empty after normalization")
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        return self.sp.DecodeIds([int(i) for i in ids])

    def pieces(self, text: str) -> list[str]:
        return list(self.sp.EncodeAsPieces(_normalize(text)))


def train_text_tokenizer(texts: Iterable[str], out: str | os.PathLike, vocab_size: int = 2000,
                         model_type: str = "unigram", normalize: bool = True) -> TextTokenizer:
    """Train sentencepiece on ``texts`` (normalized first) and write ``out`` atomically
    (``out`` a directory → ``out/text_tokenizer.model``, else the file path).

    ``vocab_size`` is an upper bound: a small corpus yields fewer pieces (logged).
    """
    import sentencepiece as spm

    if model_type not in ("unigram", "bpe"):
        raise TokenizerError(f"model_type must be 'unigram' or 'bpe', got {model_type!r}")
    if vocab_size < 16:
        raise TokenizerError(f"vocab_size {vocab_size} is too small (need >= 16)")
    lines = [(_normalize(t) if normalize else t).strip() for t in texts]
    lines = [t for t in lines if t]
    if not lines:
        raise TokenizerError("no text to train the tokenizer on")
    out = Path(out)
    path = out / TOKENIZER_FILE if (out.is_dir() or out.suffix != ".model") else out
    buf = io.BytesIO()
    spm.SentencePieceTrainer.Train(
        sentence_iterator=iter(lines), model_writer=buf, vocab_size=vocab_size,
        model_type=model_type, character_coverage=1.0, hard_vocab_limit=False,
        unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1, num_threads=1,
        minloglevel=2, input_sentence_size=2_000_000, shuffle_input_sentence=True)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())
    tok = TextTokenizer(path)
    if tok.vocab_size < vocab_size:
        log.warning("tokenizer: corpus supports %d pieces (asked for %d)", tok.vocab_size,
                    vocab_size)
    log.info("tokenizer: %d pieces from %d sentences -> %s", tok.vocab_size, len(lines), path)
    return tok


def main(argv: list[str] | None = None) -> int:
    """``flexicodec-lm train-tokenizer --data CORPUS --out DIR --vocab-size N``."""
    import argparse

    p = argparse.ArgumentParser(prog="flexicodec-lm train-tokenizer",
                                description="Train the LM's sentencepiece text tokenizer on "
                                            "the normalized text of a corpus (train split).")
    p.add_argument("--data", required=True, help="corpus directory (any data.loaders layout)")
    p.add_argument("-o", "--out", required=True, help="output directory (or .model path)")
    p.add_argument("--vocab-size", type=int, default=2000)
    p.add_argument("--model-type", choices=["unigram", "bpe"], default="unigram")
    p.add_argument("--split", default="train", help="corpus split ('all' for every split)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    from flexicodec.data.loaders import load_corpus

    ds = load_corpus(a.data, split=None if a.split == "all" else a.split)
    tok = train_text_tokenizer(ds["text"], a.out, a.vocab_size, a.model_type,
                               normalize=True)
    print(f"wrote {tok.path} ({tok.vocab_size} pieces)")
    return 0
