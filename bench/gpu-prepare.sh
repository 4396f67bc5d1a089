#!/usr/bin/env bash
# Issue 14 on the GPU machine, in one call (writes to $OUT):
#   1. the kernel tests (Triton vs PyTorch, the prepare kernels included), the packed prepare against
#      the per-token reference prepare, and the fast path against the slow path, on cuda in float32;
#   2. the golden check on cuda;
#   3. bench/engine.py (engine only) on the mamba-2.8b and pythia-2.8b bf16 T16 swap grids, three fresh
#      processes: (a) no warm-up, empty kernel cache (the first prompt compiles: "before" for start-up);
#      (b) warm-up at load, empty kernel cache (ready time with compilation); (c) a restart on (b)'s
#      kernel cache (FACTSWEEP_KERNEL_CACHE). Prepare time per prompt (first, steady, the per-token
#      reference), run_cells, and prepare's share of the grid come from each.
# Usage there: bash bench/gpu-prepare.sh  (expects the golden folder copied to .device/golden;
# RUNS="warm restart" picks bench runs)
source "$(dirname "$0")/gpu-env.sh"
step machine
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$py -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
step "tests on cuda"
{
  FACTSWEEP_TEST_DEVICE=cuda:0 timeout 90 $py -m pytest -q -s -p no:cacheprovider engine/tests/test_kernels.py engine/tests/test_prepare.py 2>&1 | grep -E "bit-equal|passed|failed|Error|assert" | head -40
  FACTSWEEP_TEST_DEVICE=cuda:0 timeout 100 $py -m pytest -q -s -p no:cacheprovider engine/tests/test_fast_path.py -k "not bfloat16" 2>&1 | grep -E "passed|failed|Error|assert" | head -20
} 2>&1 | tee "$OUT/tests-cuda.txt"
step "golden check on cuda"
timeout 40 $py -m engine.golden_check --golden .device/golden --device cuda:0 2>&1 | tail -3 | tee "$OUT/golden-cuda.txt"
CONFIGS=mamba-2.8b:bf16:16:swap,pythia-2.8b:bf16:16:swap
for run in ${RUNS:-nowarm warm restart}; do
  step "bench.engine: $run"
  case $run in
    nowarm) cache=/tmp/kc-nowarm; extra="--no-warm-up" ;;
    warm) cache=/tmp/kc; extra="--profile" ;;
    restart) cache=/tmp/kc; extra="" ;;
  esac
  FACTSWEEP_KERNEL_CACHE=$cache timeout 110 $py -m bench.engine --no-hf --engine-only --repeats 3 --prepare-repeats 5 \
    --configs $CONFIGS $extra --out "$OUT/$run" > "$OUT/bench-$run.txt" 2>&1
  grep -E "^(ready|config|mamba|pythia|Traceback|[A-Za-z]*Error)" "$OUT/bench-$run.txt" | grep -v '^{' | head -12
  echo "kernel cache $cache: $(find $cache -type f 2>/dev/null | wc -l) files"
done
step done
