#!/usr/bin/env bash
# npm run demo:kinds: the paper's other experiments on the shipped tiny models, through the same
# embedded cluster as npm start (knockout, sever, lre, edit; Mamba and NeoX), then one report with
# their curves. Slower than npm start (LRE and ROME optimise per case): about 30 minutes on 2 cores.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash scripts/setup.sh demo
out=${FACTSWEEP_DEMO_OUT:-$root/runs/demo-kinds}
agents=${FACTSWEEP_DEMO_AGENTS:-2}
kinds=${FACTSWEEP_DEMO_KINDS:-knockout sever lre edit}
dirs=()
for kind in $kinds; do
  for model in mamba neox; do
    echo "=== $model $kind ($agents local agents, CPU)" >&2
    node sweepctl/dist/cli.js local "examples/demo/$model-$kind.yaml" --agents "$agents" --workers 1 --out "$out/$model-$kind" --overwrite
    dirs+=("$out/$model-$kind")
  done
done
node sweepctl/dist/cli.js report --from "${dirs[@]}" --out "$out" --title "Knockout, path blocking, LRE and ROME on the shipped tiny models"
echo "demo:kinds: open $out/report.html" >&2
