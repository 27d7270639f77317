"""`flexicodec` CLI: encode / decode / reconstruct / plot on a tmp folder with a tiny model."""
import subprocess

import numpy as np
import pytest
import soundfile as sf
import torch

from flexicodec.codec.cli import main
from flexicodec.codec.codes_file import load_codes
from flexicodec.codec.config import FlexiCodecConfig
from flexicodec.codec.model import FlexiCodec

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    audio = root / "audio"
    (audio / "sub").mkdir(parents=True)
    subprocess.run(["flite", "-voice", "slt", "-t", "Hello there, this is a codec test.",
                    "-o", str(audio / "a.wav")], check=True)
    x, sr = sf.read(audio / "a.wav", dtype="float32")
    # a stereo 8 kHz file in a sub-folder
    import soxr
    y = soxr.resample(x[: sr * 2], sr, 8000)
    sf.write(audio / "sub" / "b.flac", np.stack([y, 0.5 * y], 1), 8000)
    torch.manual_seed(0)
    model_dir = FlexiCodec(FlexiCodecConfig.tiny()).save_pretrained(root / "model")
    return root, audio, model_dir, len(x)


def test_encode_decode_reconstruct_plot(setup, capsys):
    root, audio, model_dir, n_a = setup
    m = ["--model", str(model_dir)]
    assert main(["encode", str(audio), "-o", str(root / "codes"), "--frame-rate", "6.25",
                 "--num-quantizers", "1", *m]) == 0
    out = capsys.readouterr().out
    assert "2 file(s)" in out and "bit/s" in out and "frame rate" in out
    a_codes = load_codes(root / "codes" / "a.npz")
    assert (root / "codes" / "sub" / "b.npz").is_file()
    assert a_codes.num_quantizers == 1 and a_codes.target_frame_rate == 6.25
    assert abs(float(a_codes.frame_rate[0]) - 6.25) < 0.7

    assert main(["decode", str(root / "codes"), "-o", str(root / "dec"), *m]) == 0
    y, sr = sf.read(root / "dec" / "a.wav")
    assert sr == 16000 and len(y) == n_a
    assert (root / "dec" / "sub" / "b.wav").is_file()

    assert main(["reconstruct", str(audio / "a.wav"), str(audio / "sub"), "-o",
                 str(root / "rec"), "--threshold", "1.0", *m]) == 0
    out = capsys.readouterr().out
    assert "average frame rate 12.50 Hz" in out
    y, sr = sf.read(root / "rec" / "a.wav")
    assert len(y) == n_a and sr == 16000
    assert sf.info(root / "rec" / "b.wav").samplerate == 16000

    assert main(["plot", str(audio / "a.wav"), "-o", str(root / "a.png"), *m]) == 0
    assert (root / "a.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_errors(setup, capsys, tmp_path):
    root, audio, model_dir, _ = setup
    assert main(["encode", str(tmp_path / "missing"), "-o", str(tmp_path), "--model",
                 str(model_dir)]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["decode", str(audio / "a.wav"), "-o", str(tmp_path), "--model",
                 str(model_dir)]) == 2
    assert "codes file" in capsys.readouterr().err
    assert main(["encode", str(audio), "-o", str(tmp_path), "--model",
                 str(tmp_path / "no_model")]) == 2
    assert "not a model directory" in capsys.readouterr().err
    # codes made by another model are refused
    torch.manual_seed(5)
    other = FlexiCodec(FlexiCodecConfig.tiny()).save_pretrained(tmp_path / "other")
    assert main(["encode", str(audio / "a.wav"), "-o", str(tmp_path / "c"), "--model",
                 str(other)]) == 0
    assert main(["decode", str(tmp_path / "c"), "-o", str(tmp_path / "d"), "--model",
                 str(model_dir)]) == 2
    assert "made by" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["encode", str(audio), "-o", str(tmp_path), "--threshold", "0.9",
              "--frame-rate", "5"])


def test_console_script_help():
    r = subprocess.run(["flexicodec", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "reconstruct" in r.stdout and "asr-train" in r.stdout


def test_calibrate_reaches_target_rate_and_encode_uses_it(setup, tiny_corpus, capsys):
    """`flexicodec calibrate`: one global threshold whose pooled rate on the split is the
    target; encoding the same utterances with it lands on that pooled rate."""
    import json

    from flexicodec.codec.api import calibrate_threshold_on_corpus
    from flexicodec.data.loaders import load_corpus
    root, _, model_dir, _ = setup
    assert main(["calibrate", "--data", str(tiny_corpus), "--split", "train",
                 "--frame-rate", "6.25", "--model", str(model_dir)]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["target_frame_rate"] == 6.25 and res["utterances"] > 0
    assert abs(res["frame_rate"] - 6.25) < 1.0
    model = FlexiCodec.from_pretrained(model_dir)
    ds = load_corpus(tiny_corpus, split="train", check="header", progress=False)
    from flexicodec.data.audio import load_audio
    wavs = [load_audio(a, 16000)[0] for a in ds["audio"][: res["utterances"]]]
    codes = [model.encode(w, 16000, threshold=res["threshold"]) for w in wavs]
    tokens = sum(int(c.token_mask.sum()) for c in codes)
    frames = sum(int(c.num_frames.sum()) for c in codes)
    assert tokens * 12.5 / frames == pytest.approx(res["frame_rate"], abs=1e-6)
    assert calibrate_threshold_on_corpus(model, tiny_corpus, "train", 12.5)["frame_rate"] == 12.5
    assert main(["calibrate", "--data", str(tiny_corpus), "--frame-rate", "0",
                 "--model", str(model_dir)]) == 2
