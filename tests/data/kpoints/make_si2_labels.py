"""Record si2-kpoint-labels.xyz: real CP2K labels of two rattled Si2 cells at the four samplings of
benchmarks/_kpoint_si64.py (Γ, (¼, ¼, ¼), 2×2×2, 3×3×3), through the engine, one thread.

    PYTHONPATH=src python tests/data/kpoints/make_si2_labels.py

Used by tests/test_kpoint_si64.py to check the analysis and the resume without CP2K.
"""

import sys
import tempfile
from pathlib import Path

from ase.build import bulk

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2] / "benchmarks"))
import _kpoint_si64 as si64


def frames():
    out = []
    for k, seed in enumerate((1, 2)):
        a = bulk("Si", "diamond", a=5.43)
        a.rattle(0.05, seed=seed)
        a.info = {"frame": k}
        out.append(a)
    return out


if __name__ == "__main__":
    jobs = [(f, s, 1, None, "mpi1x1") for s in si64.SAMPLINGS for f in frames()]
    with tempfile.TemporaryDirectory() as tmp:
        si64.run_labels(jobs, HERE / "si2-kpoint-labels.xyz", Path(tmp), "si2")
