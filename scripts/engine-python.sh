#!/usr/bin/env bash
# Runs the Python interpreter that has PyTorch, with the repository root on PYTHONPATH.
# Debian's python3-torch lives under /usr/bin/python3, which is not always the first python3 on PATH.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
py=$(bash "$root/scripts/find-python.sh")
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "$py" "$@"
