#!/usr/bin/env bash
# Codec v2 on one GPU machine, in chained calls (the machine keeps its disk while warm).
# Every call: build what is missing, then train one stage for the time left. STAGE picks it:
#   STAGE=1 (default): configs/codec/v2.yaml, the fixed 12.5 Hz codec; portable state
#     checkpoints/codec_v2.
#   STAGE=dynamic: configs/codec/v2_stage2.yaml, the dynamic-rate fine-tune; portable state
#     checkpoints/codec_v2_dynamic.
#   STAGE=fixed: the same config and budget with --fixed-group 2, the fixed 6.25 Hz baseline;
#     portable state checkpoints/codec_v2_fixed.
#   Stage 2 starts (--init-from, step 0) from the stage-1 state checkpoints/codec_v2 in the
#   tree while it has no portable state of its own, and continues that state afterwards.
#   1st call (carry .whl .debs; tree with flexicodec_pretrained/asr): the v2 corpus (24 h,
#     default build-corpus settings: pace, joined sentences, levels), the ASR copied to the
#     machine, BENCH=1 the throughput benchmark, then training. The stage's portable state
#     starts from checkpoints/NAME when the tree has one (a previous run).
#   next calls (tree only; no carry): training resumes from the run's checkpoint.
#   FINAL=1: the stage's portable state as $OUT/NAME.tar.part-* (15 MiB parts; here:
#     cat parts | tar x -C checkpoints).
# BUDGET (s) is the call's wall-clock budget, RESERVE (s) what is kept for packing.
source scripts/device/common.sh
RESERVE=${RESERVE:-40}
STAGE=${STAGE:-1}
EXTRA=()
case "$STAGE" in
  1) CONFIG=configs/codec/v2.yaml; NAME=codec_v2 ;;
  dynamic) CONFIG=configs/codec/v2_stage2.yaml; NAME=codec_v2_dynamic ;;
  fixed) CONFIG=configs/codec/v2_stage2.yaml; NAME=codec_v2_fixed; EXTRA=(--fixed-group 2) ;;
  *) log "STAGE must be 1, dynamic or fixed, got $STAGE"; exit 2 ;;
esac
PORT=$W/portable/$NAME
RUN=$W/runs/$NAME
CORPUS=$W/corpus_v2
if [ ! -f "$W/corpus_v2.done" ]; then
  log "building the v2 corpus (${HOURS:-24} h)"
  python3 -m flexicodec.data.cli build-corpus --hours "${HOURS:-24}" --out "$CORPUS" --workers 16 \
    --no-progress 2>&1 | tail -n 3 && touch "$W/corpus_v2.done"
  python3 -m flexicodec.data.cli stats "$CORPUS" > "$OUT/corpus_v2_stats.json" 2>/dev/null
fi
if [ ! -f "$W/asr/config.json" ]; then
  cp -r flexicodec_pretrained/asr "$W/asr" || { log "no ASR in the tree"; exit 2; }
fi
mkdir -p "$W/portable" "$W/runs"
if [ ! -d "$PORT" ] && [ -f "checkpoints/$NAME/state.json" ]; then
  cp -r "checkpoints/$NAME" "$PORT"
  log "$NAME: continuing the portable state of step $(python3 -c "import json;print(json.load(open('$PORT/state.json'))['step'])")"
fi
# stage 2 without a state of its own: a new run from the stage-1 state (ignored on --resume)
init_args() {
  if [ "$STAGE" != 1 ] && [ ! -d "$PORT" ]; then
    [ -f checkpoints/codec_v2/state.json ] || { log "no stage-1 state checkpoints/codec_v2" >&2; return 1; }
    [ -d "$W/stage1" ] || cp -r checkpoints/codec_v2 "$W/stage1"
    echo "--init-from $W/stage1"
  fi
}
INIT=$(init_args) || exit 2
[ -n "$INIT" ] && log "$NAME: new run from the stage-1 state of step $(python3 -c "import json;print(json.load(open('$W/stage1/state.json'))['step'])")"
if ! python3 -c "import pesq, pystoi" 2>/dev/null; then
  log "pesq/pystoi unavailable: training without in-run STOI/PESQ"
  sed 's/^  eval_quality: true/  eval_quality: false/' "$CONFIG" > "$W/$NAME.yaml"; CONFIG=$W/$NAME.yaml
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
if [ "${BENCH:-0}" = 1 ]; then
  log "throughput benchmark"
  python3 -m flexicodec.benchmarks.train_speed --device cuda --data "$CORPUS" --asr "$W/asr" \
    --out "$W/bench" --steps "${BENCH_STEPS:-30}" 2>&1 | grep -v "it/s\]" | tail -n 12
  cp "$W/bench/train_speed.json" "$W/bench/train_speed.md" "$OUT/" 2>/dev/null
fi
M=$(left_min "$RESERVE")
log "training $NAME (STAGE=$STAGE) for $M min"
# shellcheck disable=SC2086
python3 -m flexicodec.codec.train --config "$CONFIG" --data "$CORPUS" --run-dir "$RUN" \
  --asr "$W/asr" --resume --portable-state "$PORT" --max-minutes "$M" $INIT "${EXTRA[@]}" \
  > "$W/$NAME.log" 2>&1 &
PID=$!
sleep 120; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
wait $PID; RC=$?; log "trainer exited: rc=$RC"
if [ $RC != 0 ] && grep -q -E "torch._dynamo|torch._inductor|InductorError|BackendCompilerFailed" "$W/$NAME.log"; then
  log "compilation failed; continuing without train.compile for the time left"
  sed 's/^  compile: true/  compile: false/' "$CONFIG" > "$W/${NAME}_eager.yaml"; CONFIG=$W/${NAME}_eager.yaml
  grep -a -E "Error|error" "$W/$NAME.log" | tail -n 5
  INIT=$(init_args) || exit 2
  # shellcheck disable=SC2086
  python3 -m flexicodec.codec.train --config "$CONFIG" --data "$CORPUS" --run-dir "$RUN" \
    --asr "$W/asr" --resume --portable-state "$PORT" --max-minutes "$(left_min "$RESERVE")" \
    $INIT "${EXTRA[@]}" >> "$W/$NAME.log" 2>&1; log "eager trainer exited: rc=$?"
fi
grep -a -v -E "it/s\]|s/it\]" "$W/$NAME.log" | tail -n 20
cp "$RUN/metrics.jsonl" "$OUT/${NAME}_metrics.jsonl" 2>/dev/null
if [ "${FINAL:-0}" = 1 ]; then
  (cd "$W" && rm -rf pack && mkdir pack && cp -r "$PORT" "pack/$NAME" \
    && cd pack && tar cf - "$NAME") | split -b 15M - "$OUT/$NAME.tar.part-"
  ls -la "$OUT"
fi
log "done"
