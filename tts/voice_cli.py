"""``flexicodec-tts voice``: manage saved voices (see :mod:`flexicodec.tts.voices`).

    flexicodec-tts voice add NAME --wav REF.wav --text "..." [--voices DIR] [--model DIR]
    flexicodec-tts voice list [--voices DIR] [--model DIR]   # saved voices, then shipped
    flexicodec-tts voice rm NAME [--voices DIR]

``--voices`` defaults to ``$FLEXICODEC_VOICES`` or ``~/.local/share/flexicodec/voices``; a
saved voice is then used with ``flexicodec-tts "..." --speaker NAME`` or ``voice=NAME`` on
the server.
"""
from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="flexicodec-tts voice", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add", help="encode a prompt wav + transcript as a named voice")
    add.add_argument("name")
    add.add_argument("--wav", required=True, help="reference audio (at most 20 s)")
    add.add_argument("--text", required=True, help="its transcript")
    add.add_argument("--model", help="directory with codec/, lm/, acoustic/ (default: the "
                                     "shipped models; the voice works with this codec only)")
    ls = sub.add_parser("list", help="saved voices, then the shipped speakers")
    ls.add_argument("--model", help="model directory whose shipped speakers to list")
    rm = sub.add_parser("rm", help="delete a saved voice")
    rm.add_argument("name")
    for p in (add, ls, rm):
        p.add_argument("--voices", help="saved-voices directory")
    return ap


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    from flexicodec.tts.voices import VoiceError, VoiceStore, default_voices_dir

    store = VoiceStore(a.voices or default_voices_dir())
    try:
        if a.command == "rm":
            store.remove(a.name)
            print(f"removed voice {a.name!r} from {store.directory}")
            return 0
        if a.command == "list":
            return _list(store, a.model)
        return _add(store, a)
    except VoiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _list(store, model: str | None) -> int:
    from pathlib import Path

    from flexicodec.tts.speakers import load_speakers

    for name in store.names():
        info = store.info(name)
        print(f"{name}\tsaved\t{info.get('created', '')}\t{info.get('text', '')}")
    if model is None:
        from flexicodec.common.models import default_dir
        acoustic = default_dir("acoustic")
    else:
        acoustic = Path(model) / "acoustic"
    for name in sorted(load_speakers(acoustic)):
        print(f"{name}\tbuiltin")
    return 0


def _add(store, a) -> int:
    from flexicodec.data.audio import AudioError
    from flexicodec.tts.pipeline import TTS, TTSError
    from flexicodec.tts.voices import add_voice, check_name

    check_name(a.name)  # before loading the models
    if store.exists(a.name):
        print(f"error: a voice named {a.name!r} already exists in {store.directory}; remove "
              f"it first (flexicodec-tts voice rm {a.name})", file=sys.stderr)
        return 2
    try:
        tts = TTS.from_pretrained(a.model, voices=store)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: cannot load the TTS models: {exc}", file=sys.stderr)
        return 2
    try:
        info = add_voice(tts, a.name, a.wav, a.text, {"file": str(a.wav)})
    except (TTSError, AudioError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"saved voice {a.name!r} in {store.directory} (rates "
          f"{', '.join(f'{r:.2f}' for r in info['frame_rates'])} Hz); use it with "
          f"--speaker {a.name}")
    return 0
