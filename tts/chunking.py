"""Token-chunked synthesis of one sentence: the one code path of offline and streaming TTS.

A sentence's merged tokens (semantic code + length, from the LM) are cut into fixed chunks of
``chunk_tokens`` tokens. Chunk k = tokens [a, b) is turned into audio as soon as the LM has
produced token b + right_context - 1 (or the sentence ended):

1. acoustic stage on ``voice prompt + tokens [a - left_context, a) (known acoustic codes, as
   prompt) + tokens [a, b + right_context)`` (to predict); the codes of [a, b) are kept, the
   right-context predictions are only used as decoding context. Its random generator is
   seeded from (seed, sentence, chunk), so the result does not depend on timing.
2. codec decode of tokens [a - left_context, b + right_context) and the audio of [a, b)
   (plus half a crossfade on each side) is cut out on the 12.5 Hz frame grid
   (``sum(lengths) * hop`` samples per token span).
3. neighbouring chunks are joined by a linear crossfade of ``crossfade_ms`` centred on the
   boundary; the sentence gets a fade-in/fade-out of ``fade_ms``.

Offline synthesis runs exactly this loop over the whole token list, so the concatenation of
the streamed chunks equals the offline waveform sample for sample.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np
import torch


@dataclass
class ChunkConfig:
    chunk_tokens: int = 8
    left_context: int = 16
    right_context: int = 4
    crossfade_ms: float = 10.0
    fade_ms: float = 10.0

    def __post_init__(self):
        if self.chunk_tokens < 1 or self.left_context < 0 or self.right_context < 1:
            raise ValueError("chunk_tokens >= 1, left_context >= 0 and right_context >= 1 "
                             "are required")


@dataclass
class VoiceCodes:
    """Prompt of the acoustic stage: semantic [P], lengths [P], acoustic [C, P]: the RVQ codes
    [n_q, P] (masked stage) or the codec latent [D, P] (flow stage), channels first."""

    semantic: torch.Tensor
    lengths: torch.Tensor
    acoustic: torch.Tensor


def chunk_seed(seed: int, sentence: int, chunk: int) -> int:
    return (int(seed) * 1_000_003 + sentence * 10_007 + chunk) % (2**63 - 1)


def synthesize_chunks(tokens: Iterable[tuple[int, int]], *,
                      predict: Callable[[dict, int], torch.Tensor],
                      decode: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], np.ndarray],
                      hop: int, sample_rate: int, prompt: VoiceCodes | None,
                      cfg: ChunkConfig, seed: int, sentence: int) -> Iterator[np.ndarray]:
    """Yield float32 audio pieces of one sentence as ``tokens`` (code, length) arrive.

    ``predict(item, seed) -> acoustic [C, T]`` runs the acoustic stage on one
    :func:`flexicodec.tts.acoustic.build_batch` item; ``decode(semantic [T], acoustic [C, T],
    lengths [T]) -> audio [sum(lengths) * hop]``. ``acoustic`` is whatever the stage makes,
    channels first: RVQ codes [n_q, T] or the codec latent [D, T]; earlier chunks' output is
    the known context of later ones either way.
    """
    sem: list[int] = []
    lens: list[int] = []
    acoustic: list[torch.Tensor] = []   # [C, chunk] per finished chunk
    X = int(round(cfg.crossfade_ms * sample_rate / 1000)) // 2 * 2
    F = int(round(cfg.fade_ms * sample_rate / 1000))
    pending: np.ndarray | None = None   # tail held back for the crossfade
    first = True
    k = 0
    it = iter(tokens)
    done = False
    while True:
        a = k * cfg.chunk_tokens
        b = a + cfg.chunk_tokens
        while not done and len(sem) < b + cfg.right_context:
            try:
                c, n = next(it)
            except StopIteration:
                done = True
                break
            sem.append(int(c))
            lens.append(int(n))
        if a >= len(sem):
            break
        b = min(b, len(sem))
        r = min(len(sem), b + cfg.right_context)
        l0 = max(0, a - cfg.left_context)
        S = torch.tensor(sem, dtype=torch.long)
        L = torch.tensor(lens, dtype=torch.long)
        ctx_ac = torch.cat(acoustic, 1)[:, l0:a] if acoustic else None
        ps, pl, pa = [S[l0:a]], [L[l0:a]], [ctx_ac] if ctx_ac is not None else []
        if prompt is not None:
            ps.insert(0, prompt.semantic)
            pl.insert(0, prompt.lengths)
            pa.insert(0, prompt.acoustic)
        item = {"semantic": S[a:r], "lengths": L[a:r]}
        if sum(x.numel() for x in ps):
            item.update(prompt_semantic=torch.cat(ps), prompt_lengths=torch.cat(pl),
                        prompt_acoustic=torch.cat([p for p in pa if p.numel()], 1))
        pred = predict(item, chunk_seed(seed, sentence, k))  # [n_q, r - a]
        acoustic.append(pred[:, :b - a])
        ac_ctx = torch.cat([torch.cat(acoustic, 1)[:, l0:b], pred[:, b - a:]], 1)
        audio = decode(S[l0:r], ac_ctx, L[l0:r])
        start = int(L[l0:a].sum()) * hop
        end = int(L[l0:b].sum()) * hop
        last = done and b == len(sem)
        lo = start - X // 2 if a > 0 else start
        hi = end + X // 2 if not last else end
        piece = np.asarray(audio[lo:hi], dtype=np.float32).copy()
        if first and F:
            n = min(F, piece.size)
            piece[:n] *= np.linspace(0.0, 1.0, n, endpoint=False, dtype=np.float32) + 1.0 / n
        if pending is not None:  # crossfade the held tail with this chunk's head
            ramp = (np.arange(X, dtype=np.float32) + 0.5) / X
            piece[:X] = pending * (1.0 - ramp) + piece[:X] * ramp
        if last:
            if F:
                n = min(F, piece.size)
                piece[-n:] *= np.linspace(1.0, 0.0, n, endpoint=False, dtype=np.float32)
            yield piece
            break
        pending = piece[-X:].copy() if X else None
        out = piece[:-X] if X else piece
        if out.size:
            yield out
        first = False
        k += 1
