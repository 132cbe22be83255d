"""Conversions between ASE ``Atoms``, reference labels and stored frame documents."""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from otf_flows.backends.gap import ENERGY_KEY, FORCES_KEY, VIRIAL_KEY
from otf_flows.backends.reference import Labels
from otf_flows.schemas.documents import FrameDoc


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
) -> FrameDoc:
    """A frame document for ``atoms`` labelled by ``labels``."""
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
