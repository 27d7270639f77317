"""flexicodec-data join: consecutive utterances of one speaker joined with pauses."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from flexicodec.data.audio import concat_with_pauses
from flexicodec.data.cli import main as data_main
from flexicodec.data.join import join_corpus, plan_groups
from flexicodec.data.loaders import load_corpus


def _corpus(root, n_per=5):
    """A built-corpus layout: 2 speakers x n_per utterances of known lengths, two splits."""
    rows = []
    for s, spk in enumerate(("spk_a", "spk_b")):
        for i in range(n_per):
            uid = f"{spk}_{i:03d}"
            rel = f"wavs/{spk}/{uid}.wav"
            (root / "wavs" / spk).mkdir(parents=True, exist_ok=True)
            x = np.full(1600 * (i + 1), 0.1 * (s + 1), np.float32)    # 0.1 s per index
            sf.write(root / rel, x, 16000, subtype="PCM_16")
            rows.append({"id": uid, "audio": rel, "text": f"t{i}", "normalized_text": f"n{i}",
                         "phonemes": f"p{i}", "speaker": spk, "engine": "x",
                         "duration": len(x) / 16000, "split": "test" if i == 4 else "train",
                         **({"voice_language": "fi"} if spk == "spk_b" else {})})
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def test_join_corpus(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    rows = _corpus(src)
    summary = join_corpus(src, out, per_utt=(2, 3), pause_s=(0.2, 0.5), progress=False)
    joined = [json.loads(x) for x in (out / "metadata.jsonl").read_text().splitlines()]
    assert summary["utterances_in"] == 10 and summary["utterances_out"] == len(joined)
    by_id = {r["id"]: r for r in rows}
    seen = []
    for r in joined:
        parts = [by_id[i] for i in r["joined_from"]]
        seen += r["joined_from"]
        # one speaker and one split per item; text in order; pauses in range
        assert {p["speaker"] for p in parts} == {r["speaker"]}
        assert r.get("voice_language") == parts[0].get("voice_language")   # kept when set
        assert {p["split"] for p in parts} == {r["split"]}
        assert r["text"] == " ".join(p["text"] for p in parts)
        assert r["phonemes"] == " ".join(p["phonemes"] for p in parts)
        assert len(r["pauses"]) == len(parts) - 1 and all(0.2 <= p <= 0.5 for p in r["pauses"])
        x, sr = sf.read(out / r["audio"], dtype="float32")
        assert sr == 16000
        assert len(x) / sr == pytest.approx(sum(p["duration"] for p in parts) + sum(r["pauses"]),
                                            abs=2e-3)
        assert r["duration"] == pytest.approx(len(x) / sr, abs=1e-3)
        # the pauses are silent, the speech is kept
        assert (np.abs(x) < 1e-3).sum() / sr == pytest.approx(sum(r["pauses"]), abs=2e-3)
    assert sorted(seen) == sorted(by_id)          # every source utterance used once
    assert 0 < summary["pause_share"] < 0.5
    # our loader reads it as a corpus, splits kept
    assert len(load_corpus(out, split="test")) == sum(r["split"] == "test" for r in joined)
    assert len(load_corpus(out, english_speech_only=True)) == \
        sum(r["speaker"] == "spk_a" for r in joined)
    # deterministic: the same seed writes the same corpus
    first = (out / "metadata.jsonl").read_text()
    join_corpus(src, out, per_utt=(2, 3), pause_s=(0.2, 0.5), progress=False)
    assert (out / "metadata.jsonl").read_text() == first


def test_concat_with_pauses():
    a, b = np.ones(3, np.float32), np.full(2, 0.5, np.float32)
    y = concat_with_pauses([a, b, a], [0.5, 0.25], 4)
    assert y.tolist() == [1, 1, 1, 0, 0, 0.5, 0.5, 0, 1, 1, 1] and y.dtype == np.float32
    assert concat_with_pauses([b], [], 4).tolist() == [0.5, 0.5]
    with pytest.raises(ValueError, match="one pause between"):
        concat_with_pauses([a, b], [], 4)


def test_join_errors(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    _corpus(src, n_per=3)
    with pytest.raises(FileNotFoundError, match="not a built corpus"):
        join_corpus(tmp_path / "nothing", tmp_path / "o")
    with pytest.raises(ValueError, match="differ"):
        join_corpus(src, src)
    with pytest.raises(ValueError, match="pause range"):
        join_corpus(src, tmp_path / "o", pause_s=(1.0, 0.5))
    with pytest.raises(ValueError, match="no utterances in splits"):
        join_corpus(src, tmp_path / "o", splits=("valid",))
    with pytest.raises(ValueError, match="per_utt"):
        plan_groups([], (3, 2), 0)
    with pytest.raises(SystemExit):
        data_main(["join", str(src), "--out", str(tmp_path / "o"), "--pause", "0.3"])
    assert "two comma-separated numbers" in capsys.readouterr().err
    data_main(["join", str(src), "--out", str(tmp_path / "o"), "--per-utt", "1,1",
               "--no-progress"])
    rows = (tmp_path / "o" / "metadata.jsonl").read_text().splitlines()
    assert len(rows) == 6                         # groups of one: a copy
