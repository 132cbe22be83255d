"""Structural analysis of trajectories: g(r), bond angles, MD stability, a tolerant xyz reader.

Neighbours come from a periodic-image cell list on scipy's ``cKDTree``: every atom is
wrapped into the cell and the images within ``cutoff`` of the cell are added, so any cell
shape and any cutoff (also larger than the cell) work, and a 10 000-atom frame with an 8 Å
cutoff takes about a second.

Conventions (they reproduce published data exactly, see ``tests/test_analysis.py``):

- :func:`rdf` counts ordered pairs (each pair twice) and divides by ``N ρ V_shell`` with
  ``ρ = N / V`` and the exact shell volume ``4π/3 (r_hi³ - r_lo³)``; frames are summed before
  normalising. For ``N`` atoms g(r) tends to ``(N - 1) / N`` at large r.
- :func:`bond_angle_distribution` counts every angle j-i-k (j < k neighbours of i within
  ``cutoff``) and returns a probability density in 1/degree (it integrates to 1).
"""

from __future__ import annotations

import io
import logging
import re
import warnings
from dataclasses import dataclass
from itertools import product
from pathlib import Path

import numpy as np
from ase import Atoms

from otf_flows.errors import InputError

logger = logging.getLogger(__name__)

__all__ = [
    "MalformedXyzWarning",
    "StabilityResult",
    "bond_angle_distribution",
    "coordination_numbers",
    "min_interatomic_distance",
    "neighbour_vectors",
    "nve_stability",
    "rdf",
    "read_xyz_lenient",
    "stability_from_series",
]


# --------------------------------------------------------------------------- neighbours
def neighbour_vectors(atoms: Atoms, cutoff: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ordered neighbour pairs closer than ``cutoff``, periodic images included.

    Parameters
    ----------
    atoms
        One structure; periodic along the directions where ``atoms.pbc`` is set.
    cutoff
        Neighbour distance (Å).

    Returns
    -------
    i, j, vectors
        Centre indices, neighbour indices and ``r_j(image) - r_i`` (Å), shape (M, 3). Every
        pair appears in both directions; an atom is its own neighbour only through a
        periodic image (cells smaller than ``cutoff``).
    """
    from scipy.spatial import cKDTree

    if cutoff <= 0:
        raise ValueError(f"cutoff must be > 0 Å, got {cutoff}")
    n = len(atoms)
    empty = (np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.intp), np.zeros((0, 3)))
    if n == 0:
        return empty
    pbc = np.asarray(atoms.pbc, dtype=bool)
    if pbc.any():
        cell = np.array(atoms.cell.complete())
        volume = abs(np.linalg.det(cell))
        if volume < 1e-9:
            raise ValueError("periodic structure has a cell of zero volume")
        frac = np.linalg.solve(cell.T, atoms.positions.T).T
        frac[:, pbc] %= 1.0
        # distance between opposite faces of the cell, per lattice direction
        spacing = volume / np.linalg.norm(np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1)
        reach = np.where(pbc, cutoff / spacing, 0.0)
        ranges = [range(-int(np.ceil(r)), int(np.ceil(r)) + 1) for r in reach]
        shifts = np.array(list(product(*ranges)), dtype=float)
        img_frac = (frac[None, :, :] + shifts[:, None, :]).reshape(-1, 3)
        img_atom = np.tile(np.arange(n), len(shifts))
        img_shift = np.repeat(np.arange(len(shifts)), n)
        keep = np.all((img_frac >= -reach) & (img_frac <= 1.0 + reach) | ~pbc, axis=1)
        img_frac, img_atom, img_shift = img_frac[keep], img_atom[keep], img_shift[keep]
        positions = frac @ cell
        img_pos = img_frac @ cell
        zero_shift = int(np.flatnonzero(np.all(shifts == 0, axis=1))[0])
    else:
        positions = img_pos = np.asarray(atoms.positions, dtype=float)
        img_atom = np.arange(n)
        img_shift = np.zeros(n, dtype=np.intp)
        zero_shift = 0
    pairs = cKDTree(positions).sparse_distance_matrix(cKDTree(img_pos), cutoff, output_type="ndarray")
    i = pairs["i"].astype(np.intp)
    k = pairs["j"].astype(np.intp)
    not_self = ~((img_atom[k] == i) & (img_shift[k] == zero_shift))
    i, k = i[not_self], k[not_self]
    vectors = img_pos[k] - positions[i]
    inside = np.einsum("ij,ij->i", vectors, vectors) < cutoff * cutoff
    return i[inside], img_atom[k][inside], vectors[inside]


def _as_frames(frames) -> list[Atoms]:
    if isinstance(frames, Atoms):
        return [frames]
    frames = list(frames)
    if not frames:
        raise ValueError("no frames given")
    return frames


def _n_bins(upper: float, width: float, what: str) -> int:
    if width <= 0 or upper <= 0:
        raise ValueError(f"{what}: range and bin width must be > 0, got {upper} and {width}")
    n = round(upper / width)
    if n < 1 or abs(n * width - upper) > 1e-9 * upper:
        raise ValueError(f"{what}: range {upper} is not a whole number of bins of width {width}")
    return n


# --------------------------------------------------------------------------- g(r)
def rdf(frames, r_max: float, dr: float) -> tuple[np.ndarray, np.ndarray]:
    """Radial distribution function g(r) averaged over frames.

    Parameters
    ----------
    frames
        ``Atoms`` or a list of them, periodic in all three directions.
    r_max
        Largest distance (Å); a whole number of bins.
    dr
        Bin width (Å); bins are ``[k dr, (k+1) dr)``.

    Returns
    -------
    r, g
        Bin centres (Å) and g(r) (dimensionless), ``Σ_frames counts / Σ_frames (N²/V) /
        (4π/3 (r_hi³ - r_lo³))`` with ordered pair counts.
    """
    n_bins = _n_bins(r_max, dr, "rdf")
    edges = np.arange(n_bins + 1) * dr
    counts = np.zeros(n_bins)
    density_sum = 0.0
    for atoms in _as_frames(frames):
        if not np.all(atoms.pbc):
            raise ValueError("rdf needs structures periodic in all three directions (pbc=True)")
        _, _, vectors = neighbour_vectors(atoms, r_max)
        counts += np.histogram(np.linalg.norm(vectors, axis=1), edges)[0]
        density_sum += len(atoms) ** 2 / atoms.get_volume()
    shell = 4.0 / 3.0 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    return 0.5 * (edges[1:] + edges[:-1]), counts / (density_sum * shell)


# --------------------------------------------------------------------------- angles
def _angles_deg(atoms: Atoms, cutoff: float) -> np.ndarray:
    """Every bond angle j-i-k (degrees) with j, k neighbours of i within ``cutoff``."""
    i, _, vectors = neighbour_vectors(atoms, cutoff)
    order = np.argsort(i, kind="stable")
    i, unit = i[order], vectors[order] / np.linalg.norm(vectors[order], axis=1, keepdims=True)
    count = np.bincount(i, minlength=len(atoms))
    start = np.concatenate([[0], np.cumsum(count)[:-1]])
    out = []
    for c in np.unique(count[count >= 2]):  # vectorised over all centres with c neighbours
        rows = start[count == c][:, None] + np.arange(c)[None, :]
        a, b = np.triu_indices(c, 1)
        cos = np.einsum("mpx,mpx->mp", unit[rows][:, a], unit[rows][:, b])
        out.append(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))).ravel())
    return np.concatenate(out) if out else np.zeros(0)


def bond_angle_distribution(frames, cutoff: float, bin_deg: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Distribution of bond angles j-i-k over all atoms i and neighbour pairs j < k.

    Parameters
    ----------
    frames
        ``Atoms`` or a list of them.
    cutoff
        Bond length cutoff (Å).
    bin_deg
        Bin width (degrees); 180 must be a whole number of bins ``[k w, (k+1) w)``.

    Returns
    -------
    theta, density
        Bin centres (degrees) and probability density (1/degree, integrates to 1; zeros if
        no atom has two neighbours).
    """
    n_bins = _n_bins(180.0, bin_deg, "bond_angle_distribution")
    edges = np.arange(n_bins + 1) * bin_deg
    counts = np.zeros(n_bins)
    for atoms in _as_frames(frames):
        counts += np.histogram(_angles_deg(atoms, cutoff), edges)[0]
    total = counts.sum()
    density = counts / (total * bin_deg) if total else counts
    return 0.5 * (edges[1:] + edges[:-1]), density


def coordination_numbers(atoms: Atoms, cutoff: float) -> np.ndarray:
    """Number of neighbours of each atom within ``cutoff`` (Å)."""
    i, _, _ = neighbour_vectors(atoms, cutoff)
    return np.bincount(i, minlength=len(atoms))


def min_interatomic_distance(atoms: Atoms, search_radius: float = 4.0) -> float:
    """Shortest interatomic distance (Å), images included; ``inf`` if none within ``search_radius``."""
    _, _, vectors = neighbour_vectors(atoms, search_radius)
    return float(np.sqrt(np.min(np.einsum("ij,ij->i", vectors, vectors)))) if len(vectors) else float("inf")


# --------------------------------------------------------------------------- MD stability
@dataclass(frozen=True)
class StabilityResult:
    """Outcome of an MD stability test.

    Attributes
    ----------
    stable
        No failure below.
    reason
        Why it is unstable (None if stable).
    n_steps
        MD steps evaluated.
    min_distance
        Shortest interatomic distance seen (Å).
    energy_drift_per_atom
        |slope| × duration of a least-squares line through the total (kinetic + potential)
        energy, per atom (eV/atom); None if fewer than two energies.
    max_energy_deviation_per_atom
        max |E(t) - E(0)| / N (eV/atom); None if no energies.
    min_distance_threshold, max_drift_per_atom
        The bounds tested (Å, eV/atom).
    """

    stable: bool
    reason: str | None
    n_steps: int
    min_distance: float
    energy_drift_per_atom: float | None
    max_energy_deviation_per_atom: float | None
    min_distance_threshold: float
    max_drift_per_atom: float | None


def stability_from_series(
    min_distances,
    total_energies,
    n_atoms: int,
    min_distance_threshold: float = 0.5,
    max_drift_per_atom: float | None = 1e-3,
) -> StabilityResult:
    """Judge MD stability from per-step shortest distances (Å) and total energies (eV).

    Unstable when any distance is below ``min_distance_threshold`` or when the energy drift
    per atom over the run exceeds ``max_drift_per_atom`` (None: drift not tested; NVE only —
    a thermostat does not conserve energy).
    """
    dmin = np.asarray(min_distances, dtype=float)
    energy = np.asarray(total_energies, dtype=float)
    if n_atoms < 1:
        raise ValueError(f"n_atoms must be >= 1, got {n_atoms}")
    n_steps = max(len(dmin), len(energy)) - 1
    drift = deviation = None
    if len(energy) >= 1:
        deviation = float(np.max(np.abs(energy - energy[0]))) / n_atoms
    if len(energy) >= 2:
        steps = np.arange(len(energy))
        slope = np.polyfit(steps, energy, 1)[0]
        drift = abs(float(slope)) * (len(energy) - 1) / n_atoms
    shortest = float(np.min(dmin)) if len(dmin) else float("inf")
    reason = None
    if shortest < min_distance_threshold:
        reason = f"atoms {shortest:.3f} Å apart (threshold {min_distance_threshold} Å)"
    elif not np.all(np.isfinite(energy)):
        reason = "energy is not finite"
    elif max_drift_per_atom is not None and drift is not None and drift > max_drift_per_atom:
        reason = f"energy drift {drift:.3g} eV/atom over {n_steps} steps (bound {max_drift_per_atom} eV/atom)"
    return StabilityResult(reason is None, reason, n_steps, shortest, drift, deviation, min_distance_threshold,
                           max_drift_per_atom)


def nve_stability(
    atoms: Atoms,
    calculator,
    n_steps: int = 500,
    timestep_fs: float = 1.0,
    temperature_K: float = 300.0,
    min_distance_threshold: float = 0.5,
    max_drift_per_atom: float | None = 1e-3,
    seed: int = 0,
) -> StabilityResult:
    """Run ``n_steps`` of velocity-Verlet NVE with ``calculator`` and test stability.

    Velocities are Maxwell-Boltzmann at ``temperature_K`` (``seed``), zero total momentum.
    The run stops at the first step whose shortest distance is below the threshold.
    """
    from ase import units
    from ase.md.velocitydistribution import Stationary
    from ase.md.verlet import VelocityVerlet

    try:  # ASE >= 3.29
        from ase.md.velocitydistribution import thermalize_momenta
    except ImportError:  # pragma: no cover - older ASE
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as thermalize_momenta

    atoms = atoms.copy()
    atoms.calc = calculator
    thermalize_momenta(atoms, temperature_K=temperature_K, rng=np.random.default_rng(seed))
    Stationary(atoms)
    dyn = VelocityVerlet(atoms, timestep=timestep_fs * units.fs)
    radius = max(4.0, 2 * min_distance_threshold)
    dmin = [min_interatomic_distance(atoms, radius)]
    energy = [atoms.get_potential_energy() + atoms.get_kinetic_energy()]
    for _ in range(n_steps):
        dyn.run(1)
        dmin.append(min_interatomic_distance(atoms, radius))
        energy.append(atoms.get_potential_energy() + atoms.get_kinetic_energy())
        if dmin[-1] < min_distance_threshold or not np.isfinite(energy[-1]):
            break
    return stability_from_series(dmin, energy, len(atoms), min_distance_threshold, max_drift_per_atom)


# --------------------------------------------------------------------------- xyz
class MalformedXyzWarning(UserWarning):
    """An extxyz file was read only after repairing its header."""


_PROPERTIES = re.compile(r"""Properties=(["']?)([^\s"']+)\1""", re.IGNORECASE)


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _repair_frame_header(comment: str, first_atom_line: str) -> tuple[str, list[str]]:
    """The comment line with ``Properties`` fitted to the columns actually present."""
    match = _PROPERTIES.search(comment)
    spec = match.group(2) if match else "species:S:1:pos:R:3"
    parts = spec.split(":")
    if len(parts) % 3:
        raise InputError(f"Properties={spec!r} is not a list of name:type:columns triples")
    names = parts[0::3]
    declared = sum(int(c) for c in parts[2::3])
    tokens = first_atom_line.split()
    notes = []
    if "species" not in [n.lower() for n in names] and len(tokens) > declared and not _is_number(tokens[0]):
        spec = "species:S:1:" + spec
        declared += 1
        notes.append("species column missing from Properties")
    if len(tokens) > declared and all(_is_number(t) for t in tokens[declared:]):
        extra = len(tokens) - declared
        spec += "".join(f":extra_{k}:R:1" for k in range(extra))
        notes.append(f"{extra} undeclared trailing column(s) read as extra_*")
    if not notes:
        return comment, []
    fixed = _PROPERTIES.sub(lambda _: f"Properties={spec}", comment) if match else f"{comment} Properties={spec}"
    return fixed, notes


def read_xyz_lenient(path) -> list[Atoms]:
    """Read every frame of an (ext)xyz file, repairing a header that does not match its columns.

    Well-formed files are read by ``ase.io`` unchanged. When ASE cannot parse a file, each
    frame's ``Properties`` is fitted to the columns present: a missing leading species column
    is declared, undeclared trailing numbers become ``extra_k`` arrays. A
    :class:`MalformedXyzWarning` says what was repaired.

    Raises
    ------
    InputError
        The file is missing or cannot be read even after repair.
    """
    from ase.io import read

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such xyz file")
    text = path.read_text()
    try:
        return read(io.StringIO(text), index=":", format="extxyz")
    except (ValueError, KeyError, IndexError, OSError) as err:  # XYZError is an OSError
        first_error = err
    lines = text.splitlines()
    out, pos, notes = [], 0, {}
    while pos < len(lines):
        if not lines[pos].strip():
            pos += 1
            continue
        try:
            n = int(lines[pos].split()[0])
        except ValueError:
            raise InputError(f"{path}:{pos + 1}: expected an atom count, found {lines[pos][:40]!r}") from None
        if pos + 2 + n > len(lines):
            raise InputError(f"{path}:{pos + 1}: frame of {n} atoms is cut short")
        first = lines[pos + 2] if n else ""
        comment, fixes = _repair_frame_header(lines[pos + 1], first)
        notes.update(dict.fromkeys(fixes))
        out.append(lines[pos])
        out.append(comment)
        out.extend(lines[pos + 2: pos + 2 + n])
        pos += 2 + n
    if not notes:
        raise InputError(f"{path}: cannot read as extxyz: {first_error}")
    try:
        frames = read(io.StringIO("\n".join(out) + "\n"), index=":", format="extxyz")
    except (ValueError, KeyError, IndexError, OSError) as err:  # XYZError is an OSError
        raise InputError(f"{path}: cannot read as extxyz even after repairing its header: {err}") from None
    warnings.warn(f"{path}: malformed extxyz header ({'; '.join(notes)}); read {len(frames)} frame(s) anyway",
                  MalformedXyzWarning, stacklevel=2)
    return frames
