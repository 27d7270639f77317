"""Shipped voice prompts: a few coded utterances per corpus speaker in the acoustic model dir.

``ACOUSTIC_DIR/speakers.json``::

    {"speakers": {NAME: [{"text", "frame_rate", "semantic_codes" [T'], "token_lengths" [T'],
                          "acoustic_codes" [n_q][T']}, ...]}}

so ``--speaker NAME`` works without a wav. One prompt per (utterance, frame rate) is stored
so the prompt can match the requested rate (:func:`pick_prompt`).
"""
from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from flexicodec.common.atomic import atomic_write_text
from flexicodec.common.constants import BASE_FRAME_RATE

SPEAKERS_NAME = "speakers.json"


@dataclass
class VoicePrompt:
    """A voice prompt as codes: semantic [T'], lengths [T'], acoustic [n_q, T'] (lists)."""

    text: str
    frame_rate: float
    semantic_codes: list
    token_lengths: list
    acoustic_codes: list

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (torch.tensor(self.semantic_codes, dtype=torch.long),
                torch.tensor(self.token_lengths, dtype=torch.long),
                torch.tensor(self.acoustic_codes, dtype=torch.long).reshape(
                    -1, len(self.semantic_codes)))

    @property
    def seconds(self) -> float:
        return sum(self.token_lengths) / BASE_FRAME_RATE


def build_speaker_table(ds, per_speaker: int = 3, min_seconds: float = 2.0,
                        max_seconds: float = 6.0, n_q: int | None = None) -> dict[str, list]:
    """Pick up to ``per_speaker`` utterances per speaker from a codes dataset (rows of every
    frame rate of a chosen utterance are kept). Prefers utterances of [min, max] seconds."""
    by_spk: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, (spk, uid, lens) in enumerate(zip(ds["speaker"], ds["id"], ds["token_lengths"])):
        if spk:
            by_spk[spk][uid].append(i)
    table: dict[str, list] = {}
    for spk in sorted(by_spk):
        utts = by_spk[spk]

        def score(uid):
            sec = sum(ds[utts[uid][0]]["token_lengths"]) / BASE_FRAME_RATE
            inside = min_seconds <= sec <= max_seconds
            return (not inside, abs(sec - (min_seconds + max_seconds) / 2), uid)

        chosen = sorted(utts, key=score)[:per_speaker]
        prompts = []
        for uid in chosen:
            for i in utts[uid]:
                row = ds[i]
                ac = row["acoustic_codes"][:n_q] if n_q else row["acoustic_codes"]
                prompts.append(asdict(VoicePrompt(row["text"], float(row["frame_rate"]),
                                                  list(row["semantic_codes"]),
                                                  list(row["token_lengths"]), list(ac))))
        table[spk] = prompts
    return table


def save_speakers(directory: str | os.PathLike, table: dict[str, list]) -> Path:
    path = Path(directory) / SPEAKERS_NAME
    atomic_write_text(path, json.dumps({"speakers": table}))
    return path


def load_speakers(directory: str | os.PathLike) -> dict[str, list[VoicePrompt]]:
    """Speaker name -> prompts; {} when the directory ships no speakers."""
    path = Path(directory) / SPEAKERS_NAME
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return {name: [VoicePrompt(**p) for p in prompts]
            for name, prompts in data.get("speakers", {}).items()}


def pick_prompt(prompts: list[VoicePrompt], frame_rate: float | None,
                index: int = 0) -> VoicePrompt:
    """The prompt nearest to ``frame_rate`` among the ``index``-th utterance's rates
    (frame_rate None: the highest rate stored)."""
    if not prompts:
        raise ValueError("speaker has no stored prompts")
    texts = list(dict.fromkeys(p.text for p in prompts))
    text = texts[index % len(texts)]
    cands = [p for p in prompts if p.text == text]
    if frame_rate is None:
        return max(cands, key=lambda p: p.frame_rate)
    return min(cands, key=lambda p: abs(p.frame_rate - frame_rate))
