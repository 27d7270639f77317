"""``flexicodec-tts``: synthesize speech, plus the acoustic-stage and evaluation subcommands.

    flexicodec-tts "Hello there." -o out.wav [--speaker NAME | --prompt-wav REF.wav
        --prompt-text "..."] [--frame-rate HZ | --threshold T] [--seed N] [--model DIR]
        [--voices DIR]
    flexicodec-tts --input-file lines.txt -o OUT_DIR      # one wav per non-empty line
    flexicodec-tts --list-speakers                         # shipped speakers, saved voices
    flexicodec-tts serve [--host 127.0.0.1] [--port 8000] [--model DIR] [--voices DIR]
                                 # HTTP server, OpenAI-compatible; see tts.server
    flexicodec-tts voice add NAME --wav REF.wav --text "..." | voice list | voice rm NAME
    flexicodec-tts encode-corpus --data CORPUS -o TOK --frame-rate 12.5 8.33 6.25
                                 # alias of `flexicodec-lm tokenize` (LM + acoustic data)
    flexicodec-tts train-acoustic ...                      # see tts.train_acoustic
    flexicodec-tts eval ...                                # see tts.evaluate
    flexicodec-tts compare-acoustic ...     # masked vs flow stage; see tts.compare_acoustic
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from flexicodec.lm.cache_modes import add_lm_cache_flag

SUBCOMMANDS = ("encode-corpus", "train-acoustic", "eval", "compare-acoustic", "serve", "voice")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="flexicodec-tts", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("text", nargs="?", help="text to speak")
    ap.add_argument("-o", "--out", help="output wav (or directory with --input-file)")
    ap.add_argument("--input-file", help="text file, one utterance per line")
    voice = ap.add_mutually_exclusive_group()
    voice.add_argument("--speaker", help="a shipped speaker or a saved voice (see "
                                         "--list-speakers)")
    voice.add_argument("--prompt-wav", help="reference audio of the voice to use")
    ap.add_argument("--prompt-text", help="transcript of --prompt-wav")
    rate = ap.add_mutually_exclusive_group()
    rate.add_argument("--frame-rate", type=float, help="average token rate in Hz (<= 12.5)")
    rate.add_argument("--threshold", type=float, help="merging threshold (1.0 = 12.5 Hz)")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--model",
                    help="directory with codec/, lm/, acoustic/ (default: the shipped models)")
    ap.add_argument("--voices", help="saved-voices directory (default: $FLEXICODEC_VOICES or "
                                     "~/.local/share/flexicodec/voices)")
    ap.add_argument("--list-speakers", action="store_true")
    ap.add_argument("--stream", action="store_true",
                    help="synthesize chunk by chunk (same audio; prints first-chunk latency)")
    add_lm_cache_flag(ap)
    return ap


def _main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        cmd, rest = argv[0], argv[1:]
        if cmd == "train-acoustic":
            from flexicodec.tts.train_acoustic import main as train_main
            return train_main(rest)
        if cmd == "eval":
            from flexicodec.tts.evaluate import main as eval_main
            return eval_main(rest)
        if cmd == "compare-acoustic":
            from flexicodec.tts.compare_acoustic import main as compare_main
            return compare_main(rest)
        if cmd == "serve":
            try:
                from flexicodec.tts.server import main as serve_main
            except ImportError as exc:
                print(f"error: the server needs the 'serve' extra (fastapi, uvicorn, "
                      f"python-multipart): pip install 'flexicodec[serve]' ({exc})",
                      file=sys.stderr)
                return 2
            return serve_main(rest)
        if cmd == "voice":
            from flexicodec.tts.voice_cli import main as voice_main
            return voice_main(rest)
        from flexicodec.lm.tokenize import main as tokenize_main  # the one corpus-encoding pass
        return tokenize_main(rest, prog="flexicodec-tts encode-corpus")
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    ap = build_parser()
    a = ap.parse_args(argv)
    if not a.list_speakers:
        if bool(a.text) == bool(a.input_file):
            ap.error("give the text to speak or --input-file (one of them)")
        if not a.out:
            ap.error("-o/--out is required")
        if a.prompt_wav and not a.prompt_text:
            ap.error("--prompt-wav needs --prompt-text (its transcript)")
    import numpy as np
    from tqdm import tqdm

    from flexicodec.common.constants import SAMPLE_RATE
    from flexicodec.data.audio import AudioError, write_audio
    from flexicodec.tts.pipeline import TTS, TTSError
    from flexicodec.tts.voices import VoiceError, VoiceStore, default_voices_dir

    try:
        tts = TTS.from_pretrained(a.model, voices=VoiceStore(a.voices or default_voices_dir()))
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: cannot load the TTS models: {exc}", file=sys.stderr)
        return 2
    tts.options.lm_cache = a.lm_cache
    if a.list_speakers:
        names = tts.list_speakers()
        print("\n".join(names) if names else "(no shipped speakers)")
        saved = tts.list_voices()
        if saved:
            print(f"saved voices ({tts.voices.directory}):")
            print("\n".join(saved))
        return 0
    kw = dict(speaker=a.speaker, prompt_wav=a.prompt_wav, prompt_text=a.prompt_text,
              frame_rate=a.frame_rate, threshold=a.threshold, seed=a.seed)
    try:
        if a.input_file:
            path = Path(a.input_file)
            if not path.is_file():
                print(f"error: {path}: no such file", file=sys.stderr)
                return 2
            lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
            if not lines:
                print(f"error: {path} has no text lines", file=sys.stderr)
                return 2
            out_dir = Path(a.out)
            failed = 0
            for i, line in enumerate(tqdm(lines, desc="synthesize", unit="utt")):
                try:
                    audio, sr = tts.synthesize(line, **kw)
                except TTSError as exc:
                    tqdm.write(f"line {i + 1}: skipped: {exc}")
                    failed += 1
                    continue
                write_audio(out_dir / f"{i + 1:05d}.wav", audio, sr)
            print(f"wrote {len(lines) - failed} files to {out_dir}"
                  + (f" ({failed} lines skipped)" if failed else ""))
            return 1 if failed == len(lines) else 0
        if a.stream:
            chunks = list(tts.stream(a.text, **kw))
            audio, sr = np.concatenate(chunks), SAMPLE_RATE
            print(f"first chunk after {tts.last_timing['first_chunk_s'] * 1000:.0f} ms, "
                  f"{len(chunks)} chunks")
        else:
            audio, sr = tts.synthesize(a.text, **kw)
        write_audio(a.out, audio, sr)
        t = tts.last_timing
        print(f"wrote {a.out}: {audio.size / sr:.2f} s at {t['frame_rate']:.2f} Hz, "
              f"RTF {t['total_s'] / max(t['audio_s'], 1e-9):.3f}")
        return 0
    except (TTSError, AudioError, VoiceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    """``flexicodec-tts``: a missing model or a broken weight file is a one-line error (exit 2)."""
    from flexicodec.common.pretrained import run_reporting_model_errors

    return run_reporting_model_errors("flexicodec-tts", _main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
