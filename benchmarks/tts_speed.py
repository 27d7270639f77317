"""End-to-end TTS speed at each frame rate: RTF, AR-stage RTF and first-chunk latency.

For every rate, each text is synthesized offline (``TTS.synthesize``: RTF = wall / audio
seconds, and the AR LM share from ``last_timing["lm_s"]``) and streamed (``TTS.stream``:
time to the first audio chunk). Medians over texts × repeats after one warm-up sentence.

    python -m flexicodec.benchmarks.tts_speed --out DIR                 # shipped TTS (codec + LM + acoustic)
    python -m flexicodec.benchmarks.tts_speed --model DIR --device cuda --out DIR
    python -m flexicodec.benchmarks.tts_speed --quick --out DIR         # random tiny pipeline (smoke run)
    python -m flexicodec.benchmarks.tts_speed --device cuda \
        --lm-cache dynamic,static,compiled,cudagraphs --out DIR

``--lm-cache`` runs the whole measurement once per way the LM keeps its KV cache, side by side
(``SynthesisOptions.lm_cache``, ``flexicodec.lm.cache_modes.LM_CACHES``): ``dynamic`` (a
transformers DynamicCache), ``static`` (a StaticCache: fixed-shape steps), ``compiled`` (static, with the one-token steps through
``torch.compile``; the warm-up sentence compiles) and ``cudagraphs`` (compiled with
``mode="reduce-overhead"``: CUDA graphs; on a CPU the same as compiled). All give the same
tokens.

With random weights the LM rarely ends a sentence, so ``--quick`` caps every sentence at
``--max-tokens`` tokens and reports that; timings of a trained pipeline depend on the
lengths it generates (reported as audio seconds).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from flexicodec.benchmarks.common import (format_table, hardware_info, log, pick_sentences, resolve_device,
                                          synchronize, write_json)
from flexicodec.common.constants import BASE_FRAME_RATE
from flexicodec.lm.cache_modes import add_lm_cache_flag

DEFAULT_RATES = (BASE_FRAME_RATE, 8.3, 6.25, 4.0, 3.0)


def build_random_tts(device: torch.device, max_tokens: int, seed: int = 0):
    """A TTS of tiny random models: the tiny FlexiCodec, a tiny SpeechLM with a sentencepiece
    tokenizer trained now, and a tiny acoustic stage (for smoke runs and tests)."""
    from flexicodec.codec.config import FlexiCodecConfig
    from flexicodec.codec.model import FlexiCodec
    from flexicodec.lm.model import SpeechLM, SpeechLMConfig
    from flexicodec.lm.text_tokenizer import train_text_tokenizer
    from flexicodec.tts.acoustic import AcousticConfig, AcousticModel
    from flexicodec.tts.pipeline import TTS, SynthesisOptions

    torch.manual_seed(seed)
    codec = FlexiCodec(FlexiCodecConfig.tiny()).eval()
    with tempfile.TemporaryDirectory() as d:
        tok = train_text_tokenizer(pick_sentences(500, seed + 1, 3, 40), Path(d) / "t.model",
                                   vocab_size=200)
    lm = SpeechLM(SpeechLMConfig(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=2,
                                 intermediate_size=172, num_text=tok.vocab_size,
                                 semantic_size=codec.semantic_vocab_size,
                                 max_group=codec.max_group, codec_identity="",
                                 text_input="bpe")).eval()
    acoustic = AcousticModel(AcousticConfig.tiny(
        semantic_vocab_size=codec.semantic_vocab_size, n_q=codec.config.n_q,
        codebook_size=codec.config.rvq_codebook_size, max_group=codec.max_group)).eval()
    tts = TTS(codec.to(device), (lm.to(device), tok), acoustic.to(device),
              options=SynthesisOptions(max_tokens_per_sentence=max_tokens))
    return tts


def measure_tts(tts, texts: Sequence[str], rates: Sequence[float], device: torch.device,
                repeats: int = 1, seed: int = 0, speaker: str | None = None) -> list[dict]:
    """One row per rate: median RTF (offline), AR-stage RTF, first-chunk latency (streaming),
    and audio seconds produced. ``texts`` are single sentences."""
    if not texts:
        raise ValueError("no texts to synthesize")
    tts.synthesize(texts[0], speaker=speaker, frame_rate=rates[0], seed=seed)   # warm-up
    rows = []
    for rate in tqdm(rates, desc="tts rates", leave=False):
        rtf, ar_rtf, first, audio_s = [], [], [], []
        for rep in range(repeats):
            for i, text in enumerate(texts):
                s = seed + 1000 * rep + i
                synchronize(device)
                t0 = time.perf_counter()
                audio, sr = tts.synthesize(text, speaker=speaker, frame_rate=rate, seed=s)
                synchronize(device)
                wall = time.perf_counter() - t0
                dur = audio.size / sr
                if dur <= 0:
                    raise RuntimeError(f"no audio for {text!r} at {rate} Hz")
                rtf.append(wall / dur)
                ar_rtf.append(tts.last_timing["lm_s"] / dur)
                audio_s.append(dur)
                it = tts.stream(text, speaker=speaker, frame_rate=rate, seed=s)
                next(it)
                first.append(tts.last_timing["first_chunk_s"])
                for _ in it:      # finish the stream so timings stay comparable
                    pass
        rows.append({"rate": rate, "rtf": statistics.median(rtf),
                     "ar_rtf": statistics.median(ar_rtf),
                     "first_chunk_s": statistics.median(first),
                     "audio_s": statistics.median(audio_s), "n": len(rtf)})
        log(f"TTS @ {rate:g} Hz: RTF {rows[-1]['rtf']:.3f}, first chunk "
            f"{rows[-1]['first_chunk_s'] * 1000:.0f} ms")
    return rows


TABLE_COLUMNS = [("lm_cache", "LM cache"), ("rate", "rate Hz"), ("rtf", "RTF"),
                 ("ar_rtf", "AR RTF"), ("first_chunk_s", "first chunk s"), ("audio_s", "audio s"),
                 ("n", "runs")]


def _floats(s: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in s.split(",") if x.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {s!r}") from exc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flexicodec.benchmarks.tts_speed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="directory with codec/ lm/ acoustic/ "
                   "(default: the shipped models)")
    p.add_argument("--quick", action="store_true", help="random tiny pipeline on CPU")
    p.add_argument("--device", default=None, help="cpu or cuda")
    p.add_argument("--rates", type=_floats, default=DEFAULT_RATES)
    p.add_argument("--num-texts", type=int, default=None, help="sentences (default 8; 2 quick)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--max-tokens", type=int, default=40, help="--quick: tokens per sentence cap")
    p.add_argument("--speaker", default=None)
    add_lm_cache_flag(p, several=True)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--out", required=True, help="output directory")
    a = p.parse_args(argv)
    if a.threads or a.quick:
        torch.set_num_threads(a.threads or 1)
    device = resolve_device(a.device or ("cuda" if torch.cuda.is_available() and not a.quick
                                         else "cpu"))
    t0 = time.perf_counter()
    if a.quick:
        tts = build_random_tts(device, a.max_tokens, a.seed)
        source = f"random tiny models (--quick), <= {a.max_tokens} tokens per sentence"
    else:
        from flexicodec.tts.pipeline import TTS
        tts = TTS.from_pretrained(a.model, map_location=str(device))
        source = a.model or "shipped flexicodec_pretrained"
    texts = pick_sentences(a.num_texts or (2 if a.quick else 8), a.seed + 7)
    rows = []
    for cache in a.lm_cache:
        tts.options.lm_cache = cache
        log(f"LM cache: {cache}")
        rows += [{"lm_cache": cache, **r}
                 for r in measure_tts(tts, texts, a.rates, device, a.repeats, a.seed, a.speaker)]
    result = {"benchmark": "tts_speed", "hardware": hardware_info(device), "models": source,
              "texts": texts, "rows": rows, "wall_seconds": time.perf_counter() - t0}
    js = write_json(Path(a.out) / "tts_speed.json", result)
    print(f"TTS speed on {result['hardware']['device']} ({source})")
    print(format_table(rows, TABLE_COLUMNS))
    print(f"wrote {js}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
