# Sourced by bench/scaleout/run.sh and bench/coordinator-load/device.sh: puts on PATH what a GPU host
# lacks (Node, nats-server) and unpacks node_modules + dist/, all from .scaleout/ (bench/scaleout/pack.sh).
#   scaleout_unpack <repository root> <bin folder> <1: unpack even where the host has them>
scaleout_unpack() {
  local root=$1 bin=$2 force=$3
  mkdir -p "$bin"
  if [ "$force" = 1 ] || ! command -v node >/dev/null; then
    [ -f "$root/.scaleout/node.xz" ] || { echo "no node here and no .scaleout/node.xz: run bash bench/scaleout/pack.sh where Node is, and carry .scaleout" >&2; return 1; }
    xz -dc "$root/.scaleout/node.xz" > "$bin/node" && chmod +x "$bin/node"
    export PATH=$bin:$PATH
    echo "node $(node --version) unpacked from .scaleout/node.xz"
  fi
  if [ "$force" = 1 ] || ! command -v nats-server >/dev/null; then
    xz -dc "$root/.scaleout/nats-server.xz" > "$bin/nats-server" && chmod +x "$bin/nats-server"
    export PATH=$bin:$PATH
    echo "nats-server $(nats-server --version) unpacked from .scaleout/nats-server.xz"
  fi
  if [ ! -d "$root/node_modules" ] || [ ! -f "$root/coordinator/dist/main.js" ] || [ ! -f "$root/node-agent/dist/main.js" ] || [ ! -f "$root/sweepctl/dist/cli.js" ]; then
    [ -f "$root/.scaleout/app.tar.xz" ] || { echo "no node_modules/dist here and no .scaleout/app.tar.xz" >&2; return 1; }
    tar -xJf "$root/.scaleout/app.tar.xz" -C "$root"
    echo "node_modules and dist/ unpacked from .scaleout/app.tar.xz ($(sed -n 's/^typescript from: //p' "$root/.scaleout/MANIFEST" 2>/dev/null))"
  fi
}
