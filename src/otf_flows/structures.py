"""The campaign's starting structure: from a file, a builder, or given as atoms (ASE or pymatgen)."""

from __future__ import annotations

import numpy as np
from ase import Atoms

from otf_flows.campaign import StructureAtoms, StructureBuilder, StructureFile
from otf_flows.errors import InputError


def structure_spec(structure) -> StructureAtoms:
    """The ``structure`` block of ASE ``Atoms`` or a pymatgen ``Structure`` (species, positions, cell, pbc).

    Raises
    ------
    InputError
        For anything else (a pymatgen ``Molecule`` has no cell: use ASE ``Atoms`` with a box).
    """
    if not isinstance(structure, Atoms):
        try:
            from pymatgen.core import Structure
        except ImportError:  # pragma: no cover - pymatgen comes with atomate2
            Structure = None
        if Structure is None or not isinstance(structure, Structure):
            raise InputError(f"structure: expected ASE Atoms or a pymatgen Structure, got {type(structure).__name__}")
        from pymatgen.io.ase import AseAtomsAdaptor

        source = "pymatgen Structure"
        structure = AseAtomsAdaptor.get_atoms(structure)
    else:
        source = "ASE Atoms"
    return StructureAtoms(
        numbers=structure.numbers.tolist(), positions=structure.positions.tolist(),
        cell=structure.cell.array.tolist(), pbc=structure.pbc.tolist(), source=source,
    )


def build_structure(spec: StructureFile | StructureBuilder | StructureAtoms) -> Atoms:
    """Read or build the starting structure; bad files raise :class:`InputError` (one line)."""
    if isinstance(spec, StructureAtoms):
        atoms = Atoms(numbers=spec.numbers, positions=spec.positions, cell=spec.cell, pbc=spec.pbc)
        validate_atoms(atoms, "structure")
        return atoms
    if isinstance(spec, StructureFile):
        from ase.io import read

        try:
            atoms = read(spec.file, index=spec.index, format=spec.format)
        except Exception as err:  # noqa: BLE001 - ASE raises many kinds
            raise InputError(f"structure.file: cannot read {spec.file!r}: {str(err).splitlines()[0][:200]}") from None
        if not isinstance(atoms, Atoms) or len(atoms) == 0:
            raise InputError(f"structure.file: {spec.file!r} holds no atoms")
    else:
        from ase.build import bulk

        try:
            atoms = bulk(spec.element, spec.crystalstructure, a=spec.a, cubic=spec.cubic)
        except Exception as err:  # noqa: BLE001
            raise InputError(f"structure: ase.build.bulk({spec.element!r}) failed: {err}") from None
    atoms = atoms.repeat(spec.repeat)
    if isinstance(spec, StructureBuilder) and spec.rattle_A > 0:
        atoms.rattle(spec.rattle_A, seed=spec.seed)
    validate_atoms(atoms, "structure")
    atoms.calc = None
    return atoms


def validate_atoms(atoms: Atoms, where: str, min_distance_A: float = 0.5) -> None:
    """Reject NaN positions, zero-volume periodic cells and overlapping atoms."""
    if not np.all(np.isfinite(atoms.positions)):
        raise InputError(f"{where}: positions contain NaN or infinity")
    if atoms.pbc.any() and abs(atoms.cell.volume) < 1e-6 and atoms.pbc.all():
        raise InputError(f"{where}: periodic cell has zero volume")
    if len(atoms) > 1:
        from ase.neighborlist import neighbor_list

        if atoms.pbc.all() or not atoms.pbc.any():
            i, _, d = neighbor_list("ijd", atoms, min_distance_A)
            if len(i):
                raise InputError(
                    f"{where}: atoms {i[0]} and another are {d.min():.3f} Å apart (< {min_distance_A} Å allowed)"
                )
