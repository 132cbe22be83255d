"""Make a liquid-silicon start structure: the provenance of configs/si32-liquid-start.xyz.

N atoms on an fcc lattice in a cubic box at the density of liquid Si (2.57 g/cm3), melted
at 4000 K and equilibrated at 2000 K with Stillinger-Weber (quippy ``IP SW``), Langevin,
1 fs. Starting a DFT campaign from a liquid rather than from a crystal keeps the first
model from having to follow the melting (seen in the main job: with a melting crystal the
checking interval never grew past 20 steps).

    python scripts/make_liquid_si.py 32 configs/si32-liquid-start.xyz
    python scripts/make_liquid_si.py 64 benchmarks/configs/si64-liquid-start.xyz
"""

from __future__ import annotations

import sys

import numpy as np
from ase import units
from ase.build import bulk
from ase.io import write
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from quippy.potential import Potential

SW_SI = """<SW_params n_types="1">
<per_type_data type="1" atomic_num="14" />
<per_pair_data atnum_i="14" atnum_j="14" AA="7.049556277" BB="0.6022245584" p="4" q="0" a="1.80" sigma="2.0951" eps="2.1675" />
<per_triplet_data atnum_c="14" atnum_j="14" atnum_k="14" lambda="21.0" gamma="1.20" eps="2.1675" />
</SW_params>"""


def liquid_si(n_atoms: int, density_g_cm3: float = 2.57, seed: int = 7):
    """Liquid Si with ``n_atoms`` from SW melting: 4 k^3 (4, 32, 108, ...) start on an fcc lattice,
    8 k^3 (8, 64, 216, ...) on a diamond one."""
    lattices = {lattice: round((n_atoms / per_cell) ** (1 / 3)) for lattice, per_cell in (("fcc", 4), ("diamond", 8))}
    lattice = next((name for name, k in lattices.items() if {"fcc": 4, "diamond": 8}[name] * k**3 == n_atoms), None)
    if lattice is None:
        raise SystemExit(f"n_atoms must be 4 k^3 (4, 32, 108, ...) or 8 k^3 (8, 64, 216, ...), got {n_atoms}")
    k = lattices[lattice]
    mass_g = n_atoms * 28.0855 / 6.02214076e23
    box = (mass_g / density_g_cm3) ** (1 / 3) * 1e8  # Å
    atoms = bulk("Si", lattice, a=box / k, cubic=True).repeat(k)
    atoms.calc = Potential("IP SW", param_str=SW_SI)
    rng = np.random.default_rng(seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=4000, rng=rng)
    for temperature, steps in ((4000, 4000), (2000, 2000)):
        Langevin(atoms, 1.0 * units.fs, temperature_K=temperature, friction=0.02 / units.fs, rng=rng).run(steps)
        print(f"{temperature} K: {steps} steps, T = {atoms.get_temperature():.0f} K", file=sys.stderr)
    atoms.wrap()
    return atoms


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    atoms = liquid_si(int(argv[0]))
    atoms.calc = None
    atoms.set_velocities(np.zeros((len(atoms), 3)))
    write(argv[1], atoms, format="extxyz", columns=["symbols", "positions"])
    print(f"wrote {argv[1]}: {len(atoms)} atoms, cubic box {atoms.cell[0, 0]:.3f} Å", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
