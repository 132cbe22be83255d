"""Models outside a campaign: fit and register (``otf fit``), export for stand-alone MD."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from otf_flows.errors import InputError
from otf_flows.frames import frame_to_atoms
from otf_flows.jobs.fit import register_fit
from otf_flows.md.state import state_from_doc
from otf_flows.ml.gap.settings import GapModel
from otf_flows.ml.registry import get_backend
from otf_flows.schemas.documents import FrameDoc, ModelDoc


def fit_and_register(store, frames: list[FrameDoc], refit, out_dir: Path, model=None,
                     model_id: str | None = None, num_threads: int | None = None) -> ModelDoc:
    """Fit a model of ``model``'s backend (default: a GAP of the default preset) on ``frames`` in
    ``out_dir`` and register it (no campaign, no parent)."""
    model = model if model is not None else GapModel()
    if not frames:
        raise InputError("no training frames to fit")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise InputError(f"--out: {out_dir} exists and is not empty")
    backend = get_backend(model.backend)
    ids = sorted(f.frame_id for f in frames)
    key = json.dumps([model.model_dump(mode="json", exclude={"num_threads"}),
                      refit.model_dump(mode="json", exclude={"previous_data"})], sort_keys=True)
    model_id = model_id or "fit-" + hashlib.sha256(("".join(ids) + key).encode()).hexdigest()[:10]
    if store.find_model({"model_id": model_id}) is not None:
        raise InputError(f"--name: model {model_id!r} already exists in {store.describe()}")
    for frame in frames:
        store.add_frame(frame)
    work = out_dir / "work"
    result = backend.fit([frame_to_atoms(f) for f in frames], work, model, refit,
                         num_threads=num_threads or model.num_threads)
    for path in result.model_dir.iterdir():
        shutil.copy2(path, out_dir / path.name)
    return register_fit(
        store, result, frames, model_id=model_id, version=1, campaign=None, parent=None, trigger=None,
        trigger_step=None, settings=result.settings, backend=backend.name,
    )


LAMMPS_DATA = "final_state.data"
"""File name of the campaign's final state in an exported model directory."""


def export_model(store, model_id: str, dest: Path) -> list[Path]:
    """Write the model's files, a LAMMPS snippet (``lammps.in``), an ASE example and, for a
    campaign's model, the campaign's final state as a LAMMPS data file (:data:`LAMMPS_DATA`,
    ``units metal``, atom types in the order of the model's atomic numbers) into ``dest``."""
    from ase.data import chemical_symbols
    from ase.io import write

    model = store.get_model(model_id)
    backend = get_backend(model.backend)
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise InputError(f"DIR: {dest} exists and is not empty")
    tmp = dest.parent / f".{dest.name}.unpack"
    shutil.rmtree(tmp, ignore_errors=True)
    backend.unpack(store.get_blob(model.artifact), tmp)
    dest.mkdir(parents=True, exist_ok=True)
    for path in tmp.iterdir():
        shutil.move(str(path), dest / path.name)
    shutil.rmtree(tmp, ignore_errors=True)
    numbers = backend.species(dest)
    symbols = [chemical_symbols[z] for z in numbers]
    campaign = store.get_campaign(model.campaign) if model.campaign else None
    data_lines = ""
    if campaign is not None and campaign.state_id:
        atoms = state_from_doc(store.get_state(campaign.state_id)).to_atoms()
        if set(atoms.numbers) <= set(numbers):
            write(dest / LAMMPS_DATA, atoms, format="lammps-data", units="metal", specorder=symbols, masses=True,
                  velocities=True)
            data_lines = (f"# {LAMMPS_DATA}: final state of campaign {campaign.name} (step {campaign.step}), "
                          f"atom types {' '.join(symbols)}:\n# units metal\n# atom_style atomic\n"
                          f"# read_data {LAMMPS_DATA}\n")
    backend.export(dest, dest, model_id, numbers, data_lines)
    return sorted(dest.iterdir())
