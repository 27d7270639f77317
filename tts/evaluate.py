"""Evaluate the TTS pipeline on held-out sentences at several frame rates.

    flexicodec-tts eval --sentences held_out.txt -o results/tts [--model DIR]
        [--rates 12.5,8.33,6.25] [--speaker NAME] [--limit 20] [--stream-every 5]
        [--workers W] [--no-speaker-sim] [--no-dnsmos]

Per rate: pocketsphinx WER (jiwer; a fresh pocketsphinx ``Decoder`` per utterance) of the
synthesized speech against the normalized text, RTF of the whole pipeline and of the AR (LM)
stage (wall seconds / audio seconds), first-chunk latency of :meth:`TTS.stream` on every
``stream-every``-th sentence, and two model judges (``flexicodec.codec.eval.metrics``, run in a process pool
after synthesis):
- speaker similarity (SIM): cosine of resemblyzer utterance embeddings between each
  synthesized utterance and the voice prompt the synthesis was conditioned on. The eval has
  no separate reference recording of the speaker: a shipped speaker (``--speaker``, or the
  first shipped one by default) is stored as codec codes only, so the reference is that
  prompt decoded by the codec — the prompt picked for each rate (``pick_prompt``: the stored
  rate nearest to it), i.e. what the TTS was asked to imitate, as it hears it. With no shipped
  speaker there is no prompt and SIM is not computed (said so in the report). 1 = same
  embedding; 0.95 between two sentences of one flite voice, 0.46-0.75 between voices.
- DNSMOS P.835 (speechmos) OVRL / SIG / BAK of the synthesized speech, and of the decoded
  voice prompt for comparison (DNSMOS rates our synthetic training voices only ~2.4-3.2 OVRL).
Both judges are on by default and then required (a missing package raises before any
synthesis; ``pip install -e '.[eval]'``); ``--no-speaker-sim`` / ``--no-dnsmos`` turn them
off. Cost on one CPU core: ~0.02 s (SIM) and ~0.8 s (DNSMOS, clips are tiled to >= 9 s) per
second of 3-4 s utterances. Writes ``tts_eval.json`` and ``tts_eval.md``.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from flexicodec.codec.eval.metrics import (audio_judges, check_judges, cosine_similarity, dnsmos_means,
                                           parallel_map, scored_mean)
from flexicodec.common.atomic import write_report_files
from flexicodec.common.constants import BASE_FRAME_RATE, SAMPLE_RATE


def pocketsphinx_transcribe(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> str:
    """Lower-case words recognized by pocketsphinx's bundled en-US model (fresh decoder)."""
    from pocketsphinx import Decoder

    if sample_rate != SAMPLE_RATE:
        raise ValueError("pocketsphinx expects 16 kHz audio")
    pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16).tobytes()
    dec = Decoder(samprate=SAMPLE_RATE, loglevel="FATAL")
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


def prompt_audio(tts, speaker: str | None, frame_rate: float) -> np.ndarray | None:
    """The voice prompt ``tts`` conditions on for ``speaker`` at ``frame_rate`` (None: its
    default speaker), decoded by its codec: float32 [T] at 16 kHz; None when there is no
    prompt (no shipped speakers)."""
    voice = tts._voice(speaker, None, None, frame_rate, None)   # the pipeline's own choice
    if voice.codes is None:
        return None
    c = voice.codes
    return tts._decode(c.semantic, c.acoustic, c.lengths)


def evaluate(tts, sentences: list[str], frame_rates=(BASE_FRAME_RATE, 8.33, 6.25), speaker=None,
             seed: int = 0, stream_every: int = 5, out_dir: str | Path | None = None,
             speaker_sim: bool = True, dnsmos: bool = True, workers: int | None = None
             ) -> dict:
    """Run the evaluation; returns {"rates": {rate: metrics}, ...} and writes wavs to
    ``out_dir/wavs`` when given. ``speaker_sim`` / ``dnsmos``: the model judges (see the
    module docstring; their packages are imported first, a missing one raises
    ModuleNotFoundError); ``workers``: their process pool (None: all cores)."""
    from tqdm import tqdm

    from flexicodec.data.audio import write_audio
    from flexicodec.data.text import normalize_text

    if not sentences:
        raise ValueError("no sentences to evaluate")
    check_judges(speaker_sim=speaker_sim, dnsmos=dnsmos)
    speaker_name = speaker if speaker is not None else (
        tts.list_speakers()[0] if tts.speakers else None)
    results, clips, prompts = {}, {}, {}
    for rate in frame_rates:
        refs, hyps, totals, lms, audios, firsts = [], [], [], [], [], []
        clips[rate] = []
        prompts[rate] = prompt_audio(tts, speaker, rate) if speaker_sim or dnsmos else None
        for i, sent in enumerate(tqdm(sentences, desc=f"tts eval {rate} Hz", unit="utt")):
            audio, sr = tts.synthesize(sent, speaker=speaker, frame_rate=rate, seed=seed + i)
            clips[rate].append(audio)
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
    have_prompt = all(p is not None for p in prompts.values())
    _judge(results, clips, prompts, speaker_sim and have_prompt, dnsmos, workers)
    if not speaker_sim:
        sim_ref = "not computed (--no-speaker-sim)"
    elif not have_prompt:
        sim_ref = ("not computed (no reference audio: no speaker given and the model ships "
                   "no speaker prompts)")
    else:
        sim_ref = (f"resemblyzer cosine to the voice prompt of {speaker_name!r} at each rate, "
                   f"decoded by the codec (no separate reference recording in this eval)")
    return {"rates": results, "speaker": speaker, "speaker_prompt": speaker_name,
            "speaker_similarity": sim_ref,
            "dnsmos_judge": ("speechmos DNSMOS P.835 (OVRL / SIG / BAK; no reference)" if dnsmos
                             else "not computed (--no-dnsmos)"),
            "seed": seed, "time": time.strftime("%Y-%m-%d %H:%M:%S")}


def _judge(results: dict, clips: dict, prompts: dict, speaker_sim: bool, dnsmos: bool,
           workers: int | None) -> None:
    """Add SIM and DNSMOS to ``results[rate]`` (in place): one pool over every synthesized
    clip and every rate's decoded prompt."""
    rates = list(clips)
    if not (speaker_sim or dnsmos):
        jobs = []
    else:
        jobs = [(x, speaker_sim, dnsmos) for r in rates for x in clips[r]]
        jobs += [(prompts[r], speaker_sim, dnsmos) for r in rates if prompts[r] is not None]
    judged = parallel_map(audio_judges, jobs, workers, "speaker sim / DNSMOS") if jobs else []
    k = sum(len(clips[r]) for r in rates)
    synth, prompt_j = iter(judged[:k]), iter(judged[k:])
    for rate in rates:
        res = results[f"{rate:g}"]
        utt = [next(synth) for _ in clips[rate]] if jobs else [None] * len(clips[rate])
        pj = next(prompt_j) if jobs and prompts[rate] is not None else None
        sims = ([cosine_similarity(j["embedding"], pj["embedding"]) for j in utt]
                if speaker_sim else [None] * len(utt))
        res["speaker_similarity"], res["speaker_similarity_unscored"] = (
            scored_mean(sims) if speaker_sim else (None, None))
        dns = dnsmos_means([j["dnsmos"] for j in utt]) if dnsmos else {}
        for key in ("ovrl", "sig", "bak", "unscored"):
            res[f"dnsmos_{key}"] = dns.get(key)
        res["prompt_dnsmos"] = pj["dnsmos"] if dnsmos and pj is not None else None
        res["per_utterance"] = [{"speaker_similarity": s, "dnsmos": j["dnsmos"] if j else None}
                                for s, j in zip(sims, utt)]


def _num(v, digits: int) -> str:
    return f"{v:.{digits}f}" if isinstance(v, (int, float)) and np.isfinite(v) else "-"


def to_markdown(res: dict) -> str:
    lines = [("| rate (Hz) | n | WER | SIM | DNSMOS | RTF (all) | RTF (AR stage) | "
              "first chunk (s) | audio (s) |"),
             "|---|---|---|---|---|---|---|---|---|"]
    for r in res["rates"].values():
        fc = f"{r['first_chunk_s']:.3f}" if r["first_chunk_s"] is not None else "-"
        lines.append(f"| {r['frame_rate']:g} | {r['n']} | {r['wer'] * 100:.1f}% | "
                     f"{_num(r.get('speaker_similarity'), 3)} | {_num(r.get('dnsmos_ovrl'), 2)} | "
                     f"{r['rtf']:.3f} | {r['rtf_ar']:.3f} | {fc} | {r['audio_s']:.1f} |")
    notes = []
    if "speaker_similarity" in res:
        notes.append(f"SIM: {res['speaker_similarity']}.")
    if "dnsmos_judge" in res:
        prompt = [r["prompt_dnsmos"]["ovrl"] for r in res["rates"].values()
                  if r.get("prompt_dnsmos")]
        notes.append(f"DNSMOS: {res['dnsmos_judge']}, OVRL in the table"
                     + (f"; the decoded voice prompt scores OVRL "
                        f"{', '.join(_num(v, 2) for v in prompt)} (per rate)" if prompt else "")
                     + ".")
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def main(argv: list[str] | None = None) -> int:
    from flexicodec.codec.eval.evaluate import parse_rates
    from flexicodec.tts.pipeline import TTS

    ap = argparse.ArgumentParser(prog="flexicodec-tts eval", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sentences", required=True,
                    help="text file of held-out sentences (one per line)")
    ap.add_argument("-o", "--out", required=True, help="output directory")
    ap.add_argument("--model", help="directory with codec/, lm/, acoustic/ (default: the "
                                    "shipped models)")
    ap.add_argument("--rates", default=f"{BASE_FRAME_RATE:g},8.33,6.25",
                    help="frame rates in Hz, comma-separated")
    ap.add_argument("--speaker")
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stream-every", type=int, default=5)
    ap.add_argument("--save-wavs", action="store_true")
    ap.add_argument("--workers", type=int, default=None,
                    help="processes for the SIM / DNSMOS judges (default: all cores)")
    ap.add_argument("--no-speaker-sim", action="store_true",
                    help="do not score speaker similarity (resemblyzer)")
    ap.add_argument("--no-dnsmos", action="store_true",
                    help="do not score DNSMOS (speechmos; the slowest judge)")
    a = ap.parse_args(argv)
    try:
        rates = parse_rates(a.rates)
    except ValueError as exc:
        ap.error(str(exc))
    path = Path(a.sentences)
    if not path.is_file():
        ap.error(f"{path}: no such file")
    sents = [s.strip() for s in path.read_text().splitlines() if s.strip()][:a.limit]
    tts = TTS.from_pretrained(a.model)
    out = Path(a.out)
    res = evaluate(tts, sents, tuple(rates), a.speaker, a.seed, a.stream_every,
                   out if a.save_wavs else None, speaker_sim=not a.no_speaker_sim,
                   dnsmos=not a.no_dnsmos, workers=a.workers)
    md = to_markdown(res)
    write_report_files(out / "tts_eval", res, md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
