#!/usr/bin/env bash
# bench/scaleout: the whole system on a GPU host, in one command (see bench/scaleout/README.md).
# Brings Node, nats-server and the built TypeScript from .scaleout/ (made by bench/scaleout/pack.sh)
# when this host has none, writes random-weight checkpoints of the real shapes, then measures per shape:
#   (a) the engine in-process, (b) one engine worker over its protocol, (c) the whole system on 1 GPU
#   (nats-server, coordinator, one agent, sweepctl launch), (d) the same on 2 GPUs when there are 2.
# Prints a table; writes $OUT/scaleout-<name>.json (one object per shape) and $OUT/logs.tar.gz.
#
#   bash bench/scaleout/run.sh                                   # GPU host: mamba-2.8b and pythia-2.8b, 500 prompts
#   bash bench/scaleout/run.sh --prompts 100 --deadline 500      # fewer prompts, stop starting steps after 500 s
#   bash bench/scaleout/run.sh --shape tiny --prompts 4 --cpu    # development on a CPU machine
#
# Options: --shape 2.8b|tiny  --models a,b (default: both of the shape)  --prompts N  --gpus N (default: all,
# at most 2)  --cpu  --shard-cells N (default: one shard per prompt)  --name NAME (default h200, cpu)
# --work DIR (default /tmp/factsweep-scaleout)  --deadline S  --step-timeout S  --commit SHA  --skip a,b,c,d
# --unpack (use .scaleout's node and nats-server even where the host has its own: tests the packing)
# --no-primer (the measured sweep is the cluster's first of its model: LoadModel and warm-up inside it)
# --overlap-prompts N (prompts of the overlap row, default 40); --skip takes a,b,o,c,d,check
# --prefetch N (the agent's --prefetch: leases queued per worker beyond the running one)
# --parallel (2 GPUs: rows a and o on the second GPU while b and c run on the first; fits 500 prompts in 10 minutes)
# --corruption swap|noise (default swap)  --samples N (noise samples, default 10)
# --grid paper|residual (default paper)  --layers N (the first N layers only; default all): small grids
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
shape=2.8b models="" prompts=500 gpus="" cpu=0 shard_cells=0 name="" work=/tmp/factsweep-scaleout
deadline=100000 step_timeout=400 commit="" skip="" unpack=0 primer=1 overlap_prompts=40 parallel=0 prefetch=""
corruption=swap samples=10 grid=paper layers=0
while [ $# -gt 0 ]; do
  case "$1" in
    --shape) shape=$2; shift 2 ;;
    --models) models=$2; shift 2 ;;
    --prompts) prompts=$2; shift 2 ;;
    --gpus) gpus=$2; shift 2 ;;
    --cpu) cpu=1; shift ;;
    --shard-cells) shard_cells=$2; shift 2 ;;
    --name) name=$2; shift 2 ;;
    --work) work=$2; shift 2 ;;
    --deadline) deadline=$2; shift 2 ;;
    --step-timeout) step_timeout=$2; shift 2 ;;
    --commit) commit=$2; shift 2 ;;
    --skip) skip=$2; shift 2 ;;
    --unpack) unpack=1; shift ;;
    --no-primer) primer=0; shift ;;
    --parallel) parallel=1; shift ;;
    --prefetch) prefetch=$2; shift 2 ;;
    --overlap-prompts) overlap_prompts=$2; shift 2 ;;
    --corruption) corruption=$2; shift 2 ;;
    --samples) samples=$2; shift 2 ;;
    --grid) grid=$2; shift 2 ;;
    --layers) layers=$2; shift 2 ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "run: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ -n "$models" ] || models="mamba-$shape,pythia-$shape"
[ -n "$name" ] || { [ $cpu = 1 ] && name=cpu || name=h200; }
[ -n "$commit" ] || commit=$(git rev-parse HEAD 2>/dev/null || sed -n 's/^typescript from: commit //p' .scaleout/MANIFEST 2>/dev/null || echo unknown)
OUT=${OUT:-$root/out/scaleout}
mkdir -p "$OUT" "$work"
rm -rf "$work/results" "$work/logs" "$work/js"
res=$work/results logs=$work/logs
mkdir -p "$res" "$logs"
export PYTHONUNBUFFERED=1 PYTHONPATH=$root
# One Triton kernel cache for every row, as on a host whose agent has run workers before (the agent's
# --kernel-cache default is per user; here the in-process row fills it and every worker after reuses it).
export FACTSWEEP_KERNEL_CACHE=${FACTSWEEP_KERNEL_CACHE:-$work/kernels}
# This workplace's GPU hosts: NVLink multicast stays off, also for processes started from here.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
say() { echo "[scaleout $(date +%T) +${SECONDS}s] $*"; }
left() { echo $((deadline - SECONDS)); }
skipped() { [[ ",$skip," == *",$1,"* ]]; }
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; }
trap cleanup EXIT

# ---- 1. what the host lacks: Node, nats-server, node_modules + dist -----------------------------------
. "$root/bench/scaleout/unpack.sh"
# Not in a pipe or subshell: it extends PATH.
scaleout_unpack "$root" "$work/bin" "$unpack" > "$work/unpack.log" || exit 1
while read -r line; do say "$line"; done < "$work/unpack.log"
PY=$(bash scripts/find-python.sh) || exit 1

# ---- 2. devices -----------------------------------------------------------------------------------------
if [ $cpu = 1 ]; then
  ngpu=0 dev=cpu dtype=float32
  [ -n "$gpus" ] || gpus=2
  say "CPU mode: engine on the CPU in float32; the '2-GPU' row runs 2 CPU workers"
else
  ngpu=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
  [ "$ngpu" -ge 1 ] || { say "no GPU visible (nvidia-smi -L); use --cpu"; exit 1; }
  [ -n "$gpus" ] || gpus=$((ngpu < 2 ? ngpu : 2))
  dev=cuda dtype=bfloat16
  nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader | sed 's/^/  gpu /'
fi
hw="$( [ $cpu = 1 ] && echo "$(nproc) CPU cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" || echo "$ngpu x $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1), $(nproc) CPU cores")"
say "host: $hw; node $(node --version); $(nats-server --version); python $($PY -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__)')"

# ---- 3. checkpoints, prompts, specs -------------------------------------------------------------------
say "writing checkpoints ($models, $dtype, random weights) and $prompts prompts each under $work ($corruption corruption)"
$PY -m bench.scaleout.engine_side models --shapes "$models" --prompts "$prompts" --work "$work" --device "$dev" \
  --dtype "$dtype" --shard-cells "$shard_cells" --corruption "$corruption" --samples "$samples" --grid "$grid" --layers "$layers" > "$res/models.json" || { say "writing the models failed"; exit 1; }

# ---- 4. nats-server and the coordinator (one each for the whole run) ------------------------------------
base=$((20000 + RANDOM % 20000))
nport=$base gport=$((base + 1))
nats-server -js -a 127.0.0.1 -p "$nport" -sd "$work/js" > "$logs/nats-server.log" 2>&1 &
pids+=($!)
node coordinator/dist/main.js --grpc-host 127.0.0.1 --grpc-port "$gport" --http-port -1 \
  --nats-url "nats://127.0.0.1:$nport" --model-root "$work/models" > "$logs/coordinator.log" 2>&1 &
pids+=($!)
for i in $(seq 1 300); do (exec 3<>"/dev/tcp/127.0.0.1/$gport") 2>/dev/null && break; sleep 0.2; done
(exec 3<>"/dev/tcp/127.0.0.1/$gport") 2>/dev/null || { say "coordinator did not listen on $gport"; tail -20 "$logs/coordinator.log"; exit 1; }
say "nats-server on $nport, coordinator on $gport"

# Starts one agent with $1 workers (GPUs 0..$1-1, or CPU workers); sets agent_pid. Writes its start time.
start_agent() {
  local n=$1 tag=$2 vis
  vis=$(seq -s, 0 $((n - 1)))
  date +%s%3N > "$res/$tag.agent-start-ms"
  if [ $cpu = 1 ]; then
    node node-agent/dist/main.js --coordinator "127.0.0.1:$gport" --nats-url "nats://127.0.0.1:$nport" --cpu --workers "$n" ${prefetch:+--prefetch "$prefetch"} \
      --http-port 0 --agent-id "$tag" --engine-python "$PY" --engine-root "$root" > "$logs/$tag.agent.out" 2> "$logs/$tag.agent.log" &
  else
    CUDA_VISIBLE_DEVICES=$vis node node-agent/dist/main.js --coordinator "127.0.0.1:$gport" --nats-url "nats://127.0.0.1:$nport" \
      --max-slots "$n" ${prefetch:+--prefetch "$prefetch"} --http-port 0 --agent-id "$tag" --engine-python "$PY" --engine-root "$root" > "$logs/$tag.agent.out" 2> "$logs/$tag.agent.log" &
  fi
  agent_pid=$!
  pids+=($agent_pid)
  for i in $(seq 1 600); do
    grep -q "factsweep-agent ready" "$logs/$tag.agent.out" 2>/dev/null && break
    kill -0 $agent_pid 2>/dev/null || break
    sleep 0.2
  done
  if ! grep -q "factsweep-agent ready" "$logs/$tag.agent.out" 2>/dev/null; then
    say "agent $tag did not become ready"; tail -20 "$logs/$tag.agent.log"; return 1
  fi
  say "agent $tag ready: $(cat "$logs/$tag.agent.out")"
}
stop_agent() {
  kill -TERM "$agent_pid" 2>/dev/null
  for i in $(seq 1 150); do kill -0 "$agent_pid" 2>/dev/null || break; sleep 0.2; done
  kill -KILL "$agent_pid" 2>/dev/null
  wait "$agent_pid" 2>/dev/null
}
launch() {  # $1 spec file, $2 sweep id, $3 result file: one sweep through system.mjs
  local t; t=$(left); [ "$t" -gt "$step_timeout" ] && t=$step_timeout
  node bench/scaleout/system.mjs --coordinator "127.0.0.1:$gport" --spec "$1" --id "$2" --timeout "$t" > "$3" 2> "$logs/$2.driver.log"
  local rc=$?
  [ $rc = 0 ] || { say "sweep $2 did not finish (rc $rc)"; tail -5 "$logs/$2.driver.log"; }
  return $rc
}
system_run() {  # $1 workers, $2 model, $3 tag, $4 "check" to compare sampled prompts with the engine alone
  local n=$1 m=$2 tag=$3 id=${3//./_}  # sweep ids take no dots (they are NATS subject tokens)
  start_agent "$n" "$tag" || return 1
  if [ $primer = 1 ]; then  # the cluster's first sweep of this model (cold: LoadModel and warm-up at the first lease)
    say "($tag) primer: sweepctl launch $work/$m/primer.json (4 prompts) with $n worker(s)"
    launch "$work/$m/primer.json" "$id-primer" "$res/$tag.primer.json"
  fi
  say "($tag) sweepctl launch $work/$m/spec.json with $n worker(s)$([ $primer = 1 ] && echo ', after the primer')"
  launch "$work/$m/spec.json" "$id" "$res/$tag.json"
  if [ "${4:-}" = check ]; then
    for f in "$work/$m"/check-*.json; do
      local dt; dt=$(basename "$f" .json); dt=${dt#check-}
      [ "$(left)" -gt 60 ] || break
      say "($tag) check: sampled prompts in $dt through the system, then the engine alone"
      launch "$f" "$id-check-$dt" "$res/$tag.check-$dt.sweep.json" &&
        node sweepctl/dist/cli.js --coordinator "127.0.0.1:$gport" results "$id-check-$dt" --format jsonl --out "$res/$tag.check-$dt.jsonl" 2>> "$logs/$tag.driver.log" &&
        echo "$f $res/$tag.check-$dt.jsonl" >> "$res/$tag.checks"
    done
  fi
  stop_agent
  if [ -f "$res/$tag.checks" ]; then
    while read -r f r; do
      local dt; dt=$(basename "$f" .json); dt=${dt#check-}
      timeout "$(step_t)" $PY -m bench.scaleout.engine_side check --work "$work" --model "$m" --spec "$(basename "$f")" --results "$r" \
        --device "$([ $cpu = 1 ] && echo cpu || echo cuda:0)" --out "$res/$m.check-$dt.json" 2>&1 | tail -1
    done < "$res/$tag.checks"
  fi
  grep -h "ready: pid\|worker.*lost\|restarting\|ERROR" "$logs/$tag.agent.log" | cut -c1-220 | head -8
  $PY -c "import json,sys; r=json.load(open(sys.argv[1])); print('  ', {k: r[k] for k in ('state','cells','first_result_s','done_s','cells_per_s','steady_cells_per_s')})" "$res/$tag.json" 2>/dev/null
}
step_t() { local t; t=$(left); [ "$t" -gt "$step_timeout" ] && t=$step_timeout; echo "$t"; }

# ---- 5. per shape: (a) in-process, (b) worker protocol, (c) system 1 GPU, (d) system 2 GPUs -------------
IFS=, read -ra mlist <<< "$models"
for m in "${mlist[@]}"; do
  say "==== $m"
  d0=$([ $cpu = 1 ] && echo cpu || echo cuda:0)
  # --parallel: the engine-side rows (a) and (o) run on the second GPU beside (b) and (c) on the first
  da=$d0 bg="" bgpid=""
  [ $parallel = 1 ] && [ $cpu = 0 ] && [ "$gpus" -ge 2 ] && da=cuda:1 bg=1
  if ! skipped a && [ "$(left)" -gt 30 ]; then
    say "(a) in-process on $da$([ -n "$bg" ] && echo ', beside (b)')"
    if [ -n "$bg" ]; then
      (timeout "$(step_t)" $PY -m bench.scaleout.engine_side inproc --work "$work" --model "$m" --device "$da" --out "$res/$m.inproc.json" 2>&1 | tee "$logs/$m.inproc.log" | grep -v "^$" | tail -3) &
      bgpid=$!
    else
      timeout "$(step_t)" $PY -m bench.scaleout.engine_side inproc --work "$work" --model "$m" --device "$da" --out "$res/$m.inproc.json" 2>&1 | tee "$logs/$m.inproc.log" | grep -v "^$" | tail -3
    fi
  fi
  if ! skipped b && [ "$(left)" -gt 30 ]; then
    say "(b) one worker over its protocol"
    timeout "$(step_t)" $PY -m bench.scaleout.engine_side protocol --work "$work" --model "$m" --device "$d0" --out "$res/$m.protocol.json" 2>&1 | tail -3
    cp "$res/$m.protocol.json.stderr" "$logs/$m.protocol-worker.log" 2>/dev/null
  fi
  [ -n "$bgpid" ] && wait "$bgpid"; bgpid=""
  if ! skipped o && [ "$(left)" -gt 30 ]; then
    say "(o) what a lookahead can hide on $da: grid alone, prepare alone, grid + the next prepare queued ($overlap_prompts prompts)"
    if [ -n "$bg" ]; then
      (timeout "$(step_t)" $PY -m bench.scaleout.engine_side overlap --work "$work" --model "$m" --device "$da" --limit "$overlap_prompts" \
        --out "$res/$m.overlap.json" 2>&1 | tail -1) &
      bgpid=$!
    else
      timeout "$(step_t)" $PY -m bench.scaleout.engine_side overlap --work "$work" --model "$m" --device "$da" --limit "$overlap_prompts" \
        --out "$res/$m.overlap.json" 2>&1 | tail -1
    fi
  fi
  if ! skipped c && [ "$(left)" -gt 30 ]; then
    say "(c) the whole system, 1 $([ $cpu = 1 ] && echo 'CPU worker' || echo GPU)"
    system_run 1 "$m" "$m-system1" "$(skipped check || echo check)"
  fi
  [ -n "$bgpid" ] && wait "$bgpid"; bgpid=""
  if ! skipped d && [ "$gpus" -ge 2 ] && [ "$(left)" -gt 30 ]; then
    say "(d) the whole system, 2 $([ $cpu = 1 ] && echo 'CPU workers' || echo GPUs) (one agent)"
    system_run 2 "$m" "$m-system2"
  elif [ "$gpus" -lt 2 ]; then
    say "(d) unmeasured: this host has $ngpu GPU(s)"
  fi
done

# ---- 6. table and JSON --------------------------------------------------------------------------------
$PY -m bench.scaleout.summarize --work "$work" --models "$models" --commit "$commit" --hardware "$hw" \
  --out "$OUT/scaleout-$name.json"
tar -czf "$OUT/logs.tar.gz" -C "$work" logs results 2>/dev/null
say "wrote $OUT/scaleout-$name.json and $OUT/logs.tar.gz"
