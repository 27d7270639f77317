#!/usr/bin/env bash
# Device phase A (one call): build the training corpus from carried synthesizer .debs, then
# train the shipped ASR (semantic stream). Results and the fp16 model come back under $OUT.
#   carry: .whl .debs     command: BUDGET=560 bash scripts/device/phase_asr.sh
source scripts/device/common.sh
HOURS=${HOURS:-24}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, accelerate, datasets; print('torch', torch.__version__, 'tf', transformers.__version__, 'acc', accelerate.__version__, 'ds', datasets.__version__)"
log "building corpus ($HOURS h)"
python3 -m flexicodec.data.cli build-corpus --hours "$HOURS" --out "$W/corpus" --workers 16 --no-progress 2>&1 | tail -n 15
python3 -m flexicodec.data.cli show "$W/corpus" 2>&1 | head -n 30 | tee "$OUT/corpus_summary.txt"
log "training ASR for $(left_min 60) min"
python3 -m flexicodec.codec.asr.train --config configs/asr/small.yaml --data "$W/corpus" --run-dir "$W/asr" \
  --max-minutes "$(left_min 60)" --resume --out-model "$W/asr_model" 2>&1 | grep -v -E "it/s\]|s/it\]" | tail -n 40
cp "$W/asr/metrics.jsonl" "$OUT/asr_metrics.jsonl" 2>/dev/null
python3 - <<PY
import torch
from flexicodec.codec.asr.model import PhonemeASR
m = PhonemeASR.from_pretrained("$W/asr_model")
m.save_pretrained("$OUT/asr", dtype=torch.float16)
print("exported fp16 ASR", sum(p.numel() for p in m.parameters()))
PY
log "done"
