"""Reference labels of a frame, the keys they travel under, and the hash of the settings that made them.

A leaf of the package (numpy and ASE only): the data layer (frames, training data, MD segments,
validation) imports labels from here, never from the engines that compute them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ase.stress import voigt_6_to_full_3x3_stress

__all__ = ["ENERGY_KEY", "FORCES_KEY", "VIRIAL_KEY", "Labels", "settings_hash", "virial_from_stress"]

ENERGY_KEY = "REF_energy"
FORCES_KEY = "REF_forces"
VIRIAL_KEY = "REF_virial"
"""Keys of the reference labels in training structures (``info``/``arrays``), for every ML backend."""


@dataclass
class Labels:
    """Reference labels of one frame, in eV, eV/Å and eV."""

    energy: float
    forces: np.ndarray
    virial: np.ndarray | None = None
    seconds: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)


def settings_hash(settings: dict) -> str:
    """A short, stable hash of reference settings (labels are comparable iff equal)."""
    blob = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def virial_from_stress(stress_voigt_or_3x3, volume: float) -> np.ndarray:
    """Virial (eV) from an ASE stress (eV/Å^3, Voigt or 3x3): ``V = -stress * volume``."""
    s = np.asarray(stress_voigt_or_3x3, dtype=float)
    if s.shape == (6,):
        s = voigt_6_to_full_3x3_stress(s)
    return -s * volume
