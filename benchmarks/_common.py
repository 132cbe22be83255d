"""Shared pieces of the benchmark scripts: arguments, result files, in-process timers.

Not part of the package: the scripts in this folder import it from their own directory.
Timers patch classes of jobflow, quippy and otf_flows *in this process only* for the
duration of a ``with`` block, so the campaign code itself is measured unchanged.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
REPO = HERE.parent


# ----------------------------------------------------------------------------- arguments, files
def parser(description: str) -> argparse.ArgumentParser:
    """Arguments every benchmark takes: ``--quick``, ``--out``, ``--keep``."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="small smoke-test run (a minute or two)")
    p.add_argument("--out", type=Path, default=RESULTS, help="directory for the JSON and Markdown results")
    p.add_argument("--keep", action="store_true", help="keep the temporary store and job folders")
    p.add_argument("--from-json", type=Path, default=None, metavar="RESULT.json",
                   help="only rewrite the Markdown (and JSON) of an earlier result into --out")
    return p


def rerender(args, name: str, markdown) -> bool:
    """With ``--from-json``: write the Markdown of a stored result again; True if done."""
    if args.from_json is None:
        return False
    res = json.loads(Path(args.from_json).read_text())
    write_results(args.out, name, res["quick"], res, markdown(res, res["machine"], res["benchmark_wall_s"]))
    return True


@contextmanager
def workdir(keep: bool, prefix: str):
    """A temporary directory for stores and job folders (removed unless ``keep``)."""
    path = Path(tempfile.mkdtemp(prefix=f"otf-bench-{prefix}-"))
    try:
        yield path
    finally:
        if keep:
            print(f"kept {path}", file=sys.stderr)
        else:
            shutil.rmtree(path, ignore_errors=True)


def machine() -> dict:
    """Where and when: date, CPU, cores, load, versions (timings are only comparable on one machine)."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for mod in ("ase", "jobflow", "maggma", "numpy"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - missing or without __version__
            versions[mod] = None
    try:
        from importlib.metadata import version

        versions["quippy-ase"] = version("quippy-ase")
    except Exception:  # noqa: BLE001
        versions["quippy-ase"] = None
    return {
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_average_1_5_15": list(os.getloadavg()),
        "python": platform.python_version(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "versions": versions,
        "git_commit": _git_commit(),
    }


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             check=False, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=False, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def write_results(out_dir: Path, name: str, quick: bool, data: dict, markdown: str) -> tuple[Path, Path]:
    """``<name>.json`` and ``<name>.md`` (``<name>_quick.*`` in quick mode) in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{name}_quick" if quick else name
    js, md = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    js.write_text(json.dumps(_jsonable(data), indent=2, allow_nan=False) + "\n")
    md.write_text(markdown.rstrip() + "\n")
    print(markdown)
    print(f"\nwrote {js} and {md}", file=sys.stderr)
    return js, md


def _jsonable(obj):
    """NaN/inf become None, numpy scalars plain numbers, tuples lists."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        try:
            obj = obj.item()
        except (TypeError, ValueError):
            pass
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def table(headers: list[str], rows: list[list]) -> str:
    """A Markdown table."""
    def cell(v):
        if v is None:
            return "–"
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def header(title: str, command: str, info: dict, wall_s: float) -> str:
    """The Markdown preamble: title, reproducing command, date, machine, load."""
    load = ", ".join(f"{x:.1f}" for x in info["load_average_1_5_15"])
    return (
        f"## {title}\n\n"
        f"`{command}` — {info['date_utc']}, {info['cores']} cores ({info['cpu']}), "
        f"load average at the end {load}, benchmark wall time {wall_s:.0f} s, commit {info.get('git_commit')}.\n"
    )


def percentile(values, q: float):
    """``numpy.percentile`` or None for no values."""
    import numpy as np

    values = [v for v in values if v is not None]
    return float(np.percentile(values, q)) if values else None


def stats(values) -> dict:
    """n, mean, median, p95, max of the non-None values."""
    import numpy as np

    values = [float(v) for v in values if v is not None]
    if not values:
        return {"n": 0, "mean": None, "median": None, "p95": None, "max": None}
    return {"n": len(values), "mean": float(np.mean(values)), "median": float(np.median(values)),
            "p95": float(np.percentile(values, 95)), "max": float(np.max(values))}


# ----------------------------------------------------------------------------- in-process timers
def _job_category(job) -> str:
    """Short category of a campaign job from its maker class."""
    maker = getattr(getattr(job, "function", None), "__self__", None)
    name = type(maker).__name__ if maker is not None else str(job.name)
    return {
        "InitialMDMaker": "initial_md",
        "RefitMaker": "fit",
        "MDSegmentMaker": "ml_md",
        "ReferenceCheckMaker": "check",
        "DecideMaker": "decide",
        "ValidateMaker": "validate",
        "FinishMaker": "finish",
    }.get(name, name)


class CampaignTimer:
    """Times, in this process, every job the local runner runs and what happens inside it.

    Per job: wall time of ``Job.run`` (jobflow's reference resolution, the job body, output
    storage), the seconds its ledger entries record per kind (the ``timed`` blocks), time in
    ``quippy.potential.Potential.calculate`` (GAP force evaluation) and ``__init__`` (model
    loading), and the unpacking of model archives. The wrappers add a few microseconds per call.
    """

    def __init__(self):
        self.jobs: list[dict] = []
        self._current: dict | None = None
        self.outside = self._bucket("outside jobs", "outside")
        self._saved: list[tuple[object, str, object]] = []

    @staticmethod
    def _bucket(name: str, category: str) -> dict:
        return {"name": name, "category": category, "wall": 0.0, "ledger": defaultdict(float),
                "gap_calc": 0.0, "gap_calls": 0, "gap_load": 0.0, "model_unpack": 0.0,
                "cpu": 0.0, "ledger_cpu": defaultdict(float)}

    def _into(self) -> dict:
        return self._current if self._current is not None else self.outside

    def _patch(self, owner, attr: str, wrapper_factory):
        original = getattr(owner, attr)
        self._saved.append((owner, attr, original))
        setattr(owner, attr, wrapper_factory(original))

    def __enter__(self):
        import jobflow
        import quippy.potential

        import otf_flows.jobs.base
        import otf_flows.jobs.md
        import otf_flows.store

        timer = self

        def run_factory(original):
            def run(job, *args, **kwargs):
                bucket = timer._bucket(str(job.name), _job_category(job))
                previous, timer._current = timer._current, bucket
                start, cpu = time.perf_counter(), time.thread_time()
                try:
                    return original(job, *args, **kwargs)
                finally:
                    bucket["wall"] = time.perf_counter() - start
                    bucket["cpu"] = time.thread_time() - cpu
                    timer._current = previous
                    timer.jobs.append(bucket)
            return run

        def calc_factory(original):
            def calculate(pot, *args, **kwargs):
                start = time.perf_counter()
                try:
                    return original(pot, *args, **kwargs)
                finally:
                    b = timer._into()
                    b["gap_calc"] += time.perf_counter() - start
                    b["gap_calls"] += 1
            return calculate

        def init_factory(original):
            def __init__(pot, *args, **kwargs):
                start = time.perf_counter()
                try:
                    return original(pot, *args, **kwargs)
                finally:
                    timer._into()["gap_load"] += time.perf_counter() - start
            return __init__

        def record_factory(original):
            def record_time(store, entry, entry_id):
                timer._into()["ledger"][entry.kind] += entry.seconds
                return original(store, entry, entry_id)
            return record_time

        def unpack_factory(original):
            def model_dir(*args, **kwargs):
                start = time.perf_counter()
                try:
                    return original(*args, **kwargs)
                finally:
                    timer._into()["model_unpack"] += time.perf_counter() - start
            return model_dir

        def timed_factory(original):
            @contextmanager
            def timed(store, campaign, kind, *args, **kwargs):
                cpu = time.thread_time()
                with original(store, campaign, kind, *args, **kwargs):
                    yield
                timer._into()["ledger_cpu"][kind] += time.thread_time() - cpu
            return timed

        self._patch(jobflow.Job, "run", run_factory)
        # thread CPU time of the timed blocks (``timed`` is imported by name into the job modules)
        original_timed = otf_flows.jobs.base.timed
        for module in [m for name, m in sys.modules.items() if name.startswith("otf_flows.")]:
            if getattr(module, "timed", None) is original_timed:
                self._patch(module, "timed", timed_factory)
        self._patch(quippy.potential.Potential, "calculate", calc_factory)
        self._patch(quippy.potential.Potential, "__init__", init_factory)
        self._patch(otf_flows.store.OtfStore, "record_time", record_factory)
        self._patch(otf_flows.jobs.md, "model_dir", unpack_factory)
        return self

    def __exit__(self, *exc):
        for owner, attr, original in reversed(self._saved):
            setattr(owner, attr, original)
        self._saved.clear()
        return False

    # ------------------------------------------------------------------ summaries
    def by_category(self) -> dict[str, dict]:
        """Totals per job category: count, wall, ledger seconds, GAP time, job-shell time."""
        out: dict[str, dict] = {}
        for b in self.jobs:
            c = out.setdefault(b["category"], {"jobs": 0, "wall_s": 0.0, "ledger_s": 0.0, "gap_calc_s": 0.0,
                                               "gap_calls": 0, "gap_load_s": 0.0, "model_unpack_s": 0.0})
            c["jobs"] += 1
            c["wall_s"] += b["wall"]
            c["ledger_s"] += sum(b["ledger"].values())
            c["gap_calc_s"] += b["gap_calc"]
            c["gap_calls"] += b["gap_calls"]
            c["gap_load_s"] += b["gap_load"]
            c["model_unpack_s"] += b["model_unpack"]
        for c in out.values():
            c["shell_s"] = c["wall_s"] - c["ledger_s"]
            c["shell_ms_per_job"] = 1e3 * c["shell_s"] / c["jobs"]
        return out

    def split(self, wall_s: float) -> dict:
        """Where the campaign's wall time went (seconds), with the overhead definitions of README.md.

        - ``reference``, ``fit``: the ledger's timed blocks of DFT labels and gap_fit;
        - ``gap_force``: ``Potential.calculate`` anywhere (ML-MD segments and validation);
        - ``md_machinery``: ML-MD timed blocks minus their GAP calls, model loading and unpacking
          (ASE integrator, guard, trajectory frames, end-of-segment labels);
        - ``model_loading``: model archive unpacking + ``Potential.__init__`` inside segments;
        - ``validation``: validate jobs (their GAP calls excluded, they are in ``gap_force``);
        - ``decide``: timed block of compare + decide (error metrics, check document);
        - ``job_framework``: every job's wall time outside its timed blocks (jobflow reference
          resolution and output storage, store reads/writes, config validation, Response);
        - ``runner``: campaign wall time outside any job (run_flow's loop, job folders, campaign doc).
        """
        led = defaultdict(float)
        for b in self.jobs:
            for kind, s in b["ledger"].items():
                led[(b["category"], kind)] += s
        reference = sum(s for (cat, kind), s in led.items() if kind == "reference")
        fit = sum(s for (cat, kind), s in led.items() if kind == "fit")
        md_jobs = [b for b in self.jobs if b["category"] == "ml_md"]
        md_timed = sum(b["ledger"].get("ml_md", 0.0) for b in md_jobs)
        md_gap = sum(b["gap_calc"] for b in md_jobs)
        md_load = sum(b["gap_load"] + b["model_unpack"] for b in md_jobs)
        gap_all = sum(b["gap_calc"] for b in self.jobs) + self.outside["gap_calc"]
        val_jobs = [b for b in self.jobs if b["category"] == "validate"]
        validation = sum(b["wall"] - b["gap_calc"] for b in val_jobs)
        decide = sum(b["ledger"].get("other", 0.0) for b in self.jobs if b["category"] == "decide")
        job_wall = sum(b["wall"] for b in self.jobs)
        framework = sum(b["wall"] - sum(b["ledger"].values()) for b in self.jobs if b["category"] != "validate")
        runner = wall_s - job_wall
        n_jobs = len(self.jobs)
        strict = wall_s - reference - fit - gap_all
        proper = framework + runner + decide
        return {
            "wall_s": wall_s,
            "jobs": n_jobs,
            "reference_s": reference,
            "fit_s": fit,
            "gap_force_s": gap_all,
            "gap_force_md_s": md_gap,
            "gap_calls": sum(b["gap_calls"] for b in self.jobs),
            "ml_md_timed_s": md_timed,
            "md_machinery_s": md_timed - md_gap - md_load,
            "model_loading_s": md_load,
            "validation_s": validation,
            "decide_s": decide,
            "job_framework_s": framework,
            "runner_s": runner,
            "overhead_strict_s": strict,
            "overhead_strict_fraction": strict / wall_s if wall_s else None,
            "overhead_strict_ms_per_job": 1e3 * strict / n_jobs if n_jobs else None,
            "orchestration_s": proper,
            "orchestration_fraction": proper / wall_s if wall_s else None,
            "orchestration_ms_per_job": 1e3 * proper / n_jobs if n_jobs else None,
        }


# ----------------------------------------------------------------------------- data for GAP fits
SW_SI = """<SW_params n_types="1">
<per_type_data type="1" atomic_num="14" />
<per_pair_data atnum_i="14" atnum_j="14" AA="7.049556277" BB="0.6022245584" p="4" q="0" a="1.80" sigma="2.0951" eps="2.1675" />
<per_triplet_data atnum_c="14" atnum_j="14" atnum_k="14" lambda="21.0" gamma="1.20" eps="2.1675" />
</SW_params>"""


def labelled_md_frames(atoms, calculator, n_frames: int, every: int, temperature_K: float, seed: int = 1):
    """``n_frames`` snapshots of Langevin MD with ``calculator``, labelled in ``REF_*`` keys (training data)."""
    import numpy as np
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    atoms = atoms.copy()
    atoms.calc = calculator
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=np.random.default_rng(seed))
    dyn = Langevin(atoms, 1.0 * units.fs, temperature_K=temperature_K, friction=0.02 / units.fs,
                   rng=np.random.default_rng(seed + 1))
    frames = []
    for _ in range(n_frames):
        dyn.run(every)
        frame = atoms.copy()
        frame.calc = None
        frame.info["REF_energy"] = float(atoms.get_potential_energy())
        frame.arrays["REF_forces"] = atoms.get_forces().copy()
        frame.info["REF_virial"] = (-atoms.get_stress(voigt=False) * atoms.get_volume()).reshape(-1)
        frames.append(frame)
    return frames


def command_line() -> str:
    """How this script was invoked, relative to the repository."""
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(REPO)
    except ValueError:
        pass
    return " ".join(["python", str(script), *sys.argv[1:]])
