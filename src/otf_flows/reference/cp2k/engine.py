"""CP2K reference engine: one single point through atomate2's CP2K ``StaticMaker``.

Each attempt writes the inputs with atomate2's input-set generator (our fast
MD-checking settings on top), runs CP2K under custodian with atomate2's error handlers,
and parses a ``TaskDocument``. What does not change between calls is done once per process:
the parsed element data files of pymatgen's basis/potential matching (ruamel-parsed, about
5 s per element on a loaded 2-core node), and custodian polls the CP2K process every 0.1 s
instead of every second (see ``benchmarks/engine_overhead.py``). Consecutive frames of a
reference-driven MD can start their SCF from the previous frame's wavefunction
(:meth:`Cp2kEngine.label`'s ``restart``). Units are converted here, once: the task document gives
energies in eV but forces in Hartree/Bohr and the stress in GPa with CP2K's sign (positive
under compression); :class:`~otf_flows.reference.base.Labels` hold eV, eV/Å and the
virial in eV.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import logging
import math
import os
import re
import shlex
import shutil
from collections.abc import Iterator
from contextlib import chdir as _chdir
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from ase import Atoms, units
from ase.geometry import find_mic

from otf_flows.errors import BackendUnavailableError, ConfigError, InputError
from otf_flows.labels import Labels
from otf_flows.reference.base import label_with_retries, run_command
from otf_flows.reference.cp2k.env import (
    cp2k_environment,
    cp2k_program,
    ensure_pmg_cp2k_data,
    find_cp2k,
    find_cp2k_data,
)
from otf_flows.reference.cp2k.settings import Cp2kReference

logger = logging.getLogger(__name__)


__all__ = ["RESTART_MAX_DISPLACEMENT_A", "Cp2kEngine", "added_mos", "input_settings", "resolve_basis_and_potential",
           "reusable_wavefunction"]



#: Data files preferred when a basis/potential name occurs in several CP2K files.
_BASIS_FILES = ("BASIS_MOLOPT", "GTH_BASIS_SETS", "BASIS_SET", "BASIS_MOLOPT_UZH")
_POTENTIAL_FILES = ("POTENTIAL", "GTH_POTENTIALS", "POTENTIAL_UZH")

_SCF_CONVERGED = re.compile(r"SCF run converged in\s+(\d+)\s+steps")
_SCF_NOT_CONVERGED = re.compile(r"SCF run NOT converged")

#: CP2K's analytical stress is printed in GPa and is positive under compression:
#: ASE's stress is its negative, and the virial ``-stress * V`` is ``+cp2k * GPa * V``.
_GPA_TO_EV_PER_A3 = units.GPa

#: Seconds between custodian's polls of the CP2K process: a finished run is noticed within this
#: time (custodian's default of 10 s, or 1 s, rounds every short single point up).
_POLL_SECONDS = 0.1
#: custodian's monitors (the handlers that inspect a running CP2K) run every
#: ``_POLL_SECONDS * _MONITOR_EVERY`` = 30 s, as before the polling got finer.
_MONITOR_EVERY = 300

#: CP2K's wavefunction file of the input atomate2 writes (``GLOBAL/PROJECT_NAME CP2K``);
#: the input's ``SCF_GUESS RESTART`` reads it when present, else CP2K starts from atomic densities.
_WFN = "CP2K-RESTART.wfn"
#: A wavefunction is reused only between frames with the same atoms, the same cell and every atom
#: moved by less than this (Å, minimum image): consecutive MD steps, not unrelated frames.
RESTART_MAX_DISPLACEMENT_A = 0.3


class Cp2kEngine:
    """CP2K single points via atomate2's ``StaticMaker`` and custodian.

    Parameters
    ----------
    settings
        The validated ``reference`` block.
    omp_threads
        ``OMP_NUM_THREADS`` of the CP2K process (the campaign's ``execution.dft.omp_threads``);
        None falls back to ``settings.omp_threads``, then to the environment's.
    cache_dir
        Parent of pymatgen's CP2K data directory, made once (None: :func:`otf_flows.dirs.cache_dir`).

    Notes
    -----
    A calculation changes the working directory and ``os.environ`` of the process for
    its duration (atomate2 and custodian need both), so calculations in threads of one
    process run one at a time.
    """

    name = "cp2k"
    #: :meth:`label` takes ``restart`` (the previous frame of a trajectory and its labels).
    reuses_wavefunction = True

    def __init__(self, settings: Cp2kReference, omp_threads: int | None = None, cache_dir: Path | None = None):
        self.settings = settings
        self.omp_threads = omp_threads or settings.omp_threads
        self.cache_dir = cache_dir

    @classmethod
    def from_settings(cls, settings: Cp2kReference, omp_threads: int | None = None,
                      cache_dir: Path | None = None) -> Cp2kEngine:
        """The engine of a validated ``reference`` block."""
        return cls(settings, omp_threads=omp_threads, cache_dir=cache_dir)

    @property
    def command(self) -> str:
        """``reference.cp2k_cmd`` with ``{ntasks}``/``{nodes}`` of this allocation filled in."""
        return run_command(self.settings.cp2k_cmd, "reference.cp2k_cmd")

    def check_available(self) -> None:
        """Raise :class:`BackendUnavailableError` unless CP2K, its data and atomate2 are here."""
        find_cp2k_data(cp2k_program(find_cp2k(self.command)))
        _import_atomate2()

    def label(self, atoms: Atoms, workdir: Path, restart: tuple[Atoms, Labels] | None = None) -> Labels:
        """Energy (eV), forces (eV/Å) and virial (eV) of ``atoms`` from CP2K.

        Attempt ``n`` runs in ``workdir/attempt_n``; after ``retries`` failed retries a
        :class:`ReferenceFailedError` names ``workdir``.

        ``restart`` is the previous frame of a trajectory and its labels: when :func:`reusable_wavefunction`
        finds it close enough (same atoms and cell, small displacements) and its run left a wavefunction
        file, the first attempt starts its SCF from that wavefunction (``meta["wfn_restart"]`` names the
        file; None: atomic guess). Later attempts start from atomic densities. The labels are the same
        within the SCF tolerance; the SCF needs fewer steps.

        Raises
        ------
        InputError
            If ``atoms`` is not periodic in all three directions.
        BackendUnavailableError
            If CP2K or its data cannot be found.
        ConfigError
            If a basis set or potential name is unknown for an element of ``atoms``.
        ReferenceFailedError
            If every attempt failed or did not converge.
        """
        if not atoms.pbc.all():
            raise InputError(f"the cp2k reference engine needs a 3D-periodic cell, got pbc={atoms.pbc.tolist()}")
        workdir = Path(workdir).resolve()
        argv = find_cp2k(self.command)
        command = shlex.join(argv)
        data_dir = ensure_pmg_cp2k_data(find_cp2k_data(cp2k_program(argv)), cache=self.cache_dir)
        user_settings = input_settings(self.settings, atoms.get_chemical_symbols(), data_dir)
        frame = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=True)

        wfn = reusable_wavefunction(restart, frame)

        def attempt(n: int, directory: Path) -> Labels:
            restarted = _copy_wavefunction(wfn, directory) if wfn is not None and n == 1 else None
            labels = self._run(frame, directory, command, user_settings, data_dir)
            labels.meta["wfn_restart"] = restarted
            # the start of the SCF is an input too: the stored provenance says which
            labels.meta["input_settings"]["wfn_restart"] = restarted
            return labels

        return label_with_retries(attempt, retries=self.settings.retries, what="CP2K single point", workdir=workdir,
                                  fatal=(BackendUnavailableError, InputError))

    def _run(self, frame: Atoms, directory: Path, command: str, user_settings: dict, data_dir: Path) -> Labels:
        """One attempt: atomate2's StaticMaker in ``directory``, then parse and convert."""
        from atomate2.cp2k.jobs.core import StaticMaker
        from atomate2.cp2k.sets.core import StaticSetGenerator
        from pymatgen.io.ase import AseAtomsAdaptor

        kpoints = None
        if tuple(self.settings.kpoints) != (1, 1, 1):
            from pymatgen.io.vasp.inputs import Kpoints

            kpoints = Kpoints.monkhorst_automatic(tuple(self.settings.kpoints))
        generator = StaticSetGenerator(
            user_input_settings=user_settings,
            user_kpoints_settings=kpoints,  # None: Γ point only, no KPOINTS section
            sort_structure=False,  # keep the atom order of the frame
        )
        maker = StaticMaker(
            input_set_generator=generator,
            run_cp2k_kwargs={
                "cp2k_cmd": command,
                "max_errors": self.settings.custodian_max_errors,
                # custodian sleeps polling_time_step (default 10 s) between polls of the
                # process, which would round every short single point up to 10 s.
                "custodian_kwargs": {"polling_time_step": _POLL_SECONDS, "monitor_freq": _MONITOR_EVERY},
            },
            stop_children_kwargs={"handle_unsuccessful": False},  # we check the state ourselves
        )
        structure = AseAtomsAdaptor.get_structure(frame)
        with (
            cp2k_environment(data_dir, self.settings.xc_functional, self.omp_threads),
            _rks_safe_task_parsing(),
            _cached_element_data(),
            _chdir(directory),
        ):
            response = maker.make.original(maker, structure)
        labels = _labels_from_task(response.output, frame, directory)
        labels.meta.update(input_set=type(generator).__name__, input_settings={
            "user_input_settings": user_settings, "kpoints": list(self.settings.kpoints)})
        return labels


def reusable_wavefunction(restart: tuple[Atoms, Labels] | None, frame: Atoms) -> Path | None:
    """The wavefunction file of ``restart`` (previous frame, its labels) if ``frame`` may start from it.

    Only for the same atomic numbers in the same order, the same cell and pbc, and every atom moved
    by less than :data:`RESTART_MAX_DISPLACEMENT_A` (minimum image): consecutive MD steps. None
    otherwise, or when the previous run left no wavefunction.
    """
    if restart is None:
        return None
    previous, labels = restart
    directory = labels.meta.get("directory")
    if directory is None or len(previous) != len(frame):
        return None
    if not (np.array_equal(previous.numbers, frame.numbers) and np.array_equal(previous.pbc, frame.pbc)
            and np.allclose(previous.cell.array, frame.cell.array, rtol=0, atol=1e-8)):
        return None
    delta = frame.positions - previous.positions
    if frame.pbc.all():
        delta, _ = find_mic(delta, frame.cell, pbc=True)
    if np.linalg.norm(delta, axis=1).max() >= RESTART_MAX_DISPLACEMENT_A:
        return None
    for name in (_WFN, f"{_WFN}.gz"):
        path = Path(directory) / name
        if path.is_file():
            return path
    return None


def _copy_wavefunction(source: Path, directory: Path) -> str | None:
    """Put ``source`` (maybe gzipped) into ``directory`` as CP2K's restart file; its path, None on failure."""
    target = directory / _WFN
    try:
        if source.suffix == ".gz":
            with gzip.open(source, "rb") as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
        else:
            shutil.copyfile(source, target)
    except OSError as err:  # a lost restart file costs SCF steps, not the label
        logger.warning("could not reuse the wavefunction %s (%s); atomic guess", source, err)
        target.unlink(missing_ok=True)
        return None
    return str(source)


def input_settings(settings: Cp2kReference, symbols: list[str], data_dir: str | Path) -> dict[str, Any]:
    """atomate2 ``user_input_settings`` (pymatgen ``DftSet`` keywords) for ``settings``.

    Parameters
    ----------
    settings
        The reference block.
    symbols
        Chemical symbols of the frame's atoms.
    data_dir
        pymatgen's CP2K data directory, used to resolve basis and potential names.

    Returns
    -------
    dict
        Settings for :class:`atomate2.cp2k.sets.core.StaticSetGenerator`, with
        ``settings.input_updates`` merged last.
    """
    basis_and_potential: dict[str, dict[str, Any]] = {}
    electrons = 0
    for element in sorted(set(symbols)):
        basis = settings.basis_set_by_element.get(element, settings.basis_set)
        potential = settings.potential_by_element.get(element, settings.potential)
        basis_hash, potential_hash, valence = resolve_basis_and_potential(element, basis, potential, str(data_dir))
        basis_and_potential[element] = {"basis": basis_hash, "potential": potential_hash, "aux_basis": None}
        electrons += valence * symbols.count(element)

    smearing = settings.electronic_temperature_K is not None
    spin = {"UKS": settings.uks}  # not DftSet's spin_polarized keyword (see _rks_safe_task_parsing)
    scf: dict[str, Any] = {"MAX_SCF": settings.max_scf}  # DftSet forces 400 without OT
    if smearing:
        extra = added_mos(electrons)
        scf["ADDED_MOS"] = f"{extra} {extra}" if settings.uks else extra
    updates: dict[str, Any] = {
        "basis_and_potential": basis_and_potential,
        "xc_functionals": settings.xc_functional,
        "cutoff": settings.cutoff_Ry,
        "rel_cutoff": settings.rel_cutoff_Ry,
        "ngrids": settings.ngrids,
        "eps_default": settings.eps_default,
        "eps_pgf_orb": None,  # CP2K's default, sqrt(EPS_DEFAULT); atomate2's 1e-16 is slow
        "eps_scf": settings.eps_scf,
        "ot": False,
        "smearing": smearing,
        "mixing_method": settings.mixing_method,
        "alpha": settings.mixing_alpha,
        "nbuffer": settings.mixing_nbuffer,
        "override_default_params": {"FORCE_EVAL": {"DFT": {**spin, "SCF": scf}}},
    }
    if settings.mixing_beta is not None:
        updates["beta"] = settings.mixing_beta
    if smearing:
        updates["elec_temp"] = settings.electronic_temperature_K
    return _merge(updates, settings.input_updates)


def added_mos(electrons: int) -> int:
    """Empty orbitals per spin channel added for smearing: 25 % of the occupied ones, at least 10.

    They typically reach several eV above the Fermi level, where Fermi-Dirac occupations
    at ~1000 K are negligible, and cost far less than all orbitals (``ADDED_MOS -1``,
    atomate2's choice, which made Si8 about 1.8x slower). For much hotter smearing set
    ``FORCE_EVAL/DFT/SCF/ADDED_MOS`` through ``input_updates``.
    """
    return max(10, math.ceil(0.25 * math.ceil(electrons / 2)))


@functools.lru_cache(maxsize=64)
def resolve_basis_and_potential(element: str, basis: str, potential: str, data_dir: str) -> tuple[str, str, int]:
    """Hashes of a named basis set and pseudopotential in pymatgen's CP2K data.

    A name matches an entry's name or one of its aliases; when several CP2K files hold
    the name, the classic ones (``BASIS_MOLOPT``, ``POTENTIAL``) win, so the choice is
    deterministic. The basis must be made for the potential's number of valence electrons.

    Returns
    -------
    tuple
        ``(basis_hash, potential_hash, valence_electrons)``.

    Raises
    ------
    ConfigError
        If a name is unknown for ``element`` or the electron counts differ.
    """
    path = Path(data_dir) / element
    if not path.is_file():
        raise ConfigError(f"reference: element {element!r} has no CP2K data in {data_dir}")
    with open(path) as handle:
        data = yaml.load(handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    potentials = _named(data.get("potentials", {}), potential, _POTENTIAL_FILES)
    if not potentials:
        raise ConfigError(f"reference.potential: {potential!r} is not a CP2K potential of {element}")
    potential_hash = potentials[0]
    valence = data["potentials"][potential_hash]["info"].get("electrons")
    if valence is None:
        raise ConfigError(f"reference.potential: {potential!r} of {element} has no valence electron count")
    bases = [
        key
        for key in _named(data.get("basis_sets", {}), basis, _BASIS_FILES)
        if data["basis_sets"][key]["info"]["electrons"] in (None, valence)
    ]
    if not bases:
        raise ConfigError(
            f"reference.basis_set: {basis!r} is not a CP2K basis set of {element} for {valence} valence electrons"
        )
    return bases[0], potential_hash, int(valence)


def _named(entries: dict[str, dict], name: str, preferred_files: tuple[str, ...]) -> list[str]:
    """Keys of ``entries`` named or aliased ``name``, preferred files first."""
    keys = [
        key for key, entry in entries.items() if name == entry.get("name") or name in (entry.get("alias_names") or [])
    ]

    def rank(key: str) -> tuple[int, str, str]:
        filename = entries[key].get("filename") or ""
        order = preferred_files.index(filename) if filename in preferred_files else len(preferred_files)
        return order, filename, key

    return sorted(keys, key=rank)


def _labels_from_task(task_doc, frame: Atoms, directory: Path) -> Labels:
    """Labels (eV, eV/Å, eV) from an atomate2 CP2K task document; raises if unconverged."""
    state = str(getattr(task_doc.state, "value", task_doc.state))
    if state != "successful":
        raise RuntimeError(f"task state is {state!r}")
    output_text = _read_output(directory)
    if _SCF_NOT_CONVERGED.search(output_text) or not _SCF_CONVERGED.search(output_text):
        raise RuntimeError("SCF did not converge")
    out = task_doc.output
    species = [site.specie.symbol for site in out.structure]
    if species != frame.get_chemical_symbols():
        raise RuntimeError("atom order of the CP2K output differs from the frame")

    energy = float(out.energy)  # eV (pymatgen converted it)
    forces = np.asarray(out.forces, dtype=float) * (units.Hartree / units.Bohr)
    if forces.shape != (len(frame), 3):
        raise RuntimeError(f"parsed forces have shape {forces.shape}, expected {(len(frame), 3)}")
    virial = None
    if out.stress is not None:
        virial = np.asarray(out.stress, dtype=float) * _GPA_TO_EV_PER_A3 * frame.get_volume()

    calc = task_doc.calcs_reversed[0]
    corrections = [c for run in (task_doc.custodian or []) for c in run.get("corrections", [])]
    meta = {
        "engine": "cp2k",
        "directory": str(directory),
        "cp2k_version": calc.cp2k_version,
        "scf_steps": int(_SCF_CONVERGED.findall(output_text)[-1]),
        "scf_converged": True,  # checked above
        "cp2k_seconds": getattr(calc.output.run_stats, "total_time", None),
        "custodian_corrections": [{"errors": c.get("errors"), "actions": c.get("actions")} for c in corrections],
    }
    return Labels(energy=energy, forces=forces, virial=virial, meta=meta)


def _read_output(directory: Path) -> str:
    """Text of ``cp2k.out`` (atomate2 gzips it after parsing)."""
    plain, zipped = directory / "cp2k.out", directory / "cp2k.out.gz"
    if zipped.is_file():
        with gzip.open(zipped, "rt") as handle:
            return handle.read()
    return plain.read_text()


#: Parsed element files of pymatgen's CP2K data, by (path, mtime, size): read-only after parsing.
_ELEMENT_DATA: dict[tuple[str, int, int], Any] = {}


@contextlib.contextmanager
def _cached_element_data() -> Iterator[None]:
    """Parse each element file of pymatgen's CP2K data once per process.

    ``DftSet.get_basis_and_potential`` parses the element's whole data file (all basis sets and
    potentials, ~250 kB for Si) with ruamel's round-trip loader on every input set: seconds per
    element and call. For the duration of the block the module's ``YAML`` is a loader that keeps
    each parsed file (keyed by path, mtime and size, so a regenerated file is read again); pymatgen
    only reads the result.
    """
    from pymatgen.io.cp2k import sets

    original = sets.YAML

    class _CachedYAML:
        def load(self, stream):
            path = getattr(stream, "name", None)
            if not isinstance(path, str):
                return original().load(stream)
            stat = os.stat(path)
            key = (os.path.abspath(path), stat.st_mtime_ns, stat.st_size)
            if key not in _ELEMENT_DATA:
                _ELEMENT_DATA[key] = original().load(stream)
            return _ELEMENT_DATA[key]

    sets.YAML = _CachedYAML
    try:
        yield
    finally:
        sets.YAML = original


@contextlib.contextmanager
def _rks_safe_task_parsing() -> Iterator[None]:
    """Let atomate2 0.1.x parse restricted (RKS) CP2K runs.

    ``CalculationInput.cleanup_dft`` calls ``.upper()`` on every value of the parsed
    ``DFT|`` block until one equals "UKS"; for an RKS run it reaches the integer
    multiplicity and raises ``AttributeError``. For the duration of the block the
    module's ``CalculationInput`` is replaced by a subclass whose validator skips
    non-strings (same result otherwise).
    """
    from atomate2.cp2k.schemas import calculation
    from pydantic import field_validator

    original = calculation.CalculationInput

    class _CalculationInput(original):
        @field_validator("dft", mode="before")
        @classmethod
        def cleanup_dft(cls, dft: dict) -> dict:
            if any(isinstance(v, str) and v.upper() == "UKS" for v in dft.values()):
                dft["UKS"] = True
            return dft

    calculation.CalculationInput = _CalculationInput
    try:
        yield
    finally:
        calculation.CalculationInput = original


def _import_atomate2() -> None:
    """Import what a CP2K calculation needs, or explain what to install."""
    try:
        import atomate2.cp2k.jobs.core  # noqa: F401
        import custodian.cp2k.handlers  # noqa: F401
    except ImportError as err:
        raise BackendUnavailableError(
            f"the cp2k reference engine needs atomate2 and custodian ({err}); pip install atomate2 custodian"
        ) from None


def _merge(base: dict, updates: dict) -> dict:
    """``base`` updated recursively with ``updates`` (new dicts, inputs untouched)."""
    merged = dict(base)
    for key, value in updates.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged
