"""scripts/codec_learning_curve.py: evaluation records in step order, last record per step,
a table and a plot; metrics a run did not compute; held-out eval reports."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from codec_learning_curve import curve_rows  # noqa: E402


def test_curve_rows_and_outputs(tmp_path):
    log = [{"step": 100, "loss": 1.0},
           {"step": 1000, "train_minutes": 2.0, "valid_mel_12.5Hz": 0.6,
            "valid_stoi_12.5Hz": 0.8, "valid_pesq_12.5Hz": 1.2},
           {"step": 2000, "train_minutes": 4.0, "valid_mel_12.5Hz": 0.5,
            "valid_stoi_12.5Hz": 0.84, "valid_pesq_12.5Hz": 1.4},
           {"step": 1000, "train_minutes": 2.5, "valid_mel_12.5Hz": 0.59,   # resumed run
            "valid_stoi_12.5Hz": 0.81, "valid_pesq_12.5Hz": 1.25}]
    rows = curve_rows(log)
    assert [r["step"] for r in rows] == [1000, 2000] and rows[0]["train_minutes"] == 2.5
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in log))
    out = tmp_path / "curve"
    subprocess.run([sys.executable, str(ROOT / "scripts/codec_learning_curve.py"), str(path),
                    "-o", str(out)], check=True, capture_output=True)
    md = (tmp_path / "curve.md").read_text()
    assert "| 2000 | 4.0 | 0.500 | 0.840 | 1.400 |" in md
    assert (tmp_path / "curve.png").stat().st_size > 1000
    # --state: the frozen-ASR changes of the run are listed
    state = tmp_path / "state"
    state.mkdir()
    for name in ("generator.safetensors", "discriminator.safetensors"):
        (state / name).write_bytes(b"")
    (state / "state.json").write_text(json.dumps({"step": 2000, "semantic_history": [
        {"step": 1500, "train_seconds": 180.0, "previous": "aaa", "identity": "bbb",
         "asr": "checkpoints/asr_x"}], "growth_history": [
        {"step": 1800, "train_seconds": 216.0, "decoder_layers": [8, 12]}]}))
    subprocess.run([sys.executable, str(ROOT / "scripts/codec_learning_curve.py"), str(path),
                    "-o", str(out), "--state", str(state)], check=True, capture_output=True)
    md = (tmp_path / "curve.md").read_text()
    assert ("From step 1500 (3.0 GPU-minutes) the frozen ASR is bbb (checkpoints/asr_x), "
            "before it aaa.") in md
    # ... and the growths of its model
    assert ("From step 1800 (3.6 GPU-minutes) the decoder has 12 blocks, before it 8 "
            "(grown as the identity).") in md
    bad = subprocess.run([sys.executable, str(ROOT / "scripts/codec_learning_curve.py"),
                          str(path), "-o", str(out), "--state", str(tmp_path / "none")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "not a portable training state" in bad.stderr
    path.write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n")
    bad = subprocess.run([sys.executable, str(ROOT / "scripts/codec_learning_curve.py"),
                          str(path), "-o", str(out)], capture_output=True, text=True)
    assert bad.returncode == 2 and "no evaluation records" in bad.stderr


def test_missing_metrics_and_heldout_reports(tmp_path):
    log = [{"step": 1000, "train_minutes": 2.0, "valid_mel_12.5Hz": 0.6,
            "valid_stoi_12.5Hz": 0.8, "valid_pesq_12.5Hz": 1.2},
           {"step": 2000, "train_minutes": 4.0, "valid_mel_12.5Hz": 0.5,    # no pystoi/pesq
            "valid_mel_12.5Hz_ema": 0.45, "valid_mel_12.5Hz_q1_ema": 0.55,
            "unseen_mel_12.5Hz": 0.8}]
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in log))

    def report(name, split, wer, stoi):
        cond = {"condition": "flexicodec@12.5Hz, 8 RVQ", "wer": wer, "pesq_wb": 1.5,
                "stoi": stoi, "speaker_similarity": 0.9, "mel_distance": 0.4}
        f = tmp_path / name
        f.write_text(json.dumps({"split": split, "original": {"wer": 0.25},
                                 "conditions": [cond]}))
        return f
    a, b = report("a.json", "test", 0.6, 0.84), report("b.json", "test", 0.5, 0.86)
    out = tmp_path / "curve"
    run = subprocess.run([sys.executable, str(ROOT / "scripts/codec_learning_curve.py"),
                          str(path), "-o", str(out), "--heldout", f"{b}=4.0", f"{a}=2.0"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    md = (tmp_path / "curve.md").read_text()
    assert "| 2000 | 4.0 | 0.500 | – | – | 0.450 | 0.550 | 0.800 |" in md
    assert "valid_mel_12.5Hz_ema" in md and "valid_mel_12.5Hz_q1_ema" in md
    assert "unseen_mel_12.5Hz" in md
    rows = [line for line in md.splitlines() if "8 RVQ" in line]
    assert rows == ["| 2.0 | test | flexicodec@12.5Hz, 8 RVQ | raw | 60.0 (25.0) | 1.50 | "
                    "0.840 | 0.900 | 0.400 |",
                    "| 4.0 | test | flexicodec@12.5Hz, 8 RVQ | raw | 50.0 (25.0) | 1.50 | "
                    "0.860 | 0.900 | 0.400 |"]
    assert (tmp_path / "curve.png").stat().st_size > 1000
    # --heldout-ema: the EMA export's report at the same minutes, a row of its own
    c = report("c.json", "test", 0.45, 0.87)
    run = subprocess.run([sys.executable, str(ROOT / "scripts/codec_learning_curve.py"),
                          str(path), "-o", str(out), "--heldout", f"{b}=4.0",
                          "--heldout-ema", f"{c}=4.0"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    rows = [line for line in (tmp_path / "curve.md").read_text().splitlines() if "8 RVQ" in line]
    assert rows == ["| 4.0 | test | flexicodec@12.5Hz, 8 RVQ | raw | 50.0 (25.0) | 1.50 | "
                    "0.860 | 0.900 | 0.400 |",
                    "| 4.0 | test | flexicodec@12.5Hz, 8 RVQ | EMA | 45.0 (25.0) | 1.50 | "
                    "0.870 | 0.900 | 0.400 |"]
    # the same split of a larger corpus: its own series, named with its number of items
    big = json.loads(c.read_text()) | {"utterances": 82}
    d = tmp_path / "d.json"
    d.write_text(json.dumps(big))
    run = subprocess.run([sys.executable, str(ROOT / "scripts/codec_learning_curve.py"),
                          str(path), "-o", str(out), "--heldout", f"{b}=4.0", f"{d}=4.0"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    rows = [line for line in (tmp_path / "curve.md").read_text().splitlines() if "8 RVQ" in line]
    assert [r.split(" | ")[1] for r in rows] == ["test", "test (82 items)"]
    bad = subprocess.run([sys.executable, str(ROOT / "scripts/codec_learning_curve.py"),
                          str(path), "-o", str(out), "--heldout-ema", str(c)],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--heldout-ema" in bad.stderr
    for spec in (str(a), f"{tmp_path / 'none.json'}=1", f"{path}=1"):
        bad = subprocess.run([sys.executable, str(ROOT / "scripts/codec_learning_curve.py"),
                              str(path), "-o", str(out), "--heldout", spec],
                             capture_output=True, text=True)
        assert bad.returncode == 2 and "--heldout" in bad.stderr, spec
