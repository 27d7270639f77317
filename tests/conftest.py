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
    from data.corpus import LEGACY, CorpusConfig, build_corpus
    from data.synth import list_speakers
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
