#!/usr/bin/env bash
# Continue the shipped codecs on the lent GPU and retrain the LM + acoustic stage on their
# tokens: three chained calls on one warm machine (docs/DEVICE.md, "Continuing the codec").
# The shipped codecs travel packed (scripts/device/transport.py, 32.5 MB each) and split into
# 15 MiB parts, because one call's tree + carry must stay under 64 MiB:
#   here: transport.py pack flexicodec_pretrained/codec X && split -b 15M ... (see DEVICE.md)
#   call 1  carry .whl .debs .carry/a   STEP=corpus  build the corpus (when missing)
#   call 2  carry .carry/b              STEP=train   unpack both codecs, train them side by
#           side (same config, same wall clock), pack both into $OUT/codecs.tar.part-*
#   call 3  (no carry)                  STEP=tts     tokenize the corpus with the packed
#           (fp16) dynamic codec, train LM + acoustic stage side by side, fp16 exports into
#           $OUT/tts.tar.part-*; repeat STEP=tts to resume both for another call
# On a fresh machine STEP=tts needs the corpus (STEP=corpus) and the packed dynamic codec as
# parts: here (cd DIR && tar czf - codec_dynamic.safetensors | split -b 15M - codec_dyn.tar.part-)
# Parts from every call's .carry/* are reassembled from $W/parts (ignored paths stay on the
# warm machine between calls).
source scripts/device/common.sh
STEP=${STEP:?STEP=corpus|train|tts}
ASR=flexicodec_pretrained/asr
mkdir -p "$W/parts"
for d in .carry/*; do [ -d "$d" ] && cp -n "$d"/* "$W/parts/" 2>/dev/null; done
ls -la "$W/parts"

case "$STEP" in
corpus)
  if [ ! -f "$W/corpus.done" ]; then
    log "building corpus (${HOURS:-24} h)"
    python3 -m flexicodec.data.cli build-corpus --hours "${HOURS:-24}" --out "$W/corpus" --workers 16 \
      --no-progress 2>&1 | tail -n 3 && touch "$W/corpus.done"
  fi
  du -sh "$W/corpus"; log "corpus ready"
  ;;
train)
  cat "$W"/parts/codecs_in.tar.part-* | tar xz -C "$W" || { echo "bad parts"; exit 1; }
  python3 scripts/device/transport.py unpack "$W/codec_dynamic_in.safetensors" "$ASR" "$W/dyn_in"
  python3 scripts/device/transport.py unpack "$W/codec_fixed2_in.safetensors" "$ASR" "$W/fix_in"
  M=$(left_min "${RESERVE:-45}")
  log "continuing dynamic codec and fixed-rate baseline for $M min each, concurrently"
  for n in dyn fix; do
    python3 -m flexicodec.codec.train --config configs/codec/small_continue.yaml --data "$W/corpus" \
      --run-dir "$W/cont_$n" --init-from "$W/${n}_in" --resume --max-minutes "$M" \
      --out-model "$W/${n}_model" > "$W/cont_$n.log" 2>&1 &
    eval "P_$n=$!"
  done
  sleep 120; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
  wait "$P_dyn"; R1=$?; wait "$P_fix"; R2=$?
  log "trainers exited: dynamic rc=$R1, baseline rc=$R2"
  for n in dyn fix; do
    grep -a -v -E "it/s\]|s/it\]" "$W/cont_$n.log" | tail -n 12
    cp "$W/cont_$n/metrics.jsonl" "$OUT/cont_${n}_metrics.jsonl" 2>/dev/null
  done
  [ "$R1" = 0 ] && [ "$R2" = 0 ] || { echo "a trainer failed: nothing packed"; exit 1; }
  pack_codecs codec_dynamic="$W/dyn_model" codec_fixed2="$W/fix_model"
  ;;
tts)
  # the LM records the identity of the codec it was trained on: tokenize with the fp16 weights
  # that ship (packed, then unpacked with the ASR), not the fp32 export. On a fresh machine
  # the packed dynamic codec comes in parts (.carry/*/codec_dyn.tar.part-*).
  if [ ! -f "$W/pack/codec_dynamic.safetensors" ]; then
    mkdir -p "$W/pack" && cat "$W"/parts/codec_dyn.tar.part-* | tar xz -C "$W/pack" \
      || { echo "no packed dynamic codec"; exit 1; }
  fi
  if [ ! -f "$W/tok.done" ]; then
    python3 scripts/device/transport.py unpack "$W/pack/codec_dynamic.safetensors" "$ASR" \
      "$W/codec_ship"
    log "tokenizing the corpus at 12.5 / 8.33 / 6.25 Hz"
    python3 -m flexicodec.lm.cli tokenize --data "$W/corpus" --codec "$W/codec_ship" \
      --frame-rate 12.5 8.33 6.25 --out "$W/tok" --num-workers 12 2>&1 \
      | grep -a -v "it/s\]" | tail -n 6 && touch "$W/tok.done"
  fi
  M=$(left_min "${RESERVE:-60}")
  log "training LM and acoustic stage for $M min, concurrently"
  python3 -m flexicodec.lm.cli train --config configs/lm/small.yaml \
    --data "$W/tok/rate_12.5,$W/tok/rate_8.33,$W/tok/rate_6.25" --run-dir "$W/lm" --resume \
    --max-steps "${LM_STEPS:-6500}" --max-minutes "$M" --out-model "$W/lm_model" \
    > "$W/lm.log" 2>&1 &
  P1=$!
  python3 -m flexicodec.tts.cli train-acoustic --config configs/tts/acoustic_small.yaml --data "$W/tok" \
    --run-dir "$W/ac" --resume --max-steps "${AC_STEPS:-9000}" --max-minutes "$M" --out-model "$W/ac_model" \
    > "$W/ac.log" 2>&1 &
  P2=$!
  sleep 90; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
  wait $P1; R1=$?; wait $P2; R2=$?
  log "trainers exited: lm rc=$R1, acoustic rc=$R2"
  for n in lm ac; do grep -a -v -E "it/s\]|s/it\]" "$W/$n.log" | tail -n 8; done
  [ "$R1" = 0 ] && [ "$R2" = 0 ] || { echo "a trainer failed: nothing exported"; exit 1; }
  cp "$W/lm/metrics.jsonl" "$OUT/lm_metrics.jsonl"; cp "$W/ac/metrics.jsonl" "$OUT/acoustic_metrics.jsonl"
  cp "$W/tok/rate_6.25/info.json" "$OUT/tok_6.25_info.json" 2>/dev/null
  python3 - "$W" <<'EOF'
import shutil, sys, torch
from flexicodec.lm.model import load_lm
from flexicodec.tts.acoustic import AcousticModel
from flexicodec.tts.speakers import SPEAKERS_NAME
w = sys.argv[1]
lm, tok = load_lm(f"{w}/lm_model")
lm.half().save_pretrained(f"{w}/ship/lm", tokenizer_path=tok.path)
ac = AcousticModel.from_pretrained(f"{w}/ac_model")
ac.save_pretrained(f"{w}/ship/acoustic", dtype=torch.float16)
shutil.copyfile(f"{w}/ac_model/{SPEAKERS_NAME}", f"{w}/ship/acoustic/{SPEAKERS_NAME}")
print("fp16 exports written")
EOF
  (cd "$W/ship" && tar czf - lm acoustic) | split -b 15M - "$OUT/tts.tar.part-"
  ls -la "$OUT"
  ;;
*) echo "unknown STEP $STEP"; exit 2 ;;
esac
log "done"
