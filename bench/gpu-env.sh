# Sourced by the bench/gpu-*.sh scripts on the GPU machine: unbuffered Python from the repository
# root, results under $OUT, the golden models where the call copied them (.device/golden).
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=.
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
[ -d .device/golden ] && export GOLDEN_DIR=.device/golden
py=python3
step() { echo; echo "=== $* ($(date +%T))"; }
