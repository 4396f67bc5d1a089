#!/usr/bin/env bash
# Everything this project measures on the GPU machine, in one call (device time is scarce), each
# step capped so that what finished still comes back:
#   1. the golden check on cuda in float32 (issue 2),
#   2. one ROME edit of W_o at the mamba-2.8b shape (issue 5),
#   3. the experiment kinds' tests under PyTorch 2.x,
#   4. the engine benchmark against transformers hooks (issue 9).
# Usage there: bash bench/gpu-session.sh  (expects the golden folder copied to .device/golden; writes to $OUT)
source "$(dirname "$0")/gpu-env.sh"
step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$py -c "import torch, transformers, google.protobuf as pb; print('torch', torch.__version__, 'transformers', transformers.__version__, 'protobuf', pb.__version__)"
step "golden check, cuda float32"
timeout 90 $py -m engine.golden_check --golden .device/golden --device cuda:0 2>&1 | tee "$OUT/golden-cuda.txt"
step "ROME edit of W_o at the mamba-2.8b shape"
timeout ${ROME_TIMEOUT:-120} $py -m bench.rome_gpu --device cuda:0 2>&1 | tee "$OUT/rome-gpu.txt"
step "experiment tests (torch 2.x, cpu)"
GOLDEN_DIR=.device/golden timeout ${PYTEST_TIMEOUT:-80} $py -m pytest -q -p no:cacheprovider -n 8 engine/tests/test_knockout.py engine/tests/test_sever.py engine/tests/test_lre.py engine/tests/test_rome.py 2>&1 | tail -4 | tee "$OUT/pytest-experiments.txt"
step "engine: kernel and fast-path tests on cuda, kernel and grid benchmarks"
bash bench/gpu-engine.sh
step "done"
