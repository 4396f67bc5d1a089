#!/usr/bin/env bash
# Fails when the committed generated code differs from what the .proto files generate now.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
root=$(cd "$here/.." && pwd)
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
bash "$here/scripts/gen.sh" "$tmp/ts" "$tmp/py"
diff -r "$tmp/ts" "$here/src/generated" && diff "$tmp/py/engine_pb2.py" "$root/engine/proto/engine_pb2.py" \
  || { echo "gen:check: generated code is stale; run 'npm run gen' and commit" >&2; exit 1; }
echo "gen:check: generated code is current"
