#!/usr/bin/env bash
# Install everything (Python packages, CP2K, a single-node SLURM) and run the test suite.
# Usage: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
PY=${PYTHON:-python3}
if [[ $(id -u) -eq 0 ]]; then
  bash scripts/slurm/start.sh            # a one-node SLURM cluster (apt-get installs it the first time)
  trap 'bash scripts/slurm/stop.sh' EXIT
fi
"$PY" -m pytest -q --durations=30 "$@"
