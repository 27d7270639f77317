#!/usr/bin/env bash
# Codec v2 on one GPU machine, in chained calls (the machine keeps its disk while warm).
# Every call: build what is missing, then train one stage for the time left. STAGE picks it:
#   STAGE=1 (default): configs/codec/v2.yaml, the fixed 12.5 Hz codec; portable state
#     checkpoints/codec_v2.
#   STAGE=dynamic: configs/codec/v2_stage2.yaml, the dynamic-rate fine-tune; portable state
#     checkpoints/codec_v2_dynamic.
#   STAGE=fixed: the same config and budget with --fixed-group 2, the fixed 6.25 Hz baseline;
#     portable state checkpoints/codec_v2_fixed.
#   Stage 2 starts (--init-from, step 0) from the stage-1 state while it has no portable state
#   of its own, and continues that state afterwards.
#   States come from the tree (checkpoints/NAME) or, when the upload is size-limited, as
#   parts over several calls (scripts/device/state_parts.sh split, named in `carry` as
#   .carry/a, .carry/b); a call that has not received every part yet builds and benchmarks
#   but does not train. Stage 1 never starts over without FRESH=1; REBASE=1 with ASR=DIR moves
#   the state onto a fine-tune of its ASR (phase_asr.sh INIT=...) and continues it.
#   1st call (carry .whl .debs, scripts/fetch_device_wheels.sh and fetch_synth_debs.sh; tree
#     with checkpoints/asr_v2): the v2 corpus $W/corpus_v2 (HOURS, default 24 h,
#     default build-corpus settings: pace, joined sentences, levels), the ASR copied to the
#     machine (ASR=DIR takes another, e.g. one phase_asr.sh retrained on this corpus), BENCH=1
#     the throughput benchmark (BENCH_RECIPES=v2,v2_whole_batch_d: only those recipes; stopped
#     30 s before the call's budget ends), then training.
#   next calls (no .whl/.debs needed while the machine is warm): training resumes from the
#     run's checkpoint; with KEEP=1 (below) the trainer of the previous call is still
#     running and the call only watches it.
#   Every call whose trainer wrote a newer portable state returns it as
#     $OUT/NAME.tar.part-* (15 MiB parts; here: cat parts | tar x -C checkpoints); FINAL=1
#     stops a kept trainer first and always returns the state.
# OTHER_VOICES=1: the corpus also has festival's voices of other languages (new voices for
#   the codec, train split only), carried in .debs_other*/ folders in later calls than .debs
#   (scripts/fetch_synth_debs.sh DIR other LANGS; each folder's voices.txt names its voices):
#   the corpus is built only once all of them have arrived; until then a call builds nothing
#   and trains not. With a 64 MiB upload: fetch_synth_debs.sh .debs_other other fi,it,ca and
#   .debs_other2 other cs, state_parts.sh split checkpoints/codec_v2 20 33 (the state is
#   70 MB since its decoder grew to 12 blocks); the tree is 7.4 MB without
#   checkpoints/codec_v2, checkpoints/asr_v2 (10 MB, needed only from the call that builds
#   the corpus) and flexicodec_pretrained. Call 1 carries .whl .debs .carry/a and call 2
#   .debs_other .carry/b, both without the ASR in the tree (65 and 64 MB); call 3
#   .debs_other2 with it (50 MB; builds the corpus, and benchmarks with BENCH=1); call 4
#   .carry/c (24 MB with the ASR; trains); each with OTHER_VOICES=1.
# The trainer keeps torch.compile's cache in $W/compile_cache.bin (--compile-cache); EMA_OUT=1
#   returns it gzipped as compile_cache.bin.gz.part-* + .sha256; carried to a later machine
#   (copy them into any .carry folder of a call before training starts) the first step
#   compiles mostly from cache (the trainer logs first_step_s, and compile_s: the part of it
#   that was compilation).
# WARM_COMPILE=1 (in the call that builds the corpus): the training step compiles on a tiny
#   corpus on the idle GPU while the corpus builds (below), instead of after it.
# BUDGET (s) is the call's wall-clock budget, RESERVE (s) what is kept for packing.
# SETS: config overrides for the trainer, space-separated SECTION.KEY=VALUE (its --set).
#   train.profile_steps=5 profiles 5 steps 50 steps into the call (RUN/profile_step*.{json,md}
#   to $OUT: the operators and kernels that take the step's GPU time). E.g.
#   a CPU dry run of the whole chain: HOURS=0.05 BUDGET=240 DEVICE=cpu
#   SETS="train.batch_size=2 train.disc_batch_size=1 train.compile=false train.num_workers=0" scripts/device/phase_v2.sh
# DEVICE (default cuda) is the benchmarks' device (cpu: a dry run, --quick). DISC_BENCH=1 (best in the call
#   that builds the corpus, with OTHER_VOICES=1 the one that brings the last voices):
#   benchmarks/disc_speed.py on the GPU while the corpus builds on the CPUs, at batches
#   DISC_BATCHES (default 128), stopped 30 s before the call's budget ends.
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
PIDF=$W/$NAME.pid
LOG=$W/$NAME.log
# the recorded trainer still runs (and its pid was not reused by another program)
alive() { [ -f "$PIDF" ] && grep -a -q "flexicodec.codec.train" "/proc/$(cat "$PIDF")/cmdline" \
  2>/dev/null; }
# EMA_OUT=1 (a call after FINAL=1, the machine still warm): only return the codec the
# stopped trainer exported, with the generator's EMA weights (RUN/model), as
# $OUT/codecs.tar.part-* (fp16 without the ASR; here: cat parts | tar xz, then
# scripts/device/transport.py unpack NAME_ema.safetensors ASR_DIR CODEC_DIR)
# and with it torch.compile's cache of the run (compile_cache.bin.gz.part-* + .sha256) when it
# fits the returned files beside the codec (8 files, 64 MiB together), else CACHE_OUT=1 (the
# next call) returns the cache alone. Next time: copy its files into a .carry folder of any
# call before the training starts, and the trainer compiles mostly from cache (same GPU model
# and torch: the graphs are tuned for them).
CACHE=$W/compile_cache.bin
return_cache() {   # $1: for the log, what the cache is returned beside ("beside the codec", "alone")
  [ -f "$CACHE" ] || { log "no compile cache in $CACHE"; return 1; }
  [ -f "$CACHE.gz" ] && [ "$CACHE.gz" -nt "$CACHE" ] \
    || { gzip -1 -c "$CACHE" > "$CACHE.gz.tmp" && mv "$CACHE.gz.tmp" "$CACHE.gz"; }
  local gz n_out out_b mb raw_mb
  gz=$(stat -c %s "$CACHE.gz"); mb=$(( gz / 1048576 )); raw_mb=$(( $(stat -c %s "$CACHE") / 1048576 ))
  n_out=$(find "$OUT" -type f | wc -l); out_b=$(du -sb "$OUT" | cut -f1)
  if [ $(( n_out + gz / 15728640 + 2 )) -le 8 ] && [ $(( out_b + gz + 4096 )) -le 67108864 ]; then
    split_file "$CACHE.gz" "$OUT" && log "returned the compile cache ($mb MiB gzipped," \
      "$raw_mb MiB)"
  else
    log "the compile cache ($mb MiB gzipped, $raw_mb MiB) does not fit the returned files" \
      "$1 (8 files, 64 MiB): CACHE_OUT=1 in the next call returns it"
  fi
}
if [ "${EMA_OUT:-0}" = 1 ]; then
  [ -f "$RUN/model/config.json" ] || { log "no exported codec in $RUN/model"; exit 2; }
  alive && { log "the trainer still runs: stop it first (FINAL=1)"; exit 2; }
  pack_codecs "${NAME}_ema=$RUN/model" || exit 2
  log "returned the exported codec of $RUN/model"
  [ -f "$CACHE" ] && return_cache "beside the codec"
  exit 0
fi
if [ "${CACHE_OUT:-0}" = 1 ]; then
  alive && { log "the trainer still runs: stop it first (FINAL=1)"; exit 2; }
  return_cache alone || exit 2
  exit 0
fi
# DISC_BENCH=1: the discriminator layouts' speed (benchmarks/disc_speed.py, random audio, no
# corpus needed) on the GPU while the corpus builds on the CPUs
if [ "${DISC_BENCH:-0}" = 1 ]; then
  log "discriminator benchmark (in the background)"
  DISC_ARGS=(--device "${DEVICE:-cuda}" -o "$W/bench")
  if [ "${DEVICE:-cuda}" = cpu ]; then DISC_ARGS+=(--quick)        # a CPU dry run: tiny
  else DISC_ARGS+=(--batch "${DISC_BATCHES:-128}"); fi
  # within the call's budget (a benchmark cut short writes no tables; the log tail says so)
  timeout "$(( $(left) > 60 ? $(left) - 30 : 30 ))" \
    python3 -m flexicodec.benchmarks.disc_speed "${DISC_ARGS[@]}" > "$W/disc_speed.log" 2>&1 &
  DISC_PID=$!
fi
# WARM_COMPILE=1 (stage 1; the call that builds the corpus): while the corpus builds on the
# CPUs, the benchmark's v2 recipe compiles the training step on a tiny corpus of its own on
# the idle GPU (the frozen ASR: ASR=DIR or checkpoints/asr_v2). Its graphs stay in the
# machine's local compile caches, where the trainer and BENCH=1 find them afterwards (the
# trainer's first row: compile_s). The call waits for it after the corpus, at most until
# 60 s before its budget ends.
WARM_PID=
if [ "${WARM_COMPILE:-0}" = 1 ] && [ "$STAGE" = 1 ] && [ ! -f "$CORPUS.done" ] \
    && { [ "${OTHER_VOICES:-0}" != 1 ] || [ -z "$(other_voices_missing 2>/dev/null || echo x)" ]; }
then
  log "compile warm-up on a tiny corpus (in the background)"
  ( python3 -m flexicodec.data.cli build-corpus --hours 0.05 --out "$W/warm_corpus" \
      --workers 2 --no-progress \
    && timeout "$(( $(left) > 120 ? $(left) - 60 : 60 ))" \
      python3 -m flexicodec.benchmarks.train_speed --device "${DEVICE:-cuda}" \
      --data "$W/warm_corpus" --asr "${ASR:-checkpoints/asr_v2}" --recipes v2 --steps 1 \
      --warmup 1 --phase-steps 1 --out "$W/warm" $([ "${DEVICE:-cuda}" = cpu ] && echo --quick) \
  ) > "$W/warm.log" 2>&1 &
  WARM_PID=$!
fi
ensure_corpus "$CORPUS"
CORPUS_RC=$?
if [ -n "$WARM_PID" ]; then
  while kill -0 "$WARM_PID" 2>/dev/null && [ "$(left)" -gt 60 ]; do sleep 2; done
  if kill -0 "$WARM_PID" 2>/dev/null; then
    log "compile warm-up still running: going on without waiting for it"
  else
    wait "$WARM_PID"
    log "compile warm-up exited: rc=$?$(grep -q "FAILED" "$W/warm.log" && echo ", FAILED:" \
      "$(grep FAILED "$W/warm.log" | tail -n 1)")"
  fi
fi
if [ -n "${DISC_PID:-}" ]; then
  wait "$DISC_PID"; log "discriminator benchmark exited: rc=$?"
  grep -v -E "it/s\]|^W[0-9]" "$W/disc_speed.log" | tail -n 12
  cp "$W/bench/disc_speed.json" "$W/bench/disc_speed.md" "$OUT/" 2>/dev/null
fi
[ $CORPUS_RC = 3 ] && exit 0           # waiting for the voices of other languages
[ $CORPUS_RC = 0 ] || exit 2
# the frozen ASR: ASR=DIR (e.g. $W/asr_new from phase_asr.sh), else codec v2's,
# checkpoints/asr_v2 (the fine-tune of flexicodec_pretrained/asr its state is tied to), copied once
if [ -n "${ASR:-}" ]; then
  ASR_DIR=$ASR
else
  ASR_DIR=$W/asr_v2
  [ -f "$ASR_DIR/config.json" ] || cp -r checkpoints/asr_v2 "$ASR_DIR" \
    || { log "no checkpoints/asr_v2 in the tree"; exit 2; }
fi
[ -f "$ASR_DIR/config.json" ] || { log "ASR=$ASR_DIR: not a model directory"; exit 2; }
mkdir -p "$W/portable" "$W/runs"
# torch.compile's cache of an earlier run (EMA_OUT=1 returned it), carried in parts: used once
# whole and readable by this torch (a file it cannot read would stop the trainer)
if [ ! -f "$CACHE" ] && assembled_file compile_cache.bin.gz "$CACHE.gz" \
    && gunzip -c "$CACHE.gz" > "$CACHE.tmp" && mv "$CACHE.tmp" "$CACHE"; then
  if python3 -c "import sys; from flexicodec.common.compile_cache import load_compile_cache
print(load_compile_cache(sys.argv[1]))" "$CACHE" > "$W/cache_check.log" 2>&1; then
    log "compile cache carried in: $(tail -n 1 "$W/cache_check.log") artifacts"
  else
    log "the carried compile cache is unreadable here, compiling afresh:" \
      "$(tail -n 1 "$W/cache_check.log")"
    rm -f "$CACHE"
  fi
fi
# A state comes from the tree (checkpoints/NAME) or, through size-limited uploads, as parts in
# .carry/*/ over several calls (scripts/device/state_parts.sh), usable once all have arrived.
# newest first: trained on this machine, then the tree's, then parts
state_source() {
  if [ -f "$W/portable/$1/state.json" ]; then echo "$W/portable/$1"
  elif [ -f "checkpoints/$1/state.json" ]; then echo "checkpoints/$1"
  else assembled_state "$1"; fi
}
state_step() { python3 -c "import json;print(json.load(open('$1/state.json'))['step'])"; }
# FRESH=1 (stage 1): a new run, e.g. with another ASR; no earlier state is taken
if [ ! -d "$PORT" ] && ! { [ "$STAGE" = 1 ] && [ "${FRESH:-0}" = 1 ]; } \
    && SRC=$(state_source "$NAME"); then
  cp -r "$SRC" "$PORT"
  log "$NAME: continuing the portable state of step $(state_step "$PORT")"
fi
# REBASE=1 (with ASR=DIR, a fine-tune of the state's ASR): the state continues with that ASR
# (scripts/rebase_portable_asr.py) instead of starting over; a state already on it is kept
if [ "${REBASE:-0}" = 1 ] && [ -d "$PORT" ]; then
  python3 scripts/rebase_portable_asr.py "$PORT" --asr "$ASR_DIR" 2>&1 | tail -n 1
fi
STEP_AT_START=$([ -f "$PORT/state.json" ] && state_step "$PORT" 2>/dev/null)
TRAIN=1
INIT=
if [ ! -d "$PORT" ]; then
  if [ "$STAGE" != 1 ]; then
    # stage 2 without a state of its own: a new run from the stage-1 state (step 0)
    if [ -d "$W/stage1" ] || { SRC=$(state_source codec_v2) && cp -r "$SRC" "$W/stage1"; }; then
      INIT="--init-from $W/stage1"
      log "$NAME: new run from the stage-1 state of step $(state_step "$W/stage1")"
    else
      TRAIN=0
    fi
  elif [ "${FRESH:-0}" != 1 ] && ! ls "$RUN"/checkpoints >/dev/null 2>&1; then
    TRAIN=0                         # never start stage 1 over by accident: FRESH=1 does that
  fi
  [ $TRAIN = 0 ] && log "no state to continue yet (parts here: $(ls "$W/parts" | tr '\n' ' ')); not training"
fi
if ! python3 -c "import pesq, pystoi" 2>/dev/null; then
  log "pesq/pystoi unavailable: training without in-run STOI/PESQ"
  SET_ARGS+=(--set train.eval_quality=false)
fi
gpu_info name,memory.total
if [ "${BENCH:-0}" = 1 ]; then
  log "throughput benchmark"
  timeout "$(( $(left) > 60 ? $(left) - 30 : 30 ))" \
  python3 -m flexicodec.benchmarks.train_speed --device "${DEVICE:-cuda}" --data "$CORPUS" --asr "$ASR_DIR" \
    --out "$W/bench" --steps "${BENCH_STEPS:-30}" ${BENCH_RECIPES:+--recipes "$BENCH_RECIPES"} \
    $([ "${DEVICE:-cuda}" = cpu ] && echo --quick) \
    2>&1 | grep -v "it/s\]" | tail -n 12
  cp "$W/bench/train_speed.json" "$W/bench/train_speed.md" "$OUT/" 2>/dev/null
fi
# The trainer. By default it runs for this call's time and the call waits for it. KEEP=1
# starts it detached (setsid), so it outlives the call while the machine stays warm and
# trains through the gaps between calls without starting, loading and compiling again:
# later calls (any) find it running and watch it until their own end; KEEP_MINUTES (default
# 25) bounds it. FINAL=1 stops a running trainer cleanly (RUN/STOP: it saves its checkpoint
# and the portable state) RESERVE seconds before the call's end, then packs.
# a kept trainer runs up to KEEP_MINUTES, another one for this call's time left
trainer_minutes() { if [ "${KEEP:-0}" = 1 ]; then echo "${KEEP_MINUTES:-25}"
                    else left_min "$RESERVE"; fi; }
start_trainer() {   # start_trainer [extra trainer args]
  local m; m=$(trainer_minutes)
  local cmd=(python3 -m flexicodec.codec.train --config "$CONFIG" --data "$CORPUS"
             --run-dir "$RUN" --asr "$ASR_DIR" --resume --portable-state "$PORT"
             --max-minutes "$m" --compile-cache "$CACHE" $INIT "${EXTRA[@]}" "${SET_ARGS[@]}" "$@")
  if [ "${KEEP:-0}" = 1 ]; then
    setsid nohup "${cmd[@]}" >> "$LOG" 2>&1 < /dev/null &
  else
    "${cmd[@]}" >> "$LOG" 2>&1 &
  fi
  echo $! > "$PIDF"
  log "trainer $NAME (STAGE=$STAGE) started for up to $m min$([ "${KEEP:-0}" = 1 ] \
    && echo ", detached")"
}
# watch_trainer UNTIL_LEFT: wait until the trainer exits or the call has UNTIL_LEFT s left
watch_trainer() {
  local shown=0
  while alive && [ "$(left)" -gt "$1" ]; do
    sleep 2
    if [ $shown = 0 ] && [ $(( $(date +%s) - T0 )) -gt 120 ]; then
      gpu_info utilization.gpu,memory.used; shown=1
    fi
  done
}
compile_failed() { grep -q -E "torch._dynamo|torch._inductor|InductorError|BackendCompilerFailed" \
  <(tail -c "+$((LOG_FROM + 1))" "$LOG") && ! grep -q '"finished"' <(tail -n 40 "$LOG"); }
if [ $TRAIN = 1 ]; then
  touch "$LOG"; LOG_FROM=$(stat -c %s "$LOG")
  if alive; then
    log "trainer $NAME already running (pid $(cat "$PIDF")): watching it"
  else
    rm -f "$RUN/STOP"
    start_trainer
  fi
  STOP_AT=$([ "${FINAL:-0}" = 1 ] && echo "$RESERVE" || echo 5)
  watch_trainer "$STOP_AT"
  if ! alive && compile_failed; then
    log "compilation failed; continuing without train.compile for the time left"
    grep -a -E "Error|error" <(tail -c "+$((LOG_FROM + 1))" "$LOG") | tail -n 5
    # --set comes after the others, so it wins over a compile: true in SETS
    start_trainer --set train.compile=false
    watch_trainer "$STOP_AT"
  fi
  if alive && [ "${FINAL:-0}" = 1 ]; then
    log "stopping the trainer (RUN/STOP)"
    mkdir -p "$RUN" && touch "$RUN/STOP"
    while alive && [ "$(left)" -gt 3 ]; do sleep 1; done
  fi
  if alive; then log "trainer still running (pid $(cat "$PIDF"))"; else log "trainer exited"; fi
  # this call's part of the log, without the progress bars
  tail -c "+$((LOG_FROM + 1))" "$LOG" | tr '\r' '\n' | grep -a -v -E "(it/s|s/it)[],]" \
    | grep -a -v "^\s*$" | tail -n 20
  cp "$RUN/metrics.jsonl" "$OUT/${NAME}_metrics.jsonl" 2>/dev/null
  # SETS="train.profile_steps=N": the trainer's kernel table of N profiled steps
  cp "$RUN"/profile_step*.json "$RUN"/profile_step*.md "$OUT/" 2>/dev/null
fi
# The stage's portable state as $OUT/NAME.tar.part-* (here: cat parts | tar x -C checkpoints):
# from every call whose trainer has written a newer one (the trainer rewrites it with every
# checkpoint, so losing the machine loses at most the steps since the last call), and
# always from FINAL=1. A copy that meets the trainer's atomic rewrite is taken again.
pack_state() {
  local try
  for try in 1 2 3 4 5; do
    rm -rf "$W/pack" && mkdir -p "$W/pack" && cp -r "$PORT" "$W/pack/$NAME" 2>/dev/null \
      && [ "$(ls "$W/pack/$NAME" | wc -l)" = 3 ] && state_step "$W/pack/$NAME" >/dev/null 2>&1 \
      && break
    [ "$try" = 5 ] && { log "could not copy $PORT"; return 1; }
    sleep 2
  done
  rm -f "$OUT/$NAME.tar.part-"*
  (cd "$W/pack" && tar cf - "$NAME") | split -b 15M - "$OUT/$NAME.tar.part-"
  log "returned the portable state of step $(state_step "$W/pack/$NAME")" \
    "in $(ls "$OUT/$NAME".tar.part-* | wc -l) parts"
}
STEP_NOW=$([ -f "$PORT/state.json" ] && state_step "$PORT" 2>/dev/null)
if [ -f "$PORT/state.json" ] \
    && { [ "${FINAL:-0}" = 1 ] || [ "$STEP_NOW" != "${STEP_AT_START:-}" ]; }; then
  pack_state
elif [ "${FINAL:-0}" = 1 ] || [ $TRAIN = 1 ]; then
  log "no newer portable state of $NAME to return"
fi
log "done"
