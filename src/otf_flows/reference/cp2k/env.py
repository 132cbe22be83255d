"""The environment CP2K needs under atomate2: the executable, pymatgen's data dir, env vars.

atomate2's CP2K input sets look basis sets and pseudopotentials up in a *pymatgen* CP2K
data directory (one YAML file per element), made once from CP2K's own ``BASIS_*`` and
``*POTENTIAL*`` files by ``pmg config --cp2k SRC DEST``. pymatgen finds it through
``PMG_CP2K_DATA_DIR``, but gives ``CP2K_DATA_DIR`` precedence, and that variable (CP2K's
own) points at the raw CP2K files, which pymatgen cannot read. :func:`cp2k_environment`
sets the pymatgen variables and hides ``CP2K_DATA_DIR`` for the duration of one
calculation, then restores everything.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from otf_flows import dirs
from otf_flows.errors import BackendUnavailableError

logger = logging.getLogger(__name__)

__all__ = [
    "CP2K_INSTALL_HINT",
    "cache_dir",
    "cp2k_environment",
    "cp2k_program",
    "ensure_pmg_cp2k_data",
    "find_cp2k",
    "find_cp2k_data",
]

CP2K_INSTALL_HINT = "install CP2K ('apt-get install cp2k') or load your HPC cp2k module"

#: Executable names tried, in order, when the configured one is a bare CP2K name.
_CP2K_NAMES = ("cp2k.psmp", "cp2k.ssmp", "cp2k.popt", "cp2k.sopt", "cp2k")

#: Written last into a generated data dir: its presence means the dir is complete.
_COMPLETE_MARKER = ".otf_flows_complete"

#: Serialises :func:`cp2k_environment` blocks: ``os.environ`` and pymatgen's settings
#: are process-wide, so two threads must not hold different values at once.
_ENV_LOCK = threading.RLock()


def find_cp2k(command: str = "cp2k.psmp") -> list[str]:
    """The CP2K command line as an argument list, with the program resolved on ``PATH``.

    Parameters
    ----------
    command
        The configured command, e.g. ``"cp2k.psmp"`` or ``"mpirun -np 4 cp2k.psmp"``.
        If its program is a bare CP2K name that is not on ``PATH``, the other usual
        names (``cp2k.psmp``, ``cp2k.ssmp``, ..., ``cp2k``) are tried.

    Returns
    -------
    list of str
        ``command`` split shell-like, with its CP2K program replaced by an absolute path.

    Raises
    ------
    BackendUnavailableError
        If no CP2K executable is found.
    """
    argv = shlex.split(command)
    if not argv:
        raise BackendUnavailableError("reference.cp2k_cmd is empty; give the CP2K command, e.g. 'cp2k.psmp'")
    index = _program_index(argv)
    program = argv[index]
    candidates = [program]
    if Path(program).name == program and program in _CP2K_NAMES:
        candidates += [name for name in _CP2K_NAMES if name != program]
    for candidate in candidates:
        found = shutil.which(candidate)
        if found:
            if index > 0 and shutil.which(argv[0]) is None:
                raise BackendUnavailableError(f"launcher {argv[0]!r} of reference.cp2k_cmd {command!r} is not on PATH")
            return [*argv[:index], found, *argv[index + 1 :]]
    raise BackendUnavailableError(f"CP2K executable {program!r} not found on PATH; {CP2K_INSTALL_HINT}")


def cp2k_program(argv: list[str]) -> str:
    """The CP2K program of a command line (the first argument naming cp2k, else the first)."""
    return argv[_program_index(argv)]


def _program_index(argv: list[str]) -> int:
    """Index of the CP2K program in ``argv``, after any mpirun/srun launcher."""
    return next((i for i, arg in enumerate(argv) if Path(arg).name.startswith("cp2k")), 0)


def find_cp2k_data(executable: str | os.PathLike | None = None) -> Path:
    """CP2K's own data directory: the one holding ``BASIS_MOLOPT``, ``POTENTIAL``, ...

    Looks in ``$CP2K_DATA_DIR``, then ``<prefix>/share/cp2k[/data]`` next to ``executable``,
    then ``/usr/share/cp2k[/data]`` (Debian/Ubuntu) and ``/usr/local/share/cp2k[/data]``.

    Raises
    ------
    BackendUnavailableError
        If no directory with ``BASIS_MOLOPT`` is found.
    """
    roots: list[Path] = []
    if os.environ.get("CP2K_DATA_DIR"):
        roots.append(Path(os.environ["CP2K_DATA_DIR"]))
    if executable is not None:
        roots.append(Path(executable).resolve().parent.parent / "share" / "cp2k")
    roots += [Path("/usr/share/cp2k"), Path("/usr/local/share/cp2k")]
    for root in roots:
        for candidate in (root, root / "data"):
            if (candidate / "BASIS_MOLOPT").is_file():
                return candidate
    searched = ", ".join(str(r) for r in roots)
    raise BackendUnavailableError(
        f"CP2K data files (BASIS_MOLOPT) not found in {searched}; set CP2K_DATA_DIR or {CP2K_INSTALL_HINT}"
    )


def cache_dir() -> Path:
    """otf_flows' cache directory without a setting or a store: ``$OTF_CACHE_DIR``, else the node's
    temporary directory (:func:`otf_flows.dirs.cache_dir`)."""
    return dirs.cache_dir()


def ensure_pmg_cp2k_data(source: str | os.PathLike | None = None, cache: str | os.PathLike | None = None) -> Path:
    """Generate pymatgen's CP2K data directory once, and return its path.

    Runs ``pmg config --cp2k SOURCE TMP`` (about 25 s) into a temporary directory next to
    the target and renames it into place, holding a file lock, so concurrent jobs neither
    duplicate the work nor see a half-written directory.

    Parameters
    ----------
    source
        CP2K's data directory; default :func:`find_cp2k_data`.
    cache
        Parent directory of the result; default :func:`cache_dir`.

    Returns
    -------
    Path
        ``<cache>/pmg_cp2k``.

    Raises
    ------
    BackendUnavailableError
        If CP2K's data files are missing or ``pmg config`` fails (the message names its log).
    """
    cache = Path(cache) if cache is not None else cache_dir()
    target = cache / "pmg_cp2k"
    if (target / _COMPLETE_MARKER).is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / "pmg_cp2k.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if (target / _COMPLETE_MARKER).is_file():  # made by another process meanwhile
                return target
            src = Path(source) if source is not None else find_cp2k_data()
            _generate_pmg_cp2k_data(src, cache, target)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return target


def _generate_pmg_cp2k_data(source: Path, cache: Path, target: Path) -> None:
    """Run ``pmg config --cp2k`` into a fresh temporary dir and rename it to ``target``."""
    staging = Path(tempfile.mkdtemp(prefix="pmg_cp2k.", dir=cache))
    out = staging / "data"  # must not exist: pmg asks for confirmation otherwise
    log_path = cache / "pmg_cp2k.log"
    logger.info("generating pymatgen CP2K data in %s from %s (about 25 s, once)", target, source)
    cmd = [sys.executable, "-m", "pymatgen.cli.pmg", "config", "--cp2k", str(source), str(out)]
    try:
        with open(log_path, "w") as log:
            subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        (out / _COMPLETE_MARKER).write_text(f"{source}\n")
        if target.exists():  # an incomplete leftover from an interrupted older run
            shutil.rmtree(target)
        os.replace(out, target)
    except (OSError, subprocess.CalledProcessError) as err:
        raise BackendUnavailableError(
            f"could not generate pymatgen CP2K data from {source} ({err}); see {log_path}"
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def cp2k_environment(
    data_dir: str | os.PathLike, functional: str = "PBE", omp_threads: int | None = None
) -> Iterator[None]:
    """Set what pymatgen and CP2K need for one calculation, then restore the old state.

    Inside the block ``PMG_CP2K_DATA_DIR=data_dir`` and
    ``PMG_DEFAULT_CP2K_FUNCTIONAL=functional`` are set (in ``os.environ`` and in
    pymatgen's already-loaded ``pymatgen.core.SETTINGS``), ``OMP_NUM_THREADS`` is set if
    ``omp_threads`` is given, and ``CP2K_DATA_DIR`` is removed so that neither pymatgen
    nor the CP2K process (started by custodian, inheriting ``os.environ``) sees it.
    Blocks are serialised across threads of one process.

    Parameters
    ----------
    data_dir
        pymatgen's CP2K data directory (:func:`ensure_pmg_cp2k_data`).
    functional
        Default functional for pymatgen's basis/potential matching.
    omp_threads
        OpenMP threads of the CP2K process; ``None`` leaves ``OMP_NUM_THREADS`` as it is.
    """
    import pymatgen.core

    env_updates: dict[str, str | None] = {
        "PMG_CP2K_DATA_DIR": str(data_dir),
        "PMG_DEFAULT_CP2K_FUNCTIONAL": functional,
        "CP2K_DATA_DIR": None,
    }
    if omp_threads is not None:
        env_updates["OMP_NUM_THREADS"] = str(omp_threads)
    settings_updates = {k: v for k, v in env_updates.items() if k.startswith("PMG_")}

    with _ENV_LOCK:
        settings = pymatgen.core.SETTINGS  # the dict pymatgen.io.cp2k.sets imported by reference
        old_env = {key: os.environ.get(key) for key in env_updates}
        old_settings = {key: settings.get(key) for key in settings_updates}
        try:
            _apply(os.environ, env_updates)
            _apply(settings, settings_updates)
            yield
        finally:
            _apply(os.environ, old_env)
            _apply(settings, old_settings)


def _apply(mapping, updates: dict[str, str | None]) -> None:
    """Set each key of ``updates`` in ``mapping``; a ``None`` value removes the key."""
    for key, value in updates.items():
        if value is None:
            mapping.pop(key, None)
        else:
            mapping[key] = value
