#!/usr/bin/env bash
# Install everything otf_flows needs on a Debian machine with Python >= 3.10:
# the package with its Python dependencies, and CP2K (apt) when it is missing and we are root.
# Usage: bash scripts/setup.sh [--test]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

extras=""
[[ "${1:-}" == "--test" ]] && extras="[test]"

echo "== otf_flows setup: Python packages"
"$PY" -m pip install --quiet --disable-pip-version-check -e ".${extras}"

if command -v cp2k.psmp >/dev/null 2>&1 || command -v cp2k >/dev/null 2>&1; then
  echo "== CP2K found: $(command -v cp2k.psmp || command -v cp2k)"
elif [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
  echo "== installing CP2K (apt-get install cp2k)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq cp2k >/dev/null
else
  echo "== CP2K is not installed and this is not a root Debian machine:" >&2
  echo "   install it (apt-get install cp2k, or 'module load cp2k' on a cluster) for CP2K campaigns" >&2
fi
echo "== setup done"
