#!/usr/bin/env bash
# The coordinator load benches on a host without Node or nats-server (the GPU hosts: 16+ cores), from
# the .scaleout/ that bench/scaleout/pack.sh writes (carry it). Runs run.mjs (or restart.mjs, named
# first) with the arguments given; its JSON output and any --cpu-prof summary go to $OUT (or
# out/coordinator-load).
#   bash bench/coordinator-load/device.sh --runs 1000x100000 --split coord=1,nats=2-5,gen=6-15 --gen-procs 8
#   bash bench/coordinator-load/device.sh restart.mjs --shards 1000000
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
script=run.mjs
case "${1:-}" in run.mjs|restart.mjs) script=$1; shift ;; esac
OUT=${OUT:-$root/out/coordinator-load}
# Scratch for the unpacked binaries and raw CPU profiles (their summaries go to $OUT): removed at exit.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$OUT"
. bench/scaleout/unpack.sh
scaleout_unpack "$root" "$work/bin" 0
echo "host: $(nproc) cores, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1), $(free -g | awk '/Mem:/{print $2}') GiB; node $(node --version); $(nats-server --version)"
if [ $script = run.mjs ]; then
  node bench/coordinator-load/run.mjs "$@" --out "$OUT/coordinator-load.json" --prof-dir "$work/prof" > /dev/null
else
  node bench/coordinator-load/restart.mjs "$@" --out "$OUT/coordinator-restart.json" > /dev/null
fi
