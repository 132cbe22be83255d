"""VASP reference engine: one single point through atomate2's VASP ``StaticMaker``.

The inputs come from atomate2's static input-set generator with MD-checking INCAR
settings (:func:`incar_settings`); :func:`write_vasp_inputs` writes them without running
anything, which is what the tests check against reference files. Units are converted here,
once: the task document gives eV and eV/Å, and the stress in kBar with VASP's sign
(positive under compression); the virial is ``+stress * 0.1 GPa * V`` (eV).
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
from contextlib import chdir as _chdir
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms, units

from otf_flows.errors import BackendUnavailableError, InputError
from otf_flows.labels import Labels
from otf_flows.reference.base import label_with_retries, run_command
from otf_flows.reference.vasp.settings import VaspReference

logger = logging.getLogger(__name__)


__all__ = [
    "VaspEngine",
    "grouped_order",
    "incar_settings",
    "input_set_generator",
    "labels_from_task_doc",
    "write_vasp_inputs",
]



VASP_INSTALL_HINT = "VASP is licensed software: load your HPC vasp module or put the vasp_std build on PATH"
POTCAR_HINT = "set PMG_VASP_PSP_DIR to your POTCAR library ('pmg config --add PMG_VASP_PSP_DIR DIR')"

_KBAR_TO_EV_PER_A3 = 0.1 * units.GPa


def incar_settings(settings: VaspReference) -> dict[str, Any]:
    """INCAR tags laid over atomate2's static set (``user_incar_settings``).

    ``None`` removes a tag of the base set (pymatgen's convention).
    """
    incar: dict[str, Any] = {
        "ENCUT": settings.encut_eV,
        "EDIFF": settings.ediff_eV,
        "NELM": settings.nelm,
        "ISMEAR": settings.ismear,
        "SIGMA": settings.sigma_eV,
        "GGA": settings.gga,
        "NSW": 0,
        "IBRION": -1,
        "ISIF": 2,  # stress tensor without cell relaxation
        "LWAVE": False,
        "LCHARG": False,
        "LAECHG": False,
        "LVTOT": False,
        "LELF": False,
        "LORBIT": None,
        "LMIXTAU": None,  # meta-GGA only
        "ISPIN": 2 if settings.spin_polarized else 1,
    }
    if not settings.spin_polarized:
        incar["MAGMOM"] = None
    return {**incar, **settings.incar_updates}


def input_set_generator(settings: VaspReference):
    """atomate2's :class:`~atomate2.vasp.sets.core.StaticSetGenerator` for ``settings``."""
    from atomate2.vasp.sets.core import StaticSetGenerator
    from pymatgen.io.vasp.inputs import Kpoints

    kwargs: dict[str, Any] = {}
    if settings.potcar_functional is not None:
        kwargs["user_potcar_functional"] = settings.potcar_functional
    return StaticSetGenerator(
        user_incar_settings=incar_settings(settings),
        user_kpoints_settings=Kpoints.gamma_automatic(tuple(settings.kpoints)),
        sort_structure=False,  # we group species ourselves and keep the permutation
        **kwargs,
    )


def grouped_order(symbols: list[str]) -> np.ndarray:
    """Permutation grouping equal species (in order of first appearance), stable within a species.

    VASP needs each species in one contiguous block; ``atoms[grouped_order(symbols)]`` is
    the order written to the POSCAR.
    """
    first = {}
    for index, symbol in enumerate(symbols):
        first.setdefault(symbol, index)
    return np.array(sorted(range(len(symbols)), key=lambda i: (first[symbols[i]], i)), dtype=int)


def write_vasp_inputs(
    atoms: Atoms, directory: str | os.PathLike, settings: VaspReference, potcar_spec: bool = False
) -> np.ndarray:
    """Write INCAR, KPOINTS, POSCAR and POTCAR (or POTCAR.spec) for ``atoms`` into ``directory``.

    Uses atomate2's ``write_vasp_input_set`` with :func:`input_set_generator`, exactly as
    the engine's StaticMaker does; nothing is run.

    Parameters
    ----------
    atoms
        The frame.
    directory
        Created if missing.
    settings
        The reference block.
    potcar_spec
        Write ``POTCAR.spec`` (POTCAR symbols only) instead of ``POTCAR``, which needs
        no pseudopotential library.

    Returns
    -------
    numpy.ndarray
        The permutation: POSCAR atom ``i`` is ``atoms[order[i]]``.
    """
    from atomate2.vasp.files import write_vasp_input_set

    order = grouped_order(atoms.get_chemical_symbols())
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_vasp_input_set(
        _structure(atoms, order),
        input_set_generator(settings),
        directory=directory,
        potcar_spec=potcar_spec,
        clean_prev=False,  # it would delete inputs in the *current* directory
    )
    return order


class VaspEngine:
    """VASP single points via atomate2's ``StaticMaker`` and custodian.

    Parameters
    ----------
    settings
        The validated ``reference`` block.

    Notes
    -----
    A calculation changes the working directory of the process for its duration
    (atomate2 and custodian work in the current directory).
    """

    name = "vasp"

    def __init__(self, settings: VaspReference):
        self.settings = settings

    @classmethod
    def from_settings(cls, settings: VaspReference, omp_threads: int | None = None,
                      cache_dir: Path | None = None) -> VaspEngine:
        """The engine of a validated ``reference`` block (``omp_threads``, ``cache_dir``: unused)."""
        return cls(settings)

    def check_available(self) -> None:
        """Raise :class:`BackendUnavailableError` unless VASP, POTCARs and atomate2 are here."""
        problems = []
        program = _program(run_command(self.settings.vasp_cmd, "reference.vasp_cmd"))
        if shutil.which(program) is None:
            problems.append(f"VASP executable {program!r} not found on PATH ({VASP_INSTALL_HINT})")
        psp_dir = _potcar_dir()
        if not psp_dir:
            problems.append(f"POTCARs are not configured ({POTCAR_HINT})")
        elif not Path(psp_dir).is_dir():
            problems.append(f"PMG_VASP_PSP_DIR {psp_dir!r} is not a directory ({POTCAR_HINT})")
        if problems:
            raise BackendUnavailableError("the vasp reference engine cannot run here: " + "; ".join(problems))
        try:
            import atomate2.vasp.jobs.core  # noqa: F401
        except ImportError as err:
            raise BackendUnavailableError(
                f"the vasp reference engine needs atomate2 and custodian ({err}); pip install atomate2 custodian"
            ) from None

    def label(self, atoms: Atoms, workdir: Path) -> Labels:
        """Energy (eV), forces (eV/Å) and virial (eV) of ``atoms`` from VASP.

        Attempt ``n`` runs in ``workdir/attempt_n``; after ``retries`` failed retries a
        :class:`ReferenceFailedError` names ``workdir``. The energy is the free energy
        (``e_fr_energy``, what the forces are derivatives of); the σ→0 energy is in ``meta``.
        """
        if not atoms.pbc.all():
            raise InputError(f"the vasp reference engine needs a 3D-periodic cell, got pbc={atoms.pbc.tolist()}")
        self.check_available()
        workdir = Path(workdir).resolve()
        frame = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=True)
        order = grouped_order(frame.get_chemical_symbols())

        return label_with_retries(lambda n, directory: self._run(frame, order, directory),
                                  retries=self.settings.retries, what="VASP single point", workdir=workdir)

    def _run(self, frame: Atoms, order: np.ndarray, directory: Path) -> Labels:
        """One attempt: atomate2's StaticMaker in ``directory``, then parse and convert."""
        from atomate2.vasp.jobs.core import StaticMaker

        generator = input_set_generator(self.settings)
        maker = StaticMaker(
            input_set_generator=generator,
            run_vasp_kwargs={
                "vasp_cmd": run_command(self.settings.vasp_cmd, "reference.vasp_cmd"),
                "vasp_gamma_cmd": run_command(self.settings.vasp_gamma_cmd, "reference.vasp_gamma_cmd"),
                "max_errors": self.settings.custodian_max_errors,
                "custodian_kwargs": {"polling_time_step": 1, "monitor_freq": 30},
            },
            stop_children_kwargs={"handle_unsuccessful": False},  # we check the state ourselves
        )
        with _chdir(directory):
            response = maker.make.original(maker, _structure(frame, order))
        labels = labels_from_task_doc(response.output, frame, order, directory)
        labels.meta.update(input_set=type(generator).__name__, input_settings={
            "user_incar_settings": getattr(generator, "user_incar_settings", None),
            "kpoints": list(self.settings.kpoints),  # Γ-centred
            "user_potcar_functional": getattr(generator, "user_potcar_functional", None)})
        return labels


def labels_from_task_doc(task_doc, frame: Atoms, order: np.ndarray, directory: Path) -> Labels:
    """Labels (eV, eV/Å, eV) in the frame's atom order from an emmet VASP ``TaskDoc``.

    Raises
    ------
    RuntimeError
        If the task did not succeed (VASP unfinished or electronically unconverged) or
        its atoms do not match the frame.
    """
    state = str(getattr(task_doc.state, "value", task_doc.state))
    if state != "successful":
        raise RuntimeError(f"task state is {state!r}")
    calc = task_doc.calcs_reversed[0]
    out = task_doc.output
    symbols = frame.get_chemical_symbols()
    if [site.specie.symbol for site in out.structure] != [symbols[i] for i in order]:
        raise RuntimeError("atoms of the VASP output differ from the frame")

    step = calc.output.ionic_steps[-1] if calc.output.ionic_steps else None
    energy = float(step.e_fr_energy if step is not None and step.e_fr_energy is not None else out.energy)
    forces = np.empty((len(frame), 3))
    forces[order] = np.asarray(out.forces, dtype=float)  # eV/Å, back to the frame's order
    virial = None
    if out.stress is not None:
        virial = np.asarray(out.stress, dtype=float) * _KBAR_TO_EV_PER_A3 * frame.get_volume()
    corrections = [c for run in (task_doc.custodian or []) for c in run.get("corrections", [])]
    meta = {
        "engine": "vasp",
        "directory": str(directory),
        "vasp_version": getattr(calc, "vasp_version", None),
        "energy_sigma0": float(step.e_0_energy) if step is not None and step.e_0_energy is not None else None,
        "electronic_steps": step.num_electronic_steps if step is not None else None,
        "scf_converged": True,  # an unconverged run is not "successful"
        "custodian_corrections": [{"errors": c.get("errors"), "actions": c.get("actions")} for c in corrections],
    }
    return Labels(energy=energy, forces=forces, virial=virial, meta=meta)


def _structure(atoms: Atoms, order: np.ndarray):
    """pymatgen Structure of ``atoms[order]`` (positions, cell and species only)."""
    from pymatgen.io.ase import AseAtomsAdaptor

    frame = atoms[order]
    clean = Atoms(numbers=frame.numbers, positions=frame.positions, cell=frame.cell, pbc=True)
    return AseAtomsAdaptor.get_structure(clean)


def _program(command: str) -> str:
    """The VASP program of a command line: the last argument (after any srun/mpirun launcher)."""
    argv = shlex.split(command)
    return argv[-1] if argv else command


def _potcar_dir() -> str | None:
    """pymatgen's POTCAR library directory, if configured."""
    import pymatgen.core

    return os.environ.get("PMG_VASP_PSP_DIR") or pymatgen.core.SETTINGS.get("PMG_VASP_PSP_DIR")
