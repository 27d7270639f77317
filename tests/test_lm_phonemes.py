"""Phoneme front end of the speech LM: text → normalised text → espeak-ng phoneme tokens
(word boundaries, stress, punctuation) → ids; the vocabulary beside the model; the shipped
BPE LM still loads as BPE."""
from __future__ import annotations

import json
import logging

import pytest
import torch

from flexicodec.data.text import PUNCTUATION, STRESS_MARKS, WORD_BOUNDARY, phoneme_tokens, phonemize
from flexicodec.lm.model import SpeechLM, SpeechLMConfig, load_lm
from flexicodec.lm.phoneme_tokenizer import UNK, PhonemeTokenizer, text_to_phonemes
from flexicodec.lm.text_tokenizer import TokenizerError

torch.set_num_threads(1)


def test_phoneme_tokens_structure():
    (toks,) = phoneme_tokens(["Hello there, how are you?"])
    # words: hello | there , | how | are | you ?
    words = "".join(toks).split(" ")
    assert len(words) == 5 and toks.count(WORD_BOUNDARY) == 4
    assert toks[-1] == "?" and toks[toks.index(",") + 1] == WORD_BOUNDARY
    # a stress mark only opens a phoneme token (the stressed vowel), never stands alone
    assert all(t[0] in STRESS_MARKS and len(t) > 1 or not any(s in t for s in STRESS_MARKS)
               for t in toks)
    assert "ˈoʊ" in toks and "ə" in toks
    # the corpus builder's IPA of each clause, up to the separators
    ipa = " ".join(phonemize(["Hello there", "how are you"]))
    assert "".join(t for t in toks if t not in PUNCTUATION) == ipa
    # no letters -> no tokens; punctuation never leads or doubles
    assert phoneme_tokens(["", "...", "' -"]) == [[], [], []]
    (t2,) = phoneme_tokens(["Well... yes!! No?"])
    assert t2[0] not in PUNCTUATION and "".join(t2).count("!") == 1


def test_text_to_phonemes_normalises_numbers_and_symbols():
    a, b = text_to_phonemes(["Dr. Smith paid $3 at 5pm, 50% off!",
                             "doctor Smith paid three dollars at five p m, fifty percent off!"])
    assert a == b and a[-1] == "!"
    # many texts in one call give the same as one by one (the line mapping holds), and so
    # does tokenize's split over several espeak-ng processes (repeated texts done once)
    texts = ["One.", "'", "Two, three!", "", "A1 sauce", "Zürich café", "One.", "four"]
    one_by_one = [text_to_phonemes([t])[0] for t in texts]
    assert text_to_phonemes(texts) == one_by_one
    from flexicodec.lm.tokenize import _phonemes_of
    assert _phonemes_of(texts, "en-us", workers=3) == one_by_one


def test_phoneme_tokenizer_round_trip_unknown_and_errors(tmp_path, caplog):
    seqs = text_to_phonemes(["the quick brown fox", "jumps over the lazy dog."])
    tok = PhonemeTokenizer.build(seqs, tmp_path)
    assert tok.path.name == "phoneme_vocab.json" and tok.symbols[0] == UNK
    ids = tok.encode("The quick brown fox.")
    assert min(ids) > 0
    assert tok.decode(ids) == "".join(text_to_phonemes(["The quick brown fox."])[0])
    again = PhonemeTokenizer(tmp_path)
    assert again.symbols == tok.symbols
    assert again.encode("the lazy dog") == tok.encode("the lazy dog")
    # a phoneme outside the vocabulary: <unk>, with a warning naming it (documented fallback)
    with caplog.at_level(logging.WARNING):
        ids = tok.encode("Zürich")
    assert 0 in ids and "not in the LM's phoneme vocabulary" in caplog.text
    with pytest.raises(TokenizerError, match="no phonemes"):
        tok.encode("...")
    with pytest.raises(TokenizerError, match="expected a string"):
        tok.encode_batch(["ok", 3])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": 1, "voice": "en-us", "symbols": ["a", "b"]}))
    with pytest.raises(TokenizerError, match="<unk>"):
        PhonemeTokenizer(bad)
    with pytest.raises(TokenizerError, match="no phonemes to build"):
        PhonemeTokenizer.build([[]], tmp_path / "empty")


def test_phoneme_lm_saves_vocab_and_reloads(tmp_path):
    tok = PhonemeTokenizer.build(text_to_phonemes(["hello there, how are you?"]), tmp_path / "v")
    torch.manual_seed(0)
    m = SpeechLM(SpeechLMConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=2,
                                intermediate_size=64, num_text=tok.vocab_size,
                                semantic_size=16, text_input="phoneme"))
    m.save_pretrained(tmp_path / "lm", tokenizer_path=tok.path)
    cfg = json.loads((tmp_path / "lm" / "config.json").read_text())
    assert cfg["config"]["text_input"] == "phoneme"
    m2, tok2 = load_lm(tmp_path / "lm")
    assert isinstance(tok2, PhonemeTokenizer) and tok2.symbols == tok.symbols
    assert m2.config.text_input == "phoneme"
    with pytest.raises(ValueError, match="text_input"):
        SpeechLMConfig(text_input="chars")


def test_shipped_lm_is_bpe_and_unchanged():
    """The shipped LM's config.json predates text_input: it loads as BPE, with its
    sentencepiece tokenizer, and a saved config written now says so explicitly."""
    from flexicodec.common.pretrained import default_checkpoint
    d = default_checkpoint("lm", "LM")
    assert "text_input" not in json.loads((d / "config.json").read_text())["config"]
    model, tok = load_lm(d)
    assert model.config.text_input == "bpe" and tok.text_input == "bpe"
    assert tok.vocab_size == model.config.num_text
    ids = tok.encode("Hello there.")
    from flexicodec.lm.generate import SamplingConfig, generate
    r = generate(model, [ids], 6.25, SamplingConfig(greedy=True, max_tokens=5))[0]
    assert 1 <= r.semantic_codes.numel() <= 5
