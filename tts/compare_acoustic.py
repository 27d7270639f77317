"""Compare acoustic stages (masked RVQ prediction vs flow matching on the codec latent) by
measurement, against the codec's own reconstructions.

    flexicodec-tts compare-acoustic --codec CODEC_DIR --lm LM_DIR \\
        --stage masked=runs/acoustic_masked/model --stage flow=runs/acoustic_flow/model \\
        --corpus HELD_OUT_CORPUS [--split test_unseen] [--sentences held_out.txt] \\
        [--rates 12.5,6.25] [--limit 20] [--seed 0] [--max-tokens 400] \\
        -o results/acoustic_compare \\
        [--no-speaker-sim] [--no-dnsmos] [--workers W] [--flow-steps N] [--guidance W]

Two measurements per frame rate, the same for every stage:

1. **Resynthesis** (``--corpus``: held-out recordings with transcripts, any layout
   ``flexicodec.data.loaders.load_corpus`` reads): each recording is encoded by the codec. Its decoded
   codes — the codec's own reconstruction — are the reference row. Each stage renders the
   recording's *true* semantic codes and lengths (:meth:`flexicodec.tts.pipeline.TTS.render_tokens`:
   the pipeline's chunked path), prompted with another recording of the same speaker (at most
   ``--prompt-seconds``), so only the acoustic stage differs from the reconstruction.
   Recordings whose speaker has no second recording are skipped (counted).
2. **TTS** (``--sentences``: held-out text, one sentence per line): text → LM → stage →
   codec through :func:`flexicodec.tts.evaluate.evaluate` with the same LM, speaker and seeds for every
   stage (WER, SIM to the decoded voice prompt, DNSMOS, RTF).

Metrics: pocketsphinx WER against the transcript, speaker similarity (resemblyzer cosine; in
resynthesis to the original recording), DNSMOS P.835 OVRL (``flexicodec.codec.eval.metrics`` judges). The
resynthesis table also gives each stage's difference to the reconstruction (ΔWER, ΔSIM,
ΔDNSMOS) — the issue's bar is DNSMOS within 0.3 of the reconstructions. Writes
``OUT/compare_acoustic.json`` and ``OUT/compare_acoustic.md``.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from flexicodec.codec.eval.metrics import (audio_judges, check_judges, cosine_similarity, dnsmos_means,
                                           parallel_map, scored_mean)
from flexicodec.common.constants import BASE_FRAME_RATE, SAMPLE_RATE
from flexicodec.common.atomic import write_report_files

RECON = "reconstruction"


def parse_stage(spec: str) -> tuple[str, Path]:
    """``NAME=DIR`` → (name, dir)."""
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise ValueError(f"--stage wants NAME=DIR, got {spec!r}")
    if name == RECON:
        raise ValueError(f"stage name {RECON!r} is reserved for the codec's reconstructions")
    return name, Path(path)


def pair_prompts(speakers: list[str]) -> list[int | None]:
    """For each clip, the index of the next clip of the same speaker (cyclically) to prompt
    it with; None when the speaker has only that clip."""
    by: dict[str, list[int]] = {}
    for i, s in enumerate(speakers):
        by.setdefault(s, []).append(i)
    out: list[int | None] = []
    for i, s in enumerate(speakers):
        idx = by[s]
        out.append(None if len(idx) < 2 else idx[(idx.index(i) + 1) % len(idx)])
    return out


def _codes(codec, wav: np.ndarray, rate: float, n_q: int):
    enc = codec.encode(wav, SAMPLE_RATE, frame_rate=rate, num_quantizers=n_q).item(0)
    return (enc.semantic_codes[0].cpu(), enc.token_lengths[0].cpu(),
            enc.acoustic_codes[0].cpu(), int(enc.num_samples[0]))


def _prompt_part(codes, seconds: float, hop: int):
    sem, lens, ac, _ = codes
    frames = torch.cumsum(lens, 0)
    n = max(1, int((frames * hop <= seconds * SAMPLE_RATE).sum()))
    return sem[:n], lens[:n], ac[:, :n]


def resynthesis(tts_by_stage: dict, clips: list[dict], frame_rates, seed: int,
                prompt_seconds: float) -> dict:
    """Render every usable clip at every rate with the codec (reconstruction) and each stage.
    Returns {"audio": {rate: {system: [audio]}}, "refs": [text], "originals": [audio],
    "skipped": int}."""
    from tqdm import tqdm

    from flexicodec.data.text import normalize_text

    any_tts = next(iter(tts_by_stage.values()))
    codec, hop = any_tts.codec, any_tts.hop
    n_q = max(t.acoustic.config.n_q for t in tts_by_stage.values())
    partner = pair_prompts([c["speaker"] for c in clips])
    use = [i for i, p in enumerate(partner) if p is not None]
    if not use:
        raise ValueError("no held-out speaker has two recordings: resynthesis needs another "
                         "recording of the same speaker as the voice prompt")
    audio: dict = {}
    for rate in frame_rates:
        key = f"{rate:g}"
        audio[key] = {RECON: [], **{s: [] for s in tts_by_stage}}
        codes = {}
        for i in sorted(set(use) | {partner[i] for i in use}):
            codes[i] = _codes(codec, clips[i]["wav"], rate, n_q)
        for k, i in enumerate(tqdm(use, desc=f"resynthesis {rate:g} Hz", unit="clip")):
            sem, lens, ac, n = codes[i]
            with torch.no_grad():
                rec = codec.decode_from_codes(sem[None], ac[None], lens[None])[0]
            audio[key][RECON].append(rec[:n].float().cpu().numpy())
            prompt = _prompt_part(codes[partner[i]], prompt_seconds, hop)
            for name, tts in tts_by_stage.items():
                out = tts.render_tokens(sem, lens, prompt=prompt, seed=seed + k)
                audio[key][name].append(out[:n])
    return {"audio": audio, "refs": [normalize_text(clips[i]["text"]).lower() for i in use],
            "originals": [clips[i]["wav"] for i in use], "skipped": len(clips) - len(use)}


def score_resynthesis(res: dict, speaker_sim: bool, dnsmos: bool, workers: int | None
                      ) -> dict:
    """WER / SIM (to the original recording) / DNSMOS per rate and system, with each stage's
    difference to the reconstruction."""
    from flexicodec.tts.evaluate import pocketsphinx_transcribe, word_error_rate

    refs, originals = res["refs"], res["originals"]
    flat = [(r, s, a) for r, systems in res["audio"].items() for s, clips in systems.items()
            for a in clips]
    jobs = [(x, speaker_sim, False) for x in originals] + \
        [(a, speaker_sim, dnsmos) for _, _, a in flat]
    judged = (parallel_map(audio_judges, jobs, workers, "SIM / DNSMOS")
              if speaker_sim or dnsmos else [None] * len(jobs))
    orig_j, clip_j = judged[:len(originals)], iter(judged[len(originals):])
    table: dict = {}
    for rate, systems in res["audio"].items():
        table[rate] = {}
        for system, clips in systems.items():
            js = [next(clip_j) for _ in clips]
            hyps = [pocketsphinx_transcribe(a) for a in clips]
            sims = ([cosine_similarity(j["embedding"], o["embedding"])
                     for j, o in zip(js, orig_j)] if speaker_sim else [])
            row = {"n": len(clips), "wer": word_error_rate(refs, hyps),
                   "speaker_similarity": scored_mean(sims)[0] if speaker_sim else None,
                   "dnsmos_ovrl": dnsmos_means([j["dnsmos"] for j in js])["ovrl"]
                   if dnsmos else None,
                   "examples": [{"ref": r, "hyp": h} for r, h in list(zip(refs, hyps))[:3]]}
            table[rate][system] = row
        rec = table[rate][RECON]
        for system, row in table[rate].items():
            if system == RECON:
                continue
            for k in ("wer", "speaker_similarity", "dnsmos_ovrl"):
                a, b = row[k], rec[k]
                row[f"delta_{k}"] = a - b if a is not None and b is not None else None
    return table


def _num(v, digits: int, scale: float = 1.0, signed: bool = False) -> str:
    if not isinstance(v, (int, float)) or not np.isfinite(v):
        return "-"
    return f"{v * scale:+.{digits}f}" if signed else f"{v * scale:.{digits}f}"


def to_markdown(result: dict) -> str:
    lines = []
    if result.get("resynthesis"):
        lines += ["Resynthesis of held-out recordings from their true semantic codes (the "
                  "acoustic stage alone), against the codec's reconstructions; SIM to the "
                  "original recording.", "",
                  "| rate (Hz) | system | n | WER | SIM | DNSMOS | ΔWER | ΔSIM | ΔDNSMOS |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for rate, systems in result["resynthesis"].items():
            for system, r in systems.items():
                lines.append(
                    f"| {rate} | {system} | {r['n']} | {_num(r['wer'], 1, 100)}% | "
                    f"{_num(r['speaker_similarity'], 3)} | {_num(r['dnsmos_ovrl'], 2)} | "
                    f"{_num(r.get('delta_wer'), 1, 100, True)} | "
                    f"{_num(r.get('delta_speaker_similarity'), 3, signed=True)} | "
                    f"{_num(r.get('delta_dnsmos_ovrl'), 2, signed=True)} |")
        if result.get("resynthesis_skipped"):
            lines.append(f"\n{result['resynthesis_skipped']} recording(s) skipped: their "
                         f"speaker has no second held-out recording to prompt with.")
        lines.append("")
    if result.get("tts"):
        lines += ["TTS from held-out text (same LM, speaker and seeds for every stage); SIM to "
                  "the decoded voice prompt.", "",
                  "| rate (Hz) | stage | n | WER | SIM | DNSMOS | RTF |",
                  "|---|---|---|---|---|---|---|"]
        for stage, res in result["tts"].items():
            for rate, r in res["rates"].items():
                lines.append(f"| {rate} | {stage} | {r['n']} | {_num(r['wer'], 1, 100)}% | "
                             f"{_num(r.get('speaker_similarity'), 3)} | "
                             f"{_num(r.get('dnsmos_ovrl'), 2)} | {_num(r['rtf'], 3)} |")
        lines.append("")
    return "\n".join(lines)


def load_clips(corpus: str | Path, split: str | None, limit: int) -> list[dict]:
    """Up to ``limit`` recordings ({"wav", "text", "speaker"}) of a held-out corpus, chosen so
    that speakers with two or more recordings come first (they can be resynthesized)."""
    from flexicodec.data.loaders import load_corpus

    ds = load_corpus(corpus, split, decode=True, check="header", progress=False)
    rows = [{"wav": np.asarray(r["audio"]["array"], dtype=np.float32), "text": r["text"],
             "speaker": r["speaker"] or f"unknown{i}"} for i, r in enumerate(ds)]
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["speaker"]] = counts.get(r["speaker"], 0) + 1
    rows.sort(key=lambda r: (counts[r["speaker"]] < 2, r["speaker"]))
    return rows[:limit]


def compare(codec, lm, stages: dict, *, clips: list[dict] | None = None,
            sentences: list[str] | None = None, frame_rates=(BASE_FRAME_RATE, 6.25), seed: int = 0,
            speaker: str | None = None, prompt_seconds: float = 4.0,
            speaker_sim: bool = True, dnsmos: bool = True, workers: int | None = None,
            options=None) -> dict:
    """Run both measurements. ``stages``: {name: (acoustic model, speakers dict)}; ``lm``: a
    ``(SpeechLM, tokenizer)`` pair; ``options``: :class:`flexicodec.tts.pipeline.SynthesisOptions`."""
    from flexicodec.tts.evaluate import evaluate
    from flexicodec.tts.pipeline import TTS, SynthesisOptions

    if not stages:
        raise ValueError("no acoustic stages to compare")
    if not clips and not sentences:
        raise ValueError("nothing to measure: give held-out recordings and/or sentences")
    check_judges(speaker_sim=speaker_sim, dnsmos=dnsmos)
    tts_by_stage = {name: TTS(codec, lm, model, speakers=spk,
                              options=options or SynthesisOptions())
                    for name, (model, spk) in stages.items()}
    result: dict = {"stages": {n: {"kind": t.acoustic.config.kind,
                                   "parameters": sum(p.numel() for p in t.acoustic.parameters())}
                               for n, t in tts_by_stage.items()},
                    "frame_rates": list(frame_rates), "seed": seed,
                    "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    if clips:
        res = resynthesis(tts_by_stage, clips, frame_rates, seed, prompt_seconds)
        result["resynthesis"] = score_resynthesis(res, speaker_sim, dnsmos, workers)
        result["resynthesis_skipped"] = res["skipped"]
    if sentences:
        result["tts"] = {name: evaluate(t, sentences, tuple(frame_rates), speaker, seed,
                                        stream_every=0, speaker_sim=speaker_sim,
                                        dnsmos=dnsmos, workers=workers)
                         for name, t in tts_by_stage.items()}
    return result


def main(argv: list[str] | None = None) -> int:
    from flexicodec.codec.model import FlexiCodec
    from flexicodec.lm.model import load_lm
    from flexicodec.codec.eval.evaluate import parse_rates
    from flexicodec.tts.pipeline import SynthesisOptions
    from flexicodec.tts.speakers import load_speakers
    from flexicodec.tts.stages import load_acoustic

    ap = argparse.ArgumentParser(prog="flexicodec-tts compare-acoustic", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--codec", required=True, help="codec directory")
    ap.add_argument("--lm", required=True, help="LM directory")
    ap.add_argument("--stage", action="append", required=True, metavar="NAME=DIR",
                    help="an acoustic stage directory (masked or flow); repeat per stage")
    ap.add_argument("--corpus", help="held-out recordings with transcripts (resynthesis)")
    ap.add_argument("--split", help="split of --corpus (our corpus layout)")
    ap.add_argument("--sentences", help="held-out text, one sentence per line (TTS)")
    ap.add_argument("--rates", default="12.5,6.25", help="comma-separated frame rates (Hz)")
    ap.add_argument("--limit", type=int, default=20, help="recordings / sentences at most")
    ap.add_argument("--speaker", help="TTS voice (default: the first shipped speaker)")
    ap.add_argument("--prompt-seconds", type=float, default=4.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-tokens", type=int, default=400,
                    help="TTS: LM tokens per sentence at most")
    ap.add_argument("--flow-steps", type=int, help="flow stage: ODE steps (default: model's)")
    ap.add_argument("--flow-sampler", choices=("euler", "midpoint"))
    ap.add_argument("--guidance", type=float, help="flow stage: guidance scale")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--no-speaker-sim", action="store_true")
    ap.add_argument("--no-dnsmos", action="store_true")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("-o", "--out", required=True, help="output directory")
    a = ap.parse_args(argv)
    try:
        specs = [parse_stage(s) for s in a.stage]
    except ValueError as exc:
        ap.error(str(exc))
    if len({n for n, _ in specs}) != len(specs):
        ap.error("stage names must differ")
    if not a.corpus and not a.sentences:
        ap.error("give --corpus (resynthesis) and/or --sentences (TTS)")
    sentences = None
    if a.sentences:
        path = Path(a.sentences)
        if not path.is_file():
            ap.error(f"{path}: no such file")
        sentences = [s.strip() for s in path.read_text().splitlines() if s.strip()][:a.limit]
    clips = load_clips(a.corpus, a.split, a.limit) if a.corpus else None
    codec = FlexiCodec.from_pretrained(a.codec).to(a.device).eval()
    lm = load_lm(a.lm, codec=codec)
    lm[0].to(a.device)
    stages = {n: (load_acoustic(d).to(a.device), load_speakers(d)) for n, d in specs}
    opts = SynthesisOptions(max_tokens_per_sentence=a.max_tokens, flow_steps=a.flow_steps, flow_sampler=a.flow_sampler,
                            guidance_scale=a.guidance)
    res = compare(codec, lm, stages, clips=clips, sentences=sentences,
                  frame_rates=tuple(parse_rates(a.rates)), seed=a.seed, speaker=a.speaker,
                  prompt_seconds=a.prompt_seconds, speaker_sim=not a.no_speaker_sim,
                  dnsmos=not a.no_dnsmos, workers=a.workers, options=opts)
    res["stage_dirs"] = {n: str(d) for n, d in specs}
    md = to_markdown(res)
    write_report_files(Path(a.out) / "compare_acoustic", res, md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
