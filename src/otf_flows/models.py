"""Models outside a campaign: fit and register (``otf fit``), export for stand-alone MD."""

from __future__ import annotations

import hashlib
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

from otf_flows.backends.gap import PRESETS, fit_gap
from otf_flows.errors import InputError
from otf_flows.frames import frame_to_atoms
from otf_flows.jobs.fit import register_fit
from otf_flows.schemas.documents import FrameDoc, ModelDoc


def fit_and_register(store, frames: list[FrameDoc], refit, out_dir: Path, preset: str = "default",
                     model_id: str | None = None, num_threads: int | None = None) -> ModelDoc:
    """Fit a GAP on ``frames`` in ``out_dir`` and register it (no campaign, no parent)."""
    if not frames:
        raise InputError("no training frames to fit")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise InputError(f"--out: {out_dir} exists and is not empty")
    descriptor = refit.descriptor_str or PRESETS[preset]
    ids = sorted(f.frame_id for f in frames)
    model_id = model_id or "fit-" + hashlib.sha256(("".join(ids) + descriptor).encode()).hexdigest()[:10]
    if store.find_model({"model_id": model_id}) is not None:
        raise InputError(f"--name: model {model_id!r} already exists in {store.describe()}")
    for frame in frames:
        store.add_frame(frame)
    work = out_dir / "work"
    result = fit_gap([frame_to_atoms(f) for f in frames], work, refit, descriptor, num_threads)
    for path in result.model_dir.iterdir():
        shutil.copy2(path, out_dir / path.name)
    return register_fit(
        store, result, frames, model_id=model_id, version=1, campaign=None, parent=None, trigger=None,
        trigger_step=None,
        settings={"descriptor_str": descriptor, **refit.model_dump(mode="json", exclude={"previous_data"})},
    )


def gap_label(xml: Path) -> str:
    """The XML label of a GAP (``Potential xml_label=...`` in QUIP/LAMMPS)."""
    root = ET.parse(xml).getroot()
    if root.tag.startswith("GAP_"):
        return root.tag
    for child in root.iter():
        if child.tag == "GAP_params" and "label" in child.attrib:
            return child.attrib["label"]
    raise InputError(f"{xml}: no GAP label found")


def gap_species(xml: Path) -> list[int]:
    """Atomic numbers a GAP is fitted for, read from its descriptors (``Z=``, ``Z1=``, ``species_Z={..}``
    as gap_fit writes them), sorted; 0 (gap_fit's "any element") is left out."""
    numbers: set[int] = set()
    for node in ET.parse(xml).getroot().iter("descriptor"):
        for _, value in re.findall(r"(?<![\w])(Z\d?|species_Z)\s*=\s*(\{[^}]*\}|\d+)", node.text or ""):
            numbers.update(int(z) for z in value.strip("{}").split())
    numbers.discard(0)
    if not numbers:
        raise InputError(f"{xml}: no species found in the GAP descriptors")
    return sorted(numbers)


LAMMPS_DATA = "final_state.data"
"""File name of the campaign's final state in an exported model directory."""


def export_model(store, model_id: str, dest: Path) -> list[Path]:
    """Write the model's files, a LAMMPS ``pair_style quip`` snippet, an ASE example and, for a
    campaign's model, the campaign's final state as a LAMMPS data file (:data:`LAMMPS_DATA`,
    ``units metal``, atom types in the order of the model's atomic numbers) into ``dest``."""
    from ase.data import chemical_symbols
    from ase.io import write

    from otf_flows.backends.gap import unpack_model
    from otf_flows.jobs.reference import state_from_doc

    model = store.get_model(model_id)
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise InputError(f"DIR: {dest} exists and is not empty")
    tmp = dest.parent / f".{dest.name}.unpack"
    shutil.rmtree(tmp, ignore_errors=True)
    xml = unpack_model(store.get_blob(model.artifact), tmp)
    dest.mkdir(parents=True, exist_ok=True)
    for path in tmp.iterdir():
        shutil.move(str(path), dest / path.name)
    shutil.rmtree(tmp, ignore_errors=True)
    xml = dest / xml.name
    numbers = gap_species(xml)
    symbols = [chemical_symbols[z] for z in numbers]
    label = gap_label(xml)
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
    (dest / "lammps.in").write_text(
        f"# LAMMPS snippet for GAP model {model_id} (needs LAMMPS built with the ML-QUIP package)\n"
        f"# atom types must be numbered in the order of the atomic numbers below ({' '.join(symbols)})\n"
        f"{data_lines}"
        "pair_style quip\n"
        f'pair_coeff * * gap.xml "Potential xml_label={label}" {" ".join(map(str, numbers))}\n'
    )
    (dest / "ase_example.py").write_text(
        f'"""Run MD with GAP model {model_id} in ASE (pip install quippy-ase)."""\n'
        "from pathlib import Path\n\n"
        "from ase.io import read\n"
        "from ase.md.langevin import Langevin\n"
        "from ase import units\n"
        "from quippy.potential import Potential\n\n"
        'calc = Potential(param_filename=str(Path(__file__).with_name("gap.xml")))\n'
        'atoms = read("start.xyz")  # your structure\n'
        "atoms.calc = calc\n"
        "dyn = Langevin(atoms, timestep=1.0 * units.fs, temperature_K=300, friction=0.01 / units.fs)\n"
        "dyn.run(1000)\n"
        'print("potential energy (eV):", atoms.get_potential_energy())\n'
    )
    return sorted(dest.iterdir())
