"""GAP models: the ``gap_fit`` command line, fitting, model archives and the calculator.

The command line is built by a pure function (:func:`gap_fit_command`); the fit runs
``gap_fit`` from quippy-ase from scratch on all training data.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ase import Atoms
from ase.io import write

from otf_flows.errors import BackendUnavailableError, ConfigError, FitFailedError
from otf_flows.labels import ENERGY_KEY, FORCES_KEY, VIRIAL_KEY
from otf_flows.ml.base import UNCERTAINTY_MEASURES, FitResult, pack_dir, uncertainty_measure, unpack_dir
from otf_flows.ml.gap import presets as gap_presets

logger = logging.getLogger(__name__)

def descriptor_for(preset: str, descriptor_str: str | None = None, numbers=None) -> str:
    """The gap_fit descriptor string of a fit: ``descriptor_str`` when given, else ``preset``'s.

    ``numbers`` are the atomic numbers of the training data (for species-generic presets).
    The one place where a preset name becomes a descriptor string.
    """
    if descriptor_str:
        return descriptor_str
    try:
        return gap_presets.descriptor_for(preset, numbers)
    except ValueError as err:
        raise ConfigError(f"model.preset: {err}") from None


def format_e0(e0) -> str | None:
    """gap_fit's ``e0`` value from a number, 'Si:-158.5' string or a mapping."""
    if e0 is None:
        return None
    if isinstance(e0, dict):
        return "{" + ":".join(f"{sym}:{val}" for sym, val in e0.items()) + "}"
    text = str(e0).strip()
    if ":" in text and not text.startswith("{"):
        return "{" + text + "}"
    return text


def gap_fit_command(
    train_file: str,
    gp_file: str,
    descriptor_str: str,
    default_sigma: str = "0.002 0.2 0.2 0.0",
    e0=None,
    e0_method: str = "average",
    extra_gap_opts: str = "",
    energy_key: str = ENERGY_KEY,
    forces_key: str = FORCES_KEY,
    virial_key: str = VIRIAL_KEY,
    executable: str = "gap_fit",
    seed: int | None = None,
) -> list[str]:
    """The ``gap_fit`` argument list (no shell quoting needed).

    Examples
    --------
    >>> gap_fit_command("t.xyz", "gap.xml", "distance_2b cutoff=4", e0=-1.5)[:3]
    ['gap_fit', 'at_file=t.xyz', 'gap={distance_2b cutoff=4}']
    """
    if not descriptor_str.strip():
        raise ValueError("descriptor_str is empty")
    args = [
        executable,
        f"at_file={train_file}",
        f"gap={{{descriptor_str.strip()}}}",
        f"default_sigma={{{default_sigma}}}",
    ]
    e0_value = format_e0(e0)
    args.append(f"e0={e0_value}" if e0_value is not None else f"e0_method={e0_method}")
    args += [
        f"energy_parameter_name={energy_key}",
        f"force_parameter_name={forces_key}",
        f"virial_parameter_name={virial_key}",
        "config_type_parameter_name=config_type",
        f"gp_file={gp_file}",
        "do_copy_at_file=F",
        "sparse_separate_file=T",
    ]
    extra = split_opts(extra_gap_opts)
    if seed is not None and not any(opt.startswith("rnd_seed=") for opt in extra):
        args.append(f"rnd_seed={seed}")  # reproducible sparse-point selection
    return args + extra


def split_opts(text: str) -> list[str]:
    """Split 'a=1 b = {x y}' into ['a=1', 'b={x y}'] keeping braces together."""
    text = " ".join(text.replace(" =", "=").replace("= ", "=").split())
    out, depth, current = [], 0, ""
    for ch in text:
        if ch == " " and depth == 0:
            if current:
                out.append(current)
            current = ""
            continue
        depth += ch == "{"
        depth -= ch == "}"
        current += ch
    if current:
        out.append(current)
    return out


def with_option(extra_gap_opts: str, key: str, value) -> str:
    """``extra_gap_opts`` with ``key`` set to ``value`` (replacing any existing one)."""
    kept = [opt for opt in split_opts(extra_gap_opts) if opt.split("=", 1)[0] != key]
    return " ".join([*kept, f"{key}={value}"])


def check_gap_fit(executable: str = "gap_fit") -> str:
    """Path of ``gap_fit`` or :class:`BackendUnavailableError` with an install hint."""
    path = shutil.which(executable)
    if path is None:
        raise BackendUnavailableError(f"{executable} not found on PATH: pip install quippy-ase")
    return path


def fit_gap(
    frames: list[Atoms],
    workdir: Path,
    settings,
    descriptor_str: str,
    num_threads: int | None = None,
    seed: int | None = 1,
) -> FitResult:
    """Fit a GAP from scratch on ``frames`` (labels in ``REF_*`` keys) inside ``workdir``.

    Parameters
    ----------
    frames
        Training structures with ``info['REF_energy']``, ``arrays['REF_forces']`` and
        optionally ``info['REF_virial']``.
    workdir
        Directory for the training file, the log and the model (created).
    settings
        The campaign's ``refit`` block (default_sigma, e0, e0_method, extra_gap_opts).
    descriptor_str
        gap_fit descriptor string.
    num_threads
        OpenMP threads (default: leave the environment's setting).
    seed
        gap_fit's ``rnd_seed`` unless ``extra_gap_opts`` sets one (None: gap_fit's default).
    """
    check_gap_fit()
    workdir = Path(workdir).resolve()  # gap_fit runs inside it
    model_dir = workdir / "model"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    model_dir.mkdir(parents=True)
    train = workdir / "train.xyz"
    write(train, frames, format="extxyz")
    # relative to cwd=workdir: gap_fit aborts on a gp_file path longer than ~200 characters
    cmd = gap_fit_command(
        train.name,
        str((model_dir / "gap.xml").relative_to(workdir)),
        descriptor_str,
        default_sigma=settings.default_sigma,
        e0=settings.e0,
        e0_method=settings.e0_method,
        extra_gap_opts=settings.extra_gap_opts,
        seed=seed,
    )
    env = {**os.environ}
    if num_threads:
        env["OMP_NUM_THREADS"] = str(num_threads)
    log = workdir / "gap_fit.log"
    start = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=workdir, check=False)
    seconds = time.perf_counter() - start
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
    if proc.returncode != 0 or not (model_dir / "gap.xml").exists():
        reason = _failure_reason(log)
        raise FitFailedError(f"gap_fit failed (exit {proc.returncode}){reason}; log: {log}")
    logger.info("gap_fit on %d frames took %.1f s", len(frames), seconds)
    return FitResult(model_dir, seconds, cmd, tail)


def _failure_reason(log: Path) -> str:
    text = log.read_text(errors="replace")
    for marker in ("LA_Matrix_Factorise", "SYSTEM ABORT", "ERROR"):
        for line in text.splitlines():
            if marker in line:
                return f": {line.strip()[:200]}"
    return ""


def pack_model(model_dir: Path) -> bytes:
    """tar.gz of the model directory (XML and sparseX files together)."""
    return pack_dir(model_dir)


def unpack_model(data: bytes, dest: Path) -> Path:
    """Extract a model archive into ``dest`` (once) and return the XML path."""
    return unpack_dir(data, dest) / "gap.xml"


def gap_calculator(xml: Path, cached: bool = False):
    """A quippy ``Potential`` for the GAP in ``xml`` (run from its directory's files).

    With ``cached``, the Potential of the same file made earlier in this process is returned
    (reset) instead of parsing the XML again, which costs 0.1-1 s per ML-MD segment for the
    larger presets. Only for files that never change, such as extracted model archives.
    """
    if not cached:
        return _new_potential(xml)
    key = str(Path(xml).resolve())
    pot = _POTENTIALS.pop(key, None) or _new_potential(xml)
    pot.reset()
    _POTENTIALS[key] = pot  # most recently used last
    while len(_POTENTIALS) > _POTENTIAL_CACHE_SIZE:
        _POTENTIALS.pop(next(iter(_POTENTIALS)))
    return pot


@contextmanager
def quip_threads(num_threads: int | None) -> Iterator[None]:
    """Run the block with at most ``num_threads`` OpenMP and BLAS threads in this process.

    quip runs inside the ML-MD process, where ``OMP_NUM_THREADS`` counts only when its libraries
    load, so the limit is set at run time (threadpoolctl) on every OpenMP and BLAS library loaded,
    quip's among them, and restored after. ``None`` leaves them as they are. (The quippy-ase wheel
    from PyPI has a single-threaded quip; an OpenMP build of QUIP follows the limit.)
    """
    if num_threads is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=num_threads):
        yield


class GapUncertainty:
    """GAP's predicted error of a frame from quippy's ``local_gap_variance``, reduced to one number
    by ``measure`` (:func:`uncertainty_measure`; default the largest standard deviation of a local
    energy, ``sqrt(max_i local_gap_variance_i)``, eV).

    ``arm()`` adds ``local_gap_variance`` to the Potential's calc_args so that the next force
    call of the MD step also computes the variance (no extra call); ``value(atoms)`` reads
    it, or computes energy, forces and variance at once if the last call did not.
    """

    def __init__(self, potential, measure: str = "max_local"):
        if measure not in UNCERTAINTY_MEASURES:
            raise ValueError(f"unknown uncertainty measure {measure!r}; allowed: {', '.join(UNCERTAINTY_MEASURES)}")
        self.potential = potential
        self.measure = measure
        self._base = potential.calc_args or ""

    def arm(self) -> None:
        self.potential.calc_args = f"{self._base} local_gap_variance".strip()

    def disarm(self) -> None:
        self.potential.calc_args = self._base

    def value(self, atoms) -> float:
        pot = self.potential
        variance = pot.extra_results.get("atoms", {}).get("local_gap_variance")
        if variance is None or pot.atoms is None or pot.calculation_required(atoms, ["energy", "forces"]):
            self.arm()
            try:
                pot.reset()
                pot.calculate(atoms, ["energy", "forces"])
            finally:
                self.disarm()
            variance = pot.extra_results["atoms"]["local_gap_variance"]
        return uncertainty_measure(variance, self.measure)


_POTENTIALS: dict[str, object] = {}
_POTENTIAL_CACHE_SIZE = 2


def _new_potential(xml: Path):
    try:
        from quippy.potential import Potential
    except ImportError as err:
        raise BackendUnavailableError(f"quippy cannot be imported ({err}): pip install quippy-ase") from None
    return Potential(param_filename=str(xml))
