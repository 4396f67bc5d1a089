#!/usr/bin/env bash
# npm start: the main job on the embedded default. Starts an embedded nats-server, a coordinator
# and local node agents on the CPU (sweepctl local), runs the paper's causal trace on the shipped
# tiny Mamba, Mamba-2 and GPT-NeoX with swap and noise corruption, and writes an HTML report (the
# three side by side, the paper's findings checked on each) and CSVs.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash scripts/setup.sh demo
out=${FACTSWEEP_DEMO_OUT:-$root/runs/demo}
agents=${FACTSWEEP_DEMO_AGENTS:-2}
mkdir -p "$out"
sweepctl() { node sweepctl/dist/cli.js "$@"; }
started=$(date +%s)
dirs=()
for spec in mamba-swap mamba2-swap neox-swap mamba-noise mamba2-noise neox-noise; do
  echo "=== sweep $spec ($agents local agents, CPU)" >&2
  sweepctl local "examples/demo/$spec.yaml" --agents "$agents" --workers 1 --out "$out/$spec" --overwrite # the demo replaces its last run
  dirs+=("$out/$spec")
done
sweepctl report --from "${dirs[@]}" --out "$out" --title "Causal tracing of the shipped tiny models (npm start)"
echo "npm start: done in $(( $(date +%s) - started )) s; open $out/report.html (CSV: $out/report.csv, per-sweep results under $out/*/)" >&2
