#!/usr/bin/env bash
# Everything this project measures on the GPU machine, in one call (device time is scarce):
#   1. the golden check on cuda in float32 (issue 2),
#   2. the engine's pytest suite under PyTorch 2.x,
#   3. one ROME edit of W_o at the mamba-2.8b shape (issue 5),
#   4. the engine benchmark against transformers hooks (issue 9).
# Usage there: bash bench/gpu-session.sh  (expects the golden folder copied to .device/golden; writes to $OUT)
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
py=python3
step() { echo; echo "=== $* ($(date +%T))"; }
step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$py -c "import torch, transformers, google.protobuf as pb; print('torch', torch.__version__, 'transformers', transformers.__version__, 'protobuf', pb.__version__)"
step "golden check, cuda float32"
PYTHONPATH=. $py -m engine.golden_check --golden .device/golden --device cuda:0 2>&1 | tee "$OUT/golden-cuda.txt"
step "engine pytest (torch 2.x)"
GOLDEN_DIR=.device/golden PYTHONPATH=. timeout 240 $py -m pytest -q -p no:cacheprovider -x engine/tests 2>&1 | tail -5 | tee "$OUT/pytest-gpu.txt"
if [ -f bench/rome_gpu.py ]; then
  step "ROME edit of W_o at the mamba-2.8b shape"
  PYTHONPATH=. timeout 240 $py -m bench.rome_gpu --device cuda:0 2>&1 | tee "$OUT/rome-gpu.txt"
fi
step "engine benchmark"
PYTHONPATH=. timeout ${BENCH_TIMEOUT:-330} $py -m bench.engine --out "$OUT" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench-engine.txt"
step "done"
