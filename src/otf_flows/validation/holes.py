"""Holes in a potential (seed 001, Sec. V C): random structures relaxed with the model.

``n`` random structures of the campaign's composition, atoms per cell and density (random positions
in a cubic box, every pair at least ``min_distance_A`` apart) are relaxed with the model (ASE's FIRE
on positions and cell, ``FrechetCellFilter``). A structure whose relaxed model energy per atom lies
below the campaign's lowest DFT energy per atom by more than a margin is flagged: either the model
found a genuinely lower structure (e.g. a crystal, where the campaign sampled a hot liquid) or it
has a hole. On request the flagged structures get a DFT single point with the campaign's reference,
which tells the two apart: a hole is a structure the model places more than the margin below its
own DFT energy.
"""

from __future__ import annotations

import logging

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from pydantic import Field

from otf_flows.errors import InputError
from otf_flows.schemas.documents import now
from otf_flows.validation.evaluate import model_calculator
from otf_flows.yaml_config import Strict

logger = logging.getLogger(__name__)

__all__ = ["HoleSearch", "campaign_scales", "random_structure", "relax", "verdict"]

DEFINITION = ("random structures (positions uniform in a cubic box at the campaign's mean density, every pair "
              "at least min_distance apart) relaxed with the model (FIRE on positions and cell, FrechetCellFilter); "
              "flagged when E_model/N < (lowest DFT E/N of the campaign's frames and the model's training frames) "
              "- margin; with a DFT single point, a hole when E_model/N < E_DFT/N - margin")


class HoleSearch(Strict):
    """Settings of a hole search."""

    n_structures: int = Field(20, ge=1, le=10000, description="Random structures to relax.")
    n_atoms: int | None = Field(None, ge=1, description="Atoms per structure (default: the campaign's cell).")
    margin_eV_per_atom: float = Field(
        0.1, description="Flag structures below the lowest DFT energy per atom minus this (eV/atom); a negative "
        "margin also flags those up to |margin| above it (e.g. to DFT-check the lowest structures whatever their "
        "energy).")
    min_distance_A: float | None = Field(
        None, gt=0, description="Smallest distance between atoms of a random structure (default: 0.85 x the "
        "shortest distance in the model's training frames).")
    fmax_eV_A: float = Field(0.05, gt=0, description="Relaxation stops when every force is below this (eV/Å).")
    max_steps: int = Field(300, ge=1, description="Relaxation steps at most.")
    relax_cell: bool = Field(True, description="Relax the cell too (FrechetCellFilter).")
    seed: int = Field(0, description="Seed of the random structures.")
    dft_check: bool = Field(False, description="DFT single points of the lowest flagged structures.")
    max_dft: int = Field(3, ge=1, description="DFT single points at most (the lowest flagged structures first).")


def _min_distance(atoms: Atoms) -> float:
    if len(atoms) < 2:
        return float("inf")
    d = atoms.get_all_distances(mic=True)
    return float(d[np.triu_indices(len(atoms), 1)].min())


def random_structure(numbers: list[int], volume_A3: float, min_distance_A: float, rng: np.random.Generator,
                     tries: int = 20000) -> Atoms:
    """Atoms of ``numbers`` at random positions in a cubic box of ``volume_A3``, each pair at least
    ``min_distance_A`` apart (periodic images included); InputError if they do not fit."""
    length = volume_A3 ** (1.0 / 3.0)
    cell = np.eye(3) * length
    positions: list[np.ndarray] = []
    for _ in range(tries):
        if len(positions) == len(numbers):
            break
        trial = rng.random(3) * length
        if positions:
            delta = np.asarray(positions) - trial
            delta -= length * np.round(delta / length)
            if np.min(np.linalg.norm(delta, axis=1)) < min_distance_A:
                continue
        positions.append(trial)
    if len(positions) < len(numbers):
        raise InputError(f"cannot place {len(numbers)} atoms {min_distance_A:.2f} Å apart in {volume_A3:.1f} Å³ "
                         "(lower --min-distance)")
    return Atoms(numbers=numbers, positions=np.asarray(positions), cell=cell, pbc=True)


class OneCall(Calculator):
    """A model calculator asked for energy, forces and stress in one call (a relaxation step wants all three;
    asked one at a time, a model such as quippy's recomputes for each)."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        wanted = ["energy", "forces", "stress"] if self.atoms.pbc.all() else ["energy", "forces"]
        self.inner.calculate(self.atoms.copy(), wanted, all_changes)
        self.results = {k: v for k, v in self.inner.results.items() if k in self.implemented_properties}
        self.results.setdefault("free_energy", self.results["energy"])


def relax(atoms: Atoms, calc, fmax: float, steps: int, relax_cell: bool) -> dict:
    """Relax ``atoms`` in place with FIRE (and ``FrechetCellFilter``); energy and volume per atom, steps."""
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE

    atoms.calc = OneCall(calc)
    target = FrechetCellFilter(atoms) if relax_cell else atoms
    opt = FIRE(target, logfile=None)
    converged = bool(opt.run(fmax=fmax, steps=steps))
    energy = float(atoms.get_potential_energy())
    return {"energy_per_atom": energy / len(atoms), "volume_per_atom": atoms.get_volume() / len(atoms),
            "min_distance_A": _min_distance(atoms), "steps": int(opt.nsteps), "converged": converged}


def verdict(model_e: float, dft_e: float, margin: float) -> str:
    """Whether a flagged structure is a hole, from its model and DFT energies per atom (eV/atom): the model
    places it more than ``|margin|`` below its DFT energy."""
    margin = abs(margin)
    if model_e < dft_e - margin:
        return f"hole: the model is {1000 * (dft_e - model_e):.1f} meV/atom below DFT"
    return f"not a hole: model - DFT = {1000 * (model_e - dft_e):+.1f} meV/atom (a hole: below -{1000 * margin:.0f})"


def campaign_scales(store, model) -> dict:
    """Composition, atoms per cell, mean volume per atom, shortest distance and lowest DFT energy per atom
    of the model's campaign frames and training frames."""
    frames = store.frames_of(model.campaign) if model.campaign else []
    frames += store.get_frames(list(model.training_frame_ids))
    if not frames:
        raise InputError(f"model {model.model_id!r} has no DFT frames to take the composition and energies from")
    first = frames[0]
    volumes, shortest, lowest = [], np.inf, np.inf
    for f in frames:
        atoms = Atoms(numbers=f.numbers, positions=f.positions, cell=f.cell, pbc=f.pbc)
        if atoms.pbc.all():
            volumes.append(atoms.get_volume() / len(atoms))
        shortest = min(shortest, _min_distance(atoms))
        lowest = min(lowest, f.energy / len(f.numbers))
    if not volumes:
        raise InputError(f"model {model.model_id!r}: no periodic DFT frames to take the density from")
    return {"numbers": list(first.numbers), "volume_per_atom": float(np.mean(volumes)), "shortest_A": float(shortest),
            "dft_lowest_energy_per_atom": float(lowest)}


def search(store, model_id: str, settings: HoleSearch, calculator=None) -> dict:
    """Relax the random structures with the model; the document without DFT single points.

    Each row keeps the relaxed structure (``numbers``, ``positions``, ``cell``) for a later DFT check.
    """
    from ase.data import atomic_masses
    from ase.units import _amu

    model = store.get_model(model_id)
    scales = campaign_scales(store, model)
    base = scales["numbers"]
    n_atoms = settings.n_atoms or len(base)
    counts = np.bincount(base)
    # the campaign's composition scaled to n_atoms (a one-element campaign: n_atoms of it)
    numbers = sorted(np.repeat(np.nonzero(counts)[0], np.round(counts[np.nonzero(counts)[0]] * n_atoms /
                                                                     len(base)).astype(int)).tolist())
    if not numbers:
        raise InputError(f"--atoms {n_atoms} is too few for the campaign's composition")
    volume = scales["volume_per_atom"] * len(numbers)
    min_distance = settings.min_distance_A or 0.85 * scales["shortest_A"]
    calc = calculator if calculator is not None else model_calculator(store, model_id)
    rng = np.random.default_rng(settings.seed)
    floor, margin = scales["dft_lowest_energy_per_atom"], settings.margin_eV_per_atom
    rows = []
    for i in range(settings.n_structures):
        atoms = random_structure(numbers, volume, min_distance, rng)
        result = relax(atoms, calc, settings.fmax_eV_A, settings.max_steps, settings.relax_cell)
        result.update(index=i, flagged=result["energy_per_atom"] < floor - margin, numbers=atoms.numbers.tolist(),
                      positions=atoms.positions.tolist(), cell=np.asarray(atoms.cell).tolist())
        rows.append(result)
        logger.info("random structure %d: %.4f eV/atom after %d steps", i, result["energy_per_atom"], result["steps"])
    mass = sum(atomic_masses[z] for z in numbers) * _amu * 1000.0  # g
    density = mass / (volume * 1e-24)
    lowest = min(r["energy_per_atom"] for r in rows)
    return {
        "validation_id": f"{model_id}:holes", "model_id": model_id, "campaign": model.campaign,
        "benchmark": "holes", "kind": "holes", "n_structures": len(rows), "n_atoms": len(numbers),
        "formula": Atoms(numbers=numbers).get_chemical_formula(mode="hill"), "density_g_cm3": density,
        "min_distance_A": min_distance, "relax": f"FIRE, fmax {settings.fmax_eV_A} eV/Å, at most "
        f"{settings.max_steps} steps, {'positions and cell' if settings.relax_cell else 'positions'}",
        "settings": settings.model_dump(mode="json"), "dft_lowest_energy_per_atom": floor,
        "margin_eV_per_atom": margin, "lowest_energy_per_atom": lowest,
        "lowest_minus_dft_floor_eV_per_atom": lowest - floor,
        "n_flagged": sum(r["flagged"] for r in rows), "n_converged": sum(r["converged"] for r in rows),
        "structures": rows, "definition": DEFINITION, "created_at": now().isoformat(), "schema_version": 1,
    }


def to_check(doc: dict, max_dft: int) -> list[int]:
    """Indices of the flagged structures to label with DFT: the lowest ``max_dft``."""
    flagged = sorted((r for r in doc["structures"] if r["flagged"]), key=lambda r: r["energy_per_atom"])
    return [r["index"] for r in flagged[:max_dft]]


def add_dft(doc: dict, energies: dict[int, float]) -> dict:
    """The document with DFT energies per atom of some structures (``{index: eV/atom}``) and their verdicts."""
    margin = doc["margin_eV_per_atom"]
    for row in doc["structures"]:
        if row["index"] in energies:
            row["dft_energy_per_atom"] = energies[row["index"]]
            row["verdict"] = verdict(row["energy_per_atom"], energies[row["index"]], margin)
    checked = [r for r in doc["structures"] if r.get("dft_energy_per_atom") is not None]
    doc["n_dft_checked"] = len(checked)
    doc["n_holes"] = sum(r["verdict"].startswith("hole") for r in checked)
    return doc
