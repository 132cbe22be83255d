#!/usr/bin/env bash
# Build the documentation site (mkdocs.yml; docs/; the reference pages are generated from the code by
# scripts/docs_hooks.py) and serve it on http://127.0.0.1:8000, rebuilding on every change.
# Usage: bash scripts/docs.sh [--build-only] [--site-dir DIR] [--port PORT]
#   --build-only   build into site/ (or --site-dir) with warnings as errors, and stop
# Installs the `docs` extra first if MkDocs is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
build_only=0
site_dir=site
port=8000
while [[ $# -gt 0 ]]; do
  case "$1" in
    --build-only) build_only=1 ;;
    --site-dir) site_dir="$2"; shift ;;
    --port) port="$2"; shift ;;
    -h|--help) sed -n 2,6p "$0"; exit 0 ;;
    *) echo "docs.sh: unknown argument $1 (allowed: --build-only, --site-dir DIR, --port PORT)" >&2; exit 2 ;;
  esac
  shift
done

if ! "$PY" -c "import mkdocs, material, mkdocstrings_handlers.python, otf_flows" 2>/dev/null; then
  echo "== installing the docs extra (MkDocs, mkdocs-material, mkdocstrings)"
  "$PY" -m pip install --quiet --disable-pip-version-check -e ".[docs]"
fi
export NO_MKDOCS_2_WARNING=1   # mkdocs-material's banner about its successor

echo "== building the site into $site_dir (strict: a warning is an error)"
"$PY" -m mkdocs build --strict --site-dir "$site_dir"
if [[ $build_only == 1 ]]; then
  echo "== built: open $site_dir/index.html"
  exit 0
fi
echo "== serving on http://127.0.0.1:$port (Ctrl-C stops)"
exec "$PY" -m mkdocs serve --strict --dev-addr "127.0.0.1:$port"
