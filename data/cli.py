"""``flexicodec-data``: build and inspect corpora.

Subcommands::

    flexicodec-data build-corpus --hours H --out DIR [--seed S] [--workers N]
                                 [--engines flite,festival,espeak] [--speakers a,b]
                                 [--unseen flite_rms,espeak_en-gb-scotland+f3]
                                 [--pace 0.75,1.35] [--sentences-per-item 1,3]
                                 [--pause 0.2,1.2] [--level-db=-33,-17] [--max-silence 0.8]
                                 [--voice-variants 6]
    flexicodec-data join SRC --out DIR [--per-utt 2,3] [--pause 0.3,1.2] [--splits test,...]
                                        # consecutive same-speaker utterances + pauses
    flexicodec-data show DIR            # hours per split/engine/speaker + example rows
    flexicodec-data stats [DIR]         # JSON summary of a corpus (or of the text + voices)
    flexicodec-data speakers [--engines ...]
    flexicodec-data normalize "TEXT"    # print normalize_text and phonemes
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def _csv(s: str | None) -> tuple[str, ...] | None:
    return tuple(x.strip() for x in s.split(",") if x.strip()) if s else None


def _pair(s: str, flag: str, cast=float) -> tuple:
    """``LO,HI`` → (cast(LO), cast(HI)); ValueError naming ``flag`` otherwise."""
    vals = _csv(s) or ()
    try:
        pair = tuple(cast(v) for v in vals)
    except ValueError:
        pair = ()
    if len(pair) != 2:
        raise ValueError(f"{flag} takes two comma-separated numbers: LO,HI (got {s!r})")
    return pair


def _build(args) -> None:
    from flexicodec.data.corpus import DEFAULT_UNSEEN, OTHER_LANGUAGES, CorpusConfig, build_corpus
    cfg = CorpusConfig(hours=args.hours, seed=args.seed,
                       engines=_csv(args.engines) or ("flite", "festival", "espeak"),
                       speakers=_csv(args.speakers),
                       unseen_speakers=_csv(args.unseen) or DEFAULT_UNSEEN,
                       batch_size=args.batch_size,
                       pace_range=_pair(args.pace, "--pace"),
                       sentences_per_item=_pair(args.sentences_per_item,
                                                "--sentences-per-item", int),
                       pause_range=_pair(args.pause, "--pause"),
                       level_db_range=_pair(args.level_db, "--level-db"),
                       max_silence_s=args.max_silence, voice_variants=args.voice_variants,
                       engine_weights=None if args.other_languages_weight is None else
                       {OTHER_LANGUAGES: args.other_languages_weight})
    summary = build_corpus(args.out, cfg, workers=args.workers, progress=not args.no_progress)
    print(json.dumps(summary, indent=2))


def _join(args) -> None:
    from flexicodec.data.join import join_corpus
    per = _pair(args.per_utt, "--per-utt", int)
    pause = _pair(args.pause, "--pause")
    summary = join_corpus(args.src, args.out, per, pause, _csv(args.splits), args.seed,
                          progress=not args.no_progress)
    print(json.dumps(summary, indent=2))


def _show(args) -> None:
    from flexicodec.data.corpus import read_metadata, summarize
    s = summarize(args.dir)
    print(f"{args.dir}: {s['utterances']} utterances, {s['hours']:.3f} h, "
          f"{s['speakers']} speakers, {s['sentences']} sentences; duration "
          f"{s['duration_s']['min']:.2f}-{s['duration_s']['max']:.2f} s "
          f"(mean {s['duration_s']['mean']:.2f})")
    for key in ("hours_per_split", "hours_per_engine", "hours_per_voice_language",
                "hours_per_speaker"):
        items = list(s[key].items())
        print(f"\n{key.replace('_', ' ')}:")
        shown = items if args.all or len(items) <= 20 else items[:20]
        for k, v in shown:
            print(f"  {k:<36s} {v:8.4f} h")
        if len(shown) < len(items):
            print(f"  ... {len(items) - len(shown)} more (--all)")
    print("\nexamples:")
    for r in read_metadata(args.dir)[: args.examples]:
        print("  " + json.dumps(r, ensure_ascii=False))


def _stats(args) -> None:
    if args.dir:
        from flexicodec.data.corpus import summarize
        print(json.dumps(summarize(args.dir), indent=2))
        return
    from flexicodec.data.synth import list_speakers
    from flexicodec.data.text import load_sentences
    sents = load_sentences()
    words = [len(s.split()) for s in sents]
    spk = list_speakers()
    by_engine: dict = {}
    for s in spk:
        by_engine[s.engine] = by_engine.get(s.engine, 0) + 1
    print(json.dumps({"sentences": len(sents), "words_mean": sum(words) / len(words),
                      "speakers": len(spk), "speakers_per_engine": by_engine}, indent=2))


def _speakers(args) -> None:
    from flexicodec.data.synth import list_speakers
    for s in list_speakers(_csv(args.engines)):
        print(s.id if s.language == "en" else f"{s.id}\t({s.language}: train only)")


def _normalize(args) -> None:
    from flexicodec.data.text import normalize_text, phonemize
    norm = normalize_text(args.text)
    print(norm)
    print(phonemize([norm])[0])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="flexicodec-data", description="Build and inspect "
                                 "speech corpora for FlexiCodec.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build-corpus", help="synthesize a corpus (resumable)")
    b.add_argument("--hours", type=float, required=True)
    b.add_argument("-o", "--out", type=Path, required=True, help="corpus directory to write")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--workers", type=int, default=None, help="default: all cores")
    b.add_argument("--engines", default=None, help="comma list of flite,festival,espeak")
    b.add_argument("--speakers", default=None, help="comma list of speaker ids")
    b.add_argument("--unseen", default=None, help="held-out speaker ids (test_unseen)")
    b.add_argument("--batch-size", type=int, default=8, help="items per worker task")
    b.add_argument("--pace", default="0.75,1.35",
                   help="speaking rate per item, LO,HI (1 = the engine's own; >1 faster)")
    b.add_argument("--sentences-per-item", default="1,3",
                   help="sentences of one speaker and split joined per item, LO,HI")
    b.add_argument("--pause", default="0.2,1.2",
                   help="silence between joined sentences, seconds: LO,HI")
    b.add_argument("--level-db", default="-33,-17",
                   help="speech RMS level per item, dBFS: LO,HI (negative values need "
                        "'=': --level-db=-33,-17)")
    b.add_argument("--max-silence", type=float, default=0.8,
                   help="internal silences (punctuation pauses) longer than this many "
                        "seconds are shortened to it. --pace 1,1 --sentences-per-item 1,1 "
                        "--level-db=-23,-23 --max-silence 0.3 --voice-variants 0 builds "
                        "(and resumes) the "
                        "corpus of the earlier builder: one sentence per file at the "
                        "engine's rate and a fixed level")
    b.add_argument("--voice-variants", type=int, default=6,
                   help="derived (pitch- and formant-shifted) speakers per flite/festival "
                        "voice, each a speaker of its own; 0: none")
    b.add_argument("--other-languages-weight", type=float, default=None,
                   help="how likely festival's voices of other languages are drawn, where "
                        "installed, against 1 per engine (default 0.5; 0: none of them)")
    b.add_argument("--no-progress", action="store_true")
    j = sub.add_parser("join", help="join consecutive utterances of each speaker with pauses")
    j.add_argument("src", type=Path, help="a built corpus")
    j.add_argument("-o", "--out", type=Path, required=True, help="joined corpus directory")
    j.add_argument("--per-utt", default="2,3", help="utterances per joined item: LO,HI")
    j.add_argument("--pause", default="0.3,1.2", help="pause seconds between them: LO,HI")
    j.add_argument("--splits", default=None, help="comma list (default: all splits)")
    j.add_argument("--seed", type=int, default=0)
    j.add_argument("--no-progress", action="store_true")
    j.set_defaults(fn=_join)
    b.set_defaults(fn=_build)
    s = sub.add_parser("show", help="summary of a built corpus")
    s.add_argument("dir", type=Path)
    s.add_argument("--examples", type=int, default=3)
    s.add_argument("--all", action="store_true", help="list every speaker")
    s.set_defaults(fn=_show)
    st = sub.add_parser("stats", help="JSON stats of a corpus, or of sentences and voices")
    st.add_argument("dir", type=Path, nargs="?")
    st.set_defaults(fn=_stats)
    sp = sub.add_parser("speakers", help="list the speakers available here")
    sp.add_argument("--engines", default=None)
    sp.set_defaults(fn=_speakers)
    n = sub.add_parser("normalize", help="normalise and phonemise a text")
    n.add_argument("text")
    n.set_defaults(fn=_normalize)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        args.fn(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"flexicodec-data: error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
