"""How far does the trainer's timbre augmentation move a voice, and is the speech still
intelligible?

For the first utterances of a corpus split this applies
:func:`flexicodec.codec.augment.timbre_augment` (every item augmented, ``--seed``) with the
settings of a codec config's ``train.timbre_augment`` (or the defaults) and reports, for the
augmented audio against its original: resemblyzer speaker similarity (the eval's SIM; 1: the
same voice), and pocketsphinx WER of both against the transcripts. As a scale, it also
reports the SIM between originals of different utterances: of the same speaker, of a
derived speaker of the same voice (``VOICE~vK``, the corpus's fixed pitch/formant variants)
and of another voice (different people), where the split has such pairs. With ``--model
CODEC``: the codec's mel distance on the originals and on the augmented audio (12.5 Hz,
``--num-quantizers`` stages), i.e. how new the augmented voices are to that codec.

    python scripts/augment_report.py --data CORPUS --split test --max-utts 40 \
        [--config configs/codec/v2.yaml] [--model CODEC [--num-quantizers 8]] [-o OUT_PREFIX]

Prints a Markdown table; ``-o`` also writes OUT_PREFIX.json and OUT_PREFIX.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flexicodec.codec.augment import TimbreAugmentConfig, timbre_augment  # noqa: E402
from flexicodec.codec.eval.evaluate import load_utterances, mel_distance, reconstruct  # noqa: E402
from flexicodec.codec.eval.metrics import (aggregate_errors, cosine_similarity,  # noqa: E402
                                           error_counts, normalize_words, scored_mean,
                                           speaker_embedding, transcribe_pocketsphinx)
from flexicodec.common.atomic import write_report_files  # noqa: E402
from flexicodec.common.constants import SAMPLE_RATE  # noqa: E402
from flexicodec.common.pretrained import run_reporting_model_errors  # noqa: E402


def _base(speaker: str) -> str:
    return speaker.split("~v")[0]


def _mean_of(values: list[float]) -> float | None:
    return scored_mean(values)[0]


def report(utts: list[dict], cfg: TimbreAugmentConfig, seed: int, model=None,
           num_quantizers: int | None = None) -> dict:
    """SIM and WER of the augmented utterances against their originals, and with ``model``
    its mel distances on both (module docstring)."""
    cfg = dataclasses.replace(cfg, prob=1.0)
    gen = torch.Generator().manual_seed(seed)
    emb_orig, emb_aug, counts_orig, counts_aug = [], [], [], []
    mel_orig, mel_aug = [], []
    for u in tqdm(utts, desc="augmenting and judging", leave=False):
        x = torch.from_numpy(np.asarray(u["audio"], dtype=np.float32))[None]
        y = timbre_augment(x, cfg, gen, SAMPLE_RATE)[0].numpy()
        emb_orig.append(speaker_embedding(u["audio"]))
        emb_aug.append(speaker_embedding(y))
        ref = normalize_words(u["text"])
        counts_orig.append(error_counts(ref, transcribe_pocketsphinx(u["audio"])))
        counts_aug.append(error_counts(ref, transcribe_pocketsphinx(y)))
        if model is not None:
            for src, out in ((u["audio"], mel_orig), (y, mel_aug)):
                rec = reconstruct(model, src, 12.5, rvq1=False,
                                  num_quantizers=num_quantizers)["full"]
                out.append(mel_distance(src, rec[: len(src)]))
    speakers = [u["speaker"] for u in utts]
    aug_sim = [cosine_similarity(a, b) for a, b in zip(emb_orig, emb_aug)]
    same, other_voice, derived = [], [], []
    for i, si in enumerate(speakers):
        for j, sj in enumerate(speakers):
            if j <= i:
                continue
            s = cosine_similarity(emb_orig[i], emb_orig[j])
            if _base(si) != _base(sj):
                other_voice.append(s)
            elif si != sj:
                derived.append(s)
            else:
                same.append(s)
    return {"utterances": len(utts), "seed": seed, "timbre_augment": dataclasses.asdict(cfg),
            "sim_augmented_to_original": _mean_of(aug_sim),
            "sim_same_speaker": _mean_of(same), "sim_derived_speaker": _mean_of(derived),
            "sim_other_voice": _mean_of(other_voice), "pairs_same_speaker": len(same),
            "pairs_derived_speaker": len(derived), "pairs_other_voice": len(other_voice),
            "wer_original": aggregate_errors(counts_orig)["wer"],
            "wer_augmented": aggregate_errors(counts_aug)["wer"],
            "codec_mel_original": _mean_of(mel_orig), "codec_mel_augmented": _mean_of(mel_aug),
            "num_quantizers": num_quantizers if model is not None else None}


def markdown(r: dict, data: str, split: str) -> str:
    def cell(v, fmt="{:.3f}"):
        return "–" if v is None else fmt.format(v)
    return "\n".join([
        f"# Timbre augmentation: {data} {split} ({r['utterances']} utterances, seed {r['seed']})",
        "", "| measure | value |", "|---|---|",
        f"| SIM, augmented to its original | {cell(r['sim_augmented_to_original'])} |",
        f"| SIM, two utterances of one speaker ({r['pairs_same_speaker']} pairs) | "
        f"{cell(r['sim_same_speaker'])} |",
        f"| SIM, a voice and a derived speaker of it ({r['pairs_derived_speaker']} pairs) | "
        f"{cell(r['sim_derived_speaker'])} |",
        f"| SIM, two voices ({r['pairs_other_voice']} pairs) | {cell(r['sim_other_voice'])} |",
        f"| pocketsphinx WER %, originals | {cell(100 * r['wer_original'], '{:.1f}')} |",
        f"| pocketsphinx WER %, augmented | {cell(100 * r['wer_augmented'], '{:.1f}')} |",
        *([f"| codec mel distance, originals ({r['num_quantizers'] or 'all'} stages) | "
           f"{cell(r['codec_mel_original'])} |",
           f"| codec mel distance, augmented | {cell(r['codec_mel_augmented'])} |"]
          if r["codec_mel_original"] is not None else []), ""])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="corpus directory")
    ap.add_argument("--split", default="test")
    ap.add_argument("--max-utts", type=int, default=40)
    ap.add_argument("--config", default=None,
                    help="codec config whose train.timbre_augment settings to use "
                         "(default: the module's defaults)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default=None, help="a FlexiCodec directory: its mel distance on "
                    "the originals and on the augmented audio")
    ap.add_argument("--num-quantizers", type=int, default=None,
                    help="acoustic RVQ stages the codec decodes with (default: all)")
    ap.add_argument("-o", "--out", default=None, help="output prefix (OUT.json, OUT.md)")
    a = ap.parse_args(argv)
    cfg = TimbreAugmentConfig()
    if a.config:
        from flexicodec.codec.train import load_train_section
        cfg = load_train_section(a.config).timbre_augment
    model = None
    if a.model:
        from flexicodec.codec.model import FlexiCodec
        torch.set_grad_enabled(False)
        model = FlexiCodec.from_pretrained(a.model).eval()
    r = report(load_utterances(a.data, a.split, a.max_utts), cfg, a.seed, model,
               a.num_quantizers)
    md = markdown(r, a.data, a.split)
    print(md)
    if a.out:
        write_report_files(a.out, r, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_reporting_model_errors("augment_report", main,
                                                errors=(ValueError, FileNotFoundError)))
