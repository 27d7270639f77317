"""The speech LM's one vocabulary: specials, text pieces, semantic tokens, lengths, rates.

Id ranges (contiguous, in this order)::

    [0, n_special)                       special tokens (SPECIALS below)
    [text_offset, + num_text)            sentencepiece pieces (piece id p -> text_offset + p)
    [semantic_offset, + semantic_size)   codec FSQ semantic codes (code c -> semantic_offset + c)
    [length_offset, + max_group)         token lengths 1..max_group (L -> length_offset + L - 1)
    [rate_offset, + len(frame_rates))    frame-rate condition buckets (Hz)

Length tokens are never predicted by the LM head; their embeddings are the "length embedding"
added to the next input (see docs/LM.md). Rate tokens condition the LM on the frame rate.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from flexicodec.common.constants import BASE_FRAME_RATE

SPECIALS = ("<pad>", "<bos>", "<eos>", "<text>", "<speech>", "</speech>", "<unused0>",
            "<unused1>")
PAD, BOS, EOS, TEXT_START, SPEECH_START, SPEECH_END = range(6)

#: default rate buckets (Hz): 12.5 Hz base rate and the merged rates the paper reports
DEFAULT_FRAME_RATES = (BASE_FRAME_RATE, 8.33, 6.25, 5.0, 4.0, 3.0)

# token types (values of LMVocab.token_types())
TYPE_SPECIAL, TYPE_TEXT, TYPE_SEMANTIC, TYPE_LENGTH, TYPE_RATE = range(5)


class VocabError(ValueError):
    """An id or value outside the vocabulary's ranges."""


@dataclass
class LMVocab:
    """Layout of the id space. ``num_text``: sentencepiece vocab size; ``semantic_size``: the
    codec's FSQ codebook size; ``max_group``: the codec's largest group (frames per token)."""

    num_text: int
    semantic_size: int
    max_group: int = 8
    frame_rates: tuple[float, ...] = field(default_factory=lambda: DEFAULT_FRAME_RATES)

    def __post_init__(self) -> None:
        self.frame_rates = tuple(float(r) for r in self.frame_rates)
        if self.num_text < 1 or self.semantic_size < 1 or self.max_group < 1:
            raise VocabError(f"invalid vocabulary sizes: num_text={self.num_text}, "
                             f"semantic_size={self.semantic_size}, max_group={self.max_group}")
        if not self.frame_rates or any(r <= 0 for r in self.frame_rates):
            raise VocabError(f"frame_rates must be positive, got {self.frame_rates}")

    # ---- ranges
    @property
    def n_special(self) -> int:
        return len(SPECIALS)

    @property
    def text_offset(self) -> int:
        return self.n_special

    @property
    def semantic_offset(self) -> int:
        return self.text_offset + self.num_text

    @property
    def length_offset(self) -> int:
        return self.semantic_offset + self.semantic_size

    @property
    def rate_offset(self) -> int:
        return self.length_offset + self.max_group

    @property
    def size(self) -> int:
        return self.rate_offset + len(self.frame_rates)

    # ---- value -> id
    def text_ids(self, pieces: torch.Tensor | list[int]) -> torch.Tensor:
        """Sentencepiece ids [N] -> vocabulary ids [N]."""
        p = torch.as_tensor(pieces, dtype=torch.long)
        if p.numel() and (p.min() < 0 or p.max() >= self.num_text):
            raise VocabError(f"text piece id out of range [0, {self.num_text})")
        return p + self.text_offset

    def semantic_ids(self, codes: torch.Tensor | list[int]) -> torch.Tensor:
        """Codec semantic codes [T'] -> vocabulary ids [T']."""
        c = torch.as_tensor(codes, dtype=torch.long)
        if c.numel() and (c.min() < 0 or c.max() >= self.semantic_size):
            raise VocabError(f"semantic code out of range [0, {self.semantic_size}) "
                             f"(got {int(c.min())}..{int(c.max())}); wrong codec?")
        return c + self.semantic_offset

    def length_ids(self, lengths: torch.Tensor | list[int]) -> torch.Tensor:
        """Token lengths [T'] in 1..max_group -> vocabulary ids [T']."""
        n = torch.as_tensor(lengths, dtype=torch.long)
        if n.numel() and (n.min() < 1 or n.max() > self.max_group):
            raise VocabError(f"token length out of range 1..{self.max_group} "
                             f"(got {int(n.min())}..{int(n.max())})")
        return n - 1 + self.length_offset

    def rate_bucket(self, frame_rate: float) -> int:
        """Index of the bucket nearest to ``frame_rate`` (Hz)."""
        if not frame_rate > 0:
            raise VocabError(f"frame rate must be positive, got {frame_rate}")
        return min(range(len(self.frame_rates)),
                   key=lambda i: abs(self.frame_rates[i] - float(frame_rate)))

    def rate_id(self, frame_rate: float) -> int:
        return self.rate_offset + self.rate_bucket(frame_rate)

    # ---- id -> value
    def to_text(self, ids: torch.Tensor) -> torch.Tensor:
        return self._back(ids, self.text_offset, self.num_text, "text")

    def to_semantic(self, ids: torch.Tensor) -> torch.Tensor:
        return self._back(ids, self.semantic_offset, self.semantic_size, "semantic")

    def _back(self, ids: torch.Tensor, offset: int, n: int, what: str) -> torch.Tensor:
        ids = torch.as_tensor(ids, dtype=torch.long)
        v = ids - offset
        if v.numel() and (v.min() < 0 or v.max() >= n):
            raise VocabError(f"ids are not all {what} tokens")
        return v

    def token_types(self) -> torch.Tensor:
        """Type of every id [size] (TYPE_* constants)."""
        t = torch.full((self.size,), TYPE_SPECIAL, dtype=torch.long)
        t[self.text_offset:self.semantic_offset] = TYPE_TEXT
        t[self.semantic_offset:self.length_offset] = TYPE_SEMANTIC
        t[self.length_offset:self.rate_offset] = TYPE_LENGTH
        t[self.rate_offset:] = TYPE_RATE
        return t

    def speech_mask(self) -> torch.Tensor:
        """Bool [size]: ids allowed in the speech part (semantic tokens and </speech>)."""
        m = torch.zeros(self.size, dtype=torch.bool)
        m[self.semantic_offset:self.length_offset] = True
        m[SPEECH_END] = True
        return m

    def to_dict(self) -> dict:
        return {"num_text": self.num_text, "semantic_size": self.semantic_size,
                "max_group": self.max_group, "frame_rates": list(self.frame_rates)}
