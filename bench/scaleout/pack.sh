#!/usr/bin/env bash
# Prepares what bench/scaleout/run.sh needs on a GPU host that has Python + PyTorch but no Node, no
# nats-server and no network: writes .scaleout/ (ignored by git; name it in the device call's carry):
#   node.xz         this machine's Node binary (xz)
#   nats-server.xz  this machine's nats-server binary (xz)
#   app.tar.xz      the production node_modules and every package's dist/, built from the working
#                   tree as it is now (a temporary copy: the checkout's own dist/ is not touched)
#   MANIFEST        versions, the commit and what the working tree differed in
# Usage (here, at the repository root):
#   bash bench/scaleout/pack.sh              # the TypeScript of the working tree as it is now
#   bash bench/scaleout/pack.sh --ref HEAD   # the TypeScript of a commit (when the working tree does not build)
set -euo pipefail
ref=""
while [ $# -gt 0 ]; do
  case "$1" in
    --ref) ref=$2; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "pack: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
dst=$root/.scaleout
node_bin=$(command -v node) || { echo "pack: no node on PATH" >&2; exit 1; }
nats_bin=$(command -v nats-server) || { echo "pack: no nats-server on PATH" >&2; exit 1; }
tmp=$(mktemp -d /tmp/scaleout-pack.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$dst"

if [ -n "$ref" ]; then
  echo "pack: copying commit $(git rev-parse --short "$ref") to $tmp"
  git archive "$ref" | tar -x -C "$tmp"
  src="commit $(git rev-parse "$ref")"
else
  echo "pack: copying the working tree (tracked + untracked-not-ignored files) to $tmp"
  git ls-files -z -co --exclude-standard | tar -c --null -T - -f - 2>/dev/null | tar -x -C "$tmp"
  src="working tree at $(git rev-parse HEAD) ($(git status --porcelain | wc -l) path(s) differ)"
fi
cp -a node_modules "$tmp/node_modules"   # workspace links are relative (../../proto), so they point into the copy
echo "pack: building (tsc -b) in the copy"
# A fresh copy builds in two passes: planning's tests import @factsweep/testing, which the root
# tsconfig lists after planning, so the first pass finds no testing/dist yet.
(cd "$tmp" && { ./node_modules/.bin/tsc -b >/dev/null 2>&1 || ./node_modules/.bin/tsc -b; }) || {
  echo "pack: the TypeScript build failed in the copy ($src); pack a commit that builds: --ref HEAD" >&2; exit 1; }
echo "pack: production dependencies only (npm prune --omit=dev)"
(cd "$tmp" && npm prune --omit=dev --no-audit --no-fund --offline >/dev/null)
dists=$(cd "$tmp" && for p in $(node -e 'console.log(require("./package.json").workspaces.join(" "))'); do [ -d "$p/dist" ] && echo "$p/dist"; done)
echo "pack: app.tar.xz (node_modules + $(echo $dists | tr '\n' ' '))"
# Tests, declarations and source maps are not needed to run.
(cd "$tmp" && tar -c --exclude='*.map' --exclude='*.d.ts' --exclude='*.test.js' --exclude='*.tsbuildinfo' \
   node_modules $dists | xz -6 -T0 > "$dst/app.tar.xz")
echo "pack: node.xz ($node_bin, $(node --version))"
xz -6 -T0 -c "$node_bin" > "$dst/node.xz"
echo "pack: nats-server.xz ($nats_bin, $("$nats_bin" --version))"
xz -6 -T0 -c "$nats_bin" > "$dst/nats-server.xz"
{
  echo "packed $(date -u +%FT%TZ) on $(hostname)"
  echo "typescript from: $src"
  echo "node $(node --version)"
  echo "nats-server $("$nats_bin" --version)"
} > "$dst/MANIFEST"
du -sh "$dst"/*
tree=$(git ls-files -z -co --exclude-standard | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
carry=$(du -sb "$dst" | cut -f1)
echo "pack: tree $((tree / 1048576)) MiB + .scaleout $((carry / 1048576)) MiB = $(((tree + carry) / 1048576)) MiB of the 64 MiB a device call may carry"
