"""MD state persistence: an MD state (positions, velocities, cell, thermostat RNG, step) as a stored
document and back, and the frame a check labels."""

from __future__ import annotations

import numpy as np
from ase import Atoms

from otf_flows.md.segment import MDState
from otf_flows.schemas.documents import StateDoc
from otf_flows.walkers import track

__all__ = ["checked_frame", "model_labels_of_check", "state_doc", "state_from_doc", "state_id"]


def state_id(campaign: str, step: int, model_id: str | None) -> str:
    """Deterministic id of the state at ``step`` reached with ``model_id`` (None: reference MD)."""
    return f"{campaign}:state:{step}:{model_id or 'initial'}"


def state_doc(campaign: str, state: MDState, model_id: str | None = None, walker: str | None = None,
              **extra) -> StateDoc:
    """A state document for ``state`` of ``walker`` (None: a campaign without walkers) reached with ``model_id``."""
    return StateDoc(
        state_id=state_id(track(campaign, walker), state.step, model_id),
        model_id=model_id,
        campaign=campaign,
        walker=walker,
        step=state.step,
        numbers=state.numbers.tolist(),
        positions=state.positions.tolist(),
        velocities=state.velocities.tolist(),
        cell=np.asarray(state.cell).tolist(),
        pbc=np.asarray(state.pbc).tolist(),
        masses=state.masses.tolist(),
        rng_state=state.rng_state,
        **extra,
    )


def state_from_doc(doc: StateDoc) -> MDState:
    """The MD state a state document holds."""
    return MDState(
        step=doc.step,
        numbers=np.array(doc.numbers),
        positions=np.array(doc.positions),
        velocities=np.array(doc.velocities),
        cell=np.array(doc.cell),
        pbc=np.array(doc.pbc),
        masses=np.array(doc.masses),
        rng_state=doc.rng_state,
    )


def checked_frame(state: StateDoc) -> tuple[Atoms, int]:
    """The frame a check labels and its MD step: the state's ``check_frame`` if it has one, else the state."""
    cf = state.check_frame
    if cf is None:
        return state_from_doc(state).to_atoms(), state.step
    return Atoms(numbers=cf["numbers"], positions=cf["positions"], cell=cf["cell"], pbc=cf["pbc"]), int(cf["step"])


def model_labels_of_check(state: StateDoc) -> tuple[float, list, list | None]:
    """The model's energy, forces and virial of the frame a check labels (see :func:`checked_frame`)."""
    cf = state.check_frame
    if cf is None:
        return state.ml_energy, state.ml_forces, state.ml_virial
    return cf["energy"], cf["forces"], cf.get("virial")
