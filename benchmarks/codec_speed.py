"""Codec speed: FlexiCodec against transformers' Mimi, DAC and EnCodec, measured in one run.

Encode and decode throughput (audio-seconds per wall second, i.e. × real time) and peak
memory, for our codec (``small`` preset with random weights, and the shipped / given
checkpoint when there is one) and the peers at their default ``transformers`` configs with
random weights (same compute as trained weights). Every codec gets the same audio duration at
its own native sample rate (Mimi and EnCodec 24 kHz, DAC and ours 16 kHz), resampled with
soxr from the same speech. Timings of all codecs are interleaved round-robin, so load spikes
on a shared machine hit all of them alike; ratios are reported as ``ours / peer`` throughput
(> 1: ours is faster) against the first FlexiCodec entry.

    python -m flexicodec.benchmarks.codec_speed --quick --out /tmp/bench        # CPU, batch 1, short audio
    python -m flexicodec.benchmarks.codec_speed --device cuda --out $OUT/bench   # GPU b1 + b16, CPU b1

Outputs ``OUT/codec_speed.json`` and a printed table.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from flexicodec.benchmarks.common import (corpus_speech, format_table, hardware_info, log,
                                          measure_peak_memory, peak_memory_in_subprocess, resolve_device,
                                          synthesize_speech, time_interleaved, write_json)
from flexicodec.common.constants import SAMPLE_RATE

PEERS = ("mimi", "dac", "encodec")


@dataclass
class CodecUnderTest:
    """One codec behind a common interface.

    ``encode(wav [B, T] at sample_rate) -> codes`` (anything), ``decode(codes) -> audio``.
    """

    name: str
    sample_rate: int
    encode: Callable[[torch.Tensor], Any]
    decode: Callable[[Any], torch.Tensor]
    params_m: float
    note: str = ""
    token_rate: Callable[[Any, float], float] | None = None   # (codes, seconds) -> tokens/s


# ------------------------------------------------------------------------------ codecs
def flexicodec_under_test(model, name: str, note: str,
                          threshold: float | None = None) -> CodecUnderTest:
    """Our codec: ``encode`` at ``threshold`` (None: its default),
    ``decode_from_codes`` with all RVQ quantizers."""
    sr = int(model.sample_rate)

    def enc(wav: torch.Tensor):
        return model.encode(wav, sr, threshold=threshold)

    def dec(codes) -> torch.Tensor:
        return model.decode_from_codes(codes.semantic_codes, codes.acoustic_codes,
                                       codes.token_lengths)

    def rate(codes, seconds: float) -> float:
        return float(codes.token_mask.sum(1).float().mean()) / seconds

    params = model.num_parameters(include_semantic=True) / 1e6
    return CodecUnderTest(name, sr, enc, dec, params, note, rate)


def hf_peer_under_test(kind: str, device: torch.device, seed: int = 0) -> CodecUnderTest:
    """``transformers`` MimiModel / DacModel / EncodecModel at the default config, random
    weights (nothing is downloaded)."""
    import transformers as tf

    classes = {"mimi": ("MimiModel", "MimiConfig"), "dac": ("DacModel", "DacConfig"),
               "encodec": ("EncodecModel", "EncodecConfig")}
    if kind not in classes:
        raise ValueError(f"unknown peer codec {kind!r}; choose from {PEERS}")
    model_cls, cfg_cls = (getattr(tf, n) for n in classes[kind])
    torch.manual_seed(seed)
    model = model_cls(cfg_cls()).to(device).eval()
    sr = int(model.config.sampling_rate)

    @torch.no_grad()
    def enc(wav: torch.Tensor):
        return model.encode(wav[:, None, :])

    @torch.no_grad()
    def dec(out) -> torch.Tensor:
        if kind == "encodec":
            return model.decode(out.audio_codes, out.audio_scales)[0]
        if kind == "dac":
            return model.decode(audio_codes=out.audio_codes)[0]
        return model.decode(out.audio_codes)[0]

    def rate(out, seconds: float) -> float:
        return float(out.audio_codes.shape[-1]) / seconds

    params = sum(p.numel() for p in model.parameters()) / 1e6
    note = f"transformers {model_cls.__name__}, default config, random init"
    n_q = getattr(model.config, "num_quantizers", None) or getattr(model.config, "n_codebooks",
                                                                   None)
    if n_q:
        note += f", {n_q} quantizers"
    return CodecUnderTest(kind, sr, enc, dec, params, note, rate)


# ------------------------------------------------------------------------------ measuring
def make_audio(wav16k: np.ndarray, seconds: float, sample_rate: int, batch: int,
               device: torch.device) -> torch.Tensor:
    """``batch`` copies of ``seconds`` of the 16 kHz speech ``wav16k`` (tiled if shorter),
    resampled to ``sample_rate`` → [B, T] on ``device``."""
    from flexicodec.data.audio import resample

    n16 = int(round(seconds * SAMPLE_RATE))
    if wav16k.size == 0:
        raise ValueError("empty source audio")
    x = np.tile(wav16k, int(np.ceil(n16 / wav16k.size)))[:n16]
    x = resample(x, SAMPLE_RATE, sample_rate)
    n = int(round(seconds * sample_rate))
    x = np.pad(x, (0, max(0, n - x.size)))[:n]
    return torch.from_numpy(np.ascontiguousarray(x)).float()[None].repeat(batch, 1).to(device)


def measure_codecs(codecs: Sequence[CodecUnderTest], wav16k: np.ndarray, seconds: float,
                   batch: int, device: torch.device | str, *, warmup: int = 1,
                   repeats: int = 3, memory: bool = True,
                   memory_specs: dict[str, dict] | None = None) -> list[dict]:
    """Encode / decode timings (round-robin over ``codecs``) and peak memory: on CUDA in this
    process; on CPU in a fresh process per codec and operation when ``memory_specs`` gives
    the codec's :func:`build_one` spec, else in this process (after warm-up: memory the
    allocator keeps from earlier calls is not counted again).

    Returns one dict per codec: ``encode_x_rt`` / ``decode_x_rt`` (audio-seconds per second:
    ``batch * seconds / median time``), median times, peak MiB, token rate, params.
    """
    device = torch.device(device)
    inputs = {c.name: make_audio(wav16k, seconds, c.sample_rate, batch, device) for c in codecs}
    with torch.inference_mode():
        codes = {c.name: c.encode(inputs[c.name]) for c in codecs}   # decode inputs
        for c in codecs:
            out = c.decode(codes[c.name])
            n_out = out.shape[-1]
            if not torch.isfinite(out).all():
                raise RuntimeError(f"{c.name}: decoded audio is not finite")
            if abs(n_out - inputs[c.name].shape[-1]) > 0.1 * inputs[c.name].shape[-1]:
                raise RuntimeError(f"{c.name}: decoded {n_out} samples for "
                                   f"{inputs[c.name].shape[-1]} input samples")
        enc_fns = {c.name: (lambda c=c: c.encode(inputs[c.name])) for c in codecs}
        dec_fns = {c.name: (lambda c=c: c.decode(codes[c.name])) for c in codecs}
        t_enc = time_interleaved(enc_fns, device, warmup=warmup, repeats=repeats,
                                 desc=f"encode b{batch}")
        t_dec = time_interleaved(dec_fns, device, warmup=warmup, repeats=repeats,
                                 desc=f"decode b{batch}")
        rows = []
        for c in codecs:
            audio = batch * seconds
            row = {
                "codec": c.name, "params_m": c.params_m, "sample_rate": c.sample_rate,
                "batch": batch, "seconds": seconds,
                "token_rate": c.token_rate(codes[c.name], seconds) if c.token_rate else None,
                "encode_s": t_enc[c.name].median, "decode_s": t_dec[c.name].median,
                "encode_x_rt": audio / t_enc[c.name].median,
                "decode_x_rt": audio / t_dec[c.name].median,
                "note": c.note,
                "timings": {"encode": t_enc[c.name].to_dict(), "decode": t_dec[c.name].to_dict()},
            }
            if memory:
                spec = (memory_specs or {}).get(c.name)
                if device.type == "cpu" and spec is not None:
                    me, md = (peak_memory_in_subprocess(
                        "flexicodec.benchmarks.codec_speed:memory_probe", spec, op, wav16k, seconds, batch)
                        for op in ("encode", "decode"))
                else:
                    me = measure_peak_memory(enc_fns[c.name], device)
                    md = measure_peak_memory(dec_fns[c.name], device)
                row.update(encode_peak_mb=me.peak_mb, decode_peak_mb=md.peak_mb,
                           memory_method=me.method)
            rows.append(row)
    return rows


def add_ratios(rows: list[dict], reference: str) -> None:
    """``enc_ours_x`` / ``dec_ours_x``: reference codec throughput / this codec's (same device
    and batch)."""
    for r in rows:
        ref = next(x for x in rows if x["codec"] == reference and x["batch"] == r["batch"]
                   and x.get("device") == r.get("device"))
        r["enc_ours_x"] = ref["encode_x_rt"] / r["encode_x_rt"]
        r["dec_ours_x"] = ref["decode_x_rt"] / r["decode_x_rt"]


TABLE_COLUMNS = [
    ("device", "device"), ("codec", "codec"), ("params_m", "M params"), ("sample_rate", "Hz"), ("batch", "batch"),
    ("token_rate", "frames/s"), ("encode_x_rt", "encode xRT"), ("decode_x_rt", "decode xRT"),
    ("enc_ours_x", "ours/peer enc"), ("dec_ours_x", "ours/peer dec"),
    ("encode_peak_mb", "enc MiB"), ("decode_peak_mb", "dec MiB"),
]


# ------------------------------------------------------------------------------ CLI
def codec_specs(peers: Sequence[str], model: str | None, seed: int) -> list[dict]:
    """What to measure: ours (``flexicodec-small`` random init, plus ``flexicodec-ckpt`` when
    a checkpoint is given or shipped) followed by the requested peers."""
    specs = [{"name": "flexicodec-small", "kind": "small", "seed": seed}]
    ckpt = model
    if ckpt is None:
        from flexicodec.common.models import default_dir
        try:
            ckpt = str(default_dir("codec"))
        except FileNotFoundError:
            log("no shipped codec checkpoint: measuring the small preset only")
    if ckpt is not None:
        specs.append({"name": "flexicodec-ckpt", "kind": "ckpt", "path": str(ckpt)})
    for p in peers:
        if p not in PEERS:
            raise ValueError(f"unknown peer codec {p!r}; choose from {PEERS}")
        specs.append({"name": p, "kind": p, "seed": seed})
    return specs


def build_one(spec: dict, device: torch.device) -> CodecUnderTest:
    """Build the codec a :func:`codec_specs` entry describes."""
    from flexicodec.codec.model import FlexiCodec

    if spec["kind"] == "small":
        torch.manual_seed(spec["seed"])
        model = FlexiCodec(small_codec_config()).to(device).eval()
        return flexicodec_under_test(model, spec["name"],
                                     "our small preset (ASR small inside), random init, "
                                     "threshold 1.0 = 12.5 Hz (random features merge "
                                     "arbitrarily)", threshold=1.0)
    if spec["kind"] == "ckpt":
        model = FlexiCodec.from_pretrained(spec["path"], map_location="cpu").to(device).eval()
        return flexicodec_under_test(model, spec["name"], f"checkpoint {spec['path']}, "
                                     f"default threshold")
    return hf_peer_under_test(spec["kind"], device, spec["seed"])


def memory_probe(spec: dict, op: str, wav16k: np.ndarray, seconds: float, batch: int):
    """For :func:`flexicodec.benchmarks.common.peak_memory_in_subprocess`: build codec ``spec`` on CPU
    and return a closure doing one ``op`` ('encode' / 'decode') on ``batch`` items."""
    dev = torch.device("cpu")
    c = build_one(spec, dev)
    x = make_audio(wav16k, seconds, c.sample_rate, batch, dev)
    if op == "encode":
        def run():
            with torch.inference_mode():
                c.encode(x)
        return run
    with torch.inference_mode():
        codes = c.encode(x)

    def run_dec():
        with torch.inference_mode():
            c.decode(codes)
    return run_dec


def small_codec_config():
    """The ``small`` preset with its semantic ASR at the ``configs/asr/small.yaml`` sizes and
    random weights (the preset itself copies a trained ASR from ``asr_path``; compute is the
    same)."""
    import yaml

    from flexicodec.codec.config import FlexiCodecConfig

    asr_yaml = Path(__file__).resolve().parent.parent / "configs" / "asr" / "small.yaml"
    asr = (yaml.safe_load(asr_yaml.read_text()) or {}).get("model")
    if not isinstance(asr, dict):
        raise ValueError(f"{asr_yaml}: no 'model:' section")
    return FlexiCodecConfig.small(semantic={"source": "asr", "asr_config": asr,
                                            "asr_path": ""})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m flexicodec.benchmarks.codec_speed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CPU, batch 1, 3 s of audio")
    p.add_argument("--device", default=None,
                   help="cpu or cuda (default: cuda when available). cuda also measures CPU "
                   "batch 1 in the same run unless --no-cpu")
    p.add_argument("--peers", default=",".join(PEERS), help=f"comma list of {PEERS} or ''")
    p.add_argument("--seconds", type=float, default=None,
                   help="audio duration per item (default 10; 3 with --quick)")
    p.add_argument("--batch-sizes", default=None,
                   help="comma list for CUDA (default 1,16); CPU always runs batch 1")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats (default 5; 3 quick)")
    p.add_argument("--model", default=None, help="a trained FlexiCodec directory to include "
                   "(default: the shipped one, if present)")
    p.add_argument("--data", default=None, help="corpus directory with speech (default: "
                   "synthesize sentences with flite / espeak-ng)")
    p.add_argument("--noise", action="store_true",
                   help="use white noise instead of speech (no synthesizer needed)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-memory", action="store_true", help="skip peak-memory measurement")
    p.add_argument("--no-cpu", action="store_true",
                   help="with --device cuda: skip the CPU batch-1 part of the run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--out", required=True, help="output directory")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    dev_names = (a.device or ("cpu" if a.quick or not torch.cuda.is_available()
                              else "cuda,cpu")).split(",")
    devices = [resolve_device(d) for d in dev_names if d.strip()]
    if any(d.type == "cuda" for d in devices) and not any(d.type == "cpu" for d in devices) \
            and not a.no_cpu:
        devices.append(torch.device("cpu"))      # CPU batch 1 in the same run
    seconds = a.seconds or (3.0 if a.quick else 10.0)
    if seconds <= 0:
        raise SystemExit("--seconds must be positive")
    gpu_batches = [int(b) for b in a.batch_sizes.split(",")] if a.batch_sizes else [1, 16]
    repeats = a.repeats or (3 if a.quick else 5)
    peers = [p for p in a.peers.split(",") if p.strip()]
    t0 = time.perf_counter()
    if a.noise:
        wav = (np.random.default_rng(a.seed).standard_normal(int(seconds * SAMPLE_RATE)) * 0.1
               ).astype(np.float32)
        source = "white noise"
    else:
        utts = corpus_speech(a.data, 4, a.seed) if a.data else synthesize_speech(4, a.seed)
        wav = np.concatenate([u.wav for u in utts])
        source = sorted({u.source for u in utts})
    specs = codec_specs(peers, a.model, a.seed)
    rows = []
    for device in devices:
        codecs = [build_one(s, device) for s in specs]
        for b in (gpu_batches if device.type == "cuda" else [1]):
            log(f"{device} batch {b}: {len(codecs)} codecs, {seconds:g} s each, "
                f"{repeats} repeats")
            part = measure_codecs(codecs, wav, seconds, b, device, repeats=repeats,
                                  memory=not a.no_memory,
                                  memory_specs={s["name"]: s for s in specs})
            for r in part:
                r["device"] = device.type
            rows += part
        del codecs
        if device.type == "cuda":
            torch.cuda.empty_cache()
    ref = specs[0]["name"]
    add_ratios(rows, ref)
    result = {"benchmark": "codec_speed", "hardware": hardware_info(devices[0]),
              "precision": "fp32", "audio_source": source, "seconds": seconds,
              "gpu_batch_sizes": gpu_batches, "repeats": repeats, "reference": ref,
              "rows": rows, "wall_seconds": time.perf_counter() - t0}
    out = Path(a.out)
    js = write_json(out / "codec_speed.json", result)
    print(f"Codec speed on {', '.join(map(str, devices))} (fp32, {seconds:g} s of audio per "
          f"item; xRT = audio-seconds per second; ours/peer > 1: {ref} faster)")
    print(format_table(rows, TABLE_COLUMNS))
    print(f"wrote {js} ({result['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
