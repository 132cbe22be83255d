#!/usr/bin/env bash
# The main job: install everything, then run the liquid-silicon campaign with CP2K DFT checks
# on the embedded store (./otf-store): 120 steps of liquid-Si GAP MD, 4-12 CP2K checks (2x2x2 k-points)
# at a force tolerance of 0.3 eV/Å
# (see the README for what its output means and how long it takes).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=${PYTHON:-python3}
CONFIG=${1:-configs/si32-cp2k.yaml}
NAME=$("$PY" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["name"])' "$CONFIG")
if "$PY" -m otf_flows status "$NAME" >/dev/null 2>&1; then
  echo "== the campaign is already in ./otf-store: continuing it (--resume)"
  exec "$PY" -m otf_flows run "$CONFIG" --resume
fi
exec "$PY" -m otf_flows run "$CONFIG"
