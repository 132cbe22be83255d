"""Blow-up guard: stop an ML-MD segment when the trajectory becomes unphysical."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from ase import Atoms, units


def make_guard(settings, temperature_K: float) -> Callable[[Atoms, int], str | None] | None:
    """A guard for :func:`otf_flows.md.segment.run_segment` from ``md.guard`` settings (None if disabled).

    It trips when two atoms are closer than ``min_distance_A``, a force component exceeds
    ``max_force_eV_A``, the kinetic temperature exceeds ``max_temperature_factor`` × the
    target (plus 500 K), or the potential energy per atom jumps by more than
    ``max_energy_jump_eV_per_atom`` in one step.
    """
    if settings is None or not settings.enabled:
        return None
    t_max = settings.max_temperature_factor * temperature_K + 500.0
    last: dict[str, float] = {}

    def guard(atoms: Atoms, step: int) -> str | None:
        n = len(atoms)
        if settings.min_distance_A and n > 1:
            from ase.neighborlist import neighbor_list

            d = neighbor_list("d", atoms, settings.min_distance_A)
            if len(d):
                return f"atoms {d.min():.2f} Å apart (< {settings.min_distance_A} Å) at step {step}"
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
