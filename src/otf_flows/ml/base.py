"""ML models behind one small protocol, chosen by ``model.backend`` (GAP, MACE).

A backend fits a model directory from labelled frames (optionally continuing from a parent's
directory), turns a model directory into an ASE calculator (energy, forces, stress), may give
an uncertainty probe for the ML-MD trigger, and exports a model for stand-alone ASE and LAMMPS
use. Jobs, validation and :mod:`otf_flows.fit_export` speak only this protocol; the store keeps a
model directory as a tar.gz archive (:func:`pack_dir`, :func:`unpack_dir`). Heavy imports
(quippy, torch) live inside the backends.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from ase import Atoms

__all__ = ["UNCERTAINTY_MEASURES", "FitResult", "MLBackend", "UncertaintyProbe", "pack_dir", "uncertainty_measure",
           "unpack_dir"]

UNCERTAINTY_MEASURES = ("max_local", "mean_local", "total")
"""How a frame's local-energy variances var_i become one number (eV): ``max_local`` =
sqrt(max_i var_i), ``mean_local`` = mean_i sqrt(var_i), ``total`` = sqrt(sum_i var_i)."""


def uncertainty_measure(variance, measure: str = "max_local") -> float:
    """One uncertainty (eV) of a frame from its local-energy variances (:data:`UNCERTAINTY_MEASURES`).

    Examples
    --------
    >>> [round(uncertainty_measure([0.01, 0.04], m), 3) for m in UNCERTAINTY_MEASURES]
    [0.2, 0.15, 0.224]
    """
    var = np.clip(np.asarray(variance, dtype=float), 0.0, None)
    if measure == "max_local":
        return float(np.sqrt(var.max()))
    if measure == "mean_local":
        return float(np.mean(np.sqrt(var)))
    if measure == "total":
        return float(np.sqrt(var.sum()))
    raise ValueError(f"unknown uncertainty measure {measure!r}; allowed: {', '.join(UNCERTAINTY_MEASURES)}")


@dataclass
class FitResult:
    """A finished fit: the model directory and what made it.

    ``settings`` are the backend settings that worked (recorded in ``ModelDoc.fit_settings``
    next to ``command``); ``meta`` is anything else worth keeping (e.g. whether MACE started
    from the parent's weights).
    """

    model_dir: Path
    seconds: float
    command: list[str]
    log_tail: str
    settings: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


class UncertaintyProbe(Protocol):
    """A model's predicted error of a frame (eV), read during ML-MD (see ``md.segment.UncertaintyMonitor``)."""

    def arm(self) -> None:
        """Make the next force call of the MD step also compute the uncertainty."""

    def disarm(self) -> None:
        """Back to plain force calls."""

    def value(self, atoms: Atoms) -> float:
        """The uncertainty of ``atoms`` (from the armed call, or computed now)."""


class MLBackend(Protocol):
    """What an ML backend provides."""

    name: str
    model_file: str
    """Name of the file in a model directory that marks a complete extraction (GAP: gap.xml)."""

    def check_available(self) -> None:
        """Raise :class:`BackendUnavailableError` with an install hint if it cannot run here."""

    def fit(self, frames: list[Atoms], workdir: Path, model, refit, *, parent_dir: Path | None = None,
            num_threads: int | None = None, seed: int | None = 1) -> FitResult:
        """Fit on ``frames`` (labels in ``REF_*`` keys) inside ``workdir``.

        ``model`` is the campaign's ``model`` block of this backend, ``refit`` its ``refit`` block;
        ``parent_dir`` is the extracted directory of the model this one replaces (None: first fit).
        Raises :class:`FitFailedError` naming the log.
        """

    def calculator(self, model_dir: Path, cached: bool = False):
        """An ASE calculator of the model in ``model_dir`` (``cached``: reuse one made earlier in this process)."""

    def uncertainty(self, calc, settings) -> UncertaintyProbe | None:
        """A probe of ``calc``'s uncertainty under ``uncertainty`` settings, or None when the model has none."""

    def threads(self, num_threads: int | None) -> AbstractContextManager:
        """A context in which model calls in this process use at most ``num_threads`` threads."""

    def species(self, model_dir: Path) -> list[int]:
        """Sorted atomic numbers the model is fitted for."""

    def pack(self, model_dir: Path) -> bytes:
        """The model directory as one archive for the store (:func:`pack_dir`)."""

    def unpack(self, data: bytes, dest: Path) -> Path:
        """Extract an archive of :meth:`pack` into the directory ``dest`` (once); returns ``dest``."""

    def export(self, model_dir: Path, dest: Path, model_id: str, numbers: list[int], data_lines: str = "") -> None:
        """Write stand-alone files into ``dest`` (which already holds the model directory's files):
        a LAMMPS snippet ``lammps.in`` (with ``data_lines`` about the exported final state) and an
        ASE example ``ase_example.py``."""


def pack_dir(model_dir: Path) -> bytes:
    """tar.gz of the files of a model directory."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path in sorted(Path(model_dir).iterdir()):
            tar.add(path, arcname=path.name)
    return buf.getvalue()


def unpack_dir(data: bytes, dest: Path) -> Path:
    """Extract a model archive into the directory ``dest`` (atomically, once) and return ``dest``."""
    dest = Path(dest)
    if not (dest.is_dir() and any(dest.iterdir())):
        tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            tar.extractall(tmp, filter="data")
        try:
            os.replace(tmp, dest)
        except OSError:  # another process won the race
            shutil.rmtree(tmp, ignore_errors=True)
    return dest
