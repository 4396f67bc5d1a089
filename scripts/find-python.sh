#!/usr/bin/env bash
# Prints the path of a Python interpreter that can import torch: $FACTSWEEP_PYTHON, /usr/bin/python3, python3.
for py in "${FACTSWEEP_PYTHON:-}" /usr/bin/python3 "$(command -v python3 || true)"; do
  [ -n "$py" ] && [ -x "$py" ] && "$py" -c 'import torch, google.protobuf' 2>/dev/null && { echo "$py"; exit 0; }
done
echo "factsweep: no Python with torch and protobuf found; install them with: apt-get install -y python3-torch python3-protobuf python3-numpy (or set FACTSWEEP_PYTHON)" >&2
exit 1
