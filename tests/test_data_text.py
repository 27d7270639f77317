from __future__ import annotations

import re

import pytest
import torch

from flexicodec.data.text import (load_sentences, normalize_text, number_to_words, ordinal_to_words,
                                  phonemize, split_sentences, year_to_words)

torch.set_num_threads(1)


@pytest.mark.parametrize("raw,expected", [
    ("I have 3 cats.", "I have three cats."),
    ("It cost $3.50.", "It cost three dollars and fifty cents."),
    ("It cost $1.", "It cost one dollar."),
    ("£2 million", "two million pounds"),
    ("a 15% rise", "a fifteen percent rise"),
    ("pi is 3.14", "pi is three point one four"),
    ("born in 1984", "born in nineteen eighty four"),
    ("in 2005 and 1900", "in two thousand five and nineteen hundred"),
    ("the 21st and 2nd and 12th", "the twenty first and second and twelfth"),
    ("1,234,567 items", "one million two hundred thirty four thousand five hundred sixty seven items"),
    ("Mr. Smith met Dr. Jones on St. Mark's Rd.", "mister Smith met doctor Jones on saint Mark's road."),
    ("Tom & Jerry @ home + more", "Tom and Jerry at home plus more"),
    ("the 1980s", "the nineteen eighties"),
    ("at 10:30 or 7:05", "at ten thirty or seven oh five"),
    ("  lots   of\tspace ", "lots of space"),
    ("Wait; what?! (really)", "Wait, what? really"),
    ("apples, pears, etc.", "apples, pears, et cetera."),
    ("It is 3.5km away.", "It is three point five kilometers away."),
    ("It weighs 1 kg, not 5 kg.", "It weighs one kilogram, not five kilograms."),
    ("It was -5°C.", "It was minus five degrees celsius."),
    ("the U.S. army in the U.S.A.", "the U S army in the U S A."),
    ("Meet at 10am", "Meet at ten a m"),
    ("add 1/2 cup or 3/4", "add one half cup or three quarters"),
    ("A1 sauce, 3x more", "A one sauce, three x more"),
])
def test_normalize_cases(raw, expected):
    assert normalize_text(raw) == expected


def test_normalize_keeps_only_basic_punctuation():
    out = normalize_text('He said: "No" -- [maybe] {x} <y> *z* #1 ~ ^ | \\ 5°')
    assert re.fullmatch(r"[\w\s.,?!'-]*", out), out
    assert "  " not in out
    with pytest.raises(TypeError):
        normalize_text(None)


def test_number_words():
    assert number_to_words(0) == "zero"
    assert number_to_words(105) == "one hundred five"
    assert number_to_words(2_000_001) == "two million one"
    assert number_to_words(-7) == "minus seven"
    assert ordinal_to_words(3) == "third" and ordinal_to_words(40) == "fortieth"
    assert year_to_words(1905) == "nineteen oh five"


def test_split_sentences():
    text = "Dr. Smith went home. He slept! Did he? Yes.  J. R. R. Tolkien wrote it."
    assert split_sentences(text) == ["Dr. Smith went home.", "He slept!", "Did he?", "Yes.",
                                     "J. R. R. Tolkien wrote it."]
    assert split_sentences("   ") == []


def test_shipped_sentences():
    sents = load_sentences()
    assert len(sents) >= 20000
    sample = sents[::97]
    for s in sample:
        n = len(normalize_text(s).split())
        assert 3 <= n <= 25, s
    keys = [re.sub(r"[^a-z0-9 ]", "", normalize_text(s).lower()) for s in sents]
    assert len(set(keys)) == len(keys)


def test_phonemize_batch_alignment():
    texts = ["Hello world, this is a test.", "", "Second one!", "cat"]
    out = phonemize(texts)
    assert len(out) == 4 and out[1] == ""
    assert len(out[0].split()) == 6          # one IPA word per word, clause punctuation dropped
    assert "k" in out[3] and "æ" in out[3]
    assert all(re.search(r"[a-zA-Z]", p) is None or "ˈ" in p or p == "" for p in out[:1])
    with pytest.raises(TypeError):
        phonemize("not a list")
