#!/usr/bin/env bash
# Regenerates the TypeScript (ts-proto) and Python (protoc) code from proto/*.proto.
# Usage: gen.sh [OUT_TS_DIR OUT_PY_DIR]   (defaults: proto/src/generated, engine/proto)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
root=$(cd "$here/.." && pwd)
ts_out=${1:-$here/src/generated}
py_out=${2:-$root/engine/proto}
plugin=$root/node_modules/.bin/protoc-gen-ts_proto
[ -x "$plugin" ] || { echo "gen: $plugin missing; run 'npm ci' first" >&2; exit 1; }
command -v protoc >/dev/null || { echo "gen: protoc missing; apt-get install -y protobuf-compiler" >&2; exit 1; }
mkdir -p "$ts_out" "$py_out"
cd "$here"
protoc --plugin=protoc-gen-ts_proto="$plugin" \
  --ts_proto_out="$ts_out" \
  --ts_proto_opt=esModuleInterop=true,importSuffix=.js,outputServices=grpc-js,env=node,forceLong=number,oneof=unions,useExactTypes=false \
  -I . engine.proto sweep.proto agent.proto control.proto
protoc --python_out="$py_out" -I . engine.proto
