#!/usr/bin/env bash
# Device phase B (chained calls on one warm machine): train codecs side by side on the one GPU,
# resuming from runs/device/* when the machine is still warm. By default the dynamic-rate
# codec and the fixed-rate 6.25 Hz baseline (same architecture, config and wall-clock budget).
#   carry: .whl .debs
#   call 1: BUDGET=580 bash scripts/device/phase_codec.sh
#   call 2: BUDGET=580 RESERVE=150 FINAL=1 bash scripts/device/phase_codec.sh
# RUNS: the codecs to train, each KIND@CORPUS with KIND one of
#   dyn   configs/codec/small.yaml, dynamic (fixed 12.5 Hz warm-up, then a rate ~U[3, 12.5] Hz)
#   fix   the same config with --fixed-group 2 (the fixed-rate 6.25 Hz baseline)
#   dyn6  configs/codec/small_rate_6.25hz.yaml: dynamic, but every step at a 6.25 Hz target
#         and no warm-up (the baseline's schedule; tests the "one model for every rate" cause)
# and CORPUS `plain` (the built corpus) or `joined` (`flexicodec-data join`: 2-3 consecutive
# utterances of a speaker with 0.3-1.2 s pauses, so information density varies as in real
# speech). Default "dyn@plain fix@plain"; JOIN=1 makes it "dyn@joined fix@joined".
# Run directories: runs/device/codec_KIND (plain) or codec_KIND_joined.
# FINAL=1 packs every run's codec (fp16, without the ASR copy: scripts/device/transport.py)
# into $OUT/codecs.tar.part-* (15 MiB parts; here: cat parts | tar xz, then transport.py
# unpack); packed names: codec_dynamic / codec_fixed2 for dyn / fix (plain or joined alike),
# codec_KIND[_joined] otherwise.
source scripts/device/common.sh
ASR=${ASR:-flexicodec_pretrained/asr}
RESERVE=${RESERVE:-25}
if [ "${JOIN:-0}" = 1 ]; then RUNS=${RUNS:-"dyn@joined fix@joined"}; fi
RUNS=${RUNS:-"dyn@plain fix@plain"}
if [ ! -f "$W/corpus/metadata.jsonl" ] || [ ! -f "$W/corpus.done" ]; then
  log "building corpus (${HOURS:-24} h)"
  python3 -m flexicodec.data.cli build-corpus --hours "${HOURS:-24}" --out "$W/corpus" --workers 16 \
    --no-progress 2>&1 | tail -n 3 && touch "$W/corpus.done"
fi
if [[ " $RUNS " == *"@joined "* ]] && [ ! -f "$W/corpus_joined.done" ]; then
  log "joining consecutive utterances with pauses"
  python3 -m flexicodec.data.cli join "$W/corpus" --out "$W/corpus_joined" --no-progress 2>&1 | tail -n 9 \
    && touch "$W/corpus_joined.done"
fi
M=$(left_min "$RESERVE")
log "training [$RUNS] for $M min each, concurrently"
PIDS=(); NAMES=(); PACK=()
for spec in $RUNS; do
  kind=${spec%@*}; corpus=${spec#*@}
  case $corpus in
    plain) DATA=$W/corpus; SUFFIX="" ;;
    joined) DATA=$W/corpus_joined; SUFFIX=_joined ;;
    *) echo "RUNS: unknown corpus '$corpus' in '$spec' (plain|joined)"; exit 2 ;;
  esac
  case $kind in
    dyn) ARGS=(--config configs/codec/small.yaml); PACKNAME=codec_dynamic ;;
    fix) ARGS=(--config configs/codec/small.yaml --fixed-group 2); PACKNAME=codec_fixed2 ;;
    dyn6) ARGS=(--config configs/codec/small_rate_6.25hz.yaml); PACKNAME=codec_dyn6$SUFFIX ;;
    *) echo "RUNS: unknown kind '$kind' in '$spec' (dyn|fix|dyn6)"; exit 2 ;;
  esac
  name=codec_$kind$SUFFIX
  python3 -m flexicodec.codec.train "${ARGS[@]}" --data "$DATA" --run-dir "$W/$name" --asr "$ASR" \
    --resume --max-minutes "$M" --out-model "$W/${name}_model" > "$W/$name.log" 2>&1 &
  PIDS+=($!); NAMES+=("$name"); PACK+=("$PACKNAME=$W/${name}_model")
done
sleep 90; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
for i in "${!PIDS[@]}"; do
  wait "${PIDS[$i]}"; log "trainer ${NAMES[$i]} exited: rc=$?"
done
for name in "${NAMES[@]}"; do
  grep -a -v -E "it/s\]|s/it\]" "$W/$name.log" | tail -n 25
  cp "$W/$name/metrics.jsonl" "$OUT/${name}_metrics.jsonl" 2>/dev/null
done
if [ "${FINAL:-0}" = 1 ]; then
  pack_codecs "${PACK[@]}"
fi
log "done"
