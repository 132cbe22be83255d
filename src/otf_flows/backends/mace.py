"""MACE models (mace-torch, CPU) behind the ML-backend protocol (:mod:`otf_flows.backends.ml`).

The first fit trains a small MACE from scratch (or from the local file ``model.foundation_model``);
each later fit fine-tunes the parent model's weights on all current training frames, as
hybrid-md's incremental MACE training does. Fits run ``mace.cli.run_train`` in a subprocess
(:func:`mace_train_command` builds its argument list); the continuation uses mace's
``--foundation_model PARENT`` with every parent element and weight kept, so before the first
epoch the child predicts exactly what the parent did. Nothing is downloaded: a foundation
model is only ever a local path.

A model directory holds ``mace.model`` (a pickled torch module, loadable by mace's
``MACECalculator(model_paths=...)``) and ``mace.json`` (species, dtype, how the fit started).
MACE gives no uncertainty here (:meth:`MaceBackend.uncertainty` is None).
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

from ase.data import atomic_numbers, chemical_symbols
from ase.io import write

from otf_flows.backends.ml import ENERGY_KEY, FORCES_KEY, VIRIAL_KEY, FitResult, pack_dir, unpack_dir
from otf_flows.errors import BackendUnavailableError, FitFailedError

logger = logging.getLogger(__name__)

__all__ = ["MODEL_FILE", "MaceBackend", "mace_train_command"]

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
    >>> from otf_flows.backends.ml_settings import MaceModel
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
        when its elements cover the training frames'."""
        self.check_available()
        workdir = Path(workdir).resolve()
        if workdir.exists():
            shutil.rmtree(workdir)  # a rerun of the job: mace would restart from stale checkpoints
        workdir.mkdir(parents=True)
        numbers = sorted({int(z) for a in frames for z in a.numbers})
        start, fine_tune, started_from = model.foundation_model, False, "foundation" if model.foundation_model \
            else "scratch"
        if parent_dir is not None:
            parent_species = self.species(parent_dir)
            if set(numbers) <= set(parent_species):
                start, fine_tune, started_from = str(Path(parent_dir) / MODEL_FILE), True, "parent"
            else:
                logger.warning("training frames have elements %s the parent lacks (%s): training from scratch",
                               sorted(set(numbers) - set(parent_species)), parent_species)
        virials = any(VIRIAL_KEY in a.info for a in frames)
        write(workdir / "train.xyz", frames, format="extxyz")
        cmd = mace_train_command("train.xyz", model, start=start, fine_tune=fine_tune, virials=virials, seed=seed)
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
        trained = workdir / "mace.model"
        if proc.returncode != 0 or not trained.exists():
            reason = next((line.strip()[:200] for line in reversed(text.splitlines()) if "Error" in line), "")
            raise FitFailedError(f"mace run_train failed (exit {proc.returncode}){': ' + reason if reason else ''}; "
                                 f"log: {log}")
        model_dir = workdir / "model"
        model_dir.mkdir()
        shutil.copy2(trained, model_dir / MODEL_FILE)
        meta = {"species": _species_of(model_dir / MODEL_FILE), "default_dtype": model.default_dtype,
                "started_from": started_from, "start_file": start}
        (model_dir / META_FILE).write_text(json.dumps(meta, indent=1))
        logger.info("MACE fit (%s) on %d frames took %.1f s", started_from, len(frames), seconds)
        tail = "\n".join(line for line in text.splitlines()[-40:] if "|" in line or "Done" in line)
        settings = model.model_dump(mode="json")
        return FitResult(model_dir, seconds, cmd, tail, settings=settings,
                         meta={"started_from": started_from})

    def calculator(self, model_dir: Path, cached: bool = False):
        """mace's ``MACECalculator`` of ``model_dir/mace.model`` on the CPU, in the model's dtype."""
        self.check_available()
        path = str((Path(model_dir) / MODEL_FILE).resolve())
        if cached and path in _CALCULATORS:
            calc = _CALCULATORS[path]
            calc.reset()
            return calc
        from mace.calculators import MACECalculator

        calc = MACECalculator(model_paths=path, device="cpu", default_dtype=_dtype(model_dir))
        if cached:
            _CALCULATORS[path] = calc
            while len(_CALCULATORS) > 2:
                _CALCULATORS.pop(next(iter(_CALCULATORS)))
        return calc

    def uncertainty(self, calc, settings):
        """None: no uncertainty measure for MACE here (a committee is not built)."""

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
        log = dest / "create_lammps_model.log"
        with open(log, "w") as fh:
            proc = subprocess.run(
                [sys.executable, "-m", "mace.cli.create_lammps_model", str(dest / MODEL_FILE), f"--dtype={dtype}"],
                stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=dest, check=False)
        if proc.returncode == 0 and (dest / LAMMPS_FILE).exists():
            log.unlink()
            lammps_note = f"# {LAMMPS_FILE}: written by mace.cli.create_lammps_model ({dtype})\n"
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
            f'calc = MACECalculator(model_paths=str(Path(__file__).with_name("{MODEL_FILE}")), device="cpu",\n'
            f'                      default_dtype="{dtype}")\n'
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


def _dtype(model_dir: Path) -> str:
    meta = Path(model_dir) / META_FILE
    return json.loads(meta.read_text()).get("default_dtype", "float64") if meta.exists() else "float64"


def _species_of(model_file: Path) -> list[int]:
    """Atomic numbers of a MACE model file (its ``atomic_numbers`` buffer)."""
    import mace  # noqa: F401 - lets torch unpickle full mace modules
    import torch

    model = torch.load(str(model_file), map_location="cpu", weights_only=False)
    return sorted(int(z) for z in model.atomic_numbers.tolist())
