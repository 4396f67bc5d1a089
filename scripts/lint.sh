#!/usr/bin/env bash
# `npm run lint` (CI runs it): types, the import graph (no loops; DESIGN's package layering), the
# formatter, and no product file over 400 lines without a reason written at its top.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
step() { echo "--- lint: $*"; }
step "types (tsc -b)"
npx tsc -b --pretty
step "TypeScript import graph (dependency-cruiser, .dependency-cruiser.cjs)"
npx depcruise proto/src shared/src planning/src testing/src coordinator/src sweepctl/src node-agent/src test/src --config .dependency-cruiser.cjs --output-type err
step "Python import loops (pylint cyclic-import)"
py=$(bash scripts/find-python.sh)
if "$py" -m pylint --version >/dev/null 2>&1; then
  PYTHONPATH="$root" "$py" -m pylint --disable=all --enable=cyclic-import --score=n engine training bench
else
  echo "pylint is missing: apt-get install -y pylint" >&2
  exit 1
fi
step "format (prettier --check; npm run format writes)"
npx prettier --check --log-level warn .
step "files over 400 lines carry a reason at their top (a 'long-file:' line)"
long=0
while IFS= read -r f; do
  n=$(wc -l < "$f")
  if [ "$n" -gt 400 ] && ! head -n 15 "$f" | grep -q "long-file:"; then
    echo "$f: $n lines and no 'long-file: <why>' line in its first 15 lines; split it or say why" >&2
    long=1
  fi
done < <(git ls-files --cached --others --exclude-standard -- '*.ts' '*.mjs' '*.py' ':!**/generated/**' ':!**/*_pb2.py' ':!**/*.test.ts' ':!**/tests/**' ':!**/dist/**')
[ "$long" = 0 ]
echo "lint: all checks passed"
