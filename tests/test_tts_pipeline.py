"""TTS pipeline end to end with tiny random models: audio, streaming == offline, seeds, bad
inputs, CLI.

The LM and the acoustic stage are the real (tiny, random) models. The codec here is a small
module that implements the FlexiCodec ``encode`` / ``decode_from_codes`` contract of
docs/ARCHITECTURE.md (12.5 Hz frames of 1280 samples, merged tokens with lengths, a conv over
frames so decoding depends on context); swap in ``codec.model.FlexiCodec`` once it lands.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn as nn

from data.audio import AudioError
from lm.model import SpeechLM, SpeechLMConfig
from lm.text_tokenizer import train_text_tokenizer
from tts.acoustic import AcousticConfig, AcousticModel
from tts.pipeline import TTS, SynthesisOptions, TTSError
from tts.speakers import save_speakers

torch.set_num_threads(1)
HOP = 1280
SEM, NQ, CB = 64, 3, 32


@dataclass
class Encoded:
    semantic_codes: torch.Tensor
    acoustic_codes: torch.Tensor
    token_lengths: torch.Tensor
    token_mask: torch.Tensor
    frame_rate: torch.Tensor
    threshold: torch.Tensor
    num_frames: torch.Tensor


class ContractCodec(nn.Module):
    semantic_vocab_size, max_group, frame_rate_base, identity = SEM, 8, 12.5, ""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.sem = nn.Embedding(SEM, 16)
        self.ac = nn.Embedding(NQ * CB, 16)
        self.conv = nn.Conv1d(16, 16, 5, padding=2)
        self.out = nn.Linear(16, HOP)

    def encode(self, wav, sample_rate, merging_threshold=None, frame_rate=None,
               num_quantizers=None):
        assert sample_rate == 16000
        n = wav.shape[-1] // HOP
        frames = wav[0, :n * HOP].reshape(n, HOP)
        if merging_threshold is not None:
            g = 1 + int((1 - merging_threshold) * 20)
        else:
            g = max(1, round(12.5 / frame_rate))
        lens = [min(g, n - i) for i in range(0, n, g)]
        e = frames.abs().mean(1)
        sem = torch.tensor([int(e[i] * 1000) % SEM for i in range(0, n, g)])
        q = num_quantizers or NQ
        ac = (sem[None] * torch.arange(1, q + 1)[:, None]) % CB
        T = len(lens)
        return Encoded(sem[None], ac[None], torch.tensor(lens)[None],
                       torch.ones(1, T, dtype=torch.bool), torch.tensor([12.5 * T / n]),
                       torch.tensor([merging_threshold or 1.0]), torch.tensor([n]))

    def decode_from_codes(self, semantic_codes, acoustic_codes, token_lengths):
        q = acoustic_codes.shape[1]
        x = self.sem(semantic_codes) + self.ac(acoustic_codes + torch.arange(q)[None, :, None]
                                               * CB).sum(1)
        x = torch.repeat_interleave(x[0], token_lengths[0], dim=0)[None]  # [1, F, 16]
        x = self.conv(x.transpose(1, 2)).transpose(1, 2)
        return (0.5 * torch.tanh(self.out(x))).reshape(1, -1)


TEXTS = ["the quick brown fox jumps over the lazy dog", "hello there, how are you today",
         "speech synthesis with a dynamic frame rate", "one two three four five six seven",
         "she sells sea shells by the sea shore"] * 4


@pytest.fixture(scope="module")
def tts(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    tok = train_text_tokenizer(TEXTS, d, vocab_size=60)
    torch.manual_seed(0)
    lm = SpeechLM(SpeechLMConfig(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                                 intermediate_size=128, num_text=tok.vocab_size,
                                 semantic_size=SEM, max_group=8, max_positions=512)).eval()
    acoustic = AcousticModel(AcousticConfig.tiny(semantic_vocab_size=SEM, n_q=NQ,
                                                 codebook_size=CB)).eval()
    g = torch.Generator().manual_seed(1)
    speakers = {"alice": [{"text": "hello there", "frame_rate": r,
                           "semantic_codes": torch.randint(0, SEM, (6,), generator=g).tolist(),
                           "token_lengths": [2] * 6,
                           "acoustic_codes": torch.randint(0, CB, (NQ, 6), generator=g).tolist()}
                          for r in (12.5, 6.25)]}
    adir = tmp_path_factory.mktemp("ac") / "acoustic"
    acoustic.save_pretrained(adir)
    save_speakers(adir, speakers)
    from tts.speakers import load_speakers
    opts = SynthesisOptions(max_tokens_per_sentence=40)
    return TTS(ContractCodec().eval(), (lm, tok), AcousticModel.from_pretrained(adir),
               speakers=load_speakers(adir), options=opts)


def test_end_to_end_audio(tts):
    audio, sr = tts.synthesize("Hello there. The dog jumps!", seed=0)
    assert sr == 16000 and audio.dtype == np.float32 and audio.ndim == 1
    assert np.all(np.isfinite(audio)) and np.abs(audio).max() > 1e-3
    # two sentences: each 1..40 tokens of 1..8 frames, plus a 200 ms pause
    assert 2 * HOP + 3200 <= audio.size <= 2 * 40 * 8 * HOP + 3200
    assert audio.size % HOP == (3200 % HOP)
    # no clicks at the edges: fades to zero
    assert abs(audio[0]) < 0.05 and abs(audio[-1]) < 0.05
    outs = tts.synthesize(["One two.", "Three four."], speaker="alice", seed=1)
    assert isinstance(outs, list) and len(outs) == 2 and all(o[0].size > 0 for o in outs)


def test_stream_equals_offline_and_seed(tts):
    text = "Speech synthesis with a dynamic frame rate. One two three."
    a, _ = tts.synthesize(text, seed=3, frame_rate=12.5)
    chunks = list(tts.stream(text, seed=3, frame_rate=12.5))
    assert len(chunks) > 2  # really chunked
    assert np.array_equal(np.concatenate(chunks), a)
    assert tts.last_timing["first_chunk_s"] <= tts.last_timing["total_s"]
    b, _ = tts.synthesize(text, seed=3, frame_rate=12.5)
    assert np.array_equal(a, b)
    c, _ = tts.synthesize(text, seed=4, frame_rate=12.5)
    assert not (a.size == c.size and np.array_equal(a, c))


def test_prompt_wav(tts, tmp_path):
    t = np.arange(48000) / 48000.0
    wav = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    p = tmp_path / "ref48k.wav"
    sf.write(p, wav, 48000)  # another sample rate: resampled
    audio, _ = tts.synthesize("Hello there.", prompt_wav=p, prompt_text="hello there", seed=0)
    assert audio.size > 0 and np.all(np.isfinite(audio))
    audio2, _ = tts.synthesize("Hello there.", prompt_wav=p, prompt_text="hello there",
                               threshold=0.9, seed=0)
    assert audio2.size > 0


def test_bad_inputs(tts, tmp_path):
    with pytest.raises(TTSError, match="empty"):
        tts.synthesize("   ")
    with pytest.raises(TTSError, match="speakable"):
        tts.synthesize("?!... ---")
    with pytest.raises(TTSError, match="unknown speaker"):
        tts.synthesize("hello", speaker="nobody")
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(32000, dtype=np.float32), 16000)
    with pytest.raises(TTSError, match="silent"):
        tts.synthesize("hello", prompt_wav=silent, prompt_text="hello")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    with pytest.raises(AudioError, match="unreadable"):
        tts.synthesize("hello", prompt_wav=bad, prompt_text="hello")
    loud = tmp_path / "loud.wav"
    sf.write(loud, 0.3 * np.ones(32000, dtype=np.float32), 16000)
    with pytest.raises(TTSError, match="transcript"):
        tts.synthesize("hello", prompt_wav=loud)
    with pytest.raises(TTSError, match="not both"):
        tts.synthesize("hello", frame_rate=6.25, threshold=0.9)
    with pytest.raises(TTSError, match="frame_rate"):
        tts.synthesize("hello", frame_rate=50)


def test_evaluate_reports_every_rate(tts, tmp_path):
    from tts.evaluate import evaluate, to_markdown
    old = tts.options.max_tokens_per_sentence
    tts.options.max_tokens_per_sentence = 6  # short random audio keeps pocketsphinx fast
    try:
        res = evaluate(tts, ["Hello there.", "One two three."], frame_rates=(12.5, 6.25),
                       stream_every=1, out_dir=tmp_path)
    finally:
        tts.options.max_tokens_per_sentence = old
    assert set(res["rates"]) == {"12.5", "6.25"}
    for r in res["rates"].values():
        assert 0.0 <= r["wer"] and r["rtf"] > 0 and 0 < r["rtf_ar"] < r["rtf"]
        assert r["first_chunk_s"] > 0
    assert len(list((tmp_path / "wavs").glob("*.wav"))) == 4
    assert "| 6.25 | 2 |" in to_markdown(res)


def test_cli_argument_errors(capsys):
    from tts.cli import main
    with pytest.raises(SystemExit):
        main(["hello"])  # no -o
    with pytest.raises(SystemExit):
        main(["hello", "-o", "x.wav", "--frame-rate", "6", "--threshold", "0.9"])
    with pytest.raises(SystemExit):
        main(["-o", "x.wav"])  # no text
