#!/usr/bin/env bash
# LM training throughput on one GPU machine, in one call: the trainer's MFU with the GPU preset
# (configs/lm/gpu.yaml) and the audio-hours per GPU-minute at 6.25 Hz against 12.5 Hz, side by
# side in one run of `python -m flexicodec.benchmarks.lm_speedup`, on a corpus built here.
#   carry .whl .debs on a fresh machine (the corpus is synthesized there); the tree holds the
#   default codec (flexicodec_pretrained/codec), whose tokens the LM is measured on, or CODEC=DIR.
#   HOURS (corpus, default 2), STEPS (timed trainer steps, default 30), PEAK (the GPU's dense
#   bf16 FLOP/s for MFU, default 989e12: H100/H200).
# Results: $OUT/lm_bench/lm_speedup.{json,md,png}; the last lines of the log give
# trainer_audio_ratio_6.25_vs_12.5 and the MFU per rate.
source scripts/device/common.sh
CORPUS=$W/corpus_lm
if [ ! -f "$W/corpus_lm.done" ]; then
  log "building a ${HOURS:-2} h corpus"
  python3 -m flexicodec.data.cli build-corpus --hours "${HOURS:-2}" --out "$CORPUS" --workers 16 \
    --no-progress 2>&1 | tail -n 3 && touch "$W/corpus_lm.done"
fi
[ -f "$W/corpus_lm.done" ] || { log "no corpus"; exit 2; }
CODEC_ARGS=()
[ -n "${CODEC:-}" ] && CODEC_ARGS=(--codec "$CODEC")
log "LM trainer benchmark, 12.5 and 6.25 Hz"
python3 -m flexicodec.benchmarks.lm_speedup --device cuda --sizes tiny --rates 12.5,6.25 \
  --train-config configs/lm/gpu.yaml --train-steps "${STEPS:-30}" --peak-flops "${PEAK:-989e12}" \
  --data "$CORPUS" --concat-seconds 0 --num-utts 256 "${CODEC_ARGS[@]}" -o "$OUT/lm_bench" 2>&1 \
  | grep -v "it/s\]" | tail -n 25
log "done: rc=${PIPESTATUS[0]}"
