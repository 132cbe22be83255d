"""Evaluate a stored model on stored frames and turn the result into a validation document."""

from __future__ import annotations

import logging

import numpy as np

from otf_flows.frames import frame_to_atoms
from otf_flows.labels import virial_from_stress
from otf_flows.ml.registry import get_backend, model_dir
from otf_flows.schemas.documents import FrameDoc, now
from otf_flows.validation.metrics import Comparison, Labelled, compare, summarise
from otf_flows.validation.sets import frames_for, save_validation, validation_id

logger = logging.getLogger(__name__)

__all__ = ["compare_model", "model_calculator", "predict", "reference_labels", "run_validation", "validate_model"]


def reference_labels(frames: list[FrameDoc]) -> list[Labelled]:
    """The stored reference labels of ``frames``."""
    return [
        Labelled(f.energy, np.asarray(f.forces, dtype=float),
                 None if f.virial is None else np.asarray(f.virial, dtype=float), f.config_type)
        for f in frames
    ]


def predict(calculator, frames: list[FrameDoc]) -> list[Labelled]:
    """``calculator``'s energy, forces and (where the frame has a reference virial) virial.

    All properties of a frame come from one ``calculate`` call (a model evaluates them together).
    """
    from ase.calculators.calculator import PropertyNotImplementedError, all_changes

    out = []
    for frame in frames:
        atoms = frame_to_atoms(frame)
        want_virial = frame.virial is not None and atoms.pbc.all()
        virial = None
        try:
            calculator.calculate(atoms, ["energy", "forces", "stress"] if want_virial else ["energy", "forces"],
                                 all_changes)
        except (NotImplementedError, PropertyNotImplementedError):
            want_virial = False
            calculator.calculate(atoms, ["energy", "forces"], all_changes)
        results = calculator.results
        if want_virial and "stress" in results:
            virial = virial_from_stress(results["stress"], atoms.get_volume())
        out.append(Labelled(float(results["energy"]), np.array(results["forces"], dtype=float), virial,
                            frame.config_type))
    return out


def model_calculator(store, model_id: str, cache: str | None = None):
    """The ASE calculator of a stored model of any backend (extracted into ``cache``, see
    :func:`otf_flows.dirs.cache_dir`)."""
    return get_backend(store.get_model(model_id).backend).calculator(model_dir(store, model_id, cache))


def compare_model(store, model_id: str, frames: list[FrameDoc], calculator=None) -> Comparison:
    """Predictions of model ``model_id`` (or of ``calculator``) against the frames' reference labels."""
    calc = calculator if calculator is not None else model_calculator(store, model_id)
    return compare(predict(calc, frames), reference_labels(frames))


def validate_model(store, model_id: str, frames: list[FrameDoc], benchmark: str = "custom",
                   calculator=None) -> dict:
    """Error metrics of a stored model on ``frames`` as a validation document.

    Parameters
    ----------
    store
        An :class:`~otf_flows.store.OtfStore` holding the model.
    model_id
        The model to evaluate.
    frames
        Reference-labelled frames (e.g. a benchmark set, or check frames it was not trained on).
    benchmark
        Name recorded in the document.
    calculator
        Use this ASE calculator instead of loading the model (tests, other backends).

    Returns
    -------
    dict
        ``validation_id``, ``model_id``, ``campaign``, ``benchmark``, ``n_frames``, the metrics of
        :func:`~otf_flows.validation.metrics.metrics` (eV/atom, eV/Å), ``by_config_type``,
        ``frame_ids`` and the per-frame ``energy_error_per_atom`` (eV/atom).
    """
    model = store.get_model(model_id)
    comparison = compare_model(store, model_id, frames, calculator)
    doc = {
        "validation_id": validation_id(model_id, benchmark),
        "model_id": model_id,
        "campaign": model.campaign,
        "benchmark": benchmark,
        **summarise(comparison),
        "frame_ids": [f.frame_id for f in frames],
        "energy_error_per_atom": comparison.energy_error_per_atom.tolist(),
        "created_at": now().isoformat(),
        "schema_version": 1,
    }
    logger.info("validated %s on %s (%d frames): force RMSE %.3g eV/Å", model_id, benchmark, len(frames),
                doc["force_rmse"])
    return doc


def run_validation(store, model_id: str, benchmark: str, calculator=None, save: bool = True) -> dict:
    """Validate a stored model on a named benchmark (``checks``: its untrained check frames) and store it."""
    model = store.get_model(model_id)
    doc = validate_model(store, model_id, frames_for(store, model, benchmark), benchmark, calculator)
    if save:
        save_validation(store, doc)
    return doc
