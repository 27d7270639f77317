"""Shared pytest fixtures. ``tiny_corpus``: a corpus of a few short utterances per available
synthesizer engine, built once per session with the real builder (data.corpus)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

#: voices used by the tiny corpus when present (two of them held out as test_unseen)
TINY_SPEAKERS = ("flite_slt", "flite_rms", "festival_kal_diphone", "espeak_en-us+m1",
                 "espeak_en-gb-scotland+f3")


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """Path of a built corpus (metadata.jsonl + wavs/) with ~40 s of audio from up to five
    voices: flite_slt, festival_kal_diphone, espeak_en-us+m1 (seen) and flite_rms,
    espeak_en-gb-scotland+f3 (test_unseen), one sentence per utterance. Skips if no
    synthesizer is installed."""
    from flexicodec.data.corpus import LEGACY, CorpusConfig, build_corpus
    from flexicodec.data.synth import list_speakers
    have = {s.id for s in list_speakers()}
    speakers = tuple(s for s in TINY_SPEAKERS if s in have)
    if not speakers:
        pytest.skip("no speech synthesizer installed (run scripts/setup.sh)")
    out = tmp_path_factory.mktemp("tiny_corpus")
    # one sentence per utterance at the engines' rate (the first builder's settings): many
    # short utterances, so every split and held-out voice shows up in ~40 s
    cfg = CorpusConfig(hours=40 / 3600, seed=0, speakers=speakers, batch_size=2, **LEGACY)
    build_corpus(out, cfg, workers=2, progress=False)
    return out


def synth_code_rows(n: int, *, semantic_vocab_size: int, max_group: int, n_q: int,
                    codebook_size: int, seed: int = 0, rates=(12.5, 6.25)) -> dict:
    """Codes-file rows (columns as ``flexicodec-lm tokenize`` writes them) of ``n`` items per
    rate, where acoustic = f(semantic, length, speaker): learnable and speaker-dependent."""
    g = torch.Generator().manual_seed(seed)
    rows = {k: [] for k in ("id", "speaker", "text", "frame_rate", "semantic_codes",
                            "token_lengths", "acoustic_codes")}
    for i in range(n):
        spk = i % 2
        for rate in rates:
            T = int(torch.randint(20, 40, (1,), generator=g))
            sem = torch.randint(0, semantic_vocab_size, (T,), generator=g)
            ln = torch.randint(1, max_group + 1, (T,), generator=g)
            q = torch.arange(n_q)[:, None]
            ac = (sem[None] * (q + 1) + (ln[None] > 4).long() + 7 * spk * (q + 1)) % codebook_size
            rows["id"].append(f"u{i}")
            rows["speaker"].append(f"spk{spk}")
            rows["text"].append(f"utterance {i}")
            rows["frame_rate"].append(rate)
            rows["semantic_codes"].append(sem.tolist())
            rows["token_lengths"].append(ln.tolist())
            rows["acoustic_codes"].append(ac.tolist())
    return rows
