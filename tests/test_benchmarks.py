"""Benchmarks: the quick LM speedup CLI end to end, the codec measuring function, helpers."""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch

torch.set_num_threads(1)

from flexicodec.benchmarks import common  # noqa: E402


def test_time_interleaved_and_timing():
    calls = []
    t = common.time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                                warmup=1, repeats=3)
    assert calls == ["a", "b"] * 4          # warm-up round, then round-robin repeats
    assert len(t["a"].times) == 3 and t["a"].median >= 0
    with pytest.raises(ValueError):
        common.time_fn(lambda: None, repeats=0)


def test_peak_memory_sees_torch_allocations():
    """An allocation of ~64 MiB must show up (tracemalloc would not see it). The best of three
    calls: in a long test process the kernel's RSS high-water mark once missed the whole
    short-lived mapping (peak 0)."""
    def alloc():
        x = torch.ones(16 * 2**20)     # 64 MiB of float32, touched
        return float(x[-1])
    runs = [common.measure_peak_memory(alloc, "cpu") for _ in range(3)]
    assert 50 < max(m.peak_mb for m in runs) < 400, runs


def test_peak_memory_fresh_process():
    m = common.peak_memory_in_subprocess("tests.test_benchmarks:_alloc_probe", 32)
    assert 25 < m.peak_mb < 300 and m.method.endswith("_fresh_process"), m


def _alloc_probe(mb: int):
    def run():
        x = torch.ones(mb * 2**18)
        return float(x[-1])
    return run


def test_table_and_json(tmp_path):
    rows = [{"a": 1.23456, "b": None}, {"a": float("nan"), "b": "x"}]
    table = common.format_table(rows, [("a", "A"), ("b", "B")])
    assert "1.235" in table and "-" in table.splitlines()[2]
    path = common.write_json(tmp_path / "r.json", {"rows": rows, "t": torch.tensor(2.0)})
    data = json.loads(path.read_text())
    assert data["rows"][1]["a"] is None and data["t"] == 2.0


def test_resolve_device_errors():
    with pytest.raises(ValueError, match="unknown device"):
        common.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            common.resolve_device("cuda")


def test_codec_measuring_function_tiny():
    """measure_codecs on a tiny FlexiCodec: finite positive throughput, consistent numbers."""
    from flexicodec.benchmarks.codec_speed import add_ratios, flexicodec_under_test, measure_codecs
    from flexicodec.codec.config import FlexiCodecConfig
    from flexicodec.codec.model import FlexiCodec

    torch.manual_seed(0)
    model = FlexiCodec(FlexiCodecConfig.tiny()).eval()
    c = flexicodec_under_test(model, "tiny", "test", threshold=1.0)
    t = np.arange(16000 * 2) / 16000
    wav = (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(
        np.float32)
    rows = measure_codecs([c], wav, seconds=1.5, batch=2, device="cpu", warmup=1, repeats=2)
    add_ratios(rows, "tiny")
    (r,) = rows
    assert r["batch"] == 2 and r["seconds"] == 1.5
    for key in ("encode_x_rt", "decode_x_rt"):
        assert math.isfinite(r[key]) and r[key] > 0
    # xRT = audio seconds / median time
    assert r["encode_x_rt"] == pytest.approx(3.0 / r["encode_s"])
    assert r["enc_ours_x"] == pytest.approx(1.0) and r["dec_ours_x"] == pytest.approx(1.0)
    assert r["token_rate"] == pytest.approx(12.5, rel=0.15)   # threshold 1.0 = 12.5 Hz
    assert r["encode_peak_mb"] >= 0 and r["decode_peak_mb"] >= 0


@pytest.mark.parametrize("text_input", ["phoneme", "bpe"])
def test_lm_speedup_quick_cli(tmp_path, capsys, text_input):
    """The quick CLI (tiny random codec, tiny LM, two rates, 2 utterances) prints the table
    and ends with the speedup line; the JSON is valid and consistent with it. The trainer
    run reads phonemes (the config's) or, with --text-input bpe, sentencepiece pieces."""
    from flexicodec.data.synth import list_speakers
    if not list_speakers():
        pytest.fail("no synthesizer installed (flite / espeak-ng are required here)")
    from flexicodec.benchmarks.lm_speedup import main

    extra = ["--text-input", "bpe"] if text_input == "bpe" else []
    rc = main(["--quick", "--rates", "12.5,6.25", "--num-utts", "2", "--gen-batch", "2",
               "--train-steps", "2", "--out", str(tmp_path)] + extra)
    assert rc == 0
    out = capsys.readouterr().out.strip().splitlines()
    m = re.fullmatch(r"speedup_6\.25_vs_12\.5=([0-9.]+)", out[-1])
    assert m, out[-1]
    ratio = float(m.group(1))
    assert ratio > 0
    t = re.fullmatch(r"trainer_audio_ratio_6\.25_vs_12\.5=([0-9.]+)", out[-2])
    assert t, out[-2]
    data = json.loads((tmp_path / "lm_speedup.json").read_text())
    # the trainer itself (configs/lm/tiny.yaml: phoneme input, packed rows) at both rates
    tr = data["trainer"]
    assert tr["config"] == "configs/lm/tiny.yaml" and tr["text_input"] == text_input
    trows = {r["rate"]: r for r in tr["rows"]}
    assert set(trows) == {12.5, 6.25}
    assert trows[6.25]["audio_ratio_vs_12.5"] == pytest.approx(float(t.group(1)), rel=1e-3)
    assert trows[6.25]["mean_seq_len"] < trows[12.5]["mean_seq_len"]
    for r in trows.values():
        assert r["tokens_per_s"] > 0 and r["audio_hours_per_gpu_minute"] > 0
        assert r["model_tflops_per_s"] > 0 and r["mfu"] is None     # no peak given on CPU
        assert r["steps_measured"] == 2
    # the shipped codec when the checkout has one, else a random tiny codec (said in the JSON)
    try:
        from flexicodec.common.models import default_dir
        expected = f"shipped:{default_dir('codec')}"
    except FileNotFoundError:
        expected = "random-init tiny"
    assert expected in data["codec"]
    rows = {r["rate"]: r for r in data["rows"]}
    assert set(rows) == {12.5, 6.25}
    assert rows[6.25]["speedup_train"] == pytest.approx(ratio, rel=1e-3)
    # fewer speech tokens at the lower rate, and the token rate is near the target
    assert rows[6.25]["tokens_per_audio_s"] < rows[12.5]["tokens_per_audio_s"]
    assert rows[12.5]["tokens_per_audio_s"] == pytest.approx(12.5, rel=0.1)
    assert rows[6.25]["gen_tokens"] < rows[12.5]["gen_tokens"]
    for r in rows.values():
        assert r["train_audio_s_per_s"] > 0 and r["ar_rtf_b1"] > 0 and r["mfu"] is None
    assert (tmp_path / "lm_speedup.png").stat().st_size > 1000


def test_lm_speedup_rejects_bad_config():
    from flexicodec.benchmarks.lm_speedup import LMBenchConfig

    with pytest.raises(ValueError, match="unknown LM sizes"):
        LMBenchConfig(sizes=("huge",))
    with pytest.raises(ValueError, match="12.5 Hz baseline"):
        LMBenchConfig(rates=(6.25,))


def test_tts_speed_tiny_pipeline():
    """measure_tts on the random tiny pipeline: positive RTF, latency below the total time."""
    from flexicodec.benchmarks.tts_speed import build_random_tts, measure_tts

    tts = build_random_tts(torch.device("cpu"), max_tokens=12)
    rows = measure_tts(tts, ["hello there, how are you today"], (12.5, 6.25),
                       torch.device("cpu"))
    assert [r["rate"] for r in rows] == [12.5, 6.25]
    for r in rows:
        assert r["audio_s"] > 0 and 0 < r["ar_rtf"] < r["rtf"]
        assert 0 < r["first_chunk_s"] < r["rtf"] * r["audio_s"] * 5


def test_train_speed_quick(tiny_corpus, tmp_path):
    """The codec-training benchmark runs the shipped and the fast engine's step (tiny models)
    and reports throughput, the phase split and FLOPs for each."""
    from flexicodec.benchmarks.train_speed import main as train_speed
    assert train_speed(["--device", "cpu", "--quick", "--data", str(tiny_corpus),
                        "--recipes", "shipped,fast_small,fast_small_windows,fast_small_v2_gan,"
                        "fast_small_v2_gan_b512,fast_small_v2_gan_cuda_graphs,"
                        "fast_small_v2_gan_b512_cuda_graphs,v2,v2_mpd_1d,"
                        "v2_d_every_2,v2_whole_batch_d,v2_no_cuda_graphs,v2_b256", "--out",
                        str(tmp_path)]) == 0
    res = json.loads((tmp_path / "train_speed.json").read_text())
    rows = {r["recipe"]: r for r in res["rows"]}
    assert set(rows) == {"shipped", "fast_small", "fast_small_windows", "fast_small_v2_gan",
                         "fast_small_v2_gan_b512", "fast_small_v2_gan_cuda_graphs",
                         "fast_small_v2_gan_b512_cuda_graphs", "v2", "v2_mpd_1d",
                         "v2_d_every_2", "v2_whole_batch_d", "v2_no_cuda_graphs", "v2_b256"}
    assert not any(r["error"] for r in rows.values())
    # v2 runs its recipe's discriminator windows (1 s of 2-s crops); fast_small the whole crop
    assert rows["v2"]["disc_window_s"] == 1.0 and rows["v2"]["crop_s"] == 2.0
    assert rows["fast_small"]["disc_window_s"] == rows["fast_small"]["crop_s"]
    assert rows["fast_small_windows"]["disc_window_s"] == 1.0
    assert rows["fast_small_windows"]["generator_M"] == rows["fast_small"]["generator_M"]
    assert (rows["v2"]["disc_every"], rows["v2_d_every_2"]["disc_every"]) == (1, 2)
    assert (rows["v2"]["disc_batch"], rows["v2_whole_batch_d"]["disc_batch"]) == (1, 2)
    assert (rows["fast_small_windows"]["disc_batch"],
            rows["fast_small_v2_gan"]["disc_batch"]) == (2, 1)
    assert (rows["v2"]["mpd_layout"], rows["v2_mpd_1d"]["mpd_layout"]) == ("2d", "1d")
    # quick recipes run eagerly; at full size v2 replays CUDA graphs, v2_no_cuda_graphs not
    assert {r["compile_mode"] for r in rows.values()} == {"eager"}
    from flexicodec.benchmarks.train_speed import recipes
    full = {r.name: r for r in recipes(quick=False)}
    gan, b512 = full["fast_small_v2_gan"], full["fast_small_v2_gan_b512"]
    from flexicodec.codec.train import load_train_section
    assert load_train_section(full["v2"].config).compile_mode == "reduce-overhead"
    assert full["v2_no_cuda_graphs"].train_overrides["compile_mode"] == "default"
    assert (b512.batch_size, b512.train_overrides["disc_batch_size"]) == (512, 128)
    assert b512.config == gan.config and not b512.default
    graphs = full["fast_small_v2_gan_cuda_graphs"].train_overrides
    assert graphs == {**gan.train_overrides, "compile_mode": "reduce-overhead"}
    assert (full["v2_b256"].batch_size, full["v2_b256"].train_overrides) == \
        (256, {"disc_batch_size": 64})
    with pytest.raises(SystemExit):
        train_speed(["--device", "cpu", "--quick", "--data", str(tiny_corpus),
                     "--recipes", "v3", "--out", str(tmp_path)])
    assert rows["shipped"]["vs_shipped"] == 1.0
    for r in rows.values():
        assert r["audio_s_per_s"] > 0 and r["gflop_per_step"] > 0
        assert {"data", "generator_forward", "discriminator", "generator_backward",
                "optimizer"} <= set(r["phase_ms"])
    assert rows["fast_small"]["data_on_device"] and rows["fast_small"]["merging"] == "12.5 Hz"
    assert "fast_small" in (tmp_path / "train_speed.md").read_text()


def test_disc_speed_quick(tmp_path):
    """benchmarks/disc_speed.py: the harness runs every layout at every batch size and
    refuses unknown layouts and bad batch lists."""
    from flexicodec.benchmarks.disc_speed import main as disc_speed

    assert disc_speed(["--device", "cpu", "--quick", "--repeats", "1", "--warmup", "0",
                       "--batch", "2,3", "-o", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "disc_speed.json").read_text())
    assert [(r["variant"], r["batch"]) for r in res["rows"]] == [
        (v, b) for b in (2, 3) for v in ("nchw", "channels_last", "mpd_conv1d")]
    assert all(r["total_ms"] > 0 for r in res["rows"]) and res["rows"][0]["speedup"] == 1.0
    for r in res["rows"]:                       # the two halves, timed apart, and the whole
        assert r["mpd_ms"] > 0 and r["mrd_ms"] > 0 and r["total_ms"] > 0
        assert r["total_ms"] == pytest.approx(r["d_update_ms"] + r["g_pass_ms"])
    assert "D update ms" in (tmp_path / "disc_speed.md").read_text()
    for bad in (["--variants", "nhwc"], ["--batch", "2,x"], ["--batch", "0"]):
        with pytest.raises(SystemExit):
            disc_speed(["--device", "cpu", "--quick", *bad, "-o", str(tmp_path)])


def test_train_speed_writes_its_tables_after_every_recipe(tmp_path, monkeypatch):
    """A benchmark stopped by a time limit keeps the recipes it finished: the JSON and table
    are rewritten after each recipe."""
    import flexicodec.benchmarks.train_speed as ts
    seen = []

    def fake_recipe(recipe, *args, **kwargs):
        path = tmp_path / "train_speed.json"
        seen.append([r["recipe"] for r in json.loads(path.read_text())["rows"]]
                    if path.exists() else [])
        return {"recipe": recipe.name, "audio_s_per_s": 10.0, "phase_ms": {"data": 1.0}}

    monkeypatch.setattr(ts, "run_recipe", fake_recipe)
    assert ts.main(["--device", "cpu", "--quick", "--data", str(tmp_path), "--recipes",
                    "shipped,v2", "--out", str(tmp_path)]) == 0
    assert seen == [[], ["shipped"]]
    rows = json.loads((tmp_path / "train_speed.json").read_text())["rows"]
    assert [r["recipe"] for r in rows] == ["shipped", "v2"] and rows[1]["vs_shipped"] == 1.0
    with pytest.raises(SystemExit):
        ts.main(["--device", "cpu", "--quick", "--data", str(tmp_path), "--recipes", ",",
                 "--out", str(tmp_path)])
