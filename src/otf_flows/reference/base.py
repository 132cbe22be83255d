"""Reference (DFT) engines behind one small protocol, chosen by ``reference.engine``.

An engine labels one frame: total energy (eV), forces (eV/Å) and, for periodic cells,
the virial (eV). Heavy imports (atomate2, custodian) live inside the engines.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from ase import Atoms

from otf_flows.errors import BackendUnavailableError, ConfigError, ReferenceFailedError

logger = logging.getLogger(__name__)

__all__ = ["RUN_KEYS", "SCF_PATH_KEYS", "SCF_PATH_UPDATES", "AseEngine", "Labels", "ReferenceEngine",
           "allocation_tasks", "get_engine", "run_command", "settings_hash"]

RUN_KEYS = frozenset({"retries", "cp2k_cmd", "omp_threads", "custodian_max_errors", "vasp_cmd", "vasp_gamma_cmd"})
"""Keys of a ``reference`` block that say how to run the engine, not what it computes: they are
in no hash of the labels and may change on ``--resume`` (more cores, another MPI launcher)."""

SCF_PATH_KEYS = frozenset({"max_scf", "mixing_method", "mixing_alpha", "mixing_nbuffer", "mixing_beta", "nelm"})
"""Keys of a ``reference`` block that change how the SCF gets to its converged solution (mixing,
damping, iteration limit), not the solution (converged to ``eps_scf``/``EDIFF``, which stay in the
hash): like :data:`RUN_KEYS` in no hash of the labels and free to change on ``--resume``."""

SCF_PATH_UPDATES = frozenset({"alpha", "beta", "nbuffer", "mixing_method", "n_simple_mix"})
"""The same for keywords of pymatgen's ``DftSet`` given through ``reference.input_updates``."""


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


def allocation_tasks(env: Mapping[str, str] | None = None) -> int:
    """MPI tasks of the batch allocation this process runs in.

    The first of ``OTF_NTASKS`` (set by the ``otf submit --batch`` script), ``SLURM_NTASKS``,
    ``PBS_NP``, the lines of ``PBS_NODEFILE``, else the cores this process may use.
    """
    env = os.environ if env is None else env
    for key in ("OTF_NTASKS", "SLURM_NTASKS", "PBS_NP"):
        value = env.get(key, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    nodefile = env.get("PBS_NODEFILE")
    if nodefile and os.path.isfile(nodefile):
        with open(nodefile) as fh:
            lines = [line for line in fh if line.strip()]
        if lines:
            return len(lines)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def allocation_nodes(env: Mapping[str, str] | None = None) -> int:
    """Nodes of the batch allocation (``SLURM_JOB_NUM_NODES``, distinct hosts of ``PBS_NODEFILE``, else 1)."""
    env = os.environ if env is None else env
    value = env.get("SLURM_JOB_NUM_NODES", "").strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    nodefile = env.get("PBS_NODEFILE")
    if nodefile and os.path.isfile(nodefile):
        with open(nodefile) as fh:
            hosts = {line.strip() for line in fh if line.strip()}
        if hosts:
            return len(hosts)
    return 1


def run_command(template: str, key: str, env: Mapping[str, str] | None = None) -> str:
    """A run command with ``{ntasks}`` and ``{nodes}`` filled in from the allocation.

    ``"srun -n {ntasks} cp2k.psmp"`` becomes ``"srun -n 256 cp2k.psmp"`` in a 256-task
    allocation; a command without placeholders is returned as it is. ``key`` names the
    setting in error messages.
    """
    if "{" not in template:
        return template
    try:
        return template.format_map(_Placeholders(env))
    except (KeyError, ValueError, IndexError) as err:
        raise ConfigError(
            f"{key}: {template!r} has a placeholder other than {{ntasks}} and {{nodes}} ({err})"
        ) from None


class _Placeholders(dict):
    def __init__(self, env):
        super().__init__()
        self.env = env

    def __missing__(self, name: str):
        if name == "ntasks":
            return allocation_tasks(self.env)
        if name == "nodes":
            return allocation_nodes(self.env)
        raise KeyError(name)


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


def get_engine(settings, omp_threads: int | None = None, cache_dir: Path | None = None) -> ReferenceEngine:
    """The engine for a validated ``reference`` block of a campaign.

    ``omp_threads`` (the campaign's ``execution.dft.omp_threads``) sets ``OMP_NUM_THREADS`` of
    the DFT program, before the engine's own setting (CP2K's ``reference.omp_threads``).
    ``cache_dir`` is where an engine keeps data it generates once (CP2K: pymatgen's data
    directory); None: :func:`otf_flows.dirs.cache_dir`.
    """
    if settings.engine == "ase":
        return AseEngine(settings.calculator, settings.kwargs, settings.retries)
    if settings.engine == "cp2k":
        from otf_flows.reference.cp2k.engine import Cp2kEngine

        return Cp2kEngine(settings, omp_threads=omp_threads, cache_dir=cache_dir)
    if settings.engine == "vasp":
        from otf_flows.reference.vasp.engine import VaspEngine

        return VaspEngine(settings)
    raise ConfigError(f"reference.engine: {settings.engine!r} is not one of ase, cp2k, vasp")
