"""Generation with the KV cache: text (+ optional voice prompt) → semantic codes + lengths.

Each step feeds one token per item through the cached backbone. In the speech part only
semantic tokens and ``</speech>`` may come out (the vocabulary is masked); lengths come from
the length head's ``max_group`` classes, so they are always in 1..max_group. A batch is left
padded. :func:`stream_tokens` yields each (code, length) pair as soon as its length is known
(one step after the code), for streaming TTS.

Voice prompting: the sequence is ``<bos> <rate> <text> prompt_text target_text <speech>
prompt_codes`` and generation continues after the prompt's codes; only new tokens are
returned.

KV cache: a transformers DynamicCache by default; ``SamplingConfig(static_cache=True)`` uses
a StaticCache sized for the prompt + ``max_tokens``, rounded up to a multiple of
:data:`STATIC_CACHE_BUCKET` positions, with a preallocated attention mask, so every decoding
step has the same shapes — also across prompts of different lengths, so a compiled step is
reused instead of recompiled for each new prompt. ``compile=True`` then runs the one-token
steps through ``torch.compile`` (for CUDA; the prompt pass stays eager; ``compile_mode=
"reduce-overhead"`` adds CUDA graphs). All give the same tokens as the dynamic cache.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch

from flexicodec.lm.layout import LayoutItem, build_sequence, collate
from flexicodec.lm.model import SpeechLM, make_cache
from flexicodec.lm.vocab import PAD, SPEECH_END


@dataclass
class SamplingConfig:
    """Sampling settings. ``greedy`` takes the argmax token; ``length_temperature`` 0 takes
    the most likely length (default), > 0 samples lengths."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    greedy: bool = False
    length_temperature: float = 0.0
    max_tokens: int = 1000          # hard stop: at most this many new semantic tokens
    min_tokens: int = 1             # </speech> is banned before this many tokens
    seed: int | None = None
    static_cache: bool = False      # StaticCache + fixed-shape steps (see module docstring)
    compile: bool = False           # torch.compile the one-token steps (needs static_cache)
    compile_backend: str = "inductor"   # torch.compile backend ("eager": tracing only)
    compile_mode: str | None = None     # torch.compile mode, e.g. "reduce-overhead" (CUDA graphs)

    def __post_init__(self) -> None:
        if self.temperature <= 0 and not self.greedy:
            raise ValueError("temperature must be > 0 (or use greedy=True)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0 or self.repetition_penalty <= 0:
            raise ValueError("top_k must be >= 0 and repetition_penalty > 0")
        if self.max_tokens < 1 or self.min_tokens < 0:
            raise ValueError("max_tokens must be >= 1 and min_tokens >= 0")
        if self.compile and not self.static_cache:
            raise ValueError("compile=True needs static_cache=True (fixed shapes per step)")


#: StaticCache lengths are rounded up to a multiple of this many positions
STATIC_CACHE_BUCKET = 128


def static_cache_length(prompt_len: int, max_tokens: int) -> int:
    """Positions of the StaticCache for a prompt of ``prompt_len`` and ``max_tokens`` new
    tokens (+1 for ``</speech>``), rounded up to a multiple of :data:`STATIC_CACHE_BUCKET`."""
    need = prompt_len + max_tokens + 1
    return -(-need // STATIC_CACHE_BUCKET) * STATIC_CACHE_BUCKET


@dataclass
class VoicePrompt:
    """A reference utterance: its transcript's sentencepiece ids and its codec codes."""

    text_pieces: list[int]
    semantic_codes: torch.Tensor    # [k]
    token_lengths: torch.Tensor     # [k]


@dataclass
class GeneratedSpeech:
    semantic_codes: torch.Tensor    # [T'] long
    token_lengths: torch.Tensor     # [T'] long, 1..max_group
    frame_rate: float               # the rate bucket the LM was conditioned on
    truncated: bool = False         # hit max_tokens without </speech>
    num_frames: int = field(init=False)

    def __post_init__(self) -> None:
        self.num_frames = int(self.token_lengths.sum())


def _filter_logits(logits: torch.Tensor, s: SamplingConfig) -> torch.Tensor:
    """Temperature, top-k and top-p on logits [B, V] (masked entries are -inf)."""
    logits = logits / s.temperature
    if s.top_k > 0:
        k = min(s.top_k, logits.shape[-1])
        kth = torch.topk(logits, k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if s.top_p < 1.0:
        sorted_l, idx = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_l.softmax(-1)
        cum = probs.cumsum(-1)
        drop = cum - probs > s.top_p   # keep the smallest set reaching top_p (>= 1 token)
        sorted_l = sorted_l.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, idx, sorted_l)
    return logits


def _pick(logits: torch.Tensor, greedy: bool, gen: torch.Generator | None) -> torch.Tensor:
    if greedy:
        return logits.argmax(-1)
    probs = logits.float().softmax(-1)
    return torch.multinomial(probs, 1, generator=gen).squeeze(-1)


def _prompt_items(model: SpeechLM, texts: Sequence[Sequence[int]], frame_rate: float,
                  prompt: VoicePrompt | None) -> tuple[list[LayoutItem], torch.Tensor]:
    items, pending = [], []
    for pieces in texts:
        if prompt is None:
            items.append(build_sequence(model.vocab, list(pieces), frame_rate, end=False))
            pending.append(0)
        else:
            codes = torch.as_tensor(prompt.semantic_codes).long().reshape(-1)
            lens = torch.as_tensor(prompt.token_lengths).long().reshape(-1)
            items.append(build_sequence(model.vocab, list(prompt.text_pieces) + list(pieces),
                                        frame_rate, codes, lens, end=False))
            pending.append(int(lens[-1]) if lens.numel() else 0)
    return items, torch.tensor(pending, dtype=torch.long)


@torch.no_grad()
def _steps(model: SpeechLM, texts: Sequence[Sequence[int]], frame_rate: float,
           sampling: SamplingConfig, prompt: VoicePrompt | None
           ) -> Iterator[tuple[int, int, int]]:
    """Yield ``(item, code, length)`` for every completed token; returns truncated flags."""
    if not texts:
        raise ValueError("nothing to generate: empty text list")
    device = next(model.parameters()).device
    vocab = model.vocab
    items, pending = _prompt_items(model, texts, frame_rate, prompt)
    batch = {k: v.to(device) for k, v in collate(items, left_pad=True).items()}
    B = len(items)
    gen = None
    if sampling.seed is not None:
        gen = torch.Generator(device=device).manual_seed(sampling.seed)
    allowed = vocab.speech_mask().to(device)
    mask = batch["attention_mask"]
    L0 = mask.shape[1]
    step_fn = model
    if sampling.static_cache:
        # one mask of the cache's full length, filled in place: every step has one shape
        total = static_cache_length(L0, sampling.max_tokens)
        cache = make_cache(model.backbone.config, total)
        mask = torch.cat([mask, mask.new_zeros(B, total - L0)], 1)
        if sampling.compile:
            step_fn = _compiled_forward(model, sampling.compile_backend, sampling.compile_mode)
    else:
        cache = make_cache(model.backbone.config)
    pos = batch["position_ids"][:, -1]
    out = model(batch["input_ids"], batch["length_in"], mask, batch["position_ids"], cache)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    n_codes = torch.zeros(B, dtype=torch.long, device=device)
    last_code = torch.full((B,), -1, dtype=torch.long, device=device)
    seen = torch.zeros(B, vocab.size, dtype=torch.bool, device=device)
    feed_len = pending.to(device)
    for step in range(sampling.max_tokens + 1):
        if step > 0:
            ll = out.length_logits[:, -1]
            if sampling.length_temperature > 0:
                lens = _pick(ll / sampling.length_temperature, False, gen) + 1
            else:
                lens = ll.argmax(-1) + 1
            for b in range(B):
                if not finished[b]:
                    yield b, int(last_code[b]), int(lens[b])
            feed_len = lens
        logits = out.logits[:, -1].float().masked_fill(~allowed, float("-inf"))
        if sampling.repetition_penalty != 1.0:
            pen = torch.where(logits > 0, logits / sampling.repetition_penalty,
                              logits * sampling.repetition_penalty)
            logits = torch.where(seen, pen, logits)
        if step < sampling.min_tokens:
            logits[:, SPEECH_END] = float("-inf")
        if step == sampling.max_tokens:   # hard stop
            logits = torch.full_like(logits, float("-inf"))
            logits[:, SPEECH_END] = 0.0
        nxt = _pick(_filter_logits(logits, sampling), sampling.greedy, gen)
        ended = (nxt == SPEECH_END) & ~finished
        if step == sampling.max_tokens:
            truncated = ~finished
        finished = finished | ended
        if bool(finished.all()):
            break
        nxt = torch.where(finished, torch.full_like(nxt, PAD), nxt)
        last_code = torch.where(finished, last_code, nxt - vocab.semantic_offset)
        n_codes += (~finished).long()
        seen[torch.arange(B, device=device), nxt] |= ~finished
        if sampling.static_cache:
            mask[:, L0 + step] = 1
        else:
            mask = torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype, device=device)], 1)
        pos = pos + 1
        out = step_fn(nxt[:, None], feed_len[:, None] * (~finished)[:, None], mask,
                      pos[:, None], cache)
    else:  # pragma: no cover - the loop always breaks at max_tokens
        raise RuntimeError("generation loop did not stop")
    return (truncated if step == sampling.max_tokens else torch.zeros_like(finished)).tolist()


def _compiled_forward(model: SpeechLM, backend: str, mode: str | None = None):
    """``torch.compile`` of the model's forward for the one-token steps, made once per model,
    backend and mode (kept in the model's ``__dict__``: not a submodule, not in its state
    dict)."""
    cached = model.__dict__.get("_compiled_step")
    if cached is None or cached[0] != (backend, mode):
        kw = {"mode": mode} if mode else {}
        cached = ((backend, mode),
                  torch.compile(model.forward, backend=backend, dynamic=False, **kw))
        model.__dict__["_compiled_step"] = cached
    return cached[1]


def generate(model: SpeechLM, texts: Sequence[Sequence[int]], frame_rate: float,
             sampling: SamplingConfig | None = None,
             prompt: VoicePrompt | None = None) -> list[GeneratedSpeech]:
    """Batched generation. ``texts``: sentencepiece ids per item (see
    lm.text_tokenizer.TextTokenizer.encode). Returns one GeneratedSpeech per item."""
    sampling = sampling or SamplingConfig()
    codes: list[list[int]] = [[] for _ in texts]
    lens: list[list[int]] = [[] for _ in texts]
    it = _steps(model, texts, frame_rate, sampling, prompt)
    while True:
        try:
            b, c, n = next(it)
        except StopIteration as stop:
            truncated = stop.value
            break
        codes[b].append(c)
        lens[b].append(n)
    rate = model.vocab.frame_rates[model.vocab.rate_bucket(frame_rate)]
    return [GeneratedSpeech(torch.tensor(c, dtype=torch.long), torch.tensor(n, dtype=torch.long),
                            rate, bool(t)) for c, n, t in zip(codes, lens, truncated)]


def stream_tokens(model: SpeechLM, text: Sequence[int], frame_rate: float,
                  sampling: SamplingConfig | None = None,
                  prompt: VoicePrompt | None = None) -> Iterator[tuple[int, int]]:
    """Yield ``(semantic_code, token_length)`` pairs of one utterance as they are produced."""
    for _, c, n in _steps(model, [list(text)], frame_rate, sampling or SamplingConfig(), prompt):
        yield c, n
