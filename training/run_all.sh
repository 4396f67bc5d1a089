#!/usr/bin/env bash
# One command for the whole pipeline: the world (only if absent), the tokenizer, both models
# (in parallel on one GPU; PARALLEL=0 runs them one after the other, e.g. on a CPU), their
# evaluation and export. Settings come from the environment; the defaults made the shipped models.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WORLD=${WORLD:-models/world}
MODELS_DIR=${MODELS_DIR:-models}
MAMBA_STEPS=${MAMBA_STEPS:-${STEPS:-2000}}
NEOX_STEPS=${NEOX_STEPS:-${STEPS:-4000}}
BATCH=${BATCH:-1024}
SEED=${SEED:-0}
EVAL_EVERY=${EVAL_EVERY:-500}
MAX_MINUTES=${MAX_MINUTES:-}
PARALLEL=${PARALLEL:-1}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

[ -f "$WORLD/world.json" ] || "$PY" training/world.py --out "$WORLD"
"$PY" training/tokenizer.py --world "$WORLD" --out "$WORLD/tokenizer.json" --cases "$WORLD/tokenizer-cases.json"

common=(--world "$WORLD" --tokenizer "$WORLD/tokenizer.json" --batch "$BATCH"
        --seed "$SEED" --eval-every "$EVAL_EVERY" ${MAX_MINUTES:+--max-minutes "$MAX_MINUTES"})
if [ "$PARALLEL" = 1 ]; then
  "$PY" training/train.py --arch mamba --steps "$MAMBA_STEPS" --out "$MODELS_DIR/mamba-facts" "${common[@]}" & m=$!
  "$PY" training/train.py --arch neox --steps "$NEOX_STEPS" --out "$MODELS_DIR/neox-facts" "${common[@]}" & n=$!
  rc=0
  wait "$m" || rc=$?
  wait "$n" || rc=$?
  exit "$rc"
else
  "$PY" training/train.py --arch mamba --steps "$MAMBA_STEPS" --out "$MODELS_DIR/mamba-facts" "${common[@]}"
  "$PY" training/train.py --arch neox --steps "$NEOX_STEPS" --out "$MODELS_DIR/neox-facts" "${common[@]}"
fi
