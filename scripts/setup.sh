#!/usr/bin/env bash
# Makes a fresh clone runnable: system packages (Debian), npm packages, the TypeScript build.
# Installs what is missing when run as root with apt-get; otherwise prints the exact command.
#   bash scripts/setup.sh demo   what `npm start` and `npm run demo:kinds` need: nats-server and the engine's Python
#   bash scripts/setup.sh test   (the default) also what `npm test` / CI need: protoc (generated code check),
#                                pytest, pylint (lint), chromium (report layout tests), prometheus (alert rule
#                                tests), docker-compose and systemd (deploy file validation)
set -euo pipefail
mode=${1:-test}
case "$mode" in
  demo | test) ;;
  *)
    echo "setup: unknown mode \"$mode\"; expected demo or test" >&2
    exit 2
    ;;
esac
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# Not libopenblas0-pthread, though it makes Debian's torch ~10x faster at CPU matrix products: its
# float32 rounding moves the golden Mamba's worst trace error to 1.1e-5, over the 1e-5 the golden
# check allows (bench/RESULTS.md, "CPU").
pkgs=(nats-server python3-torch python3-protobuf python3-numpy)
if [ "$mode" = test ]; then pkgs+=(protobuf-compiler python3-pytest pylint chromium prometheus docker-compose systemd); fi
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  else
    echo "setup: missing Debian packages; run: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "setup: npm ci" >&2
  npm ci --no-audit --no-fund >&2
fi
npx tsc -b >&2
