#!/usr/bin/env bash
# LM training throughput on one GPU machine, in one call: the trainer's MFU with the GPU preset
# (configs/lm/gpu.yaml) and the audio-hours per GPU-minute at 6.25 Hz against 12.5 Hz, side by
# side in one run of `python -m flexicodec.benchmarks.lm_speedup`.
#   Corpus: CORPUS (e.g. $W/corpus_v2 after scripts/device/phase_v2.sh on the same machine),
#     else a HOURS (default 2) h corpus built here (carry .whl .debs on a fresh machine).
#   Codec whose tokens the LM is measured on: CODEC=DIR; or FROM_STATE=NAME, a portable
#     state ($W/portable/NAME from phase_v2.sh on this machine, checkpoints/NAME in the
#     tree, or assembled from parts) exported
#     here with scripts/export_portable.py (with ASR=DIR when the state was trained with
#     another ASR than the tree's); default: the tree's flexicodec_pretrained/codec.
#   STEPS (timed trainer steps, default 30), PEAK (the GPU's dense bf16 FLOP/s for MFU,
#   default 989e12: H100/H200), NUM_UTTS (default 256), DEVICE (default cuda),
#   TRAIN_CONFIG (default configs/lm/gpu.yaml). A CPU dry run: DEVICE=cpu STEPS=1
#   NUM_UTTS=8 TRAIN_CONFIG=configs/lm/tiny.yaml HOURS=0.05.
# Results: $OUT/lm_bench/lm_speedup.{json,md,png}; the last lines of the log give
# trainer_audio_ratio_6.25_vs_12.5 and the MFU per rate.
source scripts/device/common.sh
if [ -z "${CORPUS:-}" ]; then
  CORPUS=$W/corpus_lm
  HOURS=${HOURS:-2} ensure_corpus "$CORPUS" || exit 2
fi
[ -d "$CORPUS" ] || { log "CORPUS=$CORPUS: no such corpus"; exit 2; }
if [ -z "${CODEC:-}" ] && [ -n "${FROM_STATE:-}" ]; then
  # the newest first: trained on this machine by phase_v2.sh, then the tree's, then parts
  if [ -f "$W/portable/$FROM_STATE/state.json" ]; then SRC=$W/portable/$FROM_STATE
  elif [ -f "checkpoints/$FROM_STATE/state.json" ]; then SRC=checkpoints/$FROM_STATE
  else SRC=$(assembled_state "$FROM_STATE") || { log "no state $FROM_STATE here yet"; exit 2; }
  fi
  ASR_DIR=${ASR:-$W/asr_v2}         # the ASR the state was trained with (phase_v2.sh's)
  [ -f "$ASR_DIR/config.json" ] || cp -r checkpoints/asr_v2 "$ASR_DIR" \
    || { log "no ASR"; exit 2; }
  CODEC=$W/codec_$FROM_STATE
  python3 scripts/export_portable.py "$SRC" --asr "$ASR_DIR" -o "$CODEC" | tail -n 2 || exit 2
fi
CODEC_ARGS=()
[ -n "${CODEC:-}" ] && CODEC_ARGS=(--codec "$CODEC")
log "LM trainer benchmark, 12.5 and 6.25 Hz (codec: ${CODEC:-flexicodec_pretrained/codec})"
python3 -m flexicodec.benchmarks.lm_speedup --device "${DEVICE:-cuda}" --sizes tiny --rates 12.5,6.25 \
  --train-config "${TRAIN_CONFIG:-configs/lm/gpu.yaml}" --train-steps "${STEPS:-30}" \
  --peak-flops "${PEAK:-989e12}" --data "$CORPUS" --concat-seconds 0 --num-utts "${NUM_UTTS:-256}" \
  "${CODEC_ARGS[@]}" -o "$OUT/lm_bench" 2>&1 | grep -v "it/s\]" | tail -n 25
log "done: rc=${PIPESTATUS[0]}"
