#!/usr/bin/env bash
# The frozen ASR (the codec's semantic stream) retrained on the default corpus, in one call,
# and measured against the tree's ASR on held-out speakers before anything is trained on it.
#   carry .whl .debs on a fresh machine; the corpus is $W/corpus_v2, shared with
#   scripts/device/phase_v2.sh (built here when missing: HOURS, default 24).
#   Trains configs/asr/small.yaml (or CONFIG=...) into $W/asr_new for the time left
#   (resumable: a next call continues $W/asr_run; INIT=ASR_DIR fine-tunes that ASR instead of
#   training from scratch), then `flexicodec asr-eval` of the tree's
#   ASR and the new one on valid, test and test_unseen → $OUT/asr_per.jsonl; the new ASR in
#   fp16 → $OUT/asr/ (here: keep it as checkpoints/asr_v2 only if it is better).
#   Then phase_v2.sh ASR=$W/asr_new REBASE=1 continues codec stage 1 with it when it is a
#   fine-tune (INIT=checkpoints/asr_v2), FRESH=1 starts stage 1 over with it otherwise.
#   A CPU dry run: HOURS=0.05 BUDGET=150 DEVICE=cpu CONFIG=configs/asr/tiny.yaml
source scripts/device/common.sh
CORPUS=$W/corpus_v2
gpu_info name,memory.total,driver_version
ensure_corpus "$CORPUS" || exit 2
M=$(left_min "${RESERVE:-60}")
log "training the ASR for $M min"
python3 -m flexicodec.codec.asr.train --config "${CONFIG:-configs/asr/small.yaml}" --data "$CORPUS" \
  --run-dir "$W/asr_run" --max-minutes "$M" --resume --out-model "$W/asr_new" \
  ${INIT:+--init-from "$INIT"} "${SET_ARGS[@]}" 2>&1 \
  | grep -v -E "it/s\]|s/it\]" | tail -n 20
cp "$W/asr_run/metrics.jsonl" "$OUT/asr_metrics.jsonl" 2>/dev/null
[ -f "$W/asr_new/config.json" ] || { log "no trained ASR"; exit 1; }
for split in valid test test_unseen; do
  for m in tree=flexicodec_pretrained/asr new=$W/asr_new; do
    python3 -m flexicodec.codec.asr.evaluate --model "${m#*=}" --data "$CORPUS" --split "$split" \
      --device "${DEVICE:-cuda}" 2>/dev/null | tail -n 1 | sed "s/^{/{\"asr\": \"${m%%=*}\", /"
  done
done | tee "$OUT/asr_per.jsonl"
python3 - <<PY
import torch
from flexicodec.codec.asr.model import PhonemeASR
m = PhonemeASR.from_pretrained("$W/asr_new")
m.save_pretrained("$OUT/asr", dtype=torch.float16)
print("exported fp16 ASR", sum(p.numel() for p in m.parameters()))
PY
log "done"
