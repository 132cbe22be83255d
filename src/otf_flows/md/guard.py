"""Blow-up guard: stop an ML-MD segment when the trajectory becomes unphysical."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from ase import Atoms, units
from ase.data import chemical_symbols, covalent_radii

from otf_flows.campaign import pair_numbers

__all__ = ["ShortDistances", "distance_limits", "guard_limit", "make_guard", "pair_numbers"]


def distance_limits(settings, numbers) -> np.ndarray:
    """Table ``L[Z_i, Z_j]`` (Å) of the smallest allowed distance of the elements in ``numbers``.

    Per pair, the first found wins: ``min_distance_pairs``, ``min_distance_A``,
    ``min_distance_factor`` × (r_i + r_j) with ASE's covalent radii. 0 means not checked.
    """
    pairs = {pair_numbers(k): float(v) for k, v in settings.min_distance_pairs.items()}
    zs = np.unique(numbers)
    table = np.zeros((int(zs.max()) + 1,) * 2)
    for a in zs:
        for b in zs:
            key = (min(a, b), max(a, b))
            if key in pairs:
                limit = pairs[key]
            elif settings.min_distance_A is not None:
                limit = settings.min_distance_A
            else:
                limit = settings.min_distance_factor * (covalent_radii[a] + covalent_radii[b])
            table[a, b] = limit
    return table


class ShortDistances:
    """The pair furthest below its smallest allowed distance, on ASE's Verlet list with a skin.

    :class:`ase.neighborlist.NeighborList` keeps the pairs within the largest limit + ``skin_A``
    and rebuilds them only when an atom has moved more than ``skin_A / 2`` since the last build
    (or the cell or the periodicity changed, as in NPT); in between, a step costs one distance per
    listed pair.
    """

    def __init__(self, settings, skin_A: float = 0.5):
        self.settings, self.skin = settings, skin_A
        self._list = None
        self._numbers = None

    def _pairs(self, atoms: Atoms) -> None:
        """The listed pairs whose elements have a limit, each once, with their cell shifts and limits."""
        first, second, shifts = [], [], []
        for i in range(len(atoms)):
            j, shift = self._list.get_neighbors(i)
            first.append(np.full(len(j), i))
            second.append(j)
            shifts.append(shift)
        i, j = np.concatenate(first).astype(int), np.concatenate(second).astype(int)
        limits = self._table[atoms.numbers[i], atoms.numbers[j]]
        keep = limits > 0
        self._i, self._j, self._shift, self._limits = i[keep], j[keep], np.concatenate(shifts)[keep], limits[keep]

    def _update(self, atoms: Atoms) -> None:
        from ase.neighborlist import NeighborList, NewPrimitiveNeighborList  # scipy: only when a guard runs

        if self._numbers is None or not np.array_equal(atoms.numbers, self._numbers):
            self._table = distance_limits(self.settings, atoms.numbers)
            self._numbers = atoms.numbers.copy()
            cutoff = float(self._table.max())
            # a pair is listed up to r_i + r_j + 2 skin; it is rebuilt when an atom moved more than skin
            self._list = None if cutoff <= 0 else NeighborList(
                [cutoff / 2] * len(atoms), skin=self.skin / 2, self_interaction=False, bothways=False,
                primitive=NewPrimitiveNeighborList)
            self._i = np.zeros(0, dtype=int)
        if self._list is not None and self._list.update(atoms):
            self._pairs(atoms)

    def __call__(self, atoms: Atoms) -> tuple[int, int, float, float] | None:
        """(i, j, distance, limit) of the worst pair closer than its limit, or None."""
        self._update(atoms)
        if not len(self._i):
            return None
        pos = atoms.positions
        vec = pos[self._j] - pos[self._i] + self._shift @ atoms.cell.array
        d = np.sqrt(np.einsum("ij,ij->i", vec, vec))
        ratio = d / self._limits
        k = int(np.argmin(ratio))
        if ratio[k] >= 1.0:
            return None
        return int(self._i[k]), int(self._j[k]), float(d[k]), float(self._limits[k])


def make_guard(settings, temperature_K: float) -> Callable[[Atoms, int], str | None] | None:
    """A guard for :func:`otf_flows.md.segment.run_segment` from ``md.guard`` settings (None if disabled).

    It trips when two atoms are closer than the smallest distance allowed for their elements
    (see :func:`distance_limits`), a force component exceeds ``max_force_eV_A``, the kinetic
    temperature exceeds ``max_temperature_factor`` × the target (plus 500 K), or the potential
    energy per atom jumps by more than ``max_energy_jump_eV_per_atom`` in one step.
    """
    if settings is None or not settings.enabled:
        return None
    t_max = settings.max_temperature_factor * temperature_K + 500.0
    last: dict[str, float] = {}
    short = ShortDistances(settings)

    def guard(atoms: Atoms, step: int) -> str | None:
        n = len(atoms)
        pair = short(atoms) if n > 1 else None
        if pair is not None:
            i, j, d, limit = pair
            a, b = chemical_symbols[atoms.numbers[i]], chemical_symbols[atoms.numbers[j]]
            return f"atoms {i} ({a}) and {j} ({b}) {d:.2f} Å apart (< {limit:.2f} Å for {a}-{b}) at step {step}"
        forces = atoms.get_forces()
        fmax = float(np.abs(forces).max())
        if fmax > settings.max_force_eV_A:
            return f"force component {fmax:.1f} eV/Å (> {settings.max_force_eV_A}) at step {step}"
        temperature = atoms.get_kinetic_energy() / (1.5 * n * units.kB)
        if temperature > t_max:
            return f"temperature {temperature:.0f} K (> {t_max:.0f} K) at step {step}"
        energy = atoms.get_potential_energy() / n
        previous = last.get("energy")
        last["energy"] = energy
        if previous is not None and abs(energy - previous) > settings.max_energy_jump_eV_per_atom:
            return (f"energy jump {abs(energy - previous):.3f} eV/atom in one step "
                    f"(> {settings.max_energy_jump_eV_per_atom}) at step {step}")
        return None

    return guard


def guard_limit(reason: str | None) -> str | None:
    """The ``md.guard`` key whose limit tripped, from a trip's reason (as :func:`make_guard`,
    or :func:`otf_flows.jobs.decide.unphysical_reference`, word it); None if not a guard's.

    ``'min_distance'`` stands for the smallest distances (``min_distance_pairs``,
    ``min_distance_A`` or ``min_distance_factor``, whichever set the pair's limit).
    """
    if not reason:
        return None
    if reason.startswith("temperature "):
        return "max_temperature_factor"
    if reason.startswith(("force component ", "reference force component ")):
        return "max_force_eV_A"
    if reason.startswith("energy jump "):
        return "max_energy_jump_eV_per_atom"
    if reason.startswith("atoms ") and " apart " in reason:
        return "min_distance"
    return None


def loosen_advice(limit: str | None, settings) -> str:
    """What to change in ``md.guard`` (``settings``) so that the limit ``limit`` trips later."""
    if limit == "max_temperature_factor":
        return f"raise md.guard.max_temperature_factor (now {settings.max_temperature_factor:g})"
    if limit == "max_force_eV_A":
        return f"raise md.guard.max_force_eV_A (now {settings.max_force_eV_A:g})"
    if limit == "max_energy_jump_eV_per_atom":
        return f"raise md.guard.max_energy_jump_eV_per_atom (now {settings.max_energy_jump_eV_per_atom:g})"
    if limit == "min_distance":
        return "lower the pair's md.guard.min_distance_pairs (or min_distance_A, min_distance_factor)"
    return "loosen md.guard"
