"""MACE models (mace-torch, CPU) behind the ML-backend protocol (:mod:`otf_flows.ml.base`).

The first fit trains a small MACE from scratch (or from the local file ``model.foundation_model``);
each later fit fine-tunes the parent model's weights on all current training frames, as
hybrid-md's incremental MACE training does. Fits run ``mace.cli.run_train`` in a subprocess
(:func:`mace_train_command` builds its argument list); the continuation uses mace's
``--foundation_model PARENT`` with every parent element and weight kept, so before the first
epoch the child predicts exactly what the parent did. Nothing is downloaded: a foundation
model is only ever a local path.

A model directory holds ``mace.model`` (a pickled torch module, loadable by mace's
``MACECalculator(model_paths=...)``) and ``mace.json`` (species, dtype, how the fit started).

With ``model.committee: N`` (2-4) a fit trains N members (seeds seed, seed+1, ...; member k of a
refit fine-tunes member k of the parent) and the directory also holds ``mace.member1.model``,
...; ``mace.model`` is member 0. ML-MD is driven by member 0 (``committee_md: first``) or by the
committee mean (``mean``); :class:`MaceCommitteeUncertainty` is the uncertainty probe: the
committee's standard deviation of the local (atomic) energies, reduced by ``uncertainty.measure``.
A single model (committee 1) has no uncertainty (:meth:`MaceBackend.uncertainty` is None).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from ase.data import atomic_numbers, chemical_symbols
from ase.io import write

from otf_flows.errors import BackendUnavailableError, FitFailedError
from otf_flows.labels import ENERGY_KEY, FORCES_KEY, VIRIAL_KEY
from otf_flows.ml.base import UNCERTAINTY_MEASURES, FitResult, pack_dir, uncertainty_measure, unpack_dir

logger = logging.getLogger(__name__)

__all__ = ["MODEL_FILE", "MaceBackend", "MaceCommitteeUncertainty", "mace_train_command", "member_files"]

MODEL_FILE = "mace.model"
META_FILE = "mace.json"
LAMMPS_FILE = "mace.model-lammps.pt"
INSTALL_HINT = ("pip install torch==2.13.0 (the CPU wheel first, so that mace-torch does not pull a CUDA build), "
                "then pip install mace-torch")


def mace_train_command(train_file: str, model, *, start: str | None = None, fine_tune: bool = False,
                       virials: bool = False, seed: int | None = 1, python: str = sys.executable) -> list[str]:
    """The ``mace.cli.run_train`` argument list of one fit (no shell quoting needed).

    ``model`` is a ``model: {backend: mace}`` block; ``start`` a model file whose weights the fit
    continues from (``fine_tune``: the parent, with its elements and the fine-tuning epochs and
    learning rate; mace copies every parent weight and buffer, the E0s among them, so ``--E0s``
    only fills the slots that get overwritten; else a foundation model). The training file is also the validation file:
    the few on-the-fly frames are all worth training on, and there is no early stopping.

    Examples
    --------
    >>> from otf_flows.ml.gap.settings import MaceModel
    >>> cmd = mace_train_command("train.xyz", MaceModel(backend="mace"), python="python")
    >>> cmd[:3], "--max_num_epochs=60" in cmd, "--E0s=average" in cmd
    (['python', '-m', 'mace.cli.run_train'], True, True)
    """
    e0s = model.e0s
    if isinstance(e0s, dict):
        e0s = str({atomic_numbers[sym]: float(val) for sym, val in sorted(e0s.items())})
    args = [
        python, "-m", "mace.cli.run_train",
        "--name=mace", f"--train_file={train_file}", f"--valid_file={train_file}",
        f"--energy_key={ENERGY_KEY}", f"--forces_key={FORCES_KEY}", f"--virials_key={VIRIAL_KEY}",
        "--model=MACE", "--device=cpu", f"--default_dtype={model.default_dtype}",
        f"--batch_size={model.batch_size}", f"--valid_batch_size={model.batch_size}",
        f"--energy_weight={model.energy_weight}", f"--forces_weight={model.forces_weight}",
        "--num_workers=0", "--eval_interval=1", "--error_table=PerAtomRMSE", "--save_cpu",
        "--log_dir=logs", "--model_dir=.", "--checkpoints_dir=checkpoints", "--results_dir=results",
    ]
    if virials:
        args += ["--loss=virials", f"--virials_weight={model.virials_weight}"]
    if fine_tune:
        args += [f"--foundation_model={start}", "--foundation_model_elements=True", "--multiheads_finetuning=False",
                 "--E0s=average", f"--max_num_epochs={model.finetune_epochs}", f"--lr={model.finetune_lr}"]
    else:
        if start is not None:
            args += [f"--foundation_model={start}", "--multiheads_finetuning=False"]
        args += [f"--E0s={e0s}", f"--r_max={model.r_max_A}", f"--num_channels={model.num_channels}",
                 f"--max_L={model.max_L}", f"--num_interactions={model.num_interactions}",
                 f"--correlation={model.correlation}", f"--num_radial_basis={model.num_radial_basis}",
                 "--scaling=rms_forces_scaling", f"--max_num_epochs={model.max_num_epochs}", f"--lr={model.lr}"]
    if seed is not None:
        args.append(f"--seed={seed}")
    return args


class MaceBackend:
    """MACE via mace-torch: ``run_train`` for fits, mace's ``MACECalculator`` as the calculator."""

    name = "mace"
    model_file = MODEL_FILE

    def check_available(self) -> None:
        try:
            import mace  # noqa: F401
            import torch  # noqa: F401
        except ImportError as err:
            raise BackendUnavailableError(f"model.backend mace: cannot import mace-torch ({err}): {INSTALL_HINT}") \
                from None

    def fit(self, frames, workdir: Path, model, refit, *, parent_dir: Path | None = None,
            num_threads: int | None = None, seed: int | None = 1) -> FitResult:
        """Train from scratch (or ``model.foundation_model``), or fine-tune the parent in ``parent_dir``
        when its elements cover the training frames'. With ``model.committee`` N > 1, N members one after
        the other (member k in ``workdir/member<k>``, seed ``seed + k``), member k fine-tuning the parent's
        member k (from scratch when the parent has fewer members)."""
        self.check_available()
        workdir = Path(workdir).resolve()
        if workdir.exists():
            shutil.rmtree(workdir)  # a rerun of the job: mace would restart from stale checkpoints
        workdir.mkdir(parents=True)
        numbers = sorted({int(z) for a in frames for z in a.numbers})
        parent_members: list[Path] = []
        if parent_dir is not None:
            parent_species = self.species(parent_dir)
            if set(numbers) <= set(parent_species):
                parent_members = member_files(parent_dir)
            else:
                logger.warning("training frames have elements %s the parent lacks (%s): training from scratch",
                               sorted(set(numbers) - set(parent_species)), parent_species)
        virials = any(VIRIAL_KEY in a.info for a in frames)
        write(workdir / "train.xyz", frames, format="extxyz")
        n_members = getattr(model, "committee", 1)
        model_dir = workdir / "model"
        members, jobs = [], []
        for k in range(n_members):
            kdir = workdir if k == 0 else workdir / f"member{k}"
            kdir.mkdir(exist_ok=True)
            if k < len(parent_members):
                start, fine_tune, started_from = str(parent_members[k]), True, "parent"
            else:
                start, fine_tune = model.foundation_model, False
                started_from = "foundation" if start else "scratch"
                if parent_members:
                    logger.warning("committee member %d has no parent member: training it from scratch", k)
            kseed = seed + k if seed is not None else (None if k == 0 else 123 + k)  # 123: mace's default seed
            cmd = mace_train_command("train.xyz" if k == 0 else "../train.xyz", model, start=start,
                                     fine_tune=fine_tune, virials=virials, seed=kseed)
            jobs.append((cmd, kdir))
            members.append({"file": _member_name(k), "started_from": started_from, "seed": kseed,
                            "start_file": start})
        t0 = time.perf_counter()
        runs = [_run_train(*jobs[0], num_threads)] if n_members == 1 else _run_members(jobs, num_threads)
        total = time.perf_counter() - t0
        model_dir.mkdir()
        for member, (seconds, _), (_, kdir) in zip(members, runs, jobs):
            shutil.copy2(kdir / "mace.model", model_dir / member["file"])
            member["seconds"] = round(seconds, 1)
        cmd, text = jobs[0][0], runs[0][1]
        started_from, start = members[0]["started_from"], members[0]["start_file"]
        meta = {"species": _species_of(model_dir / MODEL_FILE), "default_dtype": model.default_dtype,
                "started_from": started_from, "start_file": start}
        if n_members > 1:
            meta.update(committee=n_members, committee_md=model.committee_md, members=members)
        (model_dir / META_FILE).write_text(json.dumps(meta, indent=1))
        logger.info("MACE fit (%s, %d member%s) on %d frames took %.1f s", started_from, n_members,
                    "s" if n_members > 1 else "", len(frames), total)
        tail = "\n".join(line for line in text.splitlines()[-40:] if "|" in line or "Done" in line)
        settings = model.model_dump(mode="json")
        fit_meta = {"started_from": started_from}
        if n_members > 1:
            fit_meta["members"] = [{k: m[k] for k in ("started_from", "seed", "seconds")} for m in members]
        return FitResult(model_dir, total, cmd, tail, settings=settings, meta=fit_meta)

    def calculator(self, model_dir: Path, cached: bool = False):
        """mace's ``MACECalculator`` of ``model_dir/mace.model`` on the CPU, in the model's dtype."""
        self.check_available()
        path = str((Path(model_dir) / MODEL_FILE).resolve())
        if cached and path in _CALCULATORS:
            calc = _CALCULATORS[path]
            calc.reset()
            return calc
        _import_mace()
        from mace.calculators import MACECalculator

        files = [str(p.resolve()) for p in member_files(model_dir)]
        mean = len(files) > 1 and _meta(model_dir).get("committee_md", "first") == "mean"
        calc = MACECalculator(model_paths=files if mean else path, device="cpu", default_dtype=_dtype(model_dir))
        # the committee for the uncertainty probe: the calculator's own models, then members it does not run
        calc.otf_committee = list(calc.models) if mean else [calc.models[0], *_load_members(files[1:], calc)]
        calc.otf_committee_md = "mean" if mean else "first"
        if cached:
            _CALCULATORS[path] = calc
            while len(_CALCULATORS) > 2:
                _CALCULATORS.pop(next(iter(_CALCULATORS)))
        return calc

    def uncertainty(self, calc, settings):
        """:class:`MaceCommitteeUncertainty` of a committee calculator (``model.committee`` >= 2);
        None for a single model."""
        if len(getattr(calc, "otf_committee", ())) < 2:
            return None
        return MaceCommitteeUncertainty(calc, getattr(settings, "measure", "max_local"))

    def threads(self, num_threads: int | None):
        return torch_threads(num_threads)

    def species(self, model_dir: Path) -> list[int]:
        meta = Path(model_dir) / META_FILE
        if meta.exists():
            return sorted(json.loads(meta.read_text())["species"])
        return _species_of(Path(model_dir) / MODEL_FILE)

    def pack(self, model_dir: Path) -> bytes:
        return pack_dir(model_dir)

    def unpack(self, data: bytes, dest: Path) -> Path:
        return unpack_dir(data, dest)

    def export(self, model_dir: Path, dest: Path, model_id: str, numbers: list[int], data_lines: str = "") -> None:
        """``ase_example.py`` for ``MACECalculator``; a LAMMPS ``pair_style mace`` model
        (:data:`LAMMPS_FILE`, by ``mace.cli.create_lammps_model``) and ``lammps.in``."""
        dest = Path(dest)
        symbols = [chemical_symbols[z] for z in numbers]
        dtype = _dtype(model_dir)
        members = [p.name for p in member_files(model_dir)]
        mean = len(members) > 1 and _meta(model_dir).get("committee_md", "first") == "mean"
        log = dest / "create_lammps_model.log"
        with open(log, "w") as fh:
            proc = subprocess.run(
                [sys.executable, "-m", "mace.cli.create_lammps_model", str(dest / MODEL_FILE), f"--dtype={dtype}"],
                stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=dest, check=False)
        if proc.returncode == 0 and (dest / LAMMPS_FILE).exists():
            log.unlink()
            lammps_note = f"# {LAMMPS_FILE}: written by mace.cli.create_lammps_model ({dtype})\n"
        if len(members) > 1:
            lammps_note += (f"# committee of {len(members)} models ({', '.join(members)}): this is member 0 "
                            f"({MODEL_FILE}); pair_style mace runs one model\n")
        else:
            lammps_note = (f"# {LAMMPS_FILE} could not be written here (see {log.name}); make it with\n"
                           f"#   mace_create_lammps_model {MODEL_FILE} --dtype={dtype}\n")
        (dest / "lammps.in").write_text(
            f"# LAMMPS snippet for MACE model {model_id} (needs LAMMPS built with the ML-MACE package,\n"
            "# https://mace-docs.readthedocs.io/en/latest/guide/lammps.html; not tested here: no such LAMMPS build)\n"
            f"# atom types must be numbered in the order of the elements below ({' '.join(symbols)})\n"
            f"{lammps_note}"
            "units metal\natom_style atomic\natom_modify map yes\nnewton on\n"
            f"{data_lines}"
            "pair_style mace no_domain_decomposition\n"
            f"pair_coeff * * {LAMMPS_FILE} {' '.join(symbols)}\n"
        )
        (dest / "ase_example.py").write_text(
            f'"""Run MD with MACE model {model_id} in ASE (pip install torch==2.13.0, then pip install mace-torch)."""\n'
            "from pathlib import Path\n\n"
            "from ase import units\n"
            "from ase.io import read\n"
            "from ase.md.langevin import Langevin\n"
            "from mace.calculators import MACECalculator\n\n"
            f"{_ase_model_paths(members, mean)}"
            f'calc = MACECalculator(model_paths=model_paths, device="cpu", default_dtype="{dtype}")\n'
            'atoms = read("start.xyz")  # your structure\n'
            "atoms.calc = calc\n"
            "dyn = Langevin(atoms, timestep=1.0 * units.fs, temperature_K=300, friction=0.01 / units.fs)\n"
            "dyn.run(1000)\n"
            'print("potential energy (eV):", atoms.get_potential_energy())\n'
        )


@contextmanager
def torch_threads(num_threads: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(num_threads)`` (restored after; None: unchanged)."""
    if num_threads is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


_CALCULATORS: dict[str, object] = {}


class MaceCommitteeUncertainty:
    """A MACE committee's predicted error of a frame (eV): the standard deviation over the members
    (population, as mace's ``energy_var``) of each atom's local energy (the models' ``node_energy``),
    reduced to one number by ``measure`` as for GAP (:func:`~otf_flows.ml.base.uncertainty_measure`:
    ``max_local`` = the largest, ``mean_local`` = the mean, ``total`` = sqrt of the summed variances).

    The extra members run only in :meth:`value`, i.e. at the frames where the uncertainty is measured,
    and only forward (no forces, no stress). With ``committee_md: first`` member 0's local energies
    come from the MD step's own force call, so ``arm()``/``disarm()`` have nothing to switch; with
    ``mean`` every member is run forward once more at the measured frame (the calculator keeps only
    the mean local energies).
    """

    def __init__(self, calc, measure: str = "max_local"):
        if measure not in UNCERTAINTY_MEASURES:
            raise ValueError(f"unknown uncertainty measure {measure!r}; allowed: {', '.join(UNCERTAINTY_MEASURES)}")
        self.calc = calc
        self.measure = measure
        self.members = list(calc.otf_committee)

    def arm(self) -> None:
        """Nothing to switch: member 0's local energies come with every force call."""

    def disarm(self) -> None:
        """Nothing to switch."""

    def local_energies(self, atoms) -> np.ndarray:
        """(members, atoms) local energies (eV, isolated-atom energies included)."""
        import torch

        calc = self.calc
        rows = []
        own = calc.otf_committee_md == "first" and "energies" in calc.results and calc.atoms is not None \
            and not calc.calculation_required(atoms, ["energy"])
        if own:
            rows.append(np.asarray(calc.results["energies"], dtype=float))
        batch = calc._atoms_to_batch(atoms)
        for model in self.members[1 if own else 0:]:
            data = calc._clone_batch(batch).to_dict()
            with torch.no_grad():
                out = model(data, compute_force=False, compute_stress=False, training=False)
            rows.append(out["node_energy"].detach().cpu().numpy()[: len(atoms)].astype(float))
        return np.stack(rows)

    def value(self, atoms) -> float:
        var = np.var(self.local_energies(atoms), axis=0)
        return uncertainty_measure(var, self.measure)


def member_files(model_dir: Path) -> list[Path]:
    """The model files of a model directory, member 0 (``mace.model``) first."""
    members = _meta(model_dir).get("members")
    if not members:
        return [Path(model_dir) / MODEL_FILE]
    return [Path(model_dir) / m["file"] for m in members]


def _member_name(k: int) -> str:
    return MODEL_FILE if k == 0 else f"mace.member{k}.model"


def _meta(model_dir: Path) -> dict:
    meta = Path(model_dir) / META_FILE
    return json.loads(meta.read_text()) if meta.exists() else {}


def _load_members(files: list[str], calc) -> list:
    """Members the calculator does not run, loaded as it loads its own (device, dtype)."""
    import torch

    dtype = next(calc.models[0].parameters()).dtype
    out = []
    for path in files:
        model = torch.load(f=path, map_location="cpu", weights_only=False).to(dtype)
        for p in model.parameters():
            p.requires_grad_(False)
        out.append(model)
    return out


def _ase_model_paths(members: list[str], mean: bool) -> str:
    here = "Path(__file__).with_name"
    if len(members) == 1:
        return f'model_paths = str({here}("{MODEL_FILE}"))\n'
    listed = ", ".join(f'str({here}("{m}"))' for m in members)
    if mean:
        return (f"# the committee of {len(members)} models; MACECalculator returns their mean (as the campaign's MD)\n"
                f"model_paths = [{listed}]\n")
    return (f"# member 0 of a committee of {len(members)}, as in the campaign's MD; for the committee mean:\n"
            f"# model_paths = [{listed}]\n"
            f'model_paths = str({here}("{MODEL_FILE}"))\n')


def _run_members(jobs: list[tuple[list[str], Path]], num_threads: int | None) -> list[tuple[float, str]]:
    """Run the ``run_train`` argument lists of a committee's members one after the other in ONE Python
    process (:func:`_train_members_main`; saves starting Python and importing torch and mace per member),
    each in its directory with its log ``mace_train.log``; [(seconds, log text)] per member."""
    spec = jobs[0][1] / "members.json"
    spec.write_text(json.dumps([{"dir": str(kdir), "argv": cmd[3:]} for cmd, kdir in jobs]))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if num_threads:
        env["OMP_NUM_THREADS"] = str(num_threads)
    log = jobs[0][1] / "members.log"
    with open(log, "w") as fh:
        proc = subprocess.run([sys.executable, "-c", "from otf_flows.ml.mace.backend import _train_members_main as m; m()",
                               str(spec)], stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                              check=False)
    out = []
    for k, (_, kdir) in enumerate(jobs):
        klog = kdir / "mace_train.log"
        text = klog.read_text(errors="replace") if klog.exists() else ""
        done = kdir / ".seconds"
        if not (done.exists() and (kdir / "mace.model").exists()):
            reason = next((line.strip()[:200] for line in reversed((text or log.read_text(errors="replace"))
                                                                    .splitlines()) if "Error" in line), "")
            raise FitFailedError(f"mace run_train of committee member {k} failed (exit {proc.returncode})"
                                 f"{': ' + reason if reason else ''}; log: {klog if text else log}")
        out.append((float(done.read_text()), text))
    return out


def _train_members_main() -> None:
    """``python -c ...`` entry of :func:`_run_members`: ``mace.cli.run_train`` for each member of the spec file."""
    import logging as logging_
    import traceback

    from mace import tools
    from mace.cli.run_train import run

    for job in json.loads(Path(sys.argv[1]).read_text()):
        os.chdir(job["dir"])
        root = logging_.getLogger()
        for handler in list(root.handlers):  # the previous member's handlers (its log files)
            root.removeHandler(handler)
            handler.close()
        root.filters.clear()
        sys.stdout.flush()
        sys.stderr.flush()
        fd = os.open("mace_train.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        t0 = time.perf_counter()
        try:
            run(tools.build_default_arg_parser().parse_args(job["argv"]))
        except BaseException:  # noqa: BLE001 - reported in the member's log, the parent raises FitFailedError
            traceback.print_exc()
            sys.stdout.flush()
            sys.stderr.flush()
            raise SystemExit(1) from None
        sys.stdout.flush()
        sys.stderr.flush()
        Path(".seconds").write_text(str(time.perf_counter() - t0))


def _run_train(cmd: list[str], workdir: Path, num_threads: int | None) -> tuple[float, str]:
    """Run one ``mace.cli.run_train`` in ``workdir`` (log ``mace_train.log``); (seconds, log text)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if num_threads:
        env["OMP_NUM_THREADS"] = str(num_threads)
    log = workdir / "mace_train.log"
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                              cwd=workdir, check=False)
    seconds = time.perf_counter() - t0
    text = log.read_text(errors="replace")
    if proc.returncode != 0 or not (workdir / "mace.model").exists():
        reason = next((line.strip()[:200] for line in reversed(text.splitlines()) if "Error" in line), "")
        raise FitFailedError(f"mace run_train failed (exit {proc.returncode}){': ' + reason if reason else ''}; "
                             f"log: {log}")
    return seconds, text


def _import_mace() -> None:
    """Import mace's modules, with the line mace prints on import (cuequivariance not available) sent to
    stderr: stdout is for results (``otf fit --json``)."""
    if "mace.calculators" not in sys.modules:
        from contextlib import redirect_stdout

        with redirect_stdout(sys.stderr):
            import mace.calculators  # noqa: F401


def _dtype(model_dir: Path) -> str:
    return _meta(model_dir).get("default_dtype", "float64")


def _species_of(model_file: Path) -> list[int]:
    """Atomic numbers of a MACE model file (its ``atomic_numbers`` buffer)."""
    _import_mace()  # lets torch unpickle full mace modules
    import torch

    model = torch.load(str(model_file), map_location="cpu", weights_only=False)
    return sorted(int(z) for z in model.atomic_numbers.tolist())
