"""Per-frame error by merge-group length (codec/eval/group_error.py, scripts/diagnose_group_error.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from flexicodec.codec.eval.group_error import error_by_length, frame_group_lengths, frame_mel_errors
from flexicodec.common.constants import HOP_SIZE

torch.set_num_threads(1)


def test_frame_group_lengths_cover_every_frame():
    lens = frame_group_lengths(np.array([3, 1, 2, 0, 0]))
    assert lens.tolist() == [3, 3, 3, 1, 2, 2]
    assert len(frame_group_lengths(torch.tensor([[8, 8, 4]]))) == 20


def test_frame_mel_errors_locate_the_damage():
    rng = np.random.default_rng(0)
    frames = 10
    ref = (0.1 * rng.standard_normal(frames * HOP_SIZE)).astype(np.float32)
    assert np.allclose(frame_mel_errors(ref, ref, frames), 0.0)
    deg = ref.copy()
    deg[4 * HOP_SIZE:5 * HOP_SIZE] = 0.0                   # silence frame 4 only
    err = frame_mel_errors(ref, deg[: -HOP_SIZE // 2], frames)  # shorter output is padded
    assert err.shape == (frames,)
    assert int(np.argmax(err)) == 4
    assert err[4] > 5 * np.median(err)
    with pytest.raises(ValueError, match="frames"):
        frame_mel_errors(ref, ref, 0)


def test_error_by_length_bins_and_differences():
    rng = np.random.default_rng(1)
    lengths, own, other = [], [], []
    for _ in range(20):
        lens = frame_group_lengths(rng.integers(1, 5, size=12))
        lengths.append(lens)
        base = rng.random(len(lens))
        other.append(base)
        own.append(base + 0.1 * (lens - 1))            # worse by 0.1 per extra frame
    rows = error_by_length(lengths, {"own": own, "pairs": other}, "own", ["pairs"], 8)
    assert [r["length"] for r in rows] == [1, 2, 3, 4]   # empty bins are left out
    assert abs(sum(r["share"] for r in rows) - 1.0) < 1e-9
    assert sum(r["frames"] for r in rows) == sum(len(l) for l in lengths)
    for r in rows:
        assert r["diff_vs_pairs"] == pytest.approx(0.1 * (r["length"] - 1))
        lo, hi = r["diff_vs_pairs_ci"]
        assert lo <= r["diff_vs_pairs"] + 1e-9 and hi >= r["diff_vs_pairs"] - 1e-9
        assert r["error_own"] - r["error_pairs"] == pytest.approx(r["diff_vs_pairs"])
    with pytest.raises(ValueError, match="aligned"):
        error_by_length(lengths, {"own": own, "pairs": other[:-1]}, "own", ["pairs"], 8)


def test_diagnose_on_a_tiny_codec(tiny_corpus):
    """The script's core on a random tiny codec: every frame binned once, the three decodes
    all present, the own rate near 6.25 Hz."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from diagnose_group_error import diagnose, markdown

    from flexicodec.codec.config import FlexiCodecConfig
    from flexicodec.codec.eval.evaluate import load_utterances
    from flexicodec.codec.model import FlexiCodec
    torch.manual_seed(0)
    model = FlexiCodec(FlexiCodecConfig.tiny()).eval()
    base = FlexiCodec(FlexiCodecConfig.tiny(fixed_group=2)).eval()
    utts = load_utterances(str(tiny_corpus), "test_unseen", 3)
    res = diagnose(model, base, utts)
    from flexicodec.codec.eval.evaluate import reconstruct
    both = reconstruct(model, utts[0]["audio"], 6.25)
    full_only = reconstruct(model, utts[0]["audio"], 6.25, rvq1=False)
    assert full_only["rvq1"] is None and both["rvq1"] is not None
    assert np.array_equal(full_only["full"], both["full"])
    assert res["frames"] == sum(r["frames"] for r in res["rows"])
    assert 5.0 < res["rate_hz"] < 7.5
    assert {"error_own", "error_pairs", "error_baseline"} <= set(res["rows"][0])
    res.update(model="m", baseline="b", data="d", split="test_unseen")
    assert "own − baseline" in markdown(res)


def test_codebook_diagnosis_on_a_tiny_codec(tiny_corpus):
    """scripts/diagnose_quantization.py: its decodes are the eval's (same audio for every
    stage count), a cosine per RVQ stage within [-1, 1], a row per voice and one for all."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from diagnose_quantization import decode_ways, diagnose, markdown

    from flexicodec.codec.config import FlexiCodecConfig
    from flexicodec.codec.eval.evaluate import load_utterances, reconstruct
    from flexicodec.codec.model import FlexiCodec
    torch.manual_seed(0)
    model = FlexiCodec(FlexiCodecConfig.tiny()).eval()
    utts = load_utterances(str(tiny_corpus), "test_unseen", 3)
    n_q = model.config.n_q
    got = decode_ways(model, utts[0]["audio"], [0, n_q])
    for k in (0, n_q):
        ref = reconstruct(model, utts[0]["audio"], 12.5, num_quantizers=k, rvq1=False)["full"]
        assert np.abs(got["audio"][str(k)][: len(ref)] - ref).max() < 1e-5, k
    assert len(got["cosine"]) == n_q and all(-1 <= c <= 1 for c in got["cosine"])
    res = diagnose(model, utts, [0, 1])
    voices = {u["speaker"].split("~")[0] for u in utts}
    assert [r["voice"] for r in res["rows"]] == sorted(voices) + ["all"]
    assert res["rows"][-1]["utterances"] == 3
    assert set(res["rows"][-1]["mel"]) == set(res["rows"][-1]["pesq_wb"]) == {"0", "1", "latent"}
    # the unquantized latent decodes to other audio than the quantized codes
    assert np.abs(got["audio"]["latent"] - got["audio"][str(n_q)]).max() > 1e-4
    left = res["rows"][-1]["residual_left"]
    assert len(left) == n_q and all(v >= 0 for v in left)
    use = res["codebook_use"]
    assert len(use) == n_q and res["tokens"] > 0
    assert all(1 <= u["perplexity"] <= u["used"] + 1e-6 <= model.config.rvq_codebook_size + 1e-6
               for u in use)
    md = markdown(res, "t")
    assert "cosine to code" in md and "PESQ-WB, 1 stages" in md and "unquantized" in md


def test_diagnose_script_bad_input_is_a_one_line_error(tmp_path):
    import subprocess
    import sys
    from pathlib import Path
    for name in ("diagnose_group_error", "diagnose_quantization"):
        script = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
        r = subprocess.run([sys.executable, str(script), "--data", str(tmp_path / "missing"),
                            "--model", str(tmp_path / "no_codec")],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 2, name
        assert r.stderr.strip().startswith(f"{name}: error:"), r.stderr
        assert "Traceback" not in r.stderr
