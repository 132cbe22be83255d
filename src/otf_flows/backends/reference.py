"""Reference (DFT) engines behind one small protocol, chosen by ``reference.engine``.

An engine labels one frame: total energy (eV), forces (eV/Å) and, for periodic cells,
the virial (eV). Heavy imports (atomate2, custodian) live inside the engines.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from ase import Atoms

from otf_flows.errors import BackendUnavailableError, ConfigError, ReferenceFailedError

logger = logging.getLogger(__name__)

__all__ = ["AseEngine", "Labels", "ReferenceEngine", "get_engine", "settings_hash"]


@dataclass
class Labels:
    """Reference labels of one frame, in eV, eV/Å and eV."""

    energy: float
    forces: np.ndarray
    virial: np.ndarray | None = None
    seconds: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)


class ReferenceEngine(Protocol):
    """What a reference engine provides."""

    name: str

    def label(self, atoms: Atoms, workdir: Path) -> Labels:
        """Compute the labels of ``atoms``, writing any files under ``workdir``."""

    def check_available(self) -> None:
        """Raise :class:`BackendUnavailableError` with an install hint if it cannot run here."""


def settings_hash(settings: dict) -> str:
    """A short, stable hash of reference settings (labels are comparable iff equal)."""
    blob = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def virial_from_stress(stress_voigt_or_3x3, volume: float) -> np.ndarray:
    """Virial (eV) from an ASE stress (eV/Å^3, Voigt or 3x3): ``V = -stress * volume``."""
    s = np.asarray(stress_voigt_or_3x3, dtype=float)
    if s.shape == (6,):
        xx, yy, zz, yz, xz, xy = s
        s = np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    return -s * volume


class AseEngine:
    """Any ASE calculator, named by import path, as the reference."""

    name = "ase"

    def __init__(self, calculator: str, kwargs: dict | None = None, retries: int = 1):
        self.calculator_path = calculator
        self.kwargs = dict(kwargs or {})
        self.retries = retries

    def _calculator_class(self):
        module_name, _, cls_name = self.calculator_path.rpartition(".")
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise BackendUnavailableError(
                f"reference.calculator: cannot import module {module_name!r} ({err}); install the package that provides it"
            ) from None
        try:
            return getattr(module, cls_name)
        except AttributeError:
            raise ConfigError(
                f"reference.calculator: module {module_name!r} has no {cls_name!r}"
            ) from None

    def check_available(self) -> None:
        self._calculator_class()

    def label(self, atoms: Atoms, workdir: Path) -> Labels:
        cls = self._calculator_class()
        last_error = None
        for attempt in range(self.retries + 1):
            start = time.perf_counter()
            frame = atoms.copy()
            try:
                frame.calc = cls(**self.kwargs)
                energy = float(frame.get_potential_energy())
                forces = np.array(frame.get_forces(), dtype=float)
                virial = None
                if frame.pbc.all():
                    try:
                        virial = virial_from_stress(frame.get_stress(voigt=False), frame.get_volume())
                    except NotImplementedError:  # ASE's PropertyNotImplementedError too: labels without virial
                        virial = None
            except Exception as err:  # noqa: BLE001 - any calculator failure is retried
                last_error = err
                logger.warning("reference attempt %d failed: %s", attempt + 1, err)
                continue
            finally:
                if frame.calc is not None and hasattr(frame.calc, "close"):
                    frame.calc.close()
            return Labels(energy, forces, virial, time.perf_counter() - start, {"attempts": attempt + 1})
        raise ReferenceFailedError(f"{self.calculator_path} failed after {self.retries + 1} attempts: {last_error}")


def get_engine(settings) -> ReferenceEngine:
    """The engine for a validated ``reference`` block of a campaign."""
    if settings.engine == "ase":
        return AseEngine(settings.calculator, settings.kwargs, settings.retries)
    if settings.engine == "cp2k":
        from otf_flows.backends.cp2k import Cp2kEngine

        return Cp2kEngine(settings)
    if settings.engine == "vasp":
        from otf_flows.backends.vasp import VaspEngine

        return VaspEngine(settings)
    raise ConfigError(f"reference.engine: {settings.engine!r} is not one of ase, cp2k, vasp")
