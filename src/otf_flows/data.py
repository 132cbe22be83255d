"""Reading labelled extxyz files from any code, and importing them into the store."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from ase import Atoms

from otf_flows.campaign import store_reference
from otf_flows.errors import InputError, NotFoundError
from otf_flows.frames import frame_from_labels
from otf_flows.labels import Labels
from otf_flows.schemas.documents import FrameDoc, Provenance
from otf_flows.structures import validate_atoms

logger = logging.getLogger(__name__)

IMPORT_HASH = "imported"
LEVEL_OF_THEORY_KEY = "level_of_theory"
"""extxyz info key with the level of theory of an imported frame (e.g. the label ``otf data frames`` shows
for a campaign's own frames)."""


def _get(atoms: Atoms, key: str, kind: str):
    if kind == "info":
        if key in atoms.info:
            return atoms.info[key]
        if key == "energy" and atoms.calc is not None and "energy" in atoms.calc.results:
            return atoms.calc.results["energy"]
        return None
    if key in atoms.arrays:
        return atoms.arrays[key]
    if key == "forces" and atoms.calc is not None and "forces" in atoms.calc.results:
        return atoms.calc.results["forces"]
    return None


def read_labelled_xyz(
    path: str | Path,
    energy_key: str = "REF_energy",
    forces_key: str = "REF_forces",
    virial_key: str = "REF_virial",
    config_type_key: str = "config_type",
) -> list[tuple[Atoms, Labels, str]]:
    """Frames and their reference labels from an extxyz file.

    Raises :class:`InputError` (one line, naming the frame and key) for a missing or
    malformed label, NaN values or mismatched shapes.
    """
    from ase.io import read

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file does not exist")
    try:
        frames = read(path, index=":", format="extxyz")
    except Exception as err:  # noqa: BLE001 - ASE raises many kinds
        raise InputError(f"{path}: not a readable extxyz file: {str(err).splitlines()[0][:200]}") from None
    if not frames:
        raise InputError(f"{path}: holds no frames")
    out = []
    for i, atoms in enumerate(frames):
        where = f"{path.name} frame {i}"
        energy = _get(atoms, energy_key, "info")
        if energy is None:
            raise InputError(f"{where}: no energy under key {energy_key!r} (use --energy-key)")
        forces = _get(atoms, forces_key, "arrays")
        if forces is None:
            raise InputError(f"{where}: no forces under key {forces_key!r} (use --forces-key)")
        try:
            energy = float(energy)
            forces = np.asarray(forces, dtype=float)
        except (TypeError, ValueError):
            raise InputError(f"{where}: {energy_key!r} / {forces_key!r} are not numbers") from None
        if forces.shape != (len(atoms), 3):
            raise InputError(f"{where}: {forces_key!r} has shape {forces.shape}, expected ({len(atoms)}, 3)")
        virial = atoms.info.get(virial_key)
        if virial is not None:
            virial = np.asarray(virial, dtype=float)
            if virial.size == 9:
                virial = virial.reshape(3, 3)
            elif virial.size == 6:
                xx, yy, zz, yz, xz, xy = virial
                virial = np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
            else:
                raise InputError(f"{where}: {virial_key!r} has {virial.size} values, expected 9 or 6")
        values = [energy, forces] + ([virial] if virial is not None else [])
        if not all(np.all(np.isfinite(v)) for v in values) or not np.all(np.isfinite(atoms.positions)):
            raise InputError(f"{where}: labels or positions contain NaN or infinity")

        validate_atoms(atoms, where)
        config_type = str(atoms.info.get(config_type_key, "default"))
        clean = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        meta = {"index": i, "level_of_theory": atoms.info.get(LEVEL_OF_THEORY_KEY)}
        out.append((clean, Labels(energy, forces, virial, meta=meta), config_type))
    return out


def frames_from_xyz(path, campaign: str | None = None, source: str = "import", **keys) -> list[FrameDoc]:
    """Frame documents for every frame of a labelled extxyz file.

    Each records the file and the frame's index in it; its level of theory is the frame's
    ``level_of_theory`` info key (:data:`LEVEL_OF_THEORY_KEY`), else "unknown (imported from FILE)".
    """
    docs = []
    path = Path(path)
    for atoms, labels, config_type in read_labelled_xyz(path, **keys):
        level = labels.meta["level_of_theory"]
        provenance = Provenance(
            code="file", level_of_theory=str(level) if level else f"unknown (imported from {path.name})",
            source_file=str(path.resolve()), source_index=labels.meta["index"],
        )
        docs.append(
            frame_from_labels(
                atoms, labels, source=source, reference_hash=IMPORT_HASH,
                reference={"file": str(path.name)}, campaign=campaign, config_type=config_type,
                provenance=provenance,
            )
        )
    return docs


def import_previous_data(store, refit, initial_model: str | None, campaign: str) -> int:
    """Add ``refit.previous_data`` (files or ``campaign:``/``model:`` references) to the training set.

    ``initial_model`` (``model.initial_model``) counts as ``model:ID``: the campaign goes on from that
    model's training frames, so its refits keep what the model knew. Idempotent; returns the number
    of distinct frames.
    """
    items = list(refit.previous_data)
    initial = initial_model
    if initial is not None and f"model:{initial}" not in items:
        items.append(f"model:{initial}")
    frame_ids: set[str] = set()
    for item in items:
        kind, name = store_reference(item) or (None, None)
        if kind == "campaign" and not Path(item).exists():
            frames = store.training_frames(name)
            if not frames:
                raise NotFoundError(f"refit.previous_data: campaign {name!r} has no training frames in the store")
        elif kind == "model" and not Path(item).exists():
            frames = store.get_frames(store.get_model(name).training_frame_ids)
        else:
            frames = frames_from_xyz(
                item, energy_key=refit.energy_key, forces_key=refit.forces_key, virial_key=refit.virial_key
            )
        for frame in frames:
            frame_id, _ = store.add_frame(frame, training_in=campaign)
            frame_ids.add(frame_id)
    return len(frame_ids)
