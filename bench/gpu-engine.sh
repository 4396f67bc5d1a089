#!/usr/bin/env bash
# The engine measurements of issue 9, in one call on the GPU machine (writes to $OUT):
#   1. the Triton kernels against their PyTorch paths, and the whole fast path against the slow path on
#      cuda in float32 (the golden models too when .device/golden is there);
#   2. the kernel micro-benchmark (scan block shapes, conv, RMSNorm against the copy rate);
#   3. the T=16 swap grids of both shapes with the batched-hooks baseline on every cell, the float32
#      reference and a kernel profile; then every other configuration (noise, float32, 32 tokens) with
#      the engine-model hooks baseline timed on 1,024 cells and scaled.
# Usage there: bash bench/gpu-engine.sh
source "$(dirname "$0")/gpu-env.sh"
timeout 100 $py -m pytest -q -p no:cacheprovider engine/tests/test_kernels.py > "$OUT/test-kernels.txt" 2>&1
tail -1 "$OUT/test-kernels.txt"
FACTSWEEP_TEST_DEVICE=cuda:0 timeout 150 $py -m pytest -q -s -p no:cacheprovider engine/tests/test_fast_path.py -k "not bfloat16" > "$OUT/test-fast-path-cuda.txt" 2>&1
grep -E "max " "$OUT/test-fast-path-cuda.txt" | sort -k6 -g | tail -1
tail -1 "$OUT/test-fast-path-cuda.txt"
timeout 120 $py -m bench.kernels --out "$OUT" > "$OUT/bench-kernels.txt" 2>&1
tail -13 "$OUT/bench-kernels.txt"
timeout 200 $py -m bench.engine --reference --profile --naive-sample 4 --repeats 5 \
  --configs mamba-2.8b:bf16:16:swap,pythia-2.8b:bf16:16:swap --out "$OUT/t16" > "$OUT/bench-engine-t16.txt" 2>&1
timeout 330 $py -m bench.engine --reference --hooks-sample 1024 --naive-sample 4 --repeats 3 \
  --configs mamba-2.8b:bf16:16:noise,pythia-2.8b:bf16:16:noise,mamba-2.8b:fp32:16:swap,pythia-2.8b:fp32:16:swap,mamba-2.8b:bf16:32:swap,pythia-2.8b:bf16:32:swap \
  --out "$OUT/rest" > "$OUT/bench-engine-rest.txt" 2>&1
grep -hE "vs float32" "$OUT/bench-engine-t16.txt" "$OUT/bench-engine-rest.txt" | cut -c1-200
grep -hE -A20 "^config" "$OUT/bench-engine-t16.txt" "$OUT/bench-engine-rest.txt" | grep -v "^{"
