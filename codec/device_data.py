"""A corpus split held on the training device, with the frozen semantic features precomputed.

Codec training reads random fixed-length crops. Reading them through a DataLoader (decode a
file, crop, collate, copy to the GPU) and running the frozen ASR on every batch costs more
than the codec step itself on a large GPU. :class:`DeviceCorpus` instead keeps

- every usable utterance's audio as one int16 buffer on the device (each utterance zero-padded
  to whole 12.5 Hz frames: 24 h of 16 kHz audio is ~2.8 GB), and
- the frozen semantic model's features on the 12.5 Hz frame grid, computed once per corpus
  and semantic model (:meth:`FlexiCodec.semantic_targets` of the whole utterance, the same
  features ``encode`` uses) as one bf16 buffer,

and draws a batch of crops by index arithmetic on the device: no host work, no copies.

Crops start on the frame grid (as encoding does: frames are counted from the start of an
utterance) and are drawn uniformly over all crop positions of the corpus, so every second of
audio is equally likely. Only utterances at least one crop long are used, so every crop is
full (``wav_lengths=None`` in :meth:`FlexiCodec.forward`: static shapes).

The features and audio are cached in ``cache_dir`` (keyed by the utterance list and the
semantic model's identity), so later runs on the same machine load them in seconds.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from flexicodec.common.constants import SAMPLE_RATE

CACHE_VERSION = 1


@dataclass
class DeviceCorpus:
    """audio int16 [S] (utterance i at ``frame_offsets[i] * hop`` .. + ``num_frames[i] * hop``);
    targets [N, Dsem] bf16 (utterance i's frames at ``frame_offsets[i]`` ..); num_frames [U]
    long; frame_offsets [U] long; all on one device. ``hop``: samples per frame."""

    audio: torch.Tensor
    targets: torch.Tensor
    num_frames: torch.Tensor
    frame_offsets: torch.Tensor
    hop: int

    @property
    def num_utterances(self) -> int:
        return int(self.num_frames.numel())

    @property
    def hours(self) -> float:
        return float(self.num_frames.sum()) * self.hop / SAMPLE_RATE / 3600

    def to(self, device) -> "DeviceCorpus":
        return DeviceCorpus(self.audio.to(device), self.targets.to(device),
                            self.num_frames.to(device), self.frame_offsets.to(device), self.hop)

    def crop_sampler(self, crop_frames: int) -> "CropSampler":
        return CropSampler(self, crop_frames)


class CropSampler:
    """Uniform random crops of ``crop_frames`` frames from a :class:`DeviceCorpus`.

    ``sample(batch, generator)`` → (wav float32 [B, crop_frames * hop] in [-1, 1],
    target bf16 [B, crop_frames, Dsem]). The generator lives on the corpus' device; seeding it
    per step (``seed``, ``step``) makes a resumed run draw the same crops."""

    def __init__(self, corpus: DeviceCorpus, crop_frames: int):
        if crop_frames < 1:
            raise ValueError(f"crop_frames must be >= 1, got {crop_frames}")
        self.corpus, self.crop_frames = corpus, int(crop_frames)
        starts = (corpus.num_frames - self.crop_frames + 1).clamp(min=0)      # [U] positions
        if int(starts.sum()) == 0:
            raise ValueError(f"no utterance is at least {crop_frames} frames "
                             f"({crop_frames * corpus.hop / SAMPLE_RATE:.2f} s) long")
        self.cum = torch.cumsum(starts, 0)                                    # [U]
        self.total = int(self.cum[-1])
        dev = corpus.audio.device
        self.sample_idx = torch.arange(self.crop_frames * corpus.hop, device=dev)
        self.frame_idx = torch.arange(self.crop_frames, device=dev)

    def sample(self, batch: int, generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.corpus
        dev = c.audio.device
        u = torch.randint(0, self.total, (batch,), device=dev, generator=generator)
        utt = torch.searchsorted(self.cum, u, right=True)                     # [B]
        before = torch.where(utt > 0, self.cum[(utt - 1).clamp(min=0)], torch.zeros_like(u))
        frame0 = c.frame_offsets[utt] + (u - before)                          # [B] global frame
        wav = c.audio[(frame0 * c.hop)[:, None] + self.sample_idx[None, :]]
        target = c.targets[frame0[:, None] + self.frame_idx[None, :]]
        return wav.float() / 32768.0, target


def _fingerprint(rows: list[tuple[str, float]], semantic_identity: str) -> str:
    h = hashlib.sha1(f"v{CACHE_VERSION}|{semantic_identity}".encode())
    for path, dur in rows:
        h.update(f"{path}|{dur:.4f}\n".encode())
    return h.hexdigest()[:16]


@torch.no_grad()
def build_device_corpus(model, data: str, split: str, device, min_frames: int,
                        cache_dir: str | Path | None = None, batch_seconds: float = 600.0,
                        num_workers: int = 8, progress: bool = True,
                        max_utterances: int | None = None) -> DeviceCorpus:
    """Load ``split`` of corpus ``data`` (utterances of at least ``min_frames`` frames, the
    first ``max_utterances`` of them if given) onto ``device`` with ``model``'s frozen
    semantic features; cached in ``cache_dir``."""
    from flexicodec.common.pretrained import atomic_torch_save, state_dict_identity
    from flexicodec.data.loaders import AudioDataset, collate_audio, load_corpus

    hop = model.config.hop_size
    sr = model.config.sample_rate
    ds = load_corpus(data, split=split, sample_rate=sr, check="header")
    durs = [float(d) for d in ds["duration"]]
    keep = [i for i, d in enumerate(durs) if int(np.ceil(d * sr / hop)) >= min_frames]
    keep = keep[:max_utterances] if max_utterances else keep
    if not keep:
        raise ValueError(f"{data} ({split}): no utterance is at least {min_frames} frames "
                         f"({min_frames * hop / sr:.2f} s) long")
    ds = ds.select(keep)
    paths = [a if isinstance(a, str) else str(a.get("path")) for a in ds["audio"]]
    ident = state_dict_identity(model.semantic.state_dict())
    key = _fingerprint(list(zip(paths, [durs[i] for i in keep])), ident)
    cache = Path(cache_dir) / f"device_corpus_{split}_{key}.pt" if cache_dir else None
    if cache is not None and cache.is_file():
        t0 = time.monotonic()
        state = torch.load(cache, map_location="cpu", weights_only=True)
        corpus = DeviceCorpus(state["audio"], state["targets"], state["num_frames"],
                              state["frame_offsets"], hop).to(device)
        print(f"[device-data] {split}: {corpus.num_utterances} utterances, "
              f"{corpus.hours:.2f} h from cache {cache.name} in {time.monotonic() - t0:.1f} s")
        return corpus

    t0 = time.monotonic()
    dataset = AudioDataset(ds, sample_rate=sr, segment_samples=None, random_crop=False)
    # batches of similar length (fewer padded frames through the ASR)
    order = sorted(range(len(ds)), key=lambda i: durs[keep[i]])
    batches, cur, cur_s = [], [], 0.0
    for i in order:
        d = durs[keep[i]]
        if cur and (cur_s + d > batch_seconds or len(cur) >= 256):
            batches.append(cur)
            cur, cur_s = [], 0.0
        cur.append(i)
        cur_s += d
    if cur:
        batches.append(cur)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches,
                                         collate_fn=collate_audio, num_workers=num_workers)
    n_frames = np.zeros(len(ds), dtype=np.int64)
    audio_parts: dict[int, np.ndarray] = {}
    target_parts: dict[int, torch.Tensor] = {}
    was = model.training
    model.eval()
    for batch in tqdm(loader, total=len(batches), desc=f"device-data {split}",
                      disable=not progress):
        wav, lengths = batch["wav"], batch["wav_lengths"]
        nf = torch.div(lengths + hop - 1, hop, rounding_mode="floor")
        F_ = int(nf.max())
        padded = torch.nn.functional.pad(wav, (0, F_ * hop - wav.shape[1])).to(device)
        target = model.semantic_targets(padded, nf.to(device))                # [b, F, Dsem]
        target = target.to(torch.bfloat16).cpu()
        pcm = (wav.clamp(-1, 1) * 32767.0).round().to(torch.int16).numpy()
        for j, idx in enumerate(batch["index"].tolist()):
            k = int(nf[j])
            n_frames[idx] = k
            a = np.zeros(k * hop, dtype=np.int16)
            n = int(lengths[j])
            a[:n] = pcm[j, :n]
            audio_parts[idx] = a
            target_parts[idx] = target[j, :k].clone()
    model.train(was)
    offsets = np.concatenate([[0], np.cumsum(n_frames)[:-1]]).astype(np.int64)
    state = {"audio": torch.from_numpy(np.concatenate([audio_parts[i] for i in range(len(ds))])),
             "targets": torch.cat([target_parts[i] for i in range(len(ds))]),
             "num_frames": torch.from_numpy(n_frames), "frame_offsets": torch.from_numpy(offsets)}
    corpus = DeviceCorpus(state["audio"], state["targets"], state["num_frames"],
                          state["frame_offsets"], hop)
    print(f"[device-data] {split}: {corpus.num_utterances} utterances, {corpus.hours:.2f} h, "
          f"features {tuple(corpus.targets.shape)} in {time.monotonic() - t0:.1f} s")
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(state, cache)
        (cache.parent / f"{cache.stem}.json").write_text(json.dumps(
            {"data": str(data), "split": split, "utterances": corpus.num_utterances,
             "hours": corpus.hours, "semantic_identity": ident}, indent=1))
    return corpus.to(device)


__all__ = ["DeviceCorpus", "CropSampler", "build_device_corpus"]
