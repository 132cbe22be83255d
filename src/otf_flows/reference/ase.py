"""Any ASE calculator, named by import path, as the reference (``reference: {engine: ase, ...}``)."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
from ase import Atoms

from otf_flows.errors import BackendUnavailableError, ConfigError
from otf_flows.labels import Labels, virial_from_stress
from otf_flows.reference.base import label_with_retries
from otf_flows.reference.settings import AseReference

__all__ = ["AseEngine"]


class AseEngine:
    """Any ASE calculator, named by import path, as the reference."""

    name = "ase"

    def __init__(self, calculator: str, kwargs: dict | None = None, retries: int = 1):
        self.calculator_path = calculator
        self.kwargs = dict(kwargs or {})
        self.retries = retries

    @classmethod
    def from_settings(cls, settings: AseReference, omp_threads: int | None = None,
                      cache_dir: Path | None = None) -> AseEngine:
        """The engine of a validated ``reference`` block (``omp_threads``, ``cache_dir``: unused)."""
        return cls(settings.calculator, settings.kwargs, settings.retries)

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

        def attempt(n: int, directory: Path | None) -> Labels:
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
            finally:
                if frame.calc is not None and hasattr(frame.calc, "close"):
                    frame.calc.close()
            return Labels(energy, forces, virial)

        return label_with_retries(attempt, retries=self.retries, what=self.calculator_path)
