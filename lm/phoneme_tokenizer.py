"""Phoneme input of the speech LM: text → ``normalize_text`` → espeak-ng phoneme tokens → ids.

The tokens are :func:`flexicodec.data.text.phoneme_tokens`' (phonemes, stress marks, the word boundary
``" "``, the punctuation ``. , ? !``), so the corpus builder, the tokenizer of a corpus
(``flexicodec-lm tokenize`` stores them as the ``phonemes`` column) and inference all go
through one normaliser and one espeak-ng call.

The vocabulary is every token of the training text, sorted, after ``<unk>`` (id 0), stored
as ``phoneme_vocab.json`` beside the LM (``{"format": 1, "voice": "en-us", "symbols": [...]}``),
so a trained LM is self-describing. A token outside the vocabulary (a symbol espeak-ng
produced only for unseen text) is encoded as ``<unk>`` with a warning that names it — the
documented fallback; text with no phonemes at all raises :class:`TokenizerError`.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Iterable, Sequence

from flexicodec.common.atomic import atomic_write_text
from flexicodec.lm.text_tokenizer import TokenizerError

log = logging.getLogger(__name__)
VOCAB_FILE = "phoneme_vocab.json"
UNK = "<unk>"
VOCAB_FORMAT = 1
DEFAULT_VOICE = "en-us"


def text_to_phonemes(texts: Sequence[str], voice: str = DEFAULT_VOICE,
                     normalize: bool = True) -> list[list[str]]:
    """Phoneme tokens of each text (``normalize_text`` first unless ``normalize=False``);
    one espeak-ng call for all. ``[]`` for a text without speakable characters."""
    from flexicodec.data.text import normalize_text, phoneme_tokens

    if isinstance(texts, str):
        raise TypeError("text_to_phonemes expects a list of strings")
    norm = [normalize_text(t) if normalize else t for t in texts]
    return phoneme_tokens(norm, voice)


class PhonemeTokenizer:
    """A loaded phoneme vocabulary. ``encode(text)`` normalises, phonemises and maps to ids
    in ``[0, vocab_size)``."""

    text_input = "phoneme"

    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        if path.is_dir():
            path = path / VOCAB_FILE
        if not path.is_file():
            raise TokenizerError(f"{path}: no phoneme vocabulary")
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
            symbols = list(meta["symbols"])
            voice = str(meta["voice"])
            fmt = int(meta["format"])
        except (ValueError, KeyError, TypeError) as exc:
            raise TokenizerError(f"{path}: not a phoneme vocabulary ({exc})") from exc
        if fmt > VOCAB_FORMAT:
            raise TokenizerError(f"{path}: phoneme vocabulary format {fmt} is newer than this "
                                 f"code understands ({VOCAB_FORMAT})")
        if not symbols or symbols[0] != UNK or len(set(symbols)) != len(symbols):
            raise TokenizerError(f"{path}: symbols must start with {UNK!r} and be unique")
        self.path = path
        self.voice = voice
        self.symbols = symbols
        self._index = {s: i for i, s in enumerate(symbols)}
        self._warned: set[str] = set()

    @classmethod
    def build(cls, sequences: Iterable[Sequence[str]], out: str | os.PathLike,
              voice: str = DEFAULT_VOICE) -> "PhonemeTokenizer":
        """Vocabulary of every token in ``sequences`` (phoneme token lists), written
        atomically to ``out`` (a directory → ``out/phoneme_vocab.json``, else the file)."""
        seen = {tok for seq in sequences for tok in seq}
        if not seen:
            raise TokenizerError("no phonemes to build the phoneme vocabulary from")
        seen.discard(UNK)
        out = Path(out)
        path = out / VOCAB_FILE if (out.is_dir() or out.suffix != ".json") else out
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"format": VOCAB_FORMAT, "voice": voice, "symbols": [UNK, *sorted(seen)]}
        atomic_write_text(path, json.dumps(meta, ensure_ascii=False, indent=1))
        tok = cls(path)
        log.info("phoneme vocabulary: %d symbols -> %s", tok.vocab_size, path)
        return tok

    @property
    def vocab_size(self) -> int:
        return len(self.symbols)

    def ids(self, tokens: Sequence[str]) -> list[int]:
        """Phoneme tokens [n] → ids [n]; unknown tokens → ``<unk>`` (0), warned once each."""
        out = []
        for t in tokens:
            i = self._index.get(t)
            if i is None:
                if t not in self._warned:
                    self._warned.add(t)
                    log.warning("phoneme %r is not in the LM's phoneme vocabulary (%s): "
                                "encoded as %s", t, self.path, UNK)
                i = 0
            out.append(i)
        return out

    def encode_batch(self, texts: Sequence[str], normalize: bool = True) -> list[list[int]]:
        """Ids of each text, one espeak-ng call. Raises TokenizerError naming the first text
        that has no phonemes."""
        for t in texts:
            if not isinstance(t, str):
                raise TokenizerError(f"expected a string, got {type(t).__name__}")
        seqs = text_to_phonemes(list(texts), self.voice, normalize)
        for t, s in zip(texts, seqs):
            if not s:
                raise TokenizerError(f"text {t!r} has no phonemes after normalization")
        return [self.ids(s) for s in seqs]

    def encode(self, text: str, normalize: bool = True) -> list[int]:
        """Text → phoneme ids [n] (normalised first unless ``normalize=False``)."""
        return self.encode_batch([text], normalize)[0]

    def decode(self, ids: Iterable[int]) -> str:
        """Ids → the phoneme string (tokens joined; ``" "`` marks word boundaries)."""
        return "".join(self.symbols[int(i)] for i in ids)
