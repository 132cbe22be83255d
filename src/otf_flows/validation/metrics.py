"""Error metrics of model predictions against reference labels (pure numpy).

Definitions follow Morrow, Gardner and Deringer, "How to validate machine-learned
interatomic potentials" (J. Chem. Phys. 2023), Sec. IV: MAE and RMSE over

- energies per atom, ``(E_pred - E_ref) / N`` (eV/atom), and per √N, ``(E_pred - E_ref) / √N``
  (eV/atom^½; independent of system size for sums of local energies);
- Cartesian force components (eV/Å), never magnitudes;
- virial components per atom, all nine, ``(V_pred - V_ref) / N`` (eV/atom), over the frames
  where both virials are known (None when there are none).

:class:`Comparison` keeps every predicted and reference value, so error distributions
(violins) and parity plots can be drawn from it; :func:`summarise` reduces it to numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["METRIC_KEYS", "Comparison", "Labelled", "compare", "mae", "metrics", "rmse", "summarise"]

#: Keys of :func:`metrics` (besides the counts), in output order.
METRIC_KEYS = (
    "energy_rmse_per_atom",
    "energy_mae_per_atom",
    "energy_rmse_per_sqrt_atom",
    "energy_mae_per_sqrt_atom",
    "force_rmse",
    "force_mae",
    "virial_rmse_per_atom",
    "virial_mae_per_atom",
)


@dataclass(frozen=True)
class Labelled:
    """Energy (eV), forces (N×3, eV/Å) and virial (3×3, eV, or None) of one structure."""

    energy: float
    forces: np.ndarray
    virial: np.ndarray | None = None
    config_type: str = "default"

    @property
    def n_atoms(self) -> int:
        return len(self.forces)


@dataclass(frozen=True)
class Comparison:
    """Predicted and reference values of a set of frames, flattened for statistics.

    Attributes
    ----------
    config_type, n_atoms
        Per frame.
    energy_pred, energy_ref
        Total energies per frame (eV).
    force_pred, force_ref, force_frame
        Every Cartesian force component (eV/Å) and the index of its frame.
    virial_pred, virial_ref, virial_frame
        The nine virial components (eV) of each frame that has both virials, shape (M, 9),
        and the frame index of each row.
    """

    config_type: np.ndarray
    n_atoms: np.ndarray
    energy_pred: np.ndarray
    energy_ref: np.ndarray
    force_pred: np.ndarray
    force_ref: np.ndarray
    force_frame: np.ndarray
    virial_pred: np.ndarray
    virial_ref: np.ndarray
    virial_frame: np.ndarray

    @property
    def n_frames(self) -> int:
        return len(self.energy_ref)

    @property
    def energy_error_per_atom(self) -> np.ndarray:
        """(E_pred - E_ref) / N per frame (eV/atom)."""
        return (self.energy_pred - self.energy_ref) / self.n_atoms

    @property
    def energy_error_per_sqrt_atom(self) -> np.ndarray:
        """(E_pred - E_ref) / √N per frame (eV/atom^½)."""
        return (self.energy_pred - self.energy_ref) / np.sqrt(self.n_atoms)

    @property
    def force_error(self) -> np.ndarray:
        """F_pred - F_ref per component (eV/Å)."""
        return self.force_pred - self.force_ref

    @property
    def virial_error_per_atom(self) -> np.ndarray:
        """(V_pred - V_ref) / N per component, flattened (eV/atom)."""
        return ((self.virial_pred - self.virial_ref) / self.n_atoms[self.virial_frame][:, None]).ravel()

    def select(self, frames) -> Comparison:
        """The comparison restricted to a boolean mask or index array over frames."""
        keep = np.zeros(self.n_frames, dtype=bool)
        keep[frames] = True
        new_index = np.cumsum(keep) - 1
        f, v = keep[self.force_frame], keep[self.virial_frame]
        return Comparison(
            self.config_type[keep], self.n_atoms[keep], self.energy_pred[keep], self.energy_ref[keep],
            self.force_pred[f], self.force_ref[f], new_index[self.force_frame[f]],
            self.virial_pred[v], self.virial_ref[v], new_index[self.virial_frame[v]],
        )

    def by_config_type(self) -> dict[str, Comparison]:
        """One comparison per configuration type, sorted by type."""
        return {t: self.select(self.config_type == t) for t in sorted(set(self.config_type.tolist()))}


def compare(predicted: Sequence[Labelled], reference: Sequence[Labelled]) -> Comparison:
    """Pair predictions with references frame by frame (config types from ``reference``)."""
    if len(predicted) != len(reference):
        raise ValueError(f"{len(predicted)} predictions for {len(reference)} reference frames")
    n_atoms, e_pred, e_ref, f_pred, f_ref, f_frame = [], [], [], [], [], []
    v_pred, v_ref, v_frame, types = [], [], [], []
    for k, (p, r) in enumerate(zip(predicted, reference)):
        fp, fr = np.asarray(p.forces, dtype=float), np.asarray(r.forces, dtype=float)
        if fp.shape != fr.shape or fr.ndim != 2 or fr.shape[1] != 3 or len(fr) == 0:
            raise ValueError(f"frame {k}: forces of shape {fp.shape} and {fr.shape}, need equal (N, 3) with N >= 1")
        n_atoms.append(len(fr))
        types.append(str(r.config_type))
        e_pred.append(float(p.energy))
        e_ref.append(float(r.energy))
        f_pred.append(fp.ravel())
        f_ref.append(fr.ravel())
        f_frame.append(np.full(fr.size, k))
        if p.virial is not None and r.virial is not None:
            v_pred.append(np.asarray(p.virial, dtype=float).reshape(9))
            v_ref.append(np.asarray(r.virial, dtype=float).reshape(9))
            v_frame.append(k)

    def cat(parts, dtype=float):
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)

    return Comparison(
        config_type=np.array(types, dtype=object),
        n_atoms=np.array(n_atoms, dtype=int),
        energy_pred=np.array(e_pred),
        energy_ref=np.array(e_ref),
        force_pred=cat(f_pred),
        force_ref=cat(f_ref),
        force_frame=cat(f_frame, int),
        virial_pred=np.array(v_pred).reshape(-1, 9),
        virial_ref=np.array(v_ref).reshape(-1, 9),
        virial_frame=np.array(v_frame, dtype=int),
    )


def mae(errors) -> float | None:
    """Mean absolute error (None for no values)."""
    e = np.asarray(errors, dtype=float)
    return float(np.mean(np.abs(e))) if e.size else None


def rmse(errors) -> float | None:
    """Root mean square error (None for no values)."""
    e = np.asarray(errors, dtype=float)
    return float(np.sqrt(np.mean(e**2))) if e.size else None


def metrics(comparison: Comparison) -> dict:
    """MAE and RMSE of energies, forces and virials of one comparison (keys :data:`METRIC_KEYS`)."""
    c = comparison
    return {
        "n_frames": c.n_frames,
        "n_atoms": int(c.n_atoms.sum()),
        "n_virial_frames": len(c.virial_frame),
        "energy_rmse_per_atom": rmse(c.energy_error_per_atom),
        "energy_mae_per_atom": mae(c.energy_error_per_atom),
        "energy_rmse_per_sqrt_atom": rmse(c.energy_error_per_sqrt_atom),
        "energy_mae_per_sqrt_atom": mae(c.energy_error_per_sqrt_atom),
        "force_rmse": rmse(c.force_error),
        "force_mae": mae(c.force_error),
        "virial_rmse_per_atom": rmse(c.virial_error_per_atom),
        "virial_mae_per_atom": mae(c.virial_error_per_atom),
    }


def summarise(comparison: Comparison) -> dict:
    """:func:`metrics` of all frames plus ``by_config_type`` with the same metrics per type."""
    out = metrics(comparison)
    out["by_config_type"] = {t: metrics(sub) for t, sub in comparison.by_config_type().items()}
    return out
