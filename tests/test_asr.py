"""PhonemeASR: contract shapes, padding invariance, save/load, tokenisation, CTC learning."""
from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch

from flexicodec.codec.asr.model import (PhonemeASR, PhonemeASRConfig, build_vocab, phoneme_error_counts,
                                        normalize_phonemes)
from flexicodec.codec.mel import MelSpectrogram, mel_filterbank
from flexicodec.common.pretrained import CheckpointError
from flexicodec.data.audio import load_audio

torch.set_num_threads(1)

SENTENCES = ["the cat sat on the mat", "she sells sea shells"]


def _espeak(text: str, path) -> tuple[np.ndarray, str]:
    subprocess.run(["espeak-ng", "-w", str(path), text], check=True)
    ipa = subprocess.run(["espeak-ng", "-q", "--ipa", text], check=True, capture_output=True,
                         text=True).stdout
    wav, _ = load_audio(path, 16000)
    return wav, " ".join(ipa.split())


@pytest.fixture(scope="module")
def utts(tmp_path_factory):
    d = tmp_path_factory.mktemp("asr")
    return [_espeak(s, d / f"{i}.wav") for i, s in enumerate(SENTENCES)]


def test_mel_filterbank_and_spectrogram():
    fb = mel_filterbank(16000, 400, 40)
    assert fb.shape == (40, 201) and (fb >= 0).all() and (fb.sum(1) > 0).all()
    mel = MelSpectrogram(16000, 400, 160, n_mels=40)
    wav = torch.sin(2 * torch.pi * 440 * torch.arange(16000) / 16000)[None]
    out = mel(wav)
    assert out.shape == (1, 40, 101)
    # energy of a 440 Hz tone peaks in a low mel band
    assert int(out[0, :, 50].argmax()) < 12
    with pytest.raises(ValueError):
        mel(wav[0])


def test_vocab_and_tokenize():
    vocab = build_vocab(["həlˈəʊ wˈɜːld", "ðə kˈat"])
    assert vocab[:3] == ["<blank>", "<unk>", " "] and "ˈ" not in vocab and "ə" in vocab
    asr = PhonemeASR(PhonemeASRConfig.tiny(vocab=vocab))
    ids = asr.tokenize("həlˈəʊ  x")
    assert ids[-1] == 1 and 0 not in ids          # unseen 'x' → <unk>, never blank
    assert asr.decode_ids(asr.tokenize("ðə kˈat")) == "ðə kat"
    with pytest.raises(ValueError):
        build_vocab(["", "  "])
    with pytest.raises(ValueError):
        PhonemeASRConfig(vocab=["a", "b"])
    assert phoneme_error_counts("ðə kat", "ðə kˈat") == (0, 5)
    assert phoneme_error_counts("ə kat", "ðə kat") == (1, 5)
    assert normalize_phonemes(" a  b ") == "a b"


def test_contract_shapes_and_padding_invariance():
    torch.manual_seed(0)
    asr = PhonemeASR(PhonemeASRConfig.tiny()).eval()
    assert asr.feature_rate == 25.0 and asr.feature_dim == 32
    wav = torch.randn(2, 16000) * 0.1
    lengths = torch.tensor([16000, 9000])
    feats, flen = asr.hidden_states(wav, lengths)
    assert feats.shape == (2, 26, 32) and flen.tolist() == [26, 15]
    assert feats[1, 15:].abs().max() == 0
    alone, alen = asr.hidden_states(wav[1:, :9000])
    assert alen.tolist() == [15]
    torch.testing.assert_close(feats[1, :15], alone[0], atol=1e-4, rtol=1e-4)
    l0, _ = asr.hidden_states(wav, lengths, layer=0)
    assert l0.shape == feats.shape and not torch.allclose(l0, feats)
    logits, _ = asr(wav, lengths)
    assert logits.shape == (2, 26, len(asr.vocab))
    assert len(asr.transcribe(wav, lengths)) == 2
    with pytest.raises(ValueError):
        asr.hidden_states(wav, lengths, layer=7)
    with pytest.raises(ValueError):
        asr.hidden_states(wav[0])
    with pytest.raises(ValueError):
        asr.hidden_states(wav, torch.tensor([16001, 10]))
    asr50 = PhonemeASR(PhonemeASRConfig.tiny(subsampling=2))
    assert asr50.feature_rate == 50.0


def test_save_load_roundtrip(tmp_path):
    asr = PhonemeASR(PhonemeASRConfig.tiny()).eval()
    asr.save_pretrained(tmp_path / "asr")
    back = PhonemeASR.from_pretrained(tmp_path / "asr")
    wav = torch.randn(1, 8000) * 0.1
    torch.testing.assert_close(asr.hidden_states(wav)[0], back.hidden_states(wav)[0])
    assert back.vocab == asr.vocab
    with pytest.raises(CheckpointError):
        PhonemeASR.from_pretrained(tmp_path / "nothing")


def test_ctc_learns_two_utterances(utts):
    """A tiny model overfits two real espeak utterances: CTC loss falls and PER drops."""
    torch.manual_seed(0)
    vocab = build_vocab([p for _, p in utts])
    asr = PhonemeASR(PhonemeASRConfig.tiny(vocab=vocab, d_model=64, ff_dim=128))
    n = max(len(w) for w, _ in utts)
    wav = torch.zeros(2, n)
    for i, (w, _) in enumerate(utts):
        wav[i, : len(w)] = torch.from_numpy(w)
    lengths = torch.tensor([len(w) for w, _ in utts])
    targets = [asr.tokenize(p) for _, p in utts]
    opt = torch.optim.AdamW(asr.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        logits, flen = asr(wav, lengths)
        loss = asr.ctc_loss(logits, flen, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], (losses[0], losses[-1])
    asr.eval()
    hyps = asr.transcribe(wav, lengths)
    errs = sum(phoneme_error_counts(h, p)[0] for h, (_, p) in zip(hyps, utts))
    total = sum(phoneme_error_counts(h, p)[1] for h, (_, p) in zip(hyps, utts))
    assert errs / total < 0.5, (hyps, [p for _, p in utts])


def test_all_hidden_states_is_one_pass_of_every_layer():
    """all_hidden_states gives hidden_states(layer=k) for every k and the CTC head's input."""
    torch.manual_seed(0)
    asr = PhonemeASR(PhonemeASRConfig.tiny()).eval()
    wav = torch.randn(2, 8000) * 0.1
    lens = torch.tensor([8000, 5000])
    layers, flen = asr.all_hidden_states(wav, lens)
    assert len(layers) == len(asr.layers) + 1
    for k, h in enumerate(layers):
        ref, rlen = asr.hidden_states(wav, lens, layer=k)
        assert torch.equal(rlen, flen) and torch.allclose(h, ref, atol=1e-6), k
    logits, _ = asr(wav, lens)
    assert torch.allclose(asr.head(layers[-1]), logits, atol=1e-6)
