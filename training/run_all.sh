#!/usr/bin/env bash
# One command for the whole pipeline: the world (only if absent), the tokenizer, the three models
# Mamba, Mamba-2 and GPT-NeoX (in parallel on one GPU; PARALLEL=0 runs them one after the other,
# e.g. on a CPU), their evaluation and export. Settings come from the environment; the defaults made the shipped models.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WORLD=${WORLD:-models/world}
MODELS_DIR=${MODELS_DIR:-models}
MAMBA_STEPS=${MAMBA_STEPS:-${STEPS:-2000}}
MAMBA2_STEPS=${MAMBA2_STEPS:-${STEPS:-2000}}
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
# arch, steps, output folder of each model (Mamba-2's SSD chunk is train.py's default for it, 16)
runs=("mamba $MAMBA_STEPS mamba-facts" "mamba2 $MAMBA2_STEPS mamba2-facts" "neox $NEOX_STEPS neox-facts")
train() {
  local arch steps out
  read -r arch steps out <<<"$1"
  "$PY" training/train.py --arch "$arch" --steps "$steps" --out "$MODELS_DIR/$out" "${common[@]}"
}
if [ "$PARALLEL" = 1 ]; then
  pids=()
  for r in "${runs[@]}"; do
    train "$r" &
    pids+=($!)
  done
  rc=0
  for p in "${pids[@]}"; do wait "$p" || rc=$?; done
  exit "$rc"
else
  for r in "${runs[@]}"; do train "$r"; done
fi
