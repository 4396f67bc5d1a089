#!/usr/bin/env bash
# Validates the operations files with the tools that run without a cluster or a Docker engine:
# dashboards regenerate unchanged, promtool (config, rules, rule unit tests), docker-compose's
# schema, the kustomizations rendered and checked against Kubernetes schemas (kubernetes-models),
# kubectl kustomize where installed, and systemd-analyze verify; and that no secret file of the
# production overlay is still the placeholder it ships as (the files are valid, such a deployment is not).
# Needs Debian packages prometheus, docker-compose, systemd, and `npm ci && npx tsc -b` done.
#   validate.sh                 everything: fails while placeholder secrets remain
#   validate.sh --files-only    the files' structure only (CI: the repository ships placeholders)
#   validate.sh --secrets-only  only the placeholder check (before `kubectl apply`)
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
mode=${1:-all}
case "$mode" in all | --files-only | --secrets-only) ;; *) echo "usage: validate.sh [--files-only | --secrets-only]" >&2; exit 2 ;; esac
failures=0
check() {
  local what=$1; shift
  local out
  if out=$("$@" 2>&1); then
    echo "ok    $what"
  else
    echo "FAIL  $what"; echo "$out" | sed 's/^/      /'
    failures=$((failures + 1))
  fi
}
need() {
  command -v "$1" >/dev/null || { echo "FAIL  $1 not installed (apt-get install -y $2)"; failures=$((failures + 1)); return 1; }
}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Secrets: every file under overlays/*/secrets/ that still says PLACEHOLDER (or is empty) is named.
placeholder_secrets() {
  local bad=() f
  for f in deploy/kubernetes/overlays/*/secrets/*; do
    [ -f "$f" ] || continue
    if [ ! -s "$f" ] || grep -qiE 'placeholder|replace with' "$f"; then bad+=("$f"); fi
  done
  if [ ${#bad[@]} -gt 0 ]; then
    echo "${#bad[@]} secret file(s) are placeholders, not secrets; replace each before deploying (deploy/README.md, Kubernetes step 1; tokens: openssl rand -hex 32):"
    printf '  %s\n' "${bad[@]}"
    return 1
  fi
}
if [ "$mode" != --files-only ]; then
  check "no placeholder secrets in deploy/kubernetes/overlays/*/secrets" placeholder_secrets
fi
if [ "$mode" = --secrets-only ]; then
  if [ "$failures" -gt 0 ]; then echo "$failures check(s) failed"; exit 1; fi
  echo "all checks passed"; exit 0
fi

check "dashboards are generated from dashboards/generate.mjs" node dashboards/generate.mjs --check

if need promtool prometheus; then
  check "promtool check rules" promtool check rules dashboards/prometheus/rules/*.yml
  check "promtool test rules (alert unit tests)" promtool test rules dashboards/prometheus/tests/*.yml
  check "promtool check config prometheus.yml" promtool check config dashboards/prometheus/prometheus.yml
  # Debian's Prometheus is built without Kubernetes discovery: check everything else of the
  # Kubernetes config with its pod discovery swapped for a static target.
  cp -r dashboards/prometheus/rules "$tmp/rules"
  perl -0pe 's/kubernetes_sd_configs:\n(\s+)- role: pod/static_configs:\n$1- targets: ["pod:9464"]/' \
    dashboards/prometheus/prometheus-kubernetes.yml > "$tmp/prometheus-kubernetes.yml"
  check "promtool check config prometheus-kubernetes.yml (pod discovery as static)" promtool check config "$tmp/prometheus-kubernetes.yml"
fi

if need docker-compose docker-compose; then
  check "docker-compose config (deploy/docker-compose.yml)" docker-compose -f deploy/docker-compose.yml config -q
fi

check "kustomizations render and match Kubernetes schemas" node test/dist/ops/validate-kubernetes.js
if command -v kubectl >/dev/null; then
  for k in deploy/kubernetes/base deploy/kubernetes/overlays/*/; do
    check "kubectl kustomize $k" kubectl kustomize "$k"
  done
fi

if need systemd-analyze systemd; then
  # verify exits 0 on unknown keys and bad values; its warnings on stderr are the failures.
  verify_units() { local out; out=$(systemd-analyze verify deploy/systemd/*.service 2>&1); [ -z "$out" ] || { echo "$out"; return 1; }; }
  check "systemd-analyze verify deploy/systemd/*.service" verify_units
fi

if [ "$failures" -gt 0 ]; then echo "$failures check(s) failed"; exit 1; fi
if [ "$mode" = --files-only ]; then echo "all file checks passed (secrets not checked: --files-only)"; exit 0; fi
echo "all checks passed"
