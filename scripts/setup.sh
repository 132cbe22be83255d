#!/usr/bin/env bash
# Install everything otf_flows needs on a Debian machine with Python >= 3.10:
# the package with its Python dependencies, the MACE backend (CPU torch, then mace-torch), and CP2K (apt) when it is missing and we are root.
# Usage: bash scripts/setup.sh [--test]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

extras=""
[[ "${1:-}" == "--test" ]] && extras="[test]"

echo "== otf_flows setup: Python packages"
"$PY" -m pip install --quiet --disable-pip-version-check -e ".${extras}"

# MACE backend (model.backend: mace): the CPU build of torch FIRST, pinned, from PyTorch's CPU index only;
# mace-torch afterwards finds it satisfied. An unpinned torch (or one mace-torch pulls in) is the
# multi-GB CUDA build from PyPI. Skip with OTF_NO_MACE=1.
if [[ "${OTF_NO_MACE:-0}" != "1" ]]; then
  echo "== MACE backend: torch 2.13.0 (CPU), then mace-torch"
  # a CPU wheel on this machine's disk (pip's find-links) first: no index is asked, so no network wait;
  # else PyTorch's CPU index
  if ! "$PY" -m pip install --quiet --disable-pip-version-check --no-index --no-deps "torch==2.13.0+cpu" \
      2>/dev/null; then
    "$PY" -m pip install --quiet --disable-pip-version-check "torch==2.13.0" \
      --index-url https://download.pytorch.org/whl/cpu
  fi
  "$PY" -m pip install --quiet --disable-pip-version-check -e ".[mace]"
  "$PY" -c "import torch; assert not torch.version.cuda, 'a CUDA torch was installed: pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu'"
fi

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
