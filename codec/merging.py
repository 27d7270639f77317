"""The frame-merging rule of FlexiCodec, all in one place.

Frames are the 12.5 Hz base frames. For each frame ``t >= 1`` we take the cosine similarity of
its semantic feature with frame ``t - 1``. Reading left to right, frame ``t`` *joins the group
of frame t-1* when ``sim[t] >= threshold`` and that group has fewer than ``max_group`` frames;
otherwise it starts a new group. A threshold ``>= 1.0`` means no merging at all (12.5 Hz),
even for bit-identical frames. Each group becomes one token; ``token_lengths`` holds the frames
per token (0 on padding tokens) and sums to the frame count of each utterance.

Three ways to choose the groups:
- ``threshold`` (float or per-utterance [B]): the rule above;
- ``frame_rate`` (target Hz): per utterance, the threshold is searched (token count is
  monotone in it) over the utterance's own similarity values, by bisection, to land nearest
  the target average rate;
- ``fixed_group=k``: every ``k`` frames form one token, regardless of content (the fixed-rate
  baseline; k=2 → 6.25 Hz).

:class:`GroupAggregator` pools the frames of each group into one vector: a query-token
attention whose query starts at zero, so the softmax is uniform and it starts as exact mean
pooling. All pooling and expansion are vectorised (scatter / gather); only the grouping is a
loop over frames (T is small at 12.5 Hz), vectorised over the batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from flexicodec.common.constants import BASE_FRAME_RATE


@dataclass
class Merge:
    """A grouping of frames into tokens.

    group_index [B, T]: token index of each frame; padding frames point at ``T'`` (a dummy).
    token_lengths [B, T'] (long): frames per token, 0 on padding tokens.
    token_mask [B, T'] bool, frame_mask [B, T] bool.
    threshold [B] float: threshold used (``inf`` in fixed-group mode, 1.0 for no merging).
    """

    group_index: torch.Tensor
    token_lengths: torch.Tensor
    token_mask: torch.Tensor
    frame_mask: torch.Tensor
    threshold: torch.Tensor

    @property
    def num_tokens(self) -> torch.Tensor:
        """[B] tokens per utterance."""
        return self.token_mask.sum(1)

    @property
    def num_frames(self) -> torch.Tensor:
        """[B] frames per utterance."""
        return self.frame_mask.sum(1)

    def frame_rate(self, base_rate: float = BASE_FRAME_RATE) -> torch.Tensor:
        """[B] achieved average token rate in Hz (tokens / seconds of frames)."""
        return self.num_tokens.float() * base_rate / self.num_frames.clamp(min=1).float()

    def pad_tokens(self, num_tokens: int) -> "Merge":
        """The same grouping with the token axis padded to ``num_tokens`` (>= T') by padding
        tokens (length 0, masked), so a batch's token tensors have a shape that does not
        depend on its content (e.g. ``num_tokens`` = T frames). Padding frames point at the
        new dummy index ``num_tokens``."""
        Tp = self.token_lengths.shape[1]
        if num_tokens < Tp:
            raise ValueError(f"cannot pad {Tp} tokens to {num_tokens}")
        if num_tokens == Tp:
            return self
        extra = num_tokens - Tp
        gid = torch.where(self.group_index >= Tp, torch.full_like(self.group_index, num_tokens),
                          self.group_index)
        lengths = nn.functional.pad(self.token_lengths, (0, extra))
        return Merge(gid, lengths, lengths > 0, self.frame_mask, self.threshold)


def frame_similarity(feats: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of adjacent frames. feats [B, T, D] → sim [B, T] with sim[:, 0] = -inf
    (the first frame always starts a group)."""
    f = nn.functional.normalize(feats.float(), dim=-1, eps=1e-8)
    sim = (f[:, 1:] * f[:, :-1]).sum(-1)
    first = torch.full((sim.shape[0], 1), -math.inf, device=sim.device, dtype=sim.dtype)
    return torch.cat([first, sim], dim=1)


def _boundaries(sim: torch.Tensor, frame_mask: torch.Tensor, threshold: torch.Tensor,
                max_group: int) -> torch.Tensor:
    """new_group [B, T] bool: True where a frame starts a new group (False on padding)."""
    B, T = sim.shape
    join = (sim >= threshold[:, None]) & (threshold[:, None] < 1.0)
    join[:, 0] = False
    if max_group <= 1:
        return frame_mask.clone()
    join_c = join.cpu()  # the loop runs on CPU tensors: tiny ops, no per-step device syncs
    new_c = torch.zeros(B, T, dtype=torch.bool)
    count = torch.zeros(B, dtype=torch.long)
    for t in range(T):
        j = join_c[:, t] & (count < max_group)
        new_c[:, t] = ~j
        count = torch.where(j, count + 1, torch.ones_like(count))
    return new_c.to(sim.device) & frame_mask


def merge_from_boundaries(new_group: torch.Tensor, frame_mask: torch.Tensor,
                          threshold: torch.Tensor) -> Merge:
    """Build a :class:`Merge` from group starts new_group [B, T] (True at each group start)."""
    B, T = new_group.shape
    gid = torch.cumsum(new_group.long(), dim=1) - 1                       # [B, T]
    n_tok = new_group.sum(1)                                              # [B]
    t_max = max(int(n_tok.max()) if B else 0, 1)
    gid = torch.where(frame_mask, gid.clamp(min=0), torch.full_like(gid, t_max))
    lengths = torch.zeros(B, t_max + 1, dtype=torch.long, device=gid.device)
    lengths.scatter_add_(1, gid, frame_mask.long())
    lengths = lengths[:, :t_max]
    return Merge(gid, lengths, lengths > 0, frame_mask, threshold)


def merge_every_frame(frame_mask: torch.Tensor) -> Merge:
    """No merging (threshold 1.0, 12.5 Hz): every valid frame is its own token.

    Same result as :func:`merge_by_threshold` at 1.0, but built from the mask alone with
    static shapes (T' = T) and no host synchronisation, so a fixed-rate training step can run
    as one captured graph."""
    B, T = frame_mask.shape
    t = torch.arange(T, device=frame_mask.device)[None, :].expand(B, T)
    gid = torch.where(frame_mask, t, torch.full_like(t, T))
    thr = torch.ones(B, device=frame_mask.device)
    return Merge(gid, frame_mask.long(), frame_mask.clone(), frame_mask, thr)


def merge_by_threshold(sim: torch.Tensor, frame_mask: torch.Tensor,
                       threshold: float | torch.Tensor, max_group: int) -> Merge:
    """Group frames by ``threshold`` (scalar or [B]). sim [B, T] from :func:`frame_similarity`."""
    if isinstance(threshold, (int, float)) and threshold >= 1.0:
        return merge_every_frame(frame_mask)
    B = sim.shape[0]
    thr = torch.as_tensor(threshold, dtype=torch.float32, device=sim.device)
    thr = thr.expand(B).clone() if thr.dim() == 0 else thr.float()
    if thr.shape != (B,):
        raise ValueError(f"threshold must be a scalar or [B]={B}, got {tuple(thr.shape)}")
    if torch.isnan(thr).any():
        raise ValueError("merging threshold is NaN")
    return merge_from_boundaries(_boundaries(sim, frame_mask, thr, max_group), frame_mask, thr)


def merge_fixed(frame_mask: torch.Tensor, group: int) -> Merge:
    """Every ``group`` frames form one token (the last group of an utterance may be shorter)."""
    if group < 1:
        raise ValueError(f"fixed group size must be >= 1, got {group}")
    B, T = frame_mask.shape
    t = torch.arange(T, device=frame_mask.device)
    new = ((t % group) == 0)[None, :].expand(B, T) & frame_mask
    thr = torch.full((B,), math.inf, device=frame_mask.device)
    return merge_from_boundaries(new, frame_mask, thr)


def merge_to_rate(sim: torch.Tensor, frame_mask: torch.Tensor, frame_rate: float,
                  max_group: int, base_rate: float = BASE_FRAME_RATE) -> Merge:
    """Per utterance, the threshold whose token rate is nearest ``frame_rate`` (Hz).

    Token count is non-decreasing in the threshold and only changes at the utterance's own
    similarity values, so we bisect over those sorted values (vectorised over the batch,
    ~log2(T) grouping passes). Ties go to the higher rate. ``frame_rate >= base_rate`` gives
    no merging (threshold 1.0).
    """
    if not frame_rate > 0:
        raise ValueError(f"target frame rate must be > 0 Hz, got {frame_rate}")
    B, T = sim.shape
    dev = sim.device
    if frame_rate >= base_rate:
        return merge_by_threshold(sim, frame_mask, 1.0, max_group)
    n_frames = frame_mask.sum(1)
    target = n_frames.float() * frame_rate / base_rate                    # [B] tokens
    # candidate thresholds: sorted similarity values (valid frames t >= 1), then 1.0 (= none)
    valid = frame_mask.clone()
    valid[:, 0] = False
    cand = torch.where(valid, sim.float().clamp(max=1.0 - 1e-7), torch.full_like(sim, 2.0))
    cand, _ = torch.sort(cand, dim=1)
    n_cand = valid.sum(1)                                                 # [B]
    cand = torch.cat([cand, torch.full((B, 1), 2.0, device=dev)], dim=1)
    cand.scatter_(1, n_cand[:, None], torch.ones(B, 1, device=dev))       # index n_cand → 1.0

    def tokens_at(idx: torch.Tensor) -> torch.Tensor:
        thr = cand.gather(1, idx[:, None])[:, 0]
        return merge_by_threshold(sim, frame_mask, thr, max_group).num_tokens.float()

    # smallest index whose token count >= target (exists: index n_cand gives T tokens)
    lo = torch.zeros(B, dtype=torch.long, device=dev)
    hi = n_cand.clone()
    for _ in range(max(1, math.ceil(math.log2(T + 2))) + 1):
        mid = (lo + hi) // 2
        ok = tokens_at(mid) >= target
        hi = torch.where(ok, mid, hi)
        lo = torch.where(ok, lo, mid + 1)
        lo = torch.minimum(lo, hi)
    above = hi
    below = (hi - 1).clamp(min=0)
    n_above, n_below = tokens_at(above), tokens_at(below)
    pick = torch.where((target - n_below).abs() < (n_above - target).abs(), below, above)
    thr = cand.gather(1, pick[:, None])[:, 0]
    return merge_by_threshold(sim, frame_mask, thr, max_group)


def _stack_similarities(sims: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-utterance sims [T_i] → (sim [N, T] padded with -inf, mask [N, T])."""
    T = max(int(x.shape[0]) for x in sims)
    sim = torch.full((len(sims), T), -math.inf)
    mask = torch.zeros(len(sims), T, dtype=torch.bool)
    for i, x in enumerate(sims):
        sim[i, : x.shape[0]] = x.float().cpu()
        mask[i, : x.shape[0]] = True
    return sim, mask


def _pooled_rate(sim: torch.Tensor, mask: torch.Tensor, threshold: float, max_group: int,
                 base_rate: float) -> float:
    m = merge_by_threshold(sim, mask, threshold, max_group)
    return float(m.num_tokens.sum()) * base_rate / max(1, int(mask.sum()))


def pooled_rate(sims: list[torch.Tensor], threshold: float, max_group: int,
                base_rate: float = BASE_FRAME_RATE) -> float:
    """Average token rate (Hz, tokens / frames pooled over utterances) of one global
    ``threshold`` on per-utterance sims [T_i] from :func:`frame_similarity`."""
    if not sims:
        raise ValueError("pooled_rate needs at least one utterance")
    sim, mask = _stack_similarities(sims)
    return _pooled_rate(sim, mask, threshold, max_group, base_rate)


def calibrate_threshold(sims: list[torch.Tensor], frame_rate: float, max_group: int,
                        base_rate: float = BASE_FRAME_RATE, iters: int = 40) -> float:
    """One global threshold whose pooled average rate over many utterances is nearest
    ``frame_rate`` (Hz). sims: per-utterance [T] from :func:`frame_similarity` (first value
    -inf). Bisection on the threshold (the pooled token count is monotone in it)."""
    if not sims:
        raise ValueError("calibrate_threshold needs at least one utterance")
    if not 0 < frame_rate <= base_rate:
        raise ValueError(f"frame_rate must be in (0, {base_rate}] Hz, got {frame_rate}")
    sim, mask = _stack_similarities(sims)

    def rate(thr: float) -> float:
        return _pooled_rate(sim, mask, thr, max_group, base_rate)

    lo, hi = -1.0, 1.0 - 1e-7           # rate(lo) is the lowest reachable, rate(1.0) = base
    if rate(lo) >= frame_rate:
        return lo
    for _ in range(iters):
        mid = (lo + hi) / 2
        if rate(mid) >= frame_rate:
            hi = mid
        else:
            lo = mid
    return hi if abs(rate(hi) - frame_rate) <= abs(rate(lo) - frame_rate) else lo


def group_index_from_lengths(token_lengths: torch.Tensor, num_frames: int | None = None
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """token_lengths [B, T'] → (group_index [B, T] with padding → T', frame_mask [B, T])."""
    ends = torch.cumsum(token_lengths.long(), dim=1)                       # [B, T']
    total = ends[:, -1] if ends.shape[1] else torch.zeros_like(ends[:, 0])
    T = int(total.max()) if num_frames is None else num_frames
    t = torch.arange(T, device=token_lengths.device)[None, :].expand(ends.shape[0], T)
    gid = torch.searchsorted(ends.contiguous(), t.contiguous(), right=True)
    frame_mask = t < total[:, None]
    gid = torch.where(frame_mask, gid, torch.full_like(gid, token_lengths.shape[1]))
    return gid, frame_mask


def merge_from_lengths(token_lengths: torch.Tensor, num_frames: int | None = None) -> Merge:
    """Rebuild a :class:`Merge` from token_lengths [B, T'] (e.g. read from codes)."""
    lengths = token_lengths.long()
    gid, frame_mask = group_index_from_lengths(lengths, num_frames)
    thr = torch.full((lengths.shape[0],), math.nan, device=lengths.device)
    return Merge(gid, lengths, lengths > 0, frame_mask, thr)


def expand_tokens(tokens: torch.Tensor, merge: Merge) -> torch.Tensor:
    """Repeat each token by its length: tokens [B, T', D] → frames [B, T, D] (0 on padding)."""
    B, Tp, D = tokens.shape
    padded = torch.cat([tokens, tokens.new_zeros(B, 1, D)], dim=1)
    idx = merge.group_index.clamp(max=Tp)[..., None].expand(-1, -1, D)
    return padded.gather(1, idx)


def position_in_group(merge: Merge) -> tuple[torch.Tensor, torch.Tensor]:
    """(position of each frame in its group [B, T], its group's length [B, T]); 0 on padding."""
    lengths = merge.token_lengths
    starts = torch.cumsum(lengths, 1) - lengths                            # [B, T']
    pad = lengths.new_zeros(lengths.shape[0], 1)
    gid = merge.group_index
    start_f = torch.cat([starts, pad], 1).gather(1, gid)
    len_f = torch.cat([lengths, pad], 1).gather(1, gid)
    t = torch.arange(gid.shape[1], device=gid.device)[None, :]
    pos = torch.where(merge.frame_mask, t - start_f, torch.zeros_like(gid))
    return pos, len_f


class GroupAggregator(nn.Module):
    """Query-token attention pooling of each group: frames [B, T, D] → tokens [B, T', D].

    score_t = q · LayerNorm(W x_t) / sqrt(D); weights are a softmax within the group; the
    pooled value is the weighted mean of the frames themselves. ``q`` starts at zero, so the
    aggregator starts as exact mean pooling.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.key = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.query = nn.Parameter(torch.zeros(dim))
        self.scale = dim ** -0.5

    def forward(self, x: torch.Tensor, merge: Merge) -> torch.Tensor:
        B, T, D = x.shape
        Tp = merge.token_lengths.shape[1]
        gid = merge.group_index                                            # [B, T], pad → Tp
        score = (self.norm(self.key(x)) * self.query).sum(-1).float() * self.scale  # [B, T]
        score = score.masked_fill(~merge.frame_mask, -1e4)
        gmax = torch.full((B, Tp + 1), -1e4, device=x.device, dtype=score.dtype)
        gmax = gmax.scatter_reduce(1, gid, score, reduce="amax", include_self=True)
        e = torch.exp(score - gmax.gather(1, gid)) * merge.frame_mask.float()
        denom = torch.zeros(B, Tp + 1, device=x.device, dtype=e.dtype).scatter_add(1, gid, e)
        w = (e / denom.gather(1, gid).clamp(min=1e-12)).to(x.dtype)        # [B, T]
        out = torch.zeros(B, Tp + 1, D, device=x.device, dtype=x.dtype)
        out = out.scatter_add(1, gid[..., None].expand(-1, -1, D), x * w[..., None])
        return out[:, :Tp]
