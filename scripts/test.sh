#!/usr/bin/env bash
# The whole test suite, as CI runs it: generated code current, lint, engine (pytest + golden check),
# TypeScript unit tests, cross-process end-to-end tests against a real nats-server.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash scripts/setup.sh test
golden=$(cd "${GOLDEN_DIR:-$root/../shared/golden}" 2>/dev/null && pwd || echo "${GOLDEN_DIR:-$root/../shared/golden}")
step() { echo; echo "=== $*"; }
step "generated code is current"
npm run -s gen:check
step "lint: types, import graph, formatter, file sizes"
npm run -s lint
step "engine: pytest"
GOLDEN_DIR="$golden" bash scripts/engine-python.sh -m pytest -q -p no:cacheprovider engine/tests training/tests
if [ -d "$golden" ]; then
  step "engine: golden check against $golden"
  bash scripts/engine-python.sh -m engine.golden_check --golden "$golden"
else
  echo "golden folder $golden not found; set GOLDEN_DIR to run the golden check" >&2
fi
golden2=${GOLDEN_MAMBA2_DIR:-$root/../shared/golden-mamba2}
if [ -d "$golden2" ]; then
  step "engine: golden check against $golden2 (Mamba-2)"
  bash scripts/engine-python.sh -m engine.golden_check --golden "$golden2"
else
  echo "golden folder $golden2 not found; set GOLDEN_MAMBA2_DIR to run the Mamba-2 golden check" >&2
fi
step "TypeScript unit tests"
units=$(find shared/dist planning/dist testing/dist coordinator/dist sweepctl/dist node-agent/dist -name '*.test.js' 2>/dev/null | sort)
# Two files at a time (node's default is one on a 2-core machine): most of a unit test's time is
# waiting on the processes it starts (nats-server, engine workers), so two share the cores.
[ -z "$units" ] || node --test --test-concurrency=2 $units
step "end-to-end tests"
e2e=$(find test/dist -name '*.test.js' 2>/dev/null | sort)
[ -z "$e2e" ] || node --test --test-concurrency=1 $e2e
