"""Validation of models: error metrics (pure) and their evaluation on stored frames.

- :mod:`~otf_flows.validation.metrics`: MAE/RMSE of energies, forces, virials, per config type.
- :mod:`~otf_flows.validation.sets`: benchmark sets and validation documents in the store.
- :mod:`~otf_flows.validation.evaluate`: run a stored model on frames, build the document.
"""

from otf_flows.validation.evaluate import compare_model, predict, reference_labels, run_validation, validate_model
from otf_flows.validation.metrics import Comparison, Labelled, compare, mae, metrics, rmse, summarise
from otf_flows.validation.sets import CHECKS, frames_for, get_validation, save_validation, untrained_check_frames

__all__ = [
    "CHECKS",
    "Comparison",
    "Labelled",
    "compare",
    "compare_model",
    "frames_for",
    "get_validation",
    "mae",
    "metrics",
    "predict",
    "reference_labels",
    "rmse",
    "run_validation",
    "save_validation",
    "summarise",
    "untrained_check_frames",
    "validate_model",
]
