"""Conversions between ASE ``Atoms``, reference labels and stored frame documents."""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from otf_flows.labels import ENERGY_KEY, FORCES_KEY, VIRIAL_KEY, Labels
from otf_flows.reference.registry import level_of_theory as registry_level_of_theory
from otf_flows.schemas.documents import FrameDoc, Provenance


def level_of_theory(reference: dict) -> str:
    """A short label of the physics of labels made with the stored ``reference`` settings.

    CP2K: functional, basis set, potential, cutoff (and k-points, UKS, smearing when set);
    VASP: GGA tag, ENCUT, POTCAR functional (and k-points, spin); an ASE calculator: its class
    name and keyword arguments. Frames with different labels should not train one model.
    """
    known = registry_level_of_theory(reference)
    if known is not None:
        return known
    if "file" in reference:
        return f"unknown (imported from {reference['file']})"
    return "unknown (no reference settings)"


def frame_level_of_theory(frame: FrameDoc) -> str:
    """The frame's level of theory (from its settings for frames stored without provenance)."""
    return frame.provenance.level_of_theory if frame.provenance is not None else level_of_theory(frame.reference)


def provenance_from_labels(labels: Labels, reference: dict) -> Provenance:
    """The provenance of labels computed by a reference engine (``labels.meta``) with ``reference`` settings."""
    meta = labels.meta
    code = meta.get("engine") or reference.get("engine") or "unknown"
    version = meta.get("code_version") or meta.get(f"{code}_version")
    if code == "ase" and version is None:
        import ase

        version = ase.__version__
    return Provenance(
        code=code, code_version=version, level_of_theory=level_of_theory(reference),
        calculator=reference.get("calculator") if code == "ase" else None,
        input_set=meta.get("input_set"), input_settings=meta.get("input_settings") or {},
        scf_steps=meta.get("scf_steps", meta.get("electronic_steps")), scf_converged=meta.get("scf_converged"),
        corrections=meta.get("custodian_corrections") or [], attempts=meta.get("attempts"),
        run_dir=meta.get("directory"), wall_seconds=labels.seconds or None,
        code_seconds=meta.get(f"{code}_seconds", meta.get("code_seconds")),
    )


def pymatgen_dict(atoms: Atoms) -> dict | None:
    """``atoms`` as a pymatgen ``Structure.as_dict()`` (any periodic direction) or ``Molecule.as_dict()``;
    None for a periodic frame without three independent cell vectors (pymatgen cannot hold it).

    Written directly (pymatgen's own ``as_dict`` costs milliseconds per frame); pymatgen's
    ``from_dict`` reads it back.
    """
    symbols = atoms.get_chemical_symbols()
    xyz = np.asarray(atoms.positions, dtype=float)

    def site(i: int) -> dict:
        return {"species": [{"element": symbols[i], "occu": 1}], "xyz": xyz[i].tolist(), "label": symbols[i],
                "properties": {}}

    if not atoms.pbc.any():
        return {"@module": "pymatgen.core.structure", "@class": "Molecule", "charge": 0.0, "spin_multiplicity": None,
                "sites": [{**site(i), "name": symbols[i]} for i in range(len(atoms))], "properties": {}}
    cell = np.asarray(atoms.cell[:], dtype=float)
    if abs(np.linalg.det(cell)) < 1e-9:
        return None
    abc = np.linalg.solve(cell.T, xyz.T).T
    return {
        "@module": "pymatgen.core.structure", "@class": "Structure", "charge": 0,
        "lattice": {"matrix": cell.tolist(), "pbc": [bool(p) for p in atoms.pbc]}, "properties": {},
        "sites": [{**site(i), "abc": abc[i].tolist()} for i in range(len(atoms))],
    }


def frame_from_labels(
    atoms: Atoms,
    labels: Labels,
    *,
    source: str,
    reference_hash: str,
    reference: dict,
    campaign: str | None = None,
    md_step: int | None = None,
    config_type: str = "otf",
    provenance: Provenance | None = None,
) -> FrameDoc:
    """A frame document for ``atoms`` labelled by ``labels``, with its provenance (by default from
    ``labels.meta`` and ``reference``) and its structure as a pymatgen dict."""
    virial = None if labels.virial is None else np.asarray(labels.virial, dtype=float).tolist()
    frame_id = FrameDoc.content_hash(
        atoms.numbers, atoms.positions, atoms.cell[:], atoms.pbc, labels.energy, labels.forces, reference_hash
    )
    return FrameDoc(
        frame_id=frame_id,
        campaign=campaign,
        source=source,
        md_step=md_step,
        config_type=config_type,
        numbers=atoms.numbers.tolist(),
        positions=atoms.positions.tolist(),
        cell=np.array(atoms.cell).tolist(),
        pbc=atoms.pbc.tolist(),
        energy=float(labels.energy),
        forces=np.asarray(labels.forces, dtype=float).tolist(),
        virial=virial,
        reference_hash=reference_hash,
        reference=reference,
        provenance=provenance or provenance_from_labels(labels, reference),
        structure=pymatgen_dict(atoms),
    )


def frame_to_atoms(frame: FrameDoc, label_keys: bool = True) -> Atoms:
    """``Atoms`` with the frame's labels in ``REF_*`` keys (``label_keys``) or as a calculator."""
    atoms = Atoms(numbers=frame.numbers, positions=frame.positions, cell=frame.cell, pbc=frame.pbc)
    atoms.info["config_type"] = frame.config_type
    atoms.info["frame_id"] = frame.frame_id
    if frame.md_step is not None:
        atoms.info["md_step"] = frame.md_step
    if label_keys:
        atoms.info[ENERGY_KEY] = frame.energy
        atoms.arrays[FORCES_KEY] = np.array(frame.forces)
        if frame.virial is not None:
            # 9 numbers, not a 3x3 array: extxyz would write the latter as JSON, which gap_fit ignores
            atoms.info[VIRIAL_KEY] = np.asarray(frame.virial, dtype=float).reshape(9)
    else:
        stress = None
        if frame.virial is not None:
            from ase.stress import full_3x3_to_voigt_6_stress

            stress = full_3x3_to_voigt_6_stress(-np.array(frame.virial) / atoms.get_volume())
        atoms.calc = SinglePointCalculator(atoms, energy=frame.energy, forces=np.array(frame.forces), stress=stress)
    return atoms
