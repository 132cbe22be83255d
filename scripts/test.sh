#!/usr/bin/env bash
# Install everything (Python packages, CP2K, a single-node SLURM) and run the test suite.
# Usage: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
PY=${PYTHON:-python3}
"$PY" -m pytest -q "$@"
