"""Build the shipped sentence list ``data/resources/sentences.txt.gz`` (run once, here).

The GPU machine has no apt and no network, so the list is made on a Debian machine and
committed. Sources (Debian packages, fetched with ``apt-get download`` and unpacked with
``dpkg -x``, nothing installed):

- ``wordnet-base`` (WordNet 3.0 usage examples from ``/usr/share/wordnet/data.*``; WordNet 3.0
  license, permissive, notice kept in ``data/resources/README.md``),
- ``fortunes`` + ``fortunes-min`` (fortune-mod cookie files, general-interest files only;
  BSD-style license, freely redistributable).

Usage::

    python -m flexicodec.data.build_sentences --work /tmp/sentsrc [--out data/resources/sentences.txt.gz]

Filters: 3–25 words after :func:`flexicodec.data.text.normalize_text`, plain ASCII letters and basic
punctuation only, no all-caps shouting, no URLs/code, deduplicated on the normalised
lower-cased text; the output order is a seeded shuffle.
"""
from __future__ import annotations

import argparse
import glob
import gzip
import logging
import random
import re
import subprocess
from pathlib import Path

from flexicodec.data.text import SENTENCES_PATH, normalize_text, split_sentences

log = logging.getLogger(__name__)
PACKAGES = ("wordnet-base", "fortunes", "fortunes-min")
FORTUNE_FILES = ("art", "cookie", "education", "food", "fortunes", "goedel", "humorists",
                 "kids", "law", "literature", "love", "magic", "medicine", "men-women",
                 "miscellaneous", "news", "people", "pets", "platitudes", "politics",
                 "science", "songs-poems", "sports", "wisdom", "work")
_OK_CHARS = re.compile(r"^[A-Za-z0-9 ,.;:?!'\"$%&()-]+$")


def fetch(work: Path) -> Path:
    """apt-get download the source packages into ``work`` and dpkg -x them; returns root."""
    work.mkdir(parents=True, exist_ok=True)
    subprocess.run(["apt-get", "download", *PACKAGES], cwd=work, check=True)
    root = work / "root"
    for deb in sorted(work.glob("*.deb")):
        subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
    return root


def wordnet_examples(root: Path) -> list[str]:
    out = []
    for f in sorted(glob.glob(str(root / "usr/share/wordnet/data.*"))):
        for line in open(f, encoding="latin-1"):
            if line.startswith("  ") or "|" not in line:
                continue
            for ex in re.findall(r'"([^"]+)"', line.split("|", 1)[1]):
                ex = ex.strip().replace("`", "'")
                if len(ex.split()) < 4:
                    continue
                ex = ex[0].upper() + ex[1:]
                if ex[-1] not in ".?!":
                    ex += "."
                out.append(ex)
    return out


def fortune_sentences(root: Path) -> list[str]:
    out = []
    base = root / "usr/share/games/fortunes"
    for name in FORTUNE_FILES:
        f = base / name
        if not f.is_file():
            continue
        for cookie in f.read_text(encoding="latin-1").split("\n%\n"):
            lines = [ln for ln in cookie.splitlines()
                     if not re.match(r"^\s*(--|-|~)\s*\w", ln)]  # drop attributions
            text = " ".join(ln.strip() for ln in lines)
            if re.search(r"\w:\s|\t|http|www\.|[<>{}\[\]|/\\=_*#@]", cookie):
                continue  # dialogue scripts, code, urls, ascii-art
            out.extend(split_sentences(text))
    return out


def keep(sentence: str) -> str | None:
    """The normalised sentence if it passes the filters, else None."""
    s = sentence.strip()
    if not _OK_CHARS.match(s) or sum(c.isupper() for c in s) > 0.3 * sum(c.isalpha() for c in s):
        return None
    if s.count('"') % 2 or s.count("(") != s.count(")"):
        return None
    norm = normalize_text(s)
    n = len(norm.split())
    if not 3 <= n <= 25 or not re.search(r"[a-z]", norm):
        return None
    return norm


def build(root: Path, seed: int = 0) -> list[str]:
    seen, out = set(), []
    sources = {"wordnet": wordnet_examples(root), "fortunes": fortune_sentences(root)}
    for name, sents in sources.items():
        n0 = len(out)
        for s in sents:
            norm = keep(s)
            if norm is None:
                continue
            key = re.sub(r"[^a-z0-9 ]", "", norm.lower())
            if key in seen:
                continue
            seen.add(key)
            out.append(re.sub(r"\s+", " ", s.strip().replace('"', "")))
        log.info("%s: %d candidates, %d kept", name, len(sents), len(out) - n0)
    random.Random(seed).shuffle(out)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="scratch dir for the .deb files")
    ap.add_argument("--out", type=Path, default=SENTENCES_PATH)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root = args.work / "root"
    if not root.is_dir():
        root = fetch(args.work)
    sents = build(root, args.seed)
    header = ("# FlexiCodec sentence list: WordNet 3.0 usage examples (c) 2006 Princeton "
              "University, WordNet 3.0 license; fortune-mod cookie files (fortunes, "
              "fortunes-min). See data/resources/README.md. Built by "
              "`python -m flexicodec.data.build_sentences`.\n")
    from flexicodec.common.atomic import atomic_path
    with atomic_path(args.out) as tmp:
        with gzip.GzipFile(tmp, "wb", mtime=0) as f:
            f.write((header + "\n".join(sents) + "\n").encode("utf-8"))
    log.info("wrote %d sentences to %s (%.2f MB)", len(sents), args.out,
             args.out.stat().st_size / 1e6)


if __name__ == "__main__":
    main()
