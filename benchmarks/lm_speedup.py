"""How much faster the speech LM gets at lower frame rates (same texts, same LM size).

For each target frame rate the same utterances are encoded with FlexiCodec
(``encode(frame_rate=r)``; 12.5 Hz = threshold 1.0, no merging). The real semantic codes and
token lengths, laid out with the LM's own sequence layout (``flexicodec.lm.layout``) after the real text
pieces, then drive a randomly initialised :class:`flexicodec.lm.model.SpeechLM` of each size:

- training step: forward + backward + AdamW step on one batch of all utterances → tokens/s,
  audio-seconds/s, peak memory, and MFU on CUDA (FLOPs = 6·N·tokens + 12·layers·d·ΣL²,
  N = parameters without the input embedding table, over ``--peak-flops``, default 989e12:
  H100/H200 SXM dense bf16);
- trainer throughput: the LM trainer itself (``flexicodec.lm.train.run_training`` with a config from
  ``configs/lm/``: packed rows, bf16 autocast, SDPA, torch.compile, fused AdamW as the config
  says; default ``configs/lm/gpu.yaml``, a 163 M LM) on the same utterances laid out with
  the config's text input, at 12.5 and 6.25 Hz side by side (``--train-rates``): tokens/s,
  audio-hours per GPU-minute, model TFLOP/s and MFU of the steady-state window (the first
  ``--train-steps`` steps warm up and compile, the next ``--train-steps`` are measured);
- AR generation with the KV cache (``flexicodec.lm.generate.generate``, exactly the number of tokens the
  codec produced for that much audio): seconds per second of audio (AR RTF), batch 1 and
  batched.

Speedups are relative to 12.5 Hz. Output: ``OUT/lm_speedup.json``, printed tables,
``OUT/lm_speedup.png``. The last two stdout lines are
``trainer_audio_ratio_6.25_vs_12.5=<ratio>`` (trainer audio-hours per GPU-minute at 6.25 Hz
over 12.5 Hz) and ``speedup_6.25_vs_12.5=<ratio>`` (single-step training audio-seconds/s at
6.25 Hz over 12.5 Hz, for the largest LM size run).

    python -m flexicodec.benchmarks.lm_speedup --quick --out /tmp/bench          # CPU, < 1 min
    python -m flexicodec.benchmarks.lm_speedup --device cuda --out $OUT/bench     # GPU
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from flexicodec.benchmarks.common import (Utterance, autocast, concat_utterances, corpus_speech,
                                          dtype_for, format_table, hardware_info, load_flexicodec, log,
                                          measure_peak_memory, pick_sentences, plot_lines, resolve_device,
                                          synthesize_speech, time_interleaved, write_json)
from flexicodec.common.constants import BASE_FRAME_RATE, SAMPLE_RATE
from flexicodec.lm.model import DEFAULT_PEAK_FLOPS

DEFAULT_RATES = (BASE_FRAME_RATE, 8.3, 6.25, 4.0, 3.0)


@dataclass(frozen=True)
class LMSize:
    """Backbone sizes of one benchmark LM (llama architecture, random weights)."""

    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int


#: benchmark LM sizes, from a test-sized model to ~100 M parameters
LM_SIZES: dict[str, LMSize] = {
    "tiny": LMSize(64, 2, 2, 172),
    "small": LMSize(256, 4, 4, 688),
    "base": LMSize(512, 8, 8, 1376),
    "100m": LMSize(768, 12, 12, 3072),
}


@dataclass
class LMBenchConfig:
    """What to run. ``num_utts`` utterances form the training batch; ``gen_batch`` of them
    the batched generation."""

    sizes: tuple[str, ...] = ("tiny", "small", "base", "100m")
    rates: tuple[float, ...] = DEFAULT_RATES
    device: str = "cpu"
    precision: str = "bf16"            # autocast dtype on CUDA; CPU always runs fp32
    num_utts: int = 16
    gen_batch: int = 8
    train_warmup: int = 2
    train_repeats: int = 5
    gen_repeats: int = 3
    num_text_pieces: int = 1000        # sentencepiece vocabulary trained for the text prompts
    seed: int = 0
    quick: bool = False
    peak_flops: float = DEFAULT_PEAK_FLOPS    # device peak for MFU (dense bf16 FLOP/s)
    mfu_on_cpu: bool = False           # report MFU on CPU too (only with an explicit peak)
    # trainer throughput: config (configs/lm/*.yaml), rates, measured steps (after as many
    # warm-up steps); an empty train_rates skips it
    train_config: str = "configs/lm/gpu.yaml"
    train_text_input: str | None = None        # overrides the config's model.text_input
    train_rates: tuple[float, ...] = (BASE_FRAME_RATE, 6.25)
    train_steps: int = 20

    def __post_init__(self) -> None:
        unknown = [s for s in self.sizes if s not in LM_SIZES]
        if unknown:
            raise ValueError(f"unknown LM sizes {unknown}; choose from {sorted(LM_SIZES)}")
        if not self.rates or any(not (0 < r <= BASE_FRAME_RATE) for r in self.rates):
            raise ValueError(f"frame rates must lie in (0, {BASE_FRAME_RATE}], got {self.rates}")
        if BASE_FRAME_RATE not in self.rates:
            raise ValueError(f"rates must include the {BASE_FRAME_RATE} Hz baseline")
        if self.num_utts < 1 or not 1 <= self.gen_batch <= self.num_utts:
            raise ValueError("need num_utts >= 1 and 1 <= gen_batch <= num_utts")
        missing = [r for r in self.train_rates if r not in self.rates]
        if missing:
            raise ValueError(f"train rates {missing} are not among the encoded rates "
                             f"{self.rates}")
        if self.train_steps < 1 or self.peak_flops <= 0:
            raise ValueError("need train_steps >= 1 and peak_flops > 0")


@dataclass
class RateCodes:
    """The codec's output at one target rate: per utterance codes [T'] and lengths [T']."""

    rate: float
    codes: list[torch.Tensor]
    lengths: list[torch.Tensor]
    audio_seconds: float
    achieved_rate: float = field(init=False)   # tokens per second of audio

    def __post_init__(self) -> None:
        self.achieved_rate = sum(int(c.numel()) for c in self.codes) / self.audio_seconds


# ------------------------------------------------------------------------------ inputs
def encode_at_rates(codec, utts: Sequence[Utterance], rates: Sequence[float]
                    ) -> dict[float, RateCodes]:
    """Encode all utterances at each rate (12.5 Hz = threshold 1.0, else a target rate)."""
    seconds = sum(u.duration for u in utts)
    out = {}
    for r in tqdm(rates, desc="encode", leave=False):
        kw = {"threshold": 1.0} if r == BASE_FRAME_RATE else {"frame_rate": float(r)}
        enc = codec.encode([u.wav for u in utts], SAMPLE_RATE, num_quantizers=0, **kw)
        codes, lens = [], []
        for b in range(len(utts)):
            n = int(enc.token_mask[b].sum())
            codes.append(enc.semantic_codes[b, :n].cpu())
            lens.append(enc.token_lengths[b, :n].cpu())
        out[r] = RateCodes(float(r), codes, lens, seconds)
        log(f"{r:g} Hz target: {out[r].achieved_rate:.2f} tokens per second of audio")
    return out


def text_pieces(texts: Sequence[str], vocab_size: int, seed: int) -> tuple[list[list[int]], str]:
    """Real sentencepiece ids for ``texts``: the shipped LM's tokenizer when present, else a
    unigram tokenizer of ``vocab_size`` trained now on the shipped sentence list."""
    from flexicodec.lm.text_tokenizer import TextTokenizer, train_text_tokenizer

    try:
        from flexicodec.common.models import default_dir
        tok = TextTokenizer(default_dir("lm"))
        source = f"shipped LM tokenizer ({tok.vocab_size} pieces)"
    except (FileNotFoundError, ValueError):
        with tempfile.TemporaryDirectory() as d:
            tok = train_text_tokenizer(pick_sentences(1500, seed + 1, 3, 40),
                                       Path(d) / "tok.model", vocab_size=vocab_size)
            ids = [tok.encode(t) for t in texts]
        return ids, f"sentencepiece unigram {tok.vocab_size} pieces trained on the sentence list"
    return [tok.encode(t) for t in texts], source


def build_lm(size: str, semantic_size: int, max_group: int, num_text: int,
             max_positions: int, seed: int):
    """A randomly initialised SpeechLM of benchmark size ``size``."""
    from flexicodec.lm.model import SpeechLM, SpeechLMConfig

    s = LM_SIZES[size]
    torch.manual_seed(seed)
    cfg = SpeechLMConfig(hidden_size=s.hidden_size, num_layers=s.num_layers,
                         num_heads=s.num_heads, num_kv_heads=s.num_heads,
                         intermediate_size=s.intermediate_size, num_text=num_text,
                         semantic_size=semantic_size, max_group=max_group,
                         max_positions=max_positions, text_input="bpe")
    return SpeechLM(cfg)


def train_batch(vocab, pieces: Sequence[list[int]], rc: RateCodes) -> dict[str, torch.Tensor]:
    """The LM's training batch (``flexicodec.lm.layout.collate``) of every utterance at one rate."""
    from flexicodec.lm.layout import build_sequence, collate

    items = [build_sequence(vocab, p, rc.rate, c, n) for p, c, n in
             zip(pieces, rc.codes, rc.lengths)]
    return collate(items)


# ------------------------------------------------------------------------------ measurements
def train_step_fn(model, batch: dict[str, torch.Tensor], opt, device: torch.device,
                  dtype: torch.dtype | None):
    """A closure doing forward + backward + optimizer step on ``batch`` (already on device)."""
    def step():
        with autocast(device, dtype):
            loss = model.loss(batch)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def generate_fn(model, pieces: Sequence[list[int]], n_tokens: int, rate: float,
                device: torch.device, dtype: torch.dtype | None):
    """A closure generating exactly ``n_tokens`` speech tokens for each text with
    ``flexicodec.lm.generate.generate`` (KV cache, top-k 50 sampling; ``</speech>`` banned before and
    forced at ``n_tokens``)."""
    from flexicodec.lm.generate import SamplingConfig, generate

    sampling = SamplingConfig(temperature=1.0, top_k=50, min_tokens=n_tokens,
                              max_tokens=n_tokens, seed=0)

    def run():
        with autocast(device, dtype):
            out = generate(model, list(pieces), rate, sampling)
        if any(int(o.semantic_codes.numel()) != n_tokens for o in out):
            raise RuntimeError("generation did not produce the forced number of tokens")
        return out
    return run


# ------------------------------------------------------------------------------ driver
def run_benchmark(cfg: LMBenchConfig, utts: Sequence[Utterance], codec,
                  codec_source: str) -> dict:
    """All measurements; returns the JSON-able result dict (``rows`` one per size × rate)."""
    device = resolve_device(cfg.device)
    dtype = dtype_for(device, cfg.precision)
    rate_codes = encode_at_rates(codec, utts, cfg.rates)
    pieces, text_source = text_pieces([u.text for u in utts], cfg.num_text_pieces, cfg.seed)
    num_text = max(max(p) for p in pieces) + 1
    num_text = max(num_text, cfg.num_text_pieces)
    mean_dur = sum(u.duration for u in utts) / len(utts)
    audio_s = sum(u.duration for u in utts)
    max_len = max(3 + len(p) + 2 + int(c.numel()) for rc in rate_codes.values()
                  for p, c in zip(pieces, rc.codes))
    gen_pieces = pieces[:cfg.gen_batch]
    gen_audio = sum(u.duration for u in utts[:cfg.gen_batch]) / cfg.gen_batch
    rows = []
    for size in cfg.sizes:
        model = build_lm(size, int(codec.semantic_vocab_size), int(codec.max_group), num_text,
                         max(2048, max_len + 64), cfg.seed).to(device)
        n_params = model.num_parameters()
        log(f"LM {size}: {n_params / 1e6:.1f} M parameters; timing {len(cfg.rates)} rates "
            f"round-robin")
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        batches, train_fns, n_gen = {}, {}, {}
        for rate in cfg.rates:
            b = train_batch(model.vocab, pieces, rate_codes[rate])
            batches[rate] = {k: v.to(device) for k, v in b.items()}
            train_fns[rate] = train_step_fn(model, batches[rate], opt, device, dtype)
            # tokens to generate for one utterance of the mean duration at this rate
            n_gen[rate] = max(1, round(rate_codes[rate].achieved_rate * gen_audio))
        model.train()
        t_train = time_interleaved(train_fns, device, warmup=cfg.train_warmup,
                                   repeats=cfg.train_repeats, desc=f"train {size}")
        # CUDA: exact peak above the baseline. CPU: an in-process RSS peak after warm-up
        # hides the allocator's cached memory, so it is not reported (see codec_speed for a
        # fresh-process CPU measurement).
        mem = ({r: measure_peak_memory(train_fns[r], device) for r in cfg.rates}
               if device.type == "cuda" else {})
        del opt, train_fns
        model.eval()
        gen_fns = {}
        for rate in cfg.rates:
            gen_fns[(rate, 1)] = generate_fn(model, gen_pieces[:1], n_gen[rate], rate, device,
                                             dtype)
            gen_fns[(rate, len(gen_pieces))] = generate_fn(model, gen_pieces, n_gen[rate],
                                                           rate, device, dtype)
        for pcs in (gen_pieces[:1], gen_pieces):                          # warm-up
            generate_fn(model, pcs, 8, cfg.rates[0], device, dtype)()
        t_gen = time_interleaved(gen_fns, device, warmup=0, repeats=cfg.gen_repeats,
                                 desc=f"generate {size}")
        for rate in cfg.rates:
            seq = batches[rate]["attention_mask"].sum(1).tolist()
            tt = t_train[rate].median
            flops = model.train_flops(seq)
            g1, gb = t_gen[(rate, 1)], t_gen[(rate, len(gen_pieces))]
            row = {
                "size": size, "params_m": n_params / 1e6, "rate": rate,
                "tokens_per_audio_s": rate_codes[rate].achieved_rate,
                "mean_seq_len": sum(seq) / len(seq), "batch": len(seq),
                "train_step_s": tt,
                "train_tokens_per_s": sum(seq) / tt,
                "train_audio_s_per_s": audio_s / tt,
                "train_peak_mem_mb": mem[rate].peak_mb if rate in mem else None,
                "train_tflops": flops / tt / 1e12,
                "mfu": (flops / tt / cfg.peak_flops
                        if device.type == "cuda" or cfg.mfu_on_cpu else None),
                "gen_tokens": n_gen[rate],
                "ar_rtf_b1": g1.median / gen_audio,
                "ar_rtf_batched": gb.median / (gen_audio * len(gen_pieces)),
                "gen_batch": len(gen_pieces),
                "timings": {"train": t_train[rate].to_dict(), "gen_b1": g1.to_dict(),
                            "gen_batched": gb.to_dict(),
                            "train_memory": mem[rate].to_dict() if rate in mem else None},
            }
            rows.append(row)
            log(f"{size} @ {rate:g} Hz: train {row['train_audio_s_per_s']:.1f} audio-s/s, "
                f"AR RTF b1 {row['ar_rtf_b1']:.4f}, batched {row['ar_rtf_batched']:.4f}")
        del model, batches, gen_fns
        if device.type == "cuda":
            torch.cuda.empty_cache()
    _add_speedups(rows)
    return {
        "benchmark": "lm_speedup",
        "config": asdict(cfg),
        "hardware": hardware_info(device),
        "precision": "bf16 autocast" if dtype is not None else "fp32",
        "codec": codec_source,
        "audio": {"utterances": len(utts), "seconds": audio_s, "mean_seconds": mean_dur,
                  "source": sorted({u.source for u in utts})},
        "text_tokens": text_source,
        "flops_formula": "6*N*sum(L) + 12*layers*d*sum(L^2), N excludes input embeddings",
        "mfu_peak_flops": cfg.peak_flops if device.type == "cuda" or cfg.mfu_on_cpu else None,
        "rows": rows,
        "trainer": trainer_throughput(cfg, rate_codes, utts, codec, device),
    }


def trainer_items(text_ids: Sequence[list[int]], rc: RateCodes, durations: Sequence[float],
                  vocab, max_len: int, min_tokens: int) -> tuple[list, list[float]]:
    """The utterances at one rate laid out for the trainer (``flexicodec.lm.layout.build_sequence``),
    repeated until they hold at least ``min_tokens`` positions. Returns (items, durations)."""
    from flexicodec.lm.layout import build_sequence

    base = [(build_sequence(vocab, t, rc.rate, c, n), d)
            for t, c, n, d in zip(text_ids, rc.codes, rc.lengths, durations)]
    base = [(it, d) for it, d in base if len(it) <= max_len]
    if not base:
        raise ValueError(f"every utterance is longer than the trainer's max_len {max_len}")
    per_copy = sum(len(it) for it, _ in base)
    copies = max(1, -(-min_tokens // per_copy))
    return [it for _ in range(copies) for it, _ in base], [d for _ in range(copies)
                                                            for _, d in base]


def trainer_throughput(cfg: LMBenchConfig, rate_codes: dict[float, RateCodes],
                       utts: Sequence[Utterance], codec, device: torch.device) -> dict:
    """The LM trainer (``flexicodec.lm.train.run_training``) with ``cfg.train_config`` on the benchmark's
    utterances at each of ``cfg.train_rates``: 2 × ``train_steps`` steps, the second window
    of ``train_steps`` measured (the first warms up / compiles). Returns
    ``{"config", "text_input", "params_m", "rows": [{rate, tokens_per_s,
    audio_hours_per_gpu_minute, model_tflops_per_s, mfu, ...}]}`` ({} without rates)."""
    import dataclasses

    from flexicodec.common.training import make_accelerator
    from flexicodec.lm.model import SpeechLM, model_config_from_dict
    from flexicodec.lm.train import load_config, run_training

    if not cfg.train_rates:
        return {}
    model_d, tcfg = load_config(cfg.train_config)
    if cfg.train_text_input:
        model_d = {**model_d, "text_input": cfg.train_text_input}
    text_input = model_d.get("text_input", "phoneme")
    texts = [u.text for u in utts]
    with tempfile.TemporaryDirectory() as tmp:
        if text_input == "phoneme":
            from flexicodec.lm.phoneme_tokenizer import PhonemeTokenizer, text_to_phonemes
            phon = text_to_phonemes(texts)
            tok = PhonemeTokenizer.build(phon, Path(tmp) / "vocab")
            text_ids, num_text = [tok.ids(p) for p in phon], tok.vocab_size
        else:
            text_ids, _ = text_pieces(texts, tcfg.tokenizer_vocab_size, cfg.seed)
            num_text = max(max(t) for t in text_ids) + 1
        mcfg = model_config_from_dict(model_d, num_text=num_text,
                                      semantic_size=int(codec.semantic_vocab_size),
                                      max_group=int(codec.max_group))
        steps = cfg.train_steps
        tc = dataclasses.replace(tcfg, max_steps=2 * steps, log_every=steps,
                                 eval_every=10 ** 9, save_every=10 ** 9, keep_best=False,
                                 warmup_steps=min(tcfg.warmup_steps, steps),
                                 peak_flops=cfg.peak_flops,
                                 mixed_precision=None if device.type == "cuda" else "no")
        rows, n_params = [], 0
        for rate in cfg.train_rates:
            torch.manual_seed(cfg.seed)
            model = SpeechLM(mcfg)
            n_params = model.num_parameters()
            items, durs = trainer_items(text_ids, rate_codes[rate], [u.duration for u in utts],
                                        model.vocab, tc.max_len,
                                        int(2.2 * tc.max_steps * tc.batch_tokens))
            acc = make_accelerator(tc.mixed_precision, tc.grad_accum,
                                   cpu=device.type == "cpu")
            log(f"trainer {Path(cfg.train_config).name} @ {rate:g} Hz: "
                f"{n_params / 1e6:.1f} M params, {2 * steps} steps")
            run_training(model, items, durs, [], tc, Path(tmp) / f"run_{rate:g}",
                         accelerator=acc)
            logs = [json.loads(line) for line in
                    (Path(tmp) / f"run_{rate:g}" / "metrics.jsonl").read_text().splitlines()]
            win = [r for r in logs if "tokens_per_s" in r][-1]   # the steady-state window
            row = {"rate": rate, "tokens_per_audio_s": rate_codes[rate].achieved_rate,
                   "mean_seq_len": sum(len(it) for it in items) / len(items),
                   "steps_measured": steps, "tokens_per_s": win["tokens_per_s"],
                   "audio_hours_per_gpu_minute": win["audio_hours_per_gpu_minute"],
                   "model_tflops_per_s": win["model_tflops_per_s"],
                   "mfu": (win["model_tflops_per_s"] * 1e12 / cfg.peak_flops
                           if device.type == "cuda" or cfg.mfu_on_cpu else None),
                   "loss": win["loss"]}
            rows.append(row)
            log(f"trainer @ {rate:g} Hz: {row['tokens_per_s']:.0f} tokens/s, "
                f"{row['audio_hours_per_gpu_minute']:.3f} audio-h/GPU-min")
            del model, acc
            if device.type == "cuda":
                torch.cuda.empty_cache()
    base = next((r for r in rows if r["rate"] == BASE_FRAME_RATE), None)
    for r in rows:
        r["audio_ratio_vs_12.5"] = (r["audio_hours_per_gpu_minute"]
                                    / base["audio_hours_per_gpu_minute"] if base else None)
        # what the ratio would be if a step cost the same per position: positions per
        # utterance at 12.5 Hz over this rate (text positions count at every rate)
        r["seq_ratio_vs_12.5"] = base["mean_seq_len"] / r["mean_seq_len"] if base else None
    return {"config": cfg.train_config, "text_input": text_input,
            "params_m": n_params / 1e6, "pack_length": tc.pack_length,
            "batch_tokens": tc.batch_tokens, "compile": tc.compile, "attention": tc.attention,
            "precision": "bf16 autocast" if device.type == "cuda" else "fp32",
            "rows": rows}


def _add_speedups(rows: list[dict]) -> None:
    """Speedup columns relative to the 12.5 Hz row of the same size."""
    base = {r["size"]: r for r in rows if r["rate"] == BASE_FRAME_RATE}
    for r in rows:
        b = base[r["size"]]
        r["token_ratio"] = b["tokens_per_audio_s"] / r["tokens_per_audio_s"]
        r["speedup_train"] = r["train_audio_s_per_s"] / b["train_audio_s_per_s"]
        r["speedup_ar_b1"] = b["ar_rtf_b1"] / r["ar_rtf_b1"]
        r["speedup_ar_batched"] = b["ar_rtf_batched"] / r["ar_rtf_batched"]


TABLE_COLUMNS = [
    ("size", "LM"), ("params_m", "M params"), ("rate", "rate Hz"),
    ("tokens_per_audio_s", "tok/audio-s"), ("mean_seq_len", "seq len"),
    ("train_tokens_per_s", "train tok/s"), ("train_audio_s_per_s", "train audio-s/s"),
    ("speedup_train", "train speedup"), ("train_peak_mem_mb", "train MiB"), ("mfu", "MFU"),
    ("ar_rtf_b1", "AR RTF b1"), ("ar_rtf_batched", "AR RTF batched"),
    ("speedup_ar_b1", "AR speedup b1"), ("token_ratio", "token ratio"),
]


TRAINER_COLUMNS = [
    ("rate", "rate Hz"), ("tokens_per_audio_s", "tok/audio-s"), ("mean_seq_len", "seq len"),
    ("tokens_per_s", "tokens/s"), ("audio_hours_per_gpu_minute", "audio-h/GPU-min"),
    ("audio_ratio_vs_12.5", "vs 12.5 Hz"), ("seq_ratio_vs_12.5", "positions ratio"),
    ("model_tflops_per_s", "model TFLOP/s"),
    ("mfu", "MFU"),
]


def write_outputs(result: dict, out: Path) -> tuple[Path, Path]:
    """``out/lm_speedup.json`` and ``out/lm_speedup.png`` (speedup vs frame rate)."""
    out.mkdir(parents=True, exist_ok=True)
    rows = result["rows"]
    js = write_json(out / "lm_speedup.json", result)
    series = {}
    for size in dict.fromkeys(r["size"] for r in rows):
        rs = sorted((r for r in rows if r["size"] == size), key=lambda r: r["rate"])
        series[f"{size} train"] = ([r["rate"] for r in rs], [r["speedup_train"] for r in rs])
        series[f"{size} AR b1"] = ([r["rate"] for r in rs], [r["speedup_ar_b1"] for r in rs])
    ref = sorted({(r["rate"], r["token_ratio"]) for r in rows if r["size"] == rows[0]["size"]})
    png = plot_lines(out / "lm_speedup.png", series, xlabel="average frame rate (Hz)",
                     ylabel=f"speedup vs {BASE_FRAME_RATE:g} Hz",
                     title=f"Speech-LM speedup vs frame rate ({result['hardware']['device']})",
                     reference=([x for x, _ in ref], [y for _, y in ref], "token-count ratio"),
                     invert_x=True)
    return js, png


def trainer_headline(result: dict) -> str | None:
    """``trainer_audio_ratio_6.25_vs_12.5=<ratio>``, or None without both rates."""
    rows = {r["rate"]: r for r in (result.get("trainer") or {}).get("rows", [])}
    if 6.25 not in rows or BASE_FRAME_RATE not in rows:
        return None
    return f"trainer_audio_ratio_6.25_vs_12.5={rows[6.25]['audio_ratio_vs_12.5']:.4f}"


def headline(result: dict) -> str | None:
    """``speedup_6.25_vs_12.5=<ratio>`` for the largest LM size, or None without 6.25 Hz."""
    rows = result["rows"]
    size = max(rows, key=lambda r: r["params_m"])["size"]
    sel = [r for r in rows if r["size"] == size and r["rate"] == 6.25]
    if not sel:
        return None
    return f"speedup_6.25_vs_12.5={sel[0]['speedup_train']:.4f}"


def _floats(s: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in s.split(",") if x.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {s!r}") from exc


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m flexicodec.benchmarks.lm_speedup", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="CPU smoke run: tiny LM, 4 short utterances, random tiny codec if none")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available, "
                   "cpu for --quick)")
    p.add_argument("--sizes", default=None, help=f"comma list of {','.join(LM_SIZES)}")
    p.add_argument("--rates", type=_floats, default=DEFAULT_RATES, help="frame rates (Hz)")
    p.add_argument("--codec", default=None, help="trained FlexiCodec directory "
                   "(default: the shipped one)")
    p.add_argument("--data", default=None, help="corpus directory with real speech "
                   "(its train split: the LMs are untrained; default: synthesize sentences with "
                   "flite / espeak-ng)")
    p.add_argument("--num-utts", type=int, default=None)
    p.add_argument("--gen-batch", type=int, default=None)
    p.add_argument("--concat-seconds", type=float, default=None,
                   help="join utterances into clips of at least this many seconds "
                        "(default: 30 on CUDA so the training batch is compute-bound, "
                        "0 = off on CPU)")
    p.add_argument("--precision", default="bf16", choices=("bf16", "fp32"))
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's own; 1 for --quick, robust on a "
                   "shared machine)")
    p.add_argument("--peak-flops", type=float, default=None,
                   help=f"device peak FLOP/s for MFU (default {DEFAULT_PEAK_FLOPS:g}: H100/H200 "
                        f"SXM dense bf16; on CPU MFU is reported only when this is given)")
    p.add_argument("--train-config", default=None,
                   help="LM config of the trainer-throughput run (default "
                        "configs/lm/gpu.yaml; --quick: configs/lm/tiny.yaml)")
    p.add_argument("--text-input", choices=["phoneme", "bpe"], default=None,
                   help="the trainer-throughput LM's text input (overrides the config's "
                        "model.text_input, as flexicodec-lm train --text-input does)")
    p.add_argument("--train-rates", type=_floats, default=(BASE_FRAME_RATE, 6.25),
                   help="rates of the trainer-throughput run ('' skips it)")
    p.add_argument("--train-steps", type=int, default=None,
                   help="measured trainer steps per rate, after as many warm-up steps "
                        "(default 20; --quick: 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--out", required=True, help="output directory")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    device = a.device or ("cpu" if a.quick or not torch.cuda.is_available() else "cuda")
    threads = a.threads or (1 if a.quick else None)
    if threads:
        torch.set_num_threads(threads)
    peak = dict(peak_flops=a.peak_flops or DEFAULT_PEAK_FLOPS,
                mfu_on_cpu=a.peak_flops is not None, train_rates=a.train_rates)
    if a.quick:
        sizes = tuple(a.sizes.split(",")) if a.sizes else ("tiny",)
        cfg = LMBenchConfig(sizes=sizes, rates=a.rates, device=device, precision=a.precision,
                            num_utts=a.num_utts or 4, gen_batch=a.gen_batch or 4,
                            train_warmup=1, train_repeats=5, gen_repeats=3,
                            num_text_pieces=256, seed=a.seed, quick=True,
                            train_config=a.train_config or "configs/lm/tiny.yaml",
                            train_text_input=a.text_input, train_steps=a.train_steps or 3,
                            **peak)
    else:
        sizes = tuple(a.sizes.split(",")) if a.sizes else tuple(LM_SIZES)
        n = a.num_utts or 16
        cfg = LMBenchConfig(sizes=sizes, rates=a.rates, device=device, precision=a.precision,
                            num_utts=n, gen_batch=a.gen_batch or min(8, n), seed=a.seed,
                            train_config=a.train_config or "configs/lm/gpu.yaml",
                            train_text_input=a.text_input, train_steps=a.train_steps or 20,
                            **peak)
    dev = resolve_device(cfg.device)
    t0 = time.perf_counter()
    codec, codec_source = load_flexicodec(a.codec, dev, allow_random_tiny=cfg.quick,
                                          seed=cfg.seed)
    log(f"codec: {codec_source}")
    concat = a.concat_seconds if a.concat_seconds is not None else (
        30.0 if dev.type == "cuda" and not cfg.quick else 0.0)
    # ~2.5 s per corpus utterance: load enough to fill num_utts clips of `concat` seconds
    n_src = cfg.num_utts if concat <= 0 else cfg.num_utts * (int(concat / 2.0) + 2)
    utts = (corpus_speech(a.data, n_src, cfg.seed, split="train") if a.data
            else synthesize_speech(n_src, cfg.seed))
    utts = concat_utterances(utts, concat)[:cfg.num_utts]
    if len(utts) < cfg.num_utts:
        raise ValueError(f"only {len(utts)} clips of >= {concat:g} s could be made from "
                         f"{a.data or 'the synthesized sentences'}; lower --num-utts or "
                         f"--concat-seconds")
    result = run_benchmark(cfg, utts, codec, codec_source)
    result["wall_seconds"] = time.perf_counter() - t0
    js, png = write_outputs(result, Path(a.out))
    print(f"LM speedup vs frame rate on {result['hardware']['device']} "
          f"({result['precision']}); codec: {codec_source}; "
          f"{len(utts)} utterances, {result['audio']['seconds']:.1f} s of audio")
    print(format_table(result["rows"], TABLE_COLUMNS))
    tr = result["trainer"]
    if tr:
        print(f"LM trainer ({tr['config']}: {tr['params_m']:.1f} M params, {tr['text_input']} "
              f"input, packed rows of {tr['pack_length']}, {tr['batch_tokens']} positions "
              f"per step, compile={tr['compile']}, {tr['precision']})")
        print(format_table(tr["rows"], TRAINER_COLUMNS))
    print(f"wrote {js} and {png} ({result['wall_seconds']:.0f} s)")
    line = trainer_headline(result)
    if line is not None:
        print(line)
    line = headline(result)
    if line is None:
        print("no 6.25 Hz rate in --rates: no speedup_6.25_vs_12.5 line")
        return 0
    print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
