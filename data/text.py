"""English text: the shipped sentence list, the one text normaliser, sentence splitting and
espeak-ng phonemisation (IPA strings for the corpus, token sequences for the speech LM).

``normalize_text`` is used by the corpus builder, the LM tokenizer and TTS alike, so the same
surface form reaches every model. It spells out numbers (cardinals, ordinals, years,
decimals), currency, percentages, common abbreviations and a few symbols, keeps basic
punctuation (``. , ? ! '``) and collapses whitespace. Also: initialisms (``U.S.`` → ``U S``),
units after a number (``5 kg``, ``3.5km``, ``-5°C``), ``10am``, simple fractions, and digits
glued to letters (``A1`` → ``A one``).
"""
from __future__ import annotations

import gzip
import os
import re
import subprocess
import unicodedata
from functools import lru_cache
from pathlib import Path

RESOURCES = Path(__file__).resolve().parent / "resources"
SENTENCES_PATH = RESOURCES / "sentences.txt.gz"

# --------------------------------------------------------------------------- numbers
_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
         "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen",
         "seventeen", "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_SCALES = [(10 ** 12, "trillion"), (10 ** 9, "billion"), (10 ** 6, "million"),
           (1000, "thousand")]
_ORD_IRREGULAR = {"one": "first", "two": "second", "three": "third", "five": "fifth",
                  "eight": "eighth", "nine": "ninth", "twelve": "twelfth"}


def number_to_words(n: int) -> str:
    """Cardinal number in words: ``1234 -> "one thousand two hundred thirty four"``."""
    if n < 0:
        return "minus " + number_to_words(-n)
    if n < 20:
        return _ONES[n]
    if n < 100:
        t, o = divmod(n, 10)
        return _TENS[t] + ("" if o == 0 else " " + _ONES[o])
    if n < 1000:
        h, r = divmod(n, 100)
        return _ONES[h] + " hundred" + ("" if r == 0 else " " + number_to_words(r))
    for value, name in _SCALES:
        if n >= value:
            q, r = divmod(n, value)
            head = number_to_words(q)
            return head + " " + name + ("" if r == 0 else " " + number_to_words(r))
    raise AssertionError("unreachable")


def ordinal_to_words(n: int) -> str:
    """Ordinal in words: ``21 -> "twenty first"``, ``12 -> "twelfth"``."""
    words = number_to_words(n).split()
    last = words[-1]
    if last in _ORD_IRREGULAR:
        words[-1] = _ORD_IRREGULAR[last]
    elif last.endswith("y"):
        words[-1] = last[:-1] + "ieth"
    else:
        words[-1] = last + "th"
    return " ".join(words)


def year_to_words(n: int) -> str:
    """Year reading: ``1984 -> "nineteen eighty four"``, ``2005 -> "two thousand five"``,
    ``1900 -> "nineteen hundred"``."""
    if 2000 <= n <= 2009 or n < 1000 or n % 1000 == 0:
        return number_to_words(n)
    hi, lo = divmod(n, 100)
    if lo == 0:
        return number_to_words(hi) + " hundred"
    if lo < 10:
        return number_to_words(hi) + " oh " + number_to_words(lo)
    return number_to_words(hi) + " " + number_to_words(lo)


def _digits(s: str) -> str:
    return " ".join(_ONES[int(c)] for c in s)


def _int_words(s: str) -> str:
    return number_to_words(int(s.replace(",", "")))


_CURRENCY = {"$": ("dollar", "dollars", "cent", "cents"),
             "£": ("pound", "pounds", "penny", "pence"),
             "€": ("euro", "euros", "cent", "cents"),
             "¥": ("yen", "yen", "", "")}
_SCALE_WORDS = r"(?:thousand|million|billion|trillion)"


def _currency(m: re.Match) -> str:
    sym, whole, frac, scale = m.group(1), m.group(2), m.group(3), m.group(4)
    one, many, sub1, subn = _CURRENCY[sym]
    whole_n = int(whole.replace(",", ""))
    if scale:
        amount = _int_words(whole) + (" point " + _digits(frac) if frac else "")
        return f"{amount} {scale} {many}"
    out = f"{number_to_words(whole_n)} {one if whole_n == 1 else many}"
    if frac and sub1:
        cents = int((frac + "0")[:2])
        if cents:
            out += f" and {number_to_words(cents)} {sub1 if cents == 1 else subn}"
    elif frac:
        out = f"{number_to_words(whole_n)} point {_digits(frac)} {many}"
    return out


def _number(m: re.Match) -> str:
    whole, frac = m.group(1), m.group(2)
    plain = whole.replace(",", "")
    if frac is not None:
        return _int_words(whole) + " point " + _digits(frac)
    if "," not in whole and len(plain) == 4 and 1100 <= int(plain) <= 2099:
        return year_to_words(int(plain))
    if len(plain) > 1 and plain.startswith("0"):
        return _digits(plain)
    return _int_words(whole)


# --------------------------------------------------------------------------- abbreviations
_ABBREVIATIONS = [
    (r"\bMr\.", "mister"), (r"\bMrs\.", "missus"), (r"\bMs\.", "miz"), (r"\bDr\.", "doctor"),
    (r"\bProf\.", "professor"), (r"\bSr\.", "senior"), (r"\bJr\.", "junior"),
    (r"\bGen\.", "general"), (r"\bCapt\.", "captain"), (r"\bLt\.", "lieutenant"),
    (r"\bCol\.", "colonel"), (r"\bGov\.", "governor"), (r"\bRev\.", "reverend"),
    (r"\bSt\.(?=\s+[A-Z])", "saint"), (r"\bSt\.", "street"), (r"\bAve\.", "avenue"),
    (r"\bRd\.", "road"), (r"\bMt\.", "mount"), (r"\bFt\.", "fort"), (r"\bCo\.", "company"),
    (r"\bCorp\.", "corporation"), (r"\bInc\.", "incorporated"), (r"\bLtd\.", "limited"),
    (r"\bDept\.", "department"), (r"\bNo\.(?=\s*\d)", "number"), (r"\bvs\.", "versus"),
    (r"\betc\.", "et cetera"), (r"\be\.g\.", "for example"), (r"\bi\.e\.", "that is"),
    (r"\ba\.m\.", "a m"), (r"\bp\.m\.", "p m"), (r"\bJan\.", "january"),
    (r"\bFeb\.", "february"), (r"\bAug\.", "august"), (r"\bSept?\.", "september"),
    (r"\bOct\.", "october"), (r"\bNov\.", "november"), (r"\bDec\.", "december"),
    (r"\bapprox\.", "approximately"), (r"\bmin\.", "minutes"), (r"\bhrs?\.", "hours"),
]
_ABBREV_RE = [(re.compile(p), w) for p, w in _ABBREVIATIONS]
_SYMBOLS = {"&": " and ", "@": " at ", "+": " plus ", "=": " equals ", "#": " number ",
            "°": " degrees ", "×": " times ", "/": " slash "}
# units spelled out after a number (singular after "one"); "°C"/"°F" before the "°" symbol
_UNITS = {"km": ("kilometer", "kilometers"), "cm": ("centimeter", "centimeters"),
          "mm": ("millimeter", "millimeters"), "kg": ("kilogram", "kilograms"),
          "mg": ("milligram", "milligrams"), "g": ("gram", "grams"),
          "lb": ("pound", "pounds"), "lbs": ("pound", "pounds"), "oz": ("ounce", "ounces"),
          "mph": ("mile per hour", "miles per hour"),
          "km/h": ("kilometer per hour", "kilometers per hour"),
          "kHz": ("kilohertz", "kilohertz"), "Hz": ("hertz", "hertz"),
          "GB": ("gigabyte", "gigabytes"), "MB": ("megabyte", "megabytes"),
          "°C": ("degree celsius", "degrees celsius"),
          "°F": ("degree fahrenheit", "degrees fahrenheit")}
_UNIT_RE = re.compile(r"(\d[\d,]*(?:\.\d+)?)\s?(" + "|".join(
    re.escape(u) for u in sorted(_UNITS, key=len, reverse=True)) + r")(?![\w/])")
_FRACTIONS = {(1, 2): "one half", (1, 3): "one third", (2, 3): "two thirds",
              (1, 4): "one quarter", (3, 4): "three quarters"}


def _unit(m: re.Match) -> str:
    one, many = _UNITS[m.group(2)]
    return f"{m.group(1)} {one if m.group(1) == '1' else many}"


def _fraction(m: re.Match) -> str:
    a, b = int(m.group(1)), int(m.group(2))
    if (a, b) in _FRACTIONS:
        return _FRACTIONS[(a, b)]
    return f"{number_to_words(a)} over {number_to_words(b)}"


_QUOTES = {"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "`": "'", "\u00b4": "'",
           "\u2013": " - ", "\u2014": " - "}


def normalize_text(text: str) -> str:
    """Spell out ``text`` for speech: numbers, currency, %, abbreviations, symbols → words.

    Keeps ``. , ? ! '`` (other punctuation becomes a comma or a space), lower-cases nothing
    except the expanded words, collapses whitespace. ``"Dr. Smith paid $3.50 on May 2nd,
    1999."`` → ``"doctor Smith paid three dollars and fifty cents on May second, nineteen
    ninety nine."``
    """
    if not isinstance(text, str):
        raise TypeError(f"normalize_text expects str, got {type(text).__name__}")
    s = text
    for k, v in _QUOTES.items():
        s = s.replace(k, v)
    for rx, word in _ABBREV_RE:
        # an abbreviation that ends the text also ends the sentence: keep its period
        s = rx.sub(lambda m, w=word: w + ("." if not m.string[m.end():].strip() else ""), s)
    # initialisms: "U.S.A." -> "U S A" (a final period that ends the text is kept)
    s = re.sub(r"\b((?:[A-Z]\.){2,})", lambda m: " ".join(m.group(1).replace(".", " ").split())
               + ("." if not m.string[m.end():].strip() else ""), s)
    s = re.sub(r"\b(\d{1,2})\s?([ap])m\b", r"\1 \2 m", s)          # "10am" -> "10 a m"
    s = _UNIT_RE.sub(_unit, s)
    s = re.sub(r"\b(\d+)/(\d+)\b", _fraction, s)
    s = re.sub(r"([$£€¥])\s?(\d[\d,]*)(?:\.(\d+))?(?:\s+(" + _SCALE_WORDS + r"))?",
               _currency, s)
    s = re.sub(r"(\d[\d,]*(?:\.\d+)?)\s?%", lambda m: m.group(1) + " percent", s)
    s = re.sub(r"\b(\d+)(st|nd|rd|th)\b", lambda m: ordinal_to_words(int(m.group(1))), s)
    s = re.sub(r"\b(\d{4})s\b", lambda m: _plural(year_to_words(int(m.group(1)))), s)
    s = re.sub(r"\b(\d+)s\b", lambda m: _plural(number_to_words(int(m.group(1)))), s)
    s = re.sub(r"(\d)([^\W\d_])", r"\1 \2", s)    # "3x" -> "3 x", "A1" -> "A 1"
    s = re.sub(r"([^\W\d_])(\d)", r"\1 \2", s)
    s = re.sub(r"(\d)\s*-\s*(\d)", r"\1 to \2", s)
    s = re.sub(r"(?<![\d.])-(?=\d)", "minus ", s)
    s = re.sub(r"(\d):(\d\d)\b", lambda m: m.group(1) + " " + (
        "o'clock" if m.group(2) == "00" else (
            "oh " + m.group(2)[1] if m.group(2)[0] == "0" else m.group(2))), s)
    s = re.sub(r"(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?", _number, s)
    for k, v in _SYMBOLS.items():
        s = s.replace(k, v)
    s = re.sub(r"[;:]", ",", s)
    s = re.sub(r"[\"()\[\]{}<>*_~^|\\]", " ", s)
    s = re.sub(r"\s-+\s|--+", ", ", s)
    s = re.sub(r"[^\w\s.,?!'-]", " ", s)
    s = re.sub(r"\s+", " ", s).strip()
    s = re.sub(r"\s+([.,?!])", r"\1", s)
    s = re.sub(r"([.,?!])\1+", r"\1", s)
    s = re.sub(r"([?!])[?!.]+", r"\1", s)
    s = re.sub(r",([.?!])", r"\1", s)
    s = re.sub(r"^[,.\s]+", "", s)
    return s


def _plural(words: str) -> str:
    w = words.split()
    last = w[-1]
    w[-1] = last[:-1] + "ies" if last.endswith("y") else last + ("es" if last.endswith("x")
                                                                 else "s")
    return " ".join(w)


# --------------------------------------------------------------------------- sentences
_SPLIT_RE = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")
_NO_SPLIT_AFTER = re.compile(r"\b(?:Mr|Mrs|Ms|Dr|Prof|Sr|Jr|St|Gen|Capt|Lt|Col|Gov|Rev|Mt|Ft|"
                             r"Co|Corp|Inc|Ltd|Dept|No|vs|etc|e\.g|i\.e|[A-Z])\.$")


def split_sentences(text: str) -> list[str]:
    """Split running text into sentences at ``. ! ?`` followed by a capital or digit, not
    after common abbreviations or initials. Whitespace is collapsed; empty pieces dropped."""
    text = re.sub(r"\s+", " ", text).strip()
    if not text:
        return []
    pieces = _SPLIT_RE.split(text)
    out: list[str] = []
    for p in pieces:
        p = p.strip()
        if not p:
            continue
        if out and _NO_SPLIT_AFTER.search(out[-1]):
            out[-1] = out[-1] + " " + p
        else:
            out.append(p)
    return out


@lru_cache(maxsize=1)
def _load_sentences_cached(path: str) -> tuple[str, ...]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: sentence list missing (build it with "
                                f"`python -m flexicodec.data.build_sentences`)")
    with gzip.open(p, "rt", encoding="utf-8") as f:
        lines = [ln.rstrip("\n") for ln in f]
    sents = tuple(ln for ln in lines if ln and not ln.startswith("#"))
    if not sents:
        raise ValueError(f"{p}: no sentences in file")
    return sents


def load_sentences(path: str | os.PathLike | None = None) -> list[str]:
    """The shipped English sentence list (raw text, one sentence each; see
    ``data/resources/README.md`` for provenance and license)."""
    return list(_load_sentences_cached(str(path or SENTENCES_PATH)))


# --------------------------------------------------------------------------- phonemes
def espeak_binary() -> str:
    """Path of espeak-ng, honouring a private prefix (``FLEXICODEC_SYNTH_PREFIX``)."""
    from flexicodec.data.synth import find_tool  # local import: synth imports this module
    return find_tool("espeak-ng")


def phonemize(texts: list[str], voice: str = "en-us", separator: str | None = None
              ) -> list[str]:
    """IPA phonemes for each text via one espeak-ng call (stdin, one sentence per line).

    Returns one string per input, words separated by spaces ("" for an empty text or one
    espeak-ng reads as nothing). ``separator``: a character espeak-ng puts between the
    phonemes of a word (its ``--sep``), e.g. ``"|"`` gives ``"h|ə|l|ˈoʊ"``.
    Raises RuntimeError if espeak-ng fails.
    """
    if isinstance(texts, str):
        raise TypeError("phonemize expects a list of strings, not a single string")
    texts = [re.sub(r"\s+", " ", t).strip() for t in texts]
    idx = [i for i, t in enumerate(texts) if t]
    out = [""] * len(texts)
    if not idx:
        return out
    from flexicodec.data.synth import synth_env
    # espeak-ng joins consecutive lines into one clause stream but starts a new output line
    # at a blank line (paragraph) and at clause punctuation; so clause punctuation is
    # dropped and texts are separated by blank lines: one output line per text.
    lines = [re.sub(r"[.,?!;:\"()]+", " ", texts[i]).strip() or "." for i in idx]
    env = synth_env()
    res = _espeak_lines(lines, voice, env, separator)
    if len(res) != len(idx):
        # a text espeak-ng reads as nothing (e.g. only an apostrophe) leaves no line: redo
        # the texts one by one so every output stays with its input
        res = [" ".join(_espeak_lines([ln], voice, env, separator)) for ln in lines]
    for i, r in zip(idx, res):
        out[i] = re.sub(r"\s+", " ", r.replace("_", " ")).strip()
    return out


def _espeak_lines(lines: list[str], voice: str, env: dict, separator: str | None = None
                  ) -> list[str]:
    sep = [] if separator is None else [f"--sep={separator}"]
    proc = subprocess.run([espeak_binary(), "-q", "--ipa", *sep, "-v", voice, "--stdin"],
                          input="\n\n".join(lines) + "\n", capture_output=True, text=True,
                          env=env, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"espeak-ng failed ({proc.returncode}): {proc.stderr.strip()}")
    return [ln.strip() for ln in proc.stdout.splitlines() if ln.strip()]


#: clause punctuation kept as tokens of a phoneme sequence (what normalize_text keeps)
PUNCTUATION = (".", ",", "?", "!")
#: the word-boundary token of a phoneme sequence
WORD_BOUNDARY = " "
#: espeak-ng's primary and secondary stress marks (part of the stressed phoneme's token)
STRESS_MARKS = ("ˈ", "ˌ")
_PHONE_SEP = "|"


def phoneme_tokens(texts: list[str], voice: str = "en-us") -> list[list[str]]:
    """Phoneme token sequences of normalised texts (see :func:`normalize_text`): the speech
    LM's phoneme input.

    Tokens: espeak-ng's phonemes (``"oʊ"``, ``"tʃ"``, ``"ɑːɹ"``: one token each, NFC) with
    their stress mark (``"ˈoʊ"``, ``"ˌɛ"``: stress is part of the vowel's token, which keeps
    sequences short), ``" "`` between words, and the punctuation ``. , ? !`` right after the
    word it follows. The text between punctuation marks is phonemised by one espeak-ng call
    for all ``texts``. ``"Hello there, you."`` → ``h ə l ˈoʊ ␣ ð ˈɛɹ , ␣ j uː .``
    (␣ = ``" "``). A text without letters or digits gives ``[]``.
    """
    if isinstance(texts, str):
        raise TypeError("phoneme_tokens expects a list of strings, not a single string")
    chunks: list[str] = []
    plans: list[list[str | int]] = []
    for t in texts:
        plan: list[str | int] = []
        for m in re.finditer(r"[^.,?!]+|[.,?!]", t):
            part = m.group(0)
            if part in PUNCTUATION:
                plan.append(part)
            elif any(ch.isalnum() for ch in part):
                plan.append(len(chunks))
                chunks.append(part)
        plans.append(plan)
    ipa = phonemize(chunks, voice, separator=_PHONE_SEP) if chunks else []
    out = []
    for plan in plans:
        toks: list[str] = []
        for part in plan:
            if isinstance(part, str):           # punctuation: only right after a word
                if toks and toks[-1] not in PUNCTUATION:
                    toks.append(part)
                continue
            for word in ipa[part].split():
                units = [unicodedata.normalize("NFC", p) for p in word.split(_PHONE_SEP)
                         if p]
                if units:
                    if toks:
                        toks.append(WORD_BOUNDARY)
                    toks.extend(units)
        out.append(toks)
    return out


def have_espeak() -> bool:
    try:
        espeak_binary()
        return True
    except FileNotFoundError:
        return False


__all__ = ["normalize_text", "split_sentences", "phonemize", "phoneme_tokens", "load_sentences",
           "number_to_words", "ordinal_to_words", "year_to_words", "SENTENCES_PATH"]
