#!/usr/bin/env bash
# Codec v2 on one GPU machine, in chained calls (the machine keeps its disk while warm).
# Every call: build what is missing, then train configs/codec/v2.yaml for the time left.
#   1st call (carry .whl .debs; tree with flexicodec_pretrained/asr): the v2 corpus (24 h,
#     default build-corpus settings: pace, joined sentences, levels), the ASR copied to the
#     machine, BENCH=1 the throughput benchmark, then training. The portable state of the run
#     starts from checkpoints/codec_v2 when the tree has one (a previous run), else from scratch.
#   next calls (tree only; no carry): training resumes from the run's checkpoint.
#   FINAL=1: the portable state as $OUT/codec_v2.tar.part-* (15 MiB parts; here:
#     cat parts | tar x -C checkpoints).
# BUDGET (s) is the call's wall-clock budget, RESERVE (s) what is kept for packing.
source scripts/device/common.sh
RESERVE=${RESERVE:-40}
CORPUS=$W/corpus_v2
if [ ! -f "$W/corpus_v2.done" ]; then
  log "building the v2 corpus (${HOURS:-24} h)"
  python3 -m data.cli build-corpus --hours "${HOURS:-24}" --out "$CORPUS" --workers 16 \
    --no-progress 2>&1 | tail -n 3 && touch "$W/corpus_v2.done"
  python3 -m data.cli stats "$CORPUS" > "$OUT/corpus_v2_stats.json" 2>/dev/null
fi
if [ ! -f "$W/asr/config.json" ]; then
  cp -r flexicodec_pretrained/asr "$W/asr" || { log "no ASR in the tree"; exit 2; }
fi
if [ ! -d "$W/portable" ] && [ -f checkpoints/codec_v2/state.json ]; then
  cp -r checkpoints/codec_v2 "$W/portable"
  log "continuing the portable state of step $(python3 -c "import json;print(json.load(open('$W/portable/state.json'))['step'])")"
fi
CONFIG=configs/codec/v2.yaml
if ! python3 -c "import pesq, pystoi" 2>/dev/null; then
  log "pesq/pystoi unavailable: training without in-run STOI/PESQ"
  sed 's/^  eval_quality: true/  eval_quality: false/' "$CONFIG" > "$W/v2.yaml"; CONFIG=$W/v2.yaml
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
if [ "${BENCH:-0}" = 1 ]; then
  log "throughput benchmark"
  python3 -m benchmarks.train_speed --device cuda --data "$CORPUS" --asr "$W/asr" \
    --out "$W/bench" --steps "${BENCH_STEPS:-30}" 2>&1 | grep -v "it/s\]" | tail -n 12
  cp "$W/bench/train_speed.json" "$W/bench/train_speed.md" "$OUT/" 2>/dev/null
fi
M=$(left_min "$RESERVE")
log "training v2 for $M min"
python3 -m codec.train --config "$CONFIG" --data "$CORPUS" --run-dir "$W/codec_v2" \
  --asr "$W/asr" --resume --portable-state "$W/portable" --max-minutes "$M" \
  > "$W/codec_v2.log" 2>&1 &
PID=$!
sleep 120; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
wait $PID; RC=$?; log "trainer exited: rc=$RC"
if [ $RC != 0 ] && grep -q -E "torch._dynamo|torch._inductor|InductorError|BackendCompilerFailed" "$W/codec_v2.log"; then
  log "compilation failed; continuing without train.compile for the time left"
  sed 's/^  compile: true/  compile: false/' "$CONFIG" > "$W/v2_eager.yaml"; CONFIG=$W/v2_eager.yaml
  grep -a -E "Error|error" "$W/codec_v2.log" | tail -n 5
  python3 -m codec.train --config "$CONFIG" --data "$CORPUS" --run-dir "$W/codec_v2" \
    --asr "$W/asr" --resume --portable-state "$W/portable" --max-minutes "$(left_min "$RESERVE")" \
    >> "$W/codec_v2.log" 2>&1; log "eager trainer exited: rc=$?"
fi
grep -a -v -E "it/s\]|s/it\]" "$W/codec_v2.log" | tail -n 20
cp "$W/codec_v2/metrics.jsonl" "$OUT/codec_v2_metrics.jsonl" 2>/dev/null
if [ "${FINAL:-0}" = 1 ]; then
  (cd "$W" && rm -rf pack && mkdir pack && cp -r portable pack/codec_v2 \
    && cd pack && tar cf - codec_v2) | split -b 15M - "$OUT/codec_v2.tar.part-"
  ls -la "$OUT"
fi
log "done"
