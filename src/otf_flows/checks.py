"""Model-vs-reference error metrics and the tolerance test (DESIGN §2).

All inputs are in eV, eV/Å and eV (virial); per-atom quantities divide by the number
of atoms N.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np

logger = logging.getLogger(__name__)

ERROR_KEYS = ("ediff", "fmax", "frmse", "vmax")


def error_metrics(
    n_atoms: int,
    energy_ml: float,
    energy_ref: float,
    forces_ml,
    forces_ref,
    virial_ml=None,
    virial_ref=None,
) -> dict[str, float | None]:
    """Errors of a model prediction against a reference calculation.

    Parameters
    ----------
    n_atoms
        Number of atoms N.
    energy_ml, energy_ref
        Total energies (eV).
    forces_ml, forces_ref
        Forces, shape (N, 3) (eV/Å).
    virial_ml, virial_ref
        Virials, shape (3, 3) (eV), or None when either is unknown.

    Returns
    -------
    dict
        ``ediff`` = |ΔE|/N (eV/atom), ``fmax`` = max |ΔF| over components (eV/Å),
        ``frmse`` = RMSE over force components (eV/Å), ``vmax`` = max |ΔV|/N over
        virial components (eV/atom, None without virials).
    """
    if n_atoms < 1:
        raise ValueError(f"n_atoms must be >= 1, got {n_atoms}")
    df = np.asarray(forces_ml, dtype=float) - np.asarray(forces_ref, dtype=float)
    if df.shape != (n_atoms, 3):
        raise ValueError(f"forces must have shape ({n_atoms}, 3), got {df.shape}")
    errors = {
        "ediff": abs(float(energy_ml) - float(energy_ref)) / n_atoms,
        "fmax": float(np.max(np.abs(df))),
        "frmse": float(np.sqrt(np.mean(df**2))),
        "vmax": None,
    }
    if virial_ml is not None and virial_ref is not None:
        dv = np.asarray(virial_ml, dtype=float) - np.asarray(virial_ref, dtype=float)
        errors["vmax"] = float(np.max(np.abs(dv))) / n_atoms
    return errors


def passes(errors: Mapping[str, float | None], tolerances: Mapping[str, float | None]) -> bool:
    """Whether a check passes: every set tolerance holds strictly (``value < tolerance``).

    A tolerance of None is not checked; with no tolerance set every check passes. A ``vmax``
    tolerance without a virial error (the reference or the model gave no virial) is not
    checked either, with a logged warning, as in hybrid-md; any other set tolerance whose
    error is None fails the check.
    """
    for key in ERROR_KEYS:
        tol = tolerances.get(key)
        if tol is None:
            continue
        value = errors.get(key)
        if value is None and key == "vmax":
            logger.warning("tolerance vmax=%s not checked: no virial (reference or model)", tol)
            continue
        if value is None or not value < tol:
            return False
    return True


def within_margin(errors: Mapping[str, float | None], tolerances: Mapping[str, float | None], fraction: float) -> bool:
    """Whether every set tolerance holds with room to spare: ``value < fraction * tolerance``.

    ``fraction`` 1.0 is :func:`passes`. The adaptive schedule grows the interval only
    within this margin (``adaptive_method_parameters.grow_below``).
    """
    if fraction >= 1.0:
        return passes(errors, tolerances)
    scaled = {k: (None if v is None else fraction * v) for k, v in tolerances.items()}
    return passes(errors, scaled)
