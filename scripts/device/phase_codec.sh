#!/usr/bin/env bash
# Device phase B (two chained calls on one warm machine): train the dynamic-rate codec and the
# fixed-rate 6.25 Hz baseline (same architecture, config and wall-clock budget) side by side
# on the one GPU, resuming from runs/device/* when the machine is still warm.
#   carry: .whl .debs
#   call 1: BUDGET=580 bash scripts/device/phase_codec.sh
#   call 2: BUDGET=580 RESERVE=150 FINAL=1 bash scripts/device/phase_codec.sh
# JOIN=1 trains both on the joined corpus instead (`flexicodec-data join`: 2-3 consecutive
# utterances of a speaker with 0.3-1.2 s pauses, so information density varies as in real
# speech; runs under runs/device/*_joined so both experiments can share one machine).
# FINAL=1 packs both codecs (fp16, without the ASR copy: scripts/device/transport.py) into
# $OUT/codecs.tar.part-* (15 MiB parts; here: cat parts | tar xz, then transport.py unpack).
source scripts/device/common.sh
CONFIG=${CONFIG:-configs/codec/small.yaml}
ASR=${ASR:-flexicodec_pretrained/asr}
RESERVE=${RESERVE:-25}
if [ ! -f "$W/corpus/metadata.jsonl" ] || [ ! -f "$W/corpus.done" ]; then
  log "building corpus (${HOURS:-24} h)"
  python3 -m data.cli build-corpus --hours "${HOURS:-24}" --out "$W/corpus" --workers 16 \
    --no-progress 2>&1 | tail -n 3 && touch "$W/corpus.done"
fi
DATA=$W/corpus; SUFFIX=""
if [ "${JOIN:-0}" = 1 ]; then
  DATA=$W/corpus_joined; SUFFIX=_joined
  if [ ! -f "$W/corpus_joined.done" ]; then
    log "joining consecutive utterances with pauses"
    python3 -m data.cli join "$W/corpus" --out "$DATA" --no-progress 2>&1 | tail -n 9 \
      && touch "$W/corpus_joined.done"
  fi
fi
M=$(left_min "$RESERVE")
log "training dynamic codec and fixed-rate baseline for $M min each, concurrently"
python3 -m codec.train --config "$CONFIG" --data "$DATA" --run-dir "$W/codec_dyn$SUFFIX" \
  --asr "$ASR" --resume --max-minutes "$M" --out-model "$W/codec_dyn${SUFFIX}_model" \
  > "$W/codec_dyn$SUFFIX.log" 2>&1 &
P1=$!
python3 -m codec.train --config "$CONFIG" --data "$DATA" --run-dir "$W/codec_fix$SUFFIX" \
  --asr "$ASR" --fixed-group 2 --resume --max-minutes "$M" --out-model "$W/codec_fix${SUFFIX}_model" \
  > "$W/codec_fix$SUFFIX.log" 2>&1 &
P2=$!
sleep 90; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
wait $P1; R1=$?; wait $P2; R2=$?
log "trainers exited: dynamic rc=$R1, baseline rc=$R2"
for n in dyn fix; do
  grep -a -v -E "it/s\]|s/it\]" "$W/codec_$n$SUFFIX.log" | tail -n 25
  cp "$W/codec_$n$SUFFIX/metrics.jsonl" "$OUT/codec_${n}${SUFFIX}_metrics.jsonl" 2>/dev/null
done
if [ "${FINAL:-0}" = 1 ]; then
  pack_codecs "$W/codec_dyn${SUFFIX}_model" "$W/codec_fix${SUFFIX}_model"
fi
log "done"
