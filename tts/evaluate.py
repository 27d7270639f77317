"""Evaluate the TTS pipeline on held-out sentences at several frame rates.

    flexicodec-tts eval --sentences held_out.txt --out results/tts [--model-dir DIR]
        [--frame-rates 12.5 8.33 6.25] [--speaker NAME] [--limit 20] [--stream-every 5]

Per rate: pocketsphinx WER (jiwer; a fresh pocketsphinx ``Decoder`` per utterance) of the
synthesized speech against the normalized text, RTF of the whole pipeline and of the AR (LM)
stage (wall seconds / audio seconds), first-chunk latency of :meth:`TTS.stream` on every
``stream-every``-th sentence. Writes ``tts_eval.json`` and ``tts_eval.md``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from codec.pretrained import atomic_write_text


def pocketsphinx_transcribe(audio: np.ndarray, sample_rate: int = 16000) -> str:
    """Lower-case words recognized by pocketsphinx's bundled en-US model (fresh decoder)."""
    from pocketsphinx import Decoder

    if sample_rate != 16000:
        raise ValueError("pocketsphinx expects 16 kHz audio")
    pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16).tobytes()
    dec = Decoder(samprate=16000, loglevel="FATAL")
    dec.start_utt()
    dec.process_raw(pcm, full_utt=True)
    dec.end_utt()
    hyp = dec.hyp()
    return (hyp.hypstr if hyp is not None else "").lower().strip()


def word_error_rate(refs: list[str], hyps: list[str]) -> float:
    import jiwer

    pairs = [(r, h) for r, h in zip(refs, hyps) if r.strip()]
    if not pairs:
        raise ValueError("no reference text to score")
    return float(jiwer.wer([r for r, _ in pairs], [h if h else "<empty>" for _, h in pairs]))


def evaluate(tts, sentences: list[str], frame_rates=(12.5, 8.33, 6.25), speaker=None,
             seed: int = 0, stream_every: int = 5, out_dir: str | Path | None = None) -> dict:
    """Run the evaluation; returns {"rates": {rate: metrics}, ...} and writes wavs to
    ``out_dir/wavs`` when given."""
    from tqdm import tqdm

    from data.audio import write_audio
    from data.text import normalize_text

    if not sentences:
        raise ValueError("no sentences to evaluate")
    results = {}
    for rate in frame_rates:
        refs, hyps, totals, lms, audios, firsts = [], [], [], [], [], []
        for i, sent in enumerate(tqdm(sentences, desc=f"tts eval {rate} Hz", unit="utt")):
            audio, sr = tts.synthesize(sent, speaker=speaker, frame_rate=rate, seed=seed + i)
            t = dict(tts.last_timing)
            totals.append(t["total_s"])
            lms.append(t.get("lm_s", float("nan")))
            audios.append(t["audio_s"])
            refs.append(normalize_text(sent).lower())
            hyps.append(pocketsphinx_transcribe(audio, sr))
            if out_dir is not None:
                write_audio(Path(out_dir) / "wavs" / f"{rate:g}Hz_{i:04d}.wav", audio, sr)
            if stream_every and i % stream_every == 0:
                for _ in tts.stream(sent, speaker=speaker, frame_rate=rate, seed=seed + i):
                    break  # only the first chunk's latency is measured
                firsts.append(tts.last_timing["first_chunk_s"])
        audio_s = sum(audios)
        results[f"{rate:g}"] = {
            "frame_rate": rate, "n": len(sentences), "wer": word_error_rate(refs, hyps),
            "rtf": sum(totals) / audio_s, "rtf_ar": sum(lms) / audio_s,
            "first_chunk_s": statistics.median(firsts) if firsts else None,
            "audio_s": audio_s,
            "examples": [{"ref": r, "hyp": h} for r, h in list(zip(refs, hyps))[:5]]}
    return {"rates": results, "speaker": speaker, "seed": seed,
            "time": time.strftime("%Y-%m-%d %H:%M:%S")}


def to_markdown(res: dict) -> str:
    lines = ["| rate (Hz) | n | WER | RTF (all) | RTF (AR stage) | first chunk (s) | audio (s) |",
             "|---|---|---|---|---|---|---|"]
    for r in res["rates"].values():
        fc = f"{r['first_chunk_s']:.3f}" if r["first_chunk_s"] is not None else "-"
        lines.append(f"| {r['frame_rate']:g} | {r['n']} | {r['wer'] * 100:.1f}% | "
                     f"{r['rtf']:.3f} | {r['rtf_ar']:.3f} | {fc} | {r['audio_s']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from tts.pipeline import TTS

    ap = argparse.ArgumentParser(prog="flexicodec-tts eval", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sentences", required=True,
                    help="text file of held-out sentences (one per line)")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--model-dir")
    ap.add_argument("--frame-rates", type=float, nargs="+", default=[12.5, 8.33, 6.25])
    ap.add_argument("--speaker")
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stream-every", type=int, default=5)
    ap.add_argument("--save-wavs", action="store_true")
    a = ap.parse_args(argv)
    path = Path(a.sentences)
    if not path.is_file():
        ap.error(f"{path}: no such file")
    sents = [s.strip() for s in path.read_text().splitlines() if s.strip()][:a.limit]
    tts = TTS.from_pretrained(a.model_dir)
    out = Path(a.out)
    res = evaluate(tts, sents, tuple(a.frame_rates), a.speaker, a.seed, a.stream_every,
                   out if a.save_wavs else None)
    atomic_write_text(out / "tts_eval.json", json.dumps(res, indent=1))
    md = to_markdown(res)
    atomic_write_text(out / "tts_eval.md", md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
