"""What every reference (DFT) engine shares: the engine protocol, the one retry loop, the run command.

An engine labels one frame: total energy (eV), forces (eV/Å) and, for periodic cells, the virial
(eV), as :class:`~otf_flows.labels.Labels`. The engines (:mod:`otf_flows.reference.ase`,
:mod:`otf_flows.reference.cp2k.engine`, :mod:`otf_flows.reference.vasp.engine`) are found by name in
:mod:`otf_flows.reference.registry`; this module imports none of them. Heavy imports (atomate2,
custodian) live inside the engines.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

from ase import Atoms

from otf_flows.errors import ConfigError, ReferenceFailedError
from otf_flows.labels import Labels
from otf_flows.settings import otf_settings

logger = logging.getLogger(__name__)

__all__ = ["ReferenceEngine", "allocation_nodes", "allocation_tasks", "label_with_retries", "one_line",
           "run_command"]


class ReferenceEngine(Protocol):
    """What a reference engine provides."""

    name: str

    def label(self, atoms: Atoms, workdir: Path) -> Labels:
        """Compute the labels of ``atoms``, writing any files under ``workdir``."""

    def check_available(self) -> None:
        """Raise :class:`BackendUnavailableError` with an install hint if it cannot run here."""

    @classmethod
    def from_settings(cls, settings, omp_threads: int | None = None, cache_dir: Path | None = None):
        """The engine of a validated ``reference`` block (see :func:`otf_flows.reference.registry.get_engine`)."""


def allocation_tasks(env: Mapping[str, str] | None = None) -> int:
    """MPI tasks of the batch allocation this process runs in.

    The first of ``OTF_NTASKS`` (set by the ``otf submit --batch`` script), ``SLURM_NTASKS``,
    ``PBS_NP``, the lines of ``PBS_NODEFILE``, else the cores this process may use.
    """
    ntasks = (otf_settings(env).ntasks or "").strip()
    if ntasks.isdigit() and int(ntasks) > 0:
        return int(ntasks)
    env = os.environ if env is None else env
    for key in ("SLURM_NTASKS", "PBS_NP"):
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


def one_line(err: BaseException) -> str:
    """``Type: first line of the message`` of an exception."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def label_with_retries(attempt: Callable[[int, Path | None], Labels], *, retries: int, what: str,
                       workdir: Path | None = None, fatal: tuple[type[BaseException], ...] = ()) -> Labels:
    """The retry loop of every engine: ``attempt(n, directory)`` up to ``retries + 1`` times.

    Parameters
    ----------
    attempt
        One calculation, numbered from 1; returns the labels or raises. ``directory`` is
        ``workdir/attempt_n``, emptied and created before the call (None without ``workdir``).
    retries
        Extra attempts after a failed one (``reference.retries``).
    what
        What failed, for the log and the error (e.g. ``"CP2K single point"``).
    workdir
        Where the attempts' directories go (None: attempts write no files).
    fatal
        Exceptions raised at once, without a retry (e.g. the engine cannot run here at all).

    Returns
    -------
    Labels
        Of the first attempt that succeeded, with ``seconds`` (its wall time) and ``meta["attempts"]``.

    Raises
    ------
    ReferenceFailedError
        When every attempt failed: the last error in one line, and ``workdir``.
    """
    last_error = "no attempt made"
    for n in range(1, retries + 2):
        directory = None
        if workdir is not None:
            directory = workdir / f"attempt_{n}"
            if directory.exists():  # left by an earlier call: its outputs must not be parsed
                shutil.rmtree(directory)
            directory.mkdir(parents=True)
        start = time.perf_counter()
        try:
            labels = attempt(n, directory)
        except fatal:
            raise
        except Exception as err:  # noqa: BLE001 - calculator, custodian, DFT and parsing errors are retried
            last_error = one_line(err)
            logger.warning("%s attempt %d%s failed: %s", what, n, f" in {directory}" if directory else "",
                           last_error)
            continue
        labels.seconds = time.perf_counter() - start
        labels.meta["attempts"] = n
        return labels
    where = f" in {workdir}" if workdir is not None else ""
    raise ReferenceFailedError(f"{what} failed after {retries + 1} attempt(s){where}: {last_error}")
