"""Sequence layout of the speech LM (see docs/LM.md).

One utterance is one sequence, one position per token::

    <bos> <rate_k> <text> t_1 .. t_n <speech> s_1 .. s_m </speech>

with four aligned per-position streams (all [L]):

- ``input_ids``: the tokens above.
- ``length_in``: the *previous* position's token length (1..max_group) where the previous
  token is a semantic token, else 0. The model adds the embedding of that length token to the
  input embedding, so the length of s_j is fed back at the position of s_{j+1} (or </speech>).
- ``labels``: next-token targets (``input_ids[p + 1]``) from the ``<text>`` position on,
  -100 elsewhere (the LM head is not trained to predict ``<bos>``/``<rate>``).
- ``length_labels``: at the position of s_j, the class ``L_j - 1`` (length head), else -100.

So position p of s_j produces both the next token s_{j+1} (LM head) and s_j's own length
(length head) in one forward step; the sequence length equals the token count.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from flexicodec.lm.vocab import (BOS, PAD, SPEECH_END, SPEECH_START, TEXT_START, TYPE_SEMANTIC, TYPE_TEXT,
                                 LMVocab, VocabError)

IGNORE = -100
#: index of the first speech-related token in the prefix: <bos> <rate> <text>
PREFIX_LEN = 3


@dataclass
class LayoutItem:
    """One laid-out sequence; all tensors [L] long."""

    input_ids: torch.Tensor
    length_in: torch.Tensor
    labels: torch.Tensor
    length_labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.input_ids.numel())


def build_sequence(vocab: LMVocab, text_pieces: list[int] | torch.Tensor, frame_rate: float,
                   codes: list[int] | torch.Tensor | None = None,
                   lengths: list[int] | torch.Tensor | None = None,
                   end: bool = True) -> LayoutItem:
    """Lay out one utterance.

    text_pieces [n] sentencepiece ids; codes [m] semantic codes; lengths [m] token lengths.
    ``end=False`` leaves the speech part open (a generation prompt: no </speech>; then the
    last code's length is not in the sequence — generation predicts it).
    """
    text = vocab.text_ids(text_pieces)
    if text.numel() == 0:
        raise VocabError("empty text: nothing to say")
    codes = torch.zeros(0, dtype=torch.long) if codes is None else torch.as_tensor(codes)
    lengths = torch.zeros(0, dtype=torch.long) if lengths is None else torch.as_tensor(lengths)
    codes, lengths = codes.long().reshape(-1), lengths.long().reshape(-1)
    if codes.numel() != lengths.numel():
        raise VocabError(f"{codes.numel()} semantic codes but {lengths.numel()} lengths")
    sem = vocab.semantic_ids(codes)
    vocab.length_ids(lengths)  # range check
    head = torch.tensor([BOS, vocab.rate_id(frame_rate), TEXT_START], dtype=torch.long)
    tail = torch.tensor([SPEECH_END] if end else [], dtype=torch.long)
    ids = torch.cat([head, text, torch.tensor([SPEECH_START]), sem, tail])
    L = ids.numel()
    s0 = PREFIX_LEN + text.numel() + 1  # position of s_1
    m = sem.numel()
    length_in = torch.zeros(L, dtype=torch.long)
    # s_j at position s0 + j - 1; its length goes into position s0 + j
    if end:
        length_in[s0 + 1:s0 + m + 1] = lengths
    else:
        length_in[s0 + 1:s0 + m] = lengths[:-1] if m else lengths
    labels = torch.full((L,), IGNORE, dtype=torch.long)
    labels[PREFIX_LEN - 1:L - 1] = ids[PREFIX_LEN:]
    length_labels = torch.full((L,), IGNORE, dtype=torch.long)
    length_labels[s0:s0 + m] = lengths - 1
    return LayoutItem(ids, length_in, labels, length_labels)


def parse_sequence(vocab: LMVocab, item: LayoutItem) -> dict:
    """Inverse of :func:`build_sequence` for a closed sequence.

    Returns ``{"text_pieces" [n], "codes" [m], "lengths" [m], "frame_rate" float}``.
    """
    ids = item.input_ids
    if ids.numel() < PREFIX_LEN + 2 or int(ids[0]) != BOS or int(ids[2]) != TEXT_START:
        raise VocabError("not a speech-LM sequence (expected <bos> <rate> <text> ...)")
    rate = vocab.frame_rates[int(ids[1]) - vocab.rate_offset]
    where = (ids == SPEECH_START).nonzero().flatten()
    if where.numel() != 1:
        raise VocabError("sequence needs exactly one <speech>")
    sp = int(where[0])
    ends = (ids == SPEECH_END).nonzero().flatten()
    if ends.numel() != 1 or int(ends[0]) != ids.numel() - 1:
        raise VocabError("sequence must end with one </speech>")
    text = vocab.to_text(ids[PREFIX_LEN:sp])
    codes = vocab.to_semantic(ids[sp + 1:-1])
    lengths = item.length_in[sp + 2:]
    return {"text_pieces": text, "codes": codes, "lengths": lengths.clone(), "frame_rate": rate}


def label_types(vocab: LMVocab, labels: torch.Tensor,
                token_types: torch.Tensor | None = None) -> torch.Tensor:
    """Loss group of each next-token label [..]: TYPE_TEXT for text pieces and <speech>
    (end of text), TYPE_SEMANTIC for semantic tokens and </speech>, -1 for ignored.
    ``token_types``: ``vocab.token_types()`` already on the labels' device."""
    types = (vocab.token_types() if token_types is None else token_types).to(labels.device)
    out = torch.full_like(labels, -1)
    valid = labels != IGNORE
    t = types[labels.clamp(min=0)]
    out[valid & ((t == TYPE_TEXT) | (labels == SPEECH_START))] = TYPE_TEXT
    out[valid & ((t == TYPE_SEMANTIC) | (labels == SPEECH_END))] = TYPE_SEMANTIC
    return out


def collate(items: list[LayoutItem], left_pad: bool = False) -> dict[str, torch.Tensor]:
    """Pad a batch: ``input_ids, length_in, labels, length_labels, attention_mask,
    position_ids`` all [B, L_max]. Right padding for training, left for generation."""
    if not items:
        raise ValueError("empty batch")
    L = max(len(it) for it in items)
    B = len(items)
    out = {"input_ids": torch.full((B, L), PAD, dtype=torch.long),
           "length_in": torch.zeros(B, L, dtype=torch.long),
           "labels": torch.full((B, L), IGNORE, dtype=torch.long),
           "length_labels": torch.full((B, L), IGNORE, dtype=torch.long),
           "attention_mask": torch.zeros(B, L, dtype=torch.long)}
    for b, it in enumerate(items):
        n = len(it)
        sl = slice(L - n, L) if left_pad else slice(0, n)
        out["input_ids"][b, sl] = it.input_ids
        out["length_in"][b, sl] = it.length_in
        out["labels"][b, sl] = it.labels
        out["length_labels"][b, sl] = it.length_labels
        out["attention_mask"][b, sl] = 1
    out["position_ids"] = (out["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    return out


def collate_packed(rows: list[list[LayoutItem]], row_length: int) -> dict[str, torch.Tensor]:
    """A packed batch: each row holds several sequences back to back, right-padded to
    ``row_length``. Returns ``input_ids, length_in, labels, length_labels, position_ids``
    all [R, row_length] and no ``attention_mask``: ``position_ids`` restart at 0 at every
    sequence (and at the padding), which is how the model keeps attention within each
    sequence (see lm.model.SpeechLM.forward). Labels never cross a sequence boundary, so the
    loss equals that of the same sequences collated one per row."""
    if not rows or any(not r for r in rows):
        raise ValueError("empty packed batch or row")
    R = len(rows)
    out = {"input_ids": torch.full((R, row_length), PAD, dtype=torch.long),
           "length_in": torch.zeros(R, row_length, dtype=torch.long),
           "labels": torch.full((R, row_length), IGNORE, dtype=torch.long),
           "length_labels": torch.full((R, row_length), IGNORE, dtype=torch.long),
           "position_ids": torch.zeros(R, row_length, dtype=torch.long)}
    for r, items in enumerate(rows):
        p = 0
        for it in items:
            n = len(it)
            if p + n > row_length:
                raise ValueError(f"row {r}: sequences of {sum(map(len, items))} positions do "
                                 f"not fit a packed row of {row_length}")
            sl = slice(p, p + n)
            out["input_ids"][r, sl] = it.input_ids
            out["length_in"][r, sl] = it.length_in
            out["labels"][r, sl] = it.labels
            out["length_labels"][r, sl] = it.length_labels
            out["position_ids"][r, sl] = torch.arange(n)
            p += n
        out["position_ids"][r, p:] = torch.arange(row_length - p)
    return out
