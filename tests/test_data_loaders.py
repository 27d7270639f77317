from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import soundfile as sf
import torch

from flexicodec.data.loaders import AudioDataset, collate_audio, detect_layout, load_corpus

torch.set_num_threads(1)
COLS = ["audio", "text", "phonemes", "speaker", "duration"]


def _tone(sr: int, seconds: float, channels: int = 1) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    x = (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    return np.stack([x, 0.5 * x], axis=1) if channels == 2 else x


def _bad_files(d):
    """good mono 22.05 kHz, stereo 44.1 kHz, corrupt, empty, NaN."""
    d.mkdir(parents=True, exist_ok=True)
    sf.write(d / "good.wav", _tone(22050, 0.5), 22050)
    sf.write(d / "stereo.wav", _tone(44100, 0.4, channels=2), 44100)
    (d / "corrupt.wav").write_bytes(b"RIFF\x00\x00garbage" * 10)
    sf.write(d / "empty.wav", np.zeros(0, dtype=np.float32), 16000)
    nan = _tone(16000, 0.3)
    nan[100] = np.nan
    sf.write(d / "nan.wav", nan, 16000, subtype="FLOAT")
    return ["good", "stereo", "corrupt", "empty", "nan"]


def _check_skips(caplog, n_skipped: int, n_total: int):
    msgs = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"skipped {n_skipped} of {n_total}" in m for m in msgs), msgs


def test_our_corpus_round_trip(tiny_corpus):
    ds = load_corpus(tiny_corpus)
    assert ds.column_names == COLS and len(ds) > 5
    meta = [json.loads(x) for x in (tiny_corpus / "metadata.jsonl").read_text().splitlines()]
    assert ds[0]["text"] == meta[0]["normalized_text"] and ds[0]["phonemes"] == meta[0]["phonemes"]
    train = load_corpus(tiny_corpus, split="train")
    assert 0 < len(train) < len(ds)
    dec = load_corpus(tiny_corpus, split="train", decode=True, sample_rate=8000)
    a = dec[0]["audio"]
    assert a["sampling_rate"] == 8000
    assert abs(len(a["array"]) / 8000 - dec[0]["duration"]) < 0.01
    stream = load_corpus(tiny_corpus, split="train", streaming=True)
    assert [r["text"] for r in stream] == train["text"]
    with pytest.raises(ValueError, match="no split"):
        load_corpus(tiny_corpus, split="nope")


def test_english_speech_only(tiny_corpus, tmp_path):
    """Rows of voices of other languages are dropped on request; rows without the field
    (corpora built before it) count as English."""
    import shutil
    d = tmp_path / "c"
    shutil.copytree(tiny_corpus, d)
    rows = [json.loads(x) for x in (d / "metadata.jsonl").read_text().splitlines()]
    train = [i for i, r in enumerate(rows) if r["split"] == "train"]
    for i, r in enumerate(rows):
        r.pop("voice_language", None)
        if i in train[:3]:
            r["voice_language"] = "fi"
    (d / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert len(load_corpus(d, split="train")) == len(train)
    kept = load_corpus(d, split="train", english_speech_only=True)
    assert len(kept) == len(train) - 3
    dropped = {str(d / rows[i]["audio"]) for i in train[:3]}
    assert not dropped & set(kept["audio"])
    assert len(load_corpus(d, english_speech_only=True)) == len(rows) - 3


def test_ljspeech(tmp_path, caplog):
    root = tmp_path / "LJ"
    names = _bad_files(root / "wavs")
    (root / "metadata.csv").write_text("\n".join(
        f"LJ{n}|Raw text {i} with 3 words.|Raw text {i} with three words." for i, n in
        enumerate(names)).replace("LJgood", "good").replace("LJ", "") + "\n")
    assert detect_layout(root) == "ljspeech"
    with caplog.at_level(logging.WARNING):
        ds = load_corpus(root, decode=True)
    _check_skips(caplog, 3, 5)
    assert len(ds) == 2 and ds[0]["speaker"] == "ljspeech"
    assert ds[0]["text"] == "Raw text zero with three words."
    stereo = ds[1]["audio"]
    assert stereo["sampling_rate"] == 16000 and abs(len(stereo["array"]) - 6400) <= 2
    with pytest.raises(ValueError, match="no splits"):
        load_corpus(root, split="train")


def test_libritts(tmp_path, caplog):
    root = tmp_path / "LibriTTS" / "train-clean"
    for spk, ch in (("19", "198"), ("26", "495")):
        d = root / spk / ch
        names = _bad_files(d)
        for n in names:
            (d / f"{n}.wav").rename(d / f"{spk}_{ch}_{n}.wav")
            (d / f"{spk}_{ch}_{n}.normalized.txt").write_text(f"Speaker {spk} said 2 things.")
    with caplog.at_level(logging.WARNING):
        ds = load_corpus(tmp_path / "LibriTTS", check="full")
    _check_skips(caplog, 6, 10)
    assert sorted(set(ds["speaker"])) == ["19", "26"] and len(ds) == 4
    assert ds[0]["text"] == "Speaker nineteen said two things."
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        rows = list(load_corpus(tmp_path / "LibriTTS", streaming=True, decode=True))
    assert len(rows) == 4
    _check_skips(caplog, 6, 10)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_audiofolder(tmp_path, caplog, fmt):
    root = tmp_path / "af"
    names = _bad_files(root / "clips")
    recs = [{"file_name": f"clips/{n}.wav", "text": f"clip {n}", "speaker": "s1"} for n in names]
    recs.append({"file_name": "clips/missing.wav", "text": "gone", "speaker": "s1"})
    if fmt == "jsonl":
        (root / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    else:
        (root / "metadata.csv").write_text("file_name,text,speaker\n" + "\n".join(
            f"{r['file_name']},{r['text']},{r['speaker']}" for r in recs) + "\n")
    assert detect_layout(root) == "audiofolder"
    with caplog.at_level(logging.WARNING):
        ds = load_corpus(root)
    _check_skips(caplog, 4, 6)
    msg = [r.getMessage() for r in caplog.records][-1]
    assert "missing: 1" in msg and "nan: 1" in msg and "empty: 1" in msg
    assert ds["text"] == ["clip good", "clip stereo"] and ds["phonemes"] == ["", ""]


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_corpus(tmp_path / "nothing")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(FileNotFoundError, match="no audio"):
        load_corpus(tmp_path / "empty_dir")
    d = tmp_path / "allbad"
    _bad_files(d / "x")
    (d / "metadata.jsonl").write_text(json.dumps({"file_name": "x/corrupt.wav", "text": "a"}) + "\n")
    with pytest.raises(ValueError, match="none of the 1"):
        load_corpus(d)
    (d / "metadata.jsonl").write_text(json.dumps({"wav": "x/good.wav", "text": "a"}) + "\n")
    with pytest.raises(ValueError, match="file_name/audio/path"):
        load_corpus(d)


def test_audio_dataset_and_collate(tiny_corpus):
    ds = load_corpus(tiny_corpus, split="train")
    seg = AudioDataset(ds, segment_samples=4000, random_crop=True)
    item = seg[0]
    assert set(item) == {"wav", "text", "phonemes", "speaker", "index"}
    assert item["wav"].dtype == torch.float32 and item["wav"].shape == (4000,)
    full = AudioDataset(load_corpus(tiny_corpus, split="train", decode=True))
    a, b = full[0], full[1]
    assert abs(a["wav"].numel() / 16000 - ds[0]["duration"]) < 1e-3
    batch = collate_audio([a, b])
    assert batch["wav"].shape == (2, max(a["wav"].numel(), b["wav"].numel()))
    assert batch["wav_lengths"].tolist() == [a["wav"].numel(), b["wav"].numel()]
    short = int(batch["wav_lengths"].min())
    i = int(batch["wav_lengths"].argmin())
    assert torch.all(batch["wav"][i, short:] == 0)
    assert batch["text"] == [a["text"], b["text"]]
    loader = torch.utils.data.DataLoader(seg, batch_size=3, collate_fn=collate_audio)
    first = next(iter(loader))
    assert first["wav"].shape == (3, 4000)
    with pytest.raises(ValueError):
        collate_audio([])
