#!/usr/bin/env bash
# Packing off against on, through the whole system on one GPU (bench/RESULTS.md, "Where packing pays"):
# for each grid shape, `run.sh`'s system row with FACTSWEEP_PACK_BELOW=0, then with $PACK_ON (default
# 2048, the threshold the table was measured against), back to back on the same host. Needs what run.sh
# needs (.scaleout/ on a GPU host without Node). Writes $OUT/scaleout-<row>-{off,on}.json.
#   bash bench/scaleout/pack-ab.sh            # the three rows of the table (about 7 minutes on an H200)
set -uo pipefail
cd "$(dirname "$0")/../.."
on=${PACK_ON:-2048}
one() { # name pack-below run.sh options...
  local name=$1 pk=$2; shift 2
  echo "=== $name (FACTSWEEP_PACK_BELOW=$pk) $(date +%T)"
  FACTSWEEP_PACK_BELOW=$pk timeout 150 bash bench/scaleout/run.sh --work /tmp/pack-ab --name "$name" \
    --skip a,b,o,d,check --step-timeout 120 "$@" 2>&1 | grep -E "^\| [mp]|'state'" | tail -3
  [ -n "${OUT:-}" ] && [ -f "$OUT/logs.tar.gz" ] && { mkdir -p "$OUT/$name"; mv "$OUT/logs.tar.gz" "$OUT/$name/"; }
}
for row in "pp:--models pythia-2.8b --prompts 300" \
  "pr:--models pythia-2.8b --prompts 300 --grid residual --prefetch 15" \
  "mr8:--models mamba-2.8b --prompts 300 --grid residual --layers 8 --prefetch 15"; do
  # shellcheck disable=SC2086  # the row's options are words
  one "${row%%:*}-off" 0 ${row#*:}
  # shellcheck disable=SC2086
  one "${row%%:*}-on" "$on" ${row#*:}
done
