"""Join consecutive utterances of one speaker with pauses: a corpus with uneven information
density (``flexicodec-data join``).

A corpus built with the first builder's settings (``build-corpus --pace 1,1
--sentences-per-item 1,1 --level-db=-23,-23 --max-silence 0.3``: single sentences at a
constant rate, silences trimmed by :func:`flexicodec.data.synth.postprocess`) has almost no pauses:
about 12-13 phonemes per second throughout (the default builder already joins sentences
with pauses, :func:`flexicodec.data.audio.concat_with_pauses` in both). Real read or spontaneous speech has pauses between phrases
and sentences, which is what content-adaptive merging exploits (DESIGN.md: "steady regions
(silence, long vowels) cost one token"). This module makes such material from a built
corpus, deterministically: within each (split, speaker), consecutive utterances are joined in
groups of ``per_utt`` (drawn uniformly from a range) with silent pauses drawn uniformly from
``pause_s`` between them. Splits are kept (sentences never cross splits).

Output: the corpus layout of docs/ARCHITECTURE.md (``metadata.jsonl`` + ``wavs/``), rows with
the joined ``text`` / ``normalized_text`` / ``phonemes`` and two extra fields,
``joined_from`` (source ids) and ``pauses`` (seconds); a derived speaker's ``base_speaker`` and
``variant`` are kept. Every wav is written atomically and
``metadata.jsonl`` last, so an interrupted run leaves no half-listed corpus; running again
writes the same files.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from flexicodec.common.constants import SAMPLE_RATE
from flexicodec.data.audio import concat_with_pauses, load_audio, write_audio
from flexicodec.data.corpus import METADATA, read_metadata


def plan_groups(rows: list[dict], per_utt: tuple[int, int], seed: int) -> list[list[dict]]:
    """Consecutive rows of one (split, speaker), in metadata order, grouped in runs of
    ``per_utt[0]..per_utt[1]`` (seeded); a short last run is kept."""
    lo, hi = per_utt
    if not 1 <= lo <= hi:
        raise ValueError(f"per_utt must satisfy 1 <= lo <= hi, got {per_utt}")
    rng = np.random.default_rng(seed)
    by_key: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        by_key.setdefault((r["split"], r["speaker"]), []).append(r)
    groups = []
    for key in sorted(by_key):
        items = by_key[key]
        i = 0
        while i < len(items):
            k = int(rng.integers(lo, hi + 1))
            groups.append(items[i:i + k])
            i += k
    return groups


def join_corpus(src: str | os.PathLike, out: str | os.PathLike,
                per_utt: tuple[int, int] = (2, 3), pause_s: tuple[float, float] = (0.3, 1.2),
                splits: tuple[str, ...] | None = None, seed: int = 0,
                progress: bool = True) -> dict:
    """Write the joined corpus of ``src`` (a built corpus) to ``out``; returns a summary."""
    src, out = Path(src), Path(out)
    rows = read_metadata(src)
    if not rows:
        raise FileNotFoundError(f"{src}: no {METADATA} (not a built corpus)")
    if src.resolve() == out.resolve():
        raise ValueError("join: --out must differ from the source corpus")
    lo, hi = float(pause_s[0]), float(pause_s[1])
    if not 0.0 <= lo <= hi:
        raise ValueError(f"pause range must satisfy 0 <= lo <= hi seconds, got {pause_s}")
    if splits is not None:
        rows = [r for r in rows if r["split"] in splits]
        if not rows:
            raise ValueError(f"{src}: no utterances in splits {list(splits)}")
    groups = plan_groups(rows, per_utt, seed)
    rng = np.random.default_rng(seed + 1)
    new_rows = []
    for g in tqdm(groups, desc="join", disable=not progress):
        pauses = [float(rng.uniform(lo, hi)) for _ in g[1:]]
        wav = concat_with_pauses([load_audio(src / r["audio"], SAMPLE_RATE)[0] for r in g],
                                 pauses, SAMPLE_RATE)
        uid = f"{g[0]['id']}_j{len(g)}"
        rel = Path("wavs") / Path(g[0]["audio"]).parent.name / f"{uid}.wav"
        write_audio(out / rel, wav, SAMPLE_RATE)
        new_rows.append({
            "id": uid, "audio": rel.as_posix(),
            "text": " ".join(r["text"] for r in g),
            "normalized_text": " ".join(r["normalized_text"] for r in g),
            "phonemes": " ".join(r.get("phonemes") or "" for r in g).strip(),
            "speaker": g[0]["speaker"], "engine": g[0].get("engine", ""),
            **{k: g[0][k] for k in ("base_speaker", "variant", "voice_language") if k in g[0]},
            "duration": round(len(wav) / SAMPLE_RATE, 3), "split": g[0]["split"],
            "joined_from": [r["id"] for r in g], "pauses": [round(p, 3) for p in pauses]})
    from flexicodec.common.atomic import atomic_write_text
    atomic_write_text(out / METADATA,
                      "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in new_rows))
    src_s = sum(float(r["duration"]) for r in rows)
    out_s = sum(r["duration"] for r in new_rows)
    return {"source": str(src), "out": str(out), "utterances_in": len(rows),
            "utterances_out": len(new_rows), "hours_in": src_s / 3600,
            "hours_out": out_s / 3600, "pause_share": 1 - src_s / max(out_s, 1e-9)}
