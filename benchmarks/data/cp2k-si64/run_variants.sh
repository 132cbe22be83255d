#!/bin/bash
# Run CP2K inputs of this folder one after the other on one thread, each in run_<name>/, timed:
#   bash run_variants.sh plain engine-gamma ...      (names without .inp; CP2K's own data files)
# engine-gamma.inp reads the BASIS and POTENTIAL files the engine writes (pymatgen's copies of the
# same DZVP-MOLOPT-SR-GTH and GTH-PBE-q4 entries); plain.inp reads CP2K's BASIS_MOLOPT and GTH_POTENTIALS.
set -e
here=$(cd "$(dirname "$0")" && pwd)
export OMP_NUM_THREADS=1
export CP2K_DATA_DIR=${CP2K_DATA_DIR:-/usr/share/cp2k}
for n in "$@"; do
  mkdir -p "run_$n" && cp "$here/$n.inp" "run_$n/"
  [ -f "$here/BASIS" ] && cp "$here/BASIS" "$here/POTENTIAL" "run_$n/"
  (cd "run_$n" && /usr/bin/time -v cp2k.psmp -i "$n.inp" -o "$n.out" > time.txt 2>&1)
  echo "$n done $(date -u)"
done
