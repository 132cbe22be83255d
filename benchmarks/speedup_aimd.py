"""Speed-up over AIMD (the paper's Table I, on this machine): liquid Si with CP2K.

In one run:

1. **AIMD step cost through the engine**: MD steps driven by the campaign's CP2K engine
   (each step one atomate2/custodian single point with the campaign's settings — what
   ``num_initial_steps`` does);
2. **AIMD step cost in CP2K itself**: CP2K's own Langevin MD (``RUN_TYPE MD``, wavefunction
   extrapolation between steps) on the input the engine wrote, without the stress tensor —
   what an AIMD user would run; the conservative baseline;
3. **the OTF campaign** (``benchmarks/configs/si8-cp2k.yaml``: 10 000 steps) on a
   temporary embedded store, timed job by job.

Speed-up = (MD steps × AIMD step cost) / OTF wall time. Also reported: the wall-time split
(reference / fit / ML-MD / orchestration and store), DFT calls, refits, MD steps per DFT
call, the engine's cost per DFT call beyond CP2K's own run time, and the energy and force
errors of every check after the first 10 % of the steps.

    python benchmarks/speedup_aimd.py            # full: about 30-50 min on 2 cores
    python benchmarks/speedup_aimd.py --quick    # Si8, cheap CP2K settings, 11 steps (about 1 min)
    python benchmarks/speedup_aimd.py --config benchmarks/configs/si64-cp2k-k222.yaml --tag si64-k222 \
        --workdir ../otf-bench-si64-k222 --stop-after 7800 --audit 10 --native-again   # Si64, 2x2x2: ~2.5 h

``--workdir DIR`` keeps the baselines (``DIR/baselines.json``), the campaign's store and the timings
of every part; the same command continues where the last part stopped (``--stop-after``, SIGTERM or
a killed run), and the results cover the whole campaign. ``--stop-after`` counts from the campaign's
start: the baselines are measured first and are not stopped (each is kept once measured; on Si64 at
the Γ point they took 25 min, with k-points expect ~1.7 h).

Also reported: the limit (AIMD step / ML-MD step), the speed-up after the last refit (steady state)
against that limit, and from the measured costs how many steps a run needs for 200x and 500x.

``--audit K``: once the campaign is complete, ``otf audit`` labels K ML-MD frames drawn at random
between the checks (after the warm-up) with the campaign's DFT and counts those outside the
tolerances, with a binomial 90 % interval: what the checks did not see. Its DFT calls are reported
with the cost (the speed-up with them); run again, it finds its stored labels.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    HERE,
    CampaignTimer,
    command_line,
    header,
    machine,
    parser,
    rerender,
    stats,
    table,
    workdir,
    write_results,
)

NAME = "speedup_aimd"

#: Quick mode: the same system with cheap CP2K settings, the default GAP preset and 11 steps
#: (2 initial reference steps, one check): 5 small DFT calls in all.
QUICK = {
    "md": {"total_steps": 11, "trajectory_interval": 10},
    "reference": {"cutoff_Ry": 120.0, "rel_cutoff_Ry": 30.0, "ngrids": 3, "eps_default": 1.0e-7,
                  "eps_scf": 1.0e-5, "max_scf": 40},
    "model": {"preset": "default"},
    "num_initial_steps": 1,
    "check_interval": 10,
    "adaptive_method_parameters": None,
    "validation": {"checks": False},
}


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        elif value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


# ----------------------------------------------------------------------------- AIMD baselines
def engine_calculator(engine, workdir: Path):
    """ASE calculator labelling every evaluated frame with ``engine`` (one DFT call per MD step)."""
    from ase.calculators.calculator import Calculator, all_changes
    from ase.stress import full_3x3_to_voigt_6_stress

    class EngineCalculator(Calculator):
        implemented_properties = ["energy", "forces", "stress"]

        def __init__(self):
            super().__init__()
            self.calls: list[dict] = []

        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            start = time.perf_counter()
            labels = engine.label(self.atoms.copy(), workdir / f"step_{len(self.calls):04d}")
            seconds = time.perf_counter() - start
            self.calls.append({"seconds": seconds, "cp2k_seconds": labels.meta.get("cp2k_seconds"),
                               "scf_steps": labels.meta.get("scf_steps"), "directory": labels.meta.get("directory")})
            self.results = {"energy": labels.energy, "forces": np.asarray(labels.forces)}
            if labels.virial is not None:
                self.results["stress"] = full_3x3_to_voigt_6_stress(-np.asarray(labels.virial) / self.atoms.get_volume())

    return EngineCalculator()


def aimd_through_engine(config, n_steps: int, workdir: Path) -> dict:
    """``n_steps`` of MD driven by the campaign's reference engine; the cost of each DFT call."""
    from otf_flows.md.segment import initial_state, run_segment
    from otf_flows.reference.registry import get_engine
    from otf_flows.structures import build_structure

    engine = get_engine(config.reference)
    calc = engine_calculator(engine, workdir)
    state = initial_state(build_structure(config.structure), config.md)
    start = time.perf_counter()
    run_segment(state, calc, config.md, n_steps)
    wall = time.perf_counter() - start
    seconds = [c["seconds"] for c in calc.calls]
    warm = seconds[1:] if len(seconds) > 1 else seconds  # the first call also imports atomate2 & co.
    cp2k = [c["cp2k_seconds"] for c in calc.calls if c["cp2k_seconds"] is not None]
    return {
        "md_steps": n_steps,
        "dft_calls": len(calc.calls),
        "wall_s": wall,
        "call_seconds": seconds,
        "cp2k_seconds": cp2k,
        "scf_steps": [c["scf_steps"] for c in calc.calls],
        "step_cost_s": float(np.mean(warm)),
        "engine_overhead_per_call_s": float(np.mean(warm) - np.mean(cp2k[1:] if len(cp2k) > 1 else cp2k))
        if cp2k else None,
        "template_dir": calc.calls[-1]["directory"],
    }


def baselines(config, place: Path, aimd_steps: int, native_steps: int) -> tuple[dict, dict]:
    """The two AIMD baselines (through the engine, CP2K's own MD), measured once per ``place``: each is
    kept in ``place/baselines.json`` as soon as it is measured, with the reference settings it was
    measured with, and read back from there by a later part of the same run (refused if the settings
    differ), so a part killed during CP2K's MD keeps the engine baseline."""
    from otf_flows.jobs.reference import reference_identity

    saved = place / "baselines.json"
    ref_hash, _ = reference_identity(config)
    data = json.loads(saved.read_text()) if saved.exists() else {"reference_hash": ref_hash}
    if data["reference_hash"] != ref_hash:
        raise SystemExit(f"{NAME}: {saved} was measured with other reference settings; use another --workdir")
    if "aimd_engine" in data:
        print(f"[{NAME}] AIMD through the engine from {saved}: {data['aimd_engine']['step_cost_s']:.1f} s per step",
              file=sys.stderr)
    else:
        print(f"[{NAME}] AIMD through the engine: {aimd_steps} steps", file=sys.stderr)
        data["aimd_engine"] = aimd_through_engine(config, aimd_steps, place / "aimd_engine")
        saved.write_text(json.dumps(data, indent=1))
        print(f"[{NAME}] AIMD step {data['aimd_engine']['step_cost_s']:.1f} s", file=sys.stderr)
    if "aimd_native" in data:
        print(f"[{NAME}] CP2K's own MD from {saved}", file=sys.stderr)
    else:
        print(f"[{NAME}] CP2K's own MD: {native_steps} steps", file=sys.stderr)
        data["aimd_native"] = aimd_native(config, Path(data["aimd_engine"]["template_dir"]), native_steps,
                                          place / "aimd_native")
        saved.write_text(json.dumps(data, indent=1))
    engine = {k: v for k, v in data["aimd_engine"].items() if k != "template_dir"}
    return engine, data["aimd_native"]


def native_again(config, place: Path, native_steps: int) -> dict:
    """CP2K's own MD measured again after the campaign (kept in ``place/baselines.json`` as ``aimd_native_after``):
    the machine's speed can drift over a run of hours; the two baselines bracket it."""
    saved = place / "baselines.json"
    data = json.loads(saved.read_text())
    if "aimd_native_after" not in data:
        print(f"[{NAME}] CP2K's own MD again, after the campaign: {native_steps} steps", file=sys.stderr)
        data["aimd_native_after"] = aimd_native(config, Path(data["aimd_engine"]["template_dir"]), native_steps,
                                                place / "aimd_native_after")
        saved.write_text(json.dumps(data, indent=1))
    return data["aimd_native_after"]


def _read_maybe_gz(directory: Path, name: str) -> bytes:
    plain, packed = directory / name, directory / f"{name}.gz"
    if plain.exists():
        return plain.read_bytes()
    return gzip.decompress(packed.read_bytes())


def native_md_input(single_point_input: str, md, n_steps: int) -> str:
    """CP2K's own Langevin MD from the engine's single-point input (same level of theory, no stress)."""
    text = single_point_input.replace("RUN_TYPE ENERGY_FORCE", "RUN_TYPE MD")
    if "RUN_TYPE MD" not in text:
        raise ValueError("no 'RUN_TYPE ENERGY_FORCE' in the engine's CP2K input")
    text = re.sub(r"^\s*STRESS_TENSOR\s+ANALYTICAL\s*$\n?", "", text, flags=re.MULTILINE | re.IGNORECASE)
    text = re.sub(r"\s*&STRESS_TENSOR\s*\n\s*&END STRESS_TENSOR", "", text, flags=re.IGNORECASE)
    return text + (
        "\n&MOTION\n  &MD\n    ENSEMBLE LANGEVIN\n"
        f"    STEPS {n_steps}\n    TIMESTEP {md.timestep_fs}\n    TEMPERATURE {md.temperature_K}\n"
        f"    &LANGEVIN\n      GAMMA {md.friction_per_fs}\n    &END LANGEVIN\n  &END MD\n&END MOTION\n"
    )


def aimd_native(config, template_dir: Path, n_steps: int, workdir: Path) -> dict:
    """CP2K's own MD for ``n_steps`` with the engine's input; per-step times from CP2K's MD log."""
    from otf_flows.reference.cp2k.env import find_cp2k

    workdir.mkdir(parents=True, exist_ok=True)
    template_dir = Path(template_dir)
    single = _read_maybe_gz(template_dir, "cp2k.inp").decode()
    for name in ("BASIS", "POTENTIAL"):
        if (template_dir / name).exists() or (template_dir / f"{name}.gz").exists():
            (workdir / name).write_bytes(_read_maybe_gz(template_dir, name))
    (workdir / "md.inp").write_text(native_md_input(single, config.md, n_steps))
    argv = [*find_cp2k(config.reference.cp2k_cmd), "-i", "md.inp", "-o", "md.out"]
    env = {**os.environ}
    if config.reference.omp_threads:
        env["OMP_NUM_THREADS"] = str(config.reference.omp_threads)
    start = time.perf_counter()
    subprocess.run(argv, cwd=workdir, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    out = (workdir / "md.out").read_text(errors="replace")
    per_step = [float(x) for x in re.findall(r"MD\| CPU time per MD step \[s\]\s+(\S+)", out)]
    scf = [int(x) for x in re.findall(r"SCF run converged in\s+(\d+)\s+steps", out)]
    if len(per_step) != n_steps:
        raise RuntimeError(f"CP2K MD printed {len(per_step)} step times, expected {n_steps}; see {workdir}/md.out")
    steady = per_step[1:] if len(per_step) > 1 else per_step  # step 1 also pays the first full SCF
    return {"md_steps": n_steps, "wall_s": wall, "step_seconds": per_step, "scf_steps": scf,
            "step_cost_s": float(np.mean(steady))}


# ----------------------------------------------------------------------------- the campaign
_CP2K_TOTAL = re.compile(r"^\s*CP2K\s+1\s+\S+\s+\S+\s+\S+\s+\S+\s+(\S+)\s*$", re.MULTILINE)


def cp2k_internal_seconds(root: Path) -> list[float]:
    """CP2K's own total run time of every ``cp2k.out`` under ``root`` (its timing report)."""
    times = []
    for path in sorted(root.rglob("cp2k.out*")):
        if path.name not in ("cp2k.out", "cp2k.out.gz"):
            continue
        text = (gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()).decode(
            errors="replace")
        found = _CP2K_TOTAL.findall(text)
        if found:
            times.append(float(found[-1]))
    return times


def run_otf(config, store_dir: Path, stop_after: float | None = None, chunks_file: Path | None = None) -> dict:
    """The campaign on the store in ``store_dir``, timed job by job; continued if the store holds it.

    With ``stop_after`` the campaign stops cleanly at the first job boundary after that many seconds
    (the running DFT call finishes) and is resumed by the next call. ``chunks_file`` keeps the timer's
    split of every part, so the results cover the whole campaign however many parts it ran in.
    """
    from otf_flows.flows.lifecycle import prepare_campaign
    from otf_flows.managers.local import run_campaign
    from otf_flows.managers.stopping import GracefulStop
    from otf_flows.store import OtfStore
    from otf_flows.trajectory import campaign_segments

    store = OtfStore(str(store_dir))
    name = config.name
    existing = store.get_campaign(name)
    chunks = json.loads(chunks_file.read_text()) if chunks_file is not None and chunks_file.exists() else []
    if existing is None or existing.status != "completed":
        if existing is not None:
            print(f"[{NAME}] continuing campaign {name} at step {existing.step} of {config.md.total_steps} "
                  f"({existing.wall_seconds:.0f} s so far, status {existing.status})", file=sys.stderr)
        flow = prepare_campaign(config, store, resume=existing is not None)
        stop = GracefulStop(after_s=stop_after, grace_s=3600.0) if stop_after else contextlib.nullcontext()
        with CampaignTimer() as timer, stop:
            start = time.perf_counter()
            doc = run_campaign(config, store, flow, stop=stop if stop_after else None)
            measured = time.perf_counter() - start
        chunks.append({"wall_s": measured, "fine": timer.split(measured), "by_category": timer.by_category(),
                       "status": doc.status, "step": doc.step})
        if chunks_file is not None:
            chunks_file.write_text(json.dumps(chunks, indent=1))
    else:
        doc = existing
        if not chunks:
            raise SystemExit(f"{NAME}: campaign {name} is complete in {store_dir} but its timings "
                             f"({chunks_file}) are missing")
    measured = sum(c["wall_s"] for c in chunks)
    total = config.md.total_steps
    # the campaign's own jobs: an audit's DFT calls (job "audit") are reported apart, in the audit
    ledger = [d for d in store.collection("ledger").query({"campaign": name}) if d.get("job") != "audit"]
    ref_entries = [d for d in ledger if d["kind"] == "reference"]
    checks = store.checks(name)
    models = store.models(name)
    split = dict(store.time_split(name))
    # the store's split counts every DFT call of the campaign, an audit's too: this run's DFT is without it
    split["reference"] -= sum(d["seconds"] for d in store.collection("ledger").query({"campaign": name})
                              if d.get("job") == "audit")
    wall = doc.wall_seconds
    cp2k = cp2k_internal_seconds(store.path / "runs" / name)
    late = [c for c in checks if c.step > 0.1 * total and c.kind == "check"]
    n_dft = len(ref_entries)
    segments = [seg for seg in campaign_segments(store, name) if seg.model_id is not None]
    ml_steps = sum(seg.step - seg.start_step for seg in segments)
    fine = _summed([c["fine"] for c in chunks])
    fine["wall_s"] = wall
    result = {
        "campaign": name,
        "status": doc.status,
        "md_steps": doc.step,
        "wall_s": wall,
        "wall_measured_s": measured,
        "dft_calls": n_dft,
        "dft_calls_initial": sum(1 for d in ref_entries if d["job"] == "initial-md"),
        "dft_calls_checks": sum(1 for d in ref_entries if d["job"] != "initial-md"),
        "checks": len(checks),
        "checks_failed": sum(1 for c in checks if not c.passed),
        "guard_trips": sum(1 for c in checks if c.kind == "guard"),
        "fits": len(models),
        "refits": max(len(models) - 1, 0),
        "md_steps_per_dft_call": doc.step / n_dft if n_dft else None,
        "split_s": {
            "reference": split["reference"],
            "fit": split["fit"],
            "ml_md": split["ml_md"],
            "orchestration_and_store": wall - split["reference"] - split["fit"] - split["ml_md"],
        },
        "ml_md_detail_s": {"gap_force": fine["gap_force_md_s"], "md_machinery": fine["md_machinery_s"],
                           "model_loading": fine["model_loading_s"]},
        "fine_split": fine,
        "jobs_by_category": _summed([c["by_category"] for c in chunks]),
        "parts": [{k: c[k] for k in ("wall_s", "status", "step")} for c in chunks],
        "reference_call_s": stats([d["seconds"] for d in ref_entries]),
        "initial_md_call_s": stats([d["seconds"] for d in ref_entries if d["job"] == "initial-md"]),
        "cp2k_internal_s": stats(cp2k),
        "engine_overhead_per_call_s": (split["reference"] - sum(cp2k)) / len(cp2k) if len(cp2k) == n_dft else None,
        "errors_after_first_10pct": {
            "checks": len(late),
            "passed_fraction": sum(c.passed for c in late) / len(late) if late else None,
            "ediff_eV_per_atom": stats([c.ediff for c in late]),
            "fmax_eV_per_A": stats([c.fmax for c in late]),
            "frmse_eV_per_A": stats([c.frmse for c in late]),
            "vmax_eV_per_atom": stats([c.vmax for c in late]),
        },
        "check_rows": [c.model_dump(mode="json", include={"step", "interval", "ediff", "fmax", "frmse", "passed",
                                                           "new_interval", "refit", "kind", "reference_seconds",
                                                           "trigger", "frame_step"})
                       for c in checks],
        "fit_seconds": [m.fit_seconds for m in models],
        "ml_md_steps": ml_steps,
        "ml_md_step_s": split["ml_md"] / ml_steps if ml_steps else None,
        "steady_state": steady_state(ledger, doc.step, [c.created_at for c in checks if not c.passed]),
        "wall_by_step": wall_by_step(ledger),
        "segments": segment_costs(ledger, checks),
    }
    store.close()
    return result


def _summed(parts: list[dict]) -> dict:
    """Key-wise sums of the parts' numbers (nested dicts summed alike); ratios are recomputed by the caller."""
    out: dict = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, dict):
                out[key] = _summed([out.get(key, {}), value])
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                out[key] = out.get(key, 0) + value
            else:
                out[key] = value
    for key in [k for k in out if k.endswith(("_fraction", "_ms_per_job"))]:
        out.pop(key)
    return out


def segment_costs(ledger: list[dict], checks) -> list[dict]:
    """What each interval cost: the ML-MD of the segment, its check's DFT call and the refit and bookkeeping after
    it (ledger order; the initial reference MD and the first fit are the warm-up, not a segment)."""
    rows = [d for d in sorted(ledger, key=lambda d: str(d["created_at"]))
            if d.get("job") not in ("initial-md", "first fit")]
    buckets, current, checked = [], [], False
    for d in rows:
        if d["kind"] == "ml_md" and checked:
            buckets.append(current)
            current, checked = [], False
        current.append(d)
        checked = checked or (d["kind"] == "reference" and str(d.get("job", "")).startswith("reference check"))
    if checked:
        buckets.append(current)
    out = []
    for c, bucket in zip(checks, buckets):
        by = {kind: sum(d["seconds"] for d in bucket if d["kind"] == kind) for kind in ("ml_md", "reference", "fit", "other")}
        out.append({"step": c.step, "interval": c.interval, "trigger": c.trigger, "ml_md_s": by["ml_md"],
                    "dft_s": by["reference"], "fit_s": by["fit"], "other_s": by["other"],
                    "wall_s": sum(by.values())})
    return out


def projection(otf: dict, aimd_step_s: float, n_max: int, factor: float) -> dict | None:
    """Speed-up against CP2K's MD for a run of N steps, from this run's measured costs: its warm-up (initial
    reference MD and first fit), its ML-MD cost per step, its mean cost per check (DFT call, refit, bookkeeping)
    and its schedule, continued past its end by the adaptive rule (interval × ``factor`` up to ``n_max``, every
    check passing, a check at the end of the run). An estimate from measurements, not a measurement."""
    segs, ml = otf.get("segments") or [], otf.get("ml_md_step_s")
    if not segs or not ml:
        return None
    warm = otf["initial_md_call_s"]["mean"] * otf["dft_calls_initial"] + (otf["fit_seconds"][0] if otf["fit_seconds"] else 0)
    start = otf["dft_calls_initial"] - 1
    per_check = float(np.mean([g["dft_s"] + g["fit_s"] + g["other_s"] for g in segs]))
    steps = [r["step"] for r in otf["check_rows"] if r["kind"] == "check"]
    intervals = [r["new_interval"] for r in otf["check_rows"] if r["kind"] == "check"]
    scheduled, interval = steps[:-1], intervals[-2] if len(intervals) > 1 else intervals[-1]
    while scheduled and scheduled[-1] < 10_000_000:  # the run's schedule, then the adaptive rule
        scheduled.append(scheduled[-1] + interval)
        interval = min(int(interval * factor), n_max)

    def cost(n: int) -> float:
        return warm + (n - start) * ml + (sum(1 for x in scheduled if x < n) + 1) * per_check

    def speedup(n: int) -> float:
        return n * aimd_step_s / cost(n)

    out = {"warm_up_s": warm, "ml_md_step_s": ml, "per_check_s": per_check,
           "asymptote": aimd_step_s / (ml + per_check / n_max), "at_run_length": speedup(otf["md_steps"]),
           "cost_at_run_length_s": cost(otf["md_steps"])}
    grid = np.unique(np.geomspace(1000, 5_000_000, 2000).astype(int))
    for x in SPEEDUP_GOALS:
        hits = [int(n) for n in grid if speedup(int(n)) >= x]
        out[f"steps_for_{x}x"] = hits[0] if hits else None
    return out


def wall_by_step(ledger: list[dict]) -> list[list[float]]:
    """[MD step reached, wall seconds so far] after every job of the campaign (ledger order), for the figure."""
    rows, step, seconds = [], 0, 0.0
    for d in sorted(ledger, key=lambda d: str(d["created_at"])):
        step, seconds = max(step, d["step"] or 0), seconds + d["seconds"]
        rows.append([step, seconds])
    return rows


def steady_state(ledger: list[dict], total_steps: int, failed_at: list | None = None) -> dict | None:
    """The run after the model was last corrected: steps and the wall time of the jobs that ran them (ledger order).

    The ledger holds one entry per job with its wall time, its kind and the MD step it reached. The steady
    state starts after the refit of the last failed check (``failed_at``: when the failed checks were stored;
    none failed: after the first fit). Refits after passed checks (``refit.every_new_labels``) come later and
    are paid for in it. Without ``failed_at`` it starts after the last fit (hybrid-md refits on failures only).
    """
    rows = sorted(ledger, key=lambda d: str(d["created_at"]))
    fits = [i for i, d in enumerate(rows) if d["kind"] == "fit"]
    if not fits:
        return None
    last = fits[-1]
    if failed_at is not None:
        if failed_at:
            later = [i for i in fits if _instant(rows[i]["created_at"]) > _instant(max(failed_at))]
            last = later[0] if later else last
        else:
            last = fits[0]
    after = rows[last + 1:]
    steps_before = max((d["step"] or 0 for d in rows[:last + 1]), default=0)
    seconds_before = sum(d["seconds"] for d in rows[:last + 1])
    return {
        "from_step": steps_before,
        "steps": total_steps - steps_before,
        "wall_s": sum(d["seconds"] for d in after),
        "dft_calls": sum(d["kind"] == "reference" for d in after),
        "refits": sum(d["kind"] == "fit" for d in after),
        "warm_up_wall_s": seconds_before,
        "after": "the refit of the last failed check" if failed_at else
                 ("the first fit (no check failed)" if failed_at is not None else "the last fit"),
    }


def _instant(value):
    """A stored time (datetime or ISO text, 'Z' or an offset, or naive UTC) as an aware datetime."""
    from datetime import datetime, timezone

    t = value if isinstance(value, datetime) else datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


#: The speed-ups whose run length is worked out from the measured costs (``steps_for_<x>x``).
SPEEDUP_GOALS = (200, 500)


def speedup_analysis(otf: dict, aimd_step_s: float) -> dict:
    """The limit (AIMD step / ML-MD step) and the steady-state speed-up after the last correction of the model.
    How many steps a run needs for 200x and 500x: :func:`projection`."""
    limit = aimd_step_s / otf["ml_md_step_s"] if otf.get("ml_md_step_s") else None
    st = otf.get("steady_state")
    out = {"aimd_step_s": aimd_step_s, "limit": limit, "steady_speedup": None, "steady_over_limit": None}
    if not st or not st["steps"] or not st["wall_s"]:
        return out
    cost = st["wall_s"] / st["steps"]
    out["steady_step_s"] = cost
    out["steady_speedup"] = aimd_step_s / cost
    out["steady_over_limit"] = out["steady_speedup"] / limit if limit else None
    return out


def audit_campaign(config, store_dir: Path, k: int, workdir: Path) -> dict:
    """``otf audit`` of the finished campaign: its DFT on ``k`` random ML-MD frames between the checks (seed 0;
    a rerun finds the stored labels), with the wall time of the audit's DFT calls from the ledger."""
    from otf_flows.store import OtfStore
    from otf_flows.validation.audit import run_audit

    store = OtfStore(str(store_dir))
    try:
        result = run_audit(store, config, k, seed=0, workdir=workdir,
                           progress=lambda line: print(f"[{NAME}] {line}", file=sys.stderr))
        steps = {r["step"] for r in result["rows"]}
        seconds = [d["seconds"] for d in store.collection("ledger").query({"campaign": config.name, "job": "audit"})
                   if d["step"] in steps]
    finally:
        store.close()
    result["dft_s"] = float(sum(seconds))
    return result


# ----------------------------------------------------------------------------- report
def in_run_aimd_step(otf: dict) -> float | None:
    """Mean cost of the campaign's own reference-driven MD steps (``num_initial_steps``): AIMD through
    the engine measured under the same machine load as the rest of the OTF run."""
    d = otf.get("initial_md_call_s")
    if d and d.get("mean") is not None:
        return d["mean"]
    ref, n_init = otf["reference_call_s"], otf["dft_calls_initial"]
    if not n_init or ref["mean"] is None:
        return None
    return (ref["mean"] * ref["n"] - sum(r["reference_seconds"] for r in otf["check_rows"])) / n_init


def markdown(res: dict, info: dict, wall: float) -> str:
    otf, eng, nat = res["otf"], res["aimd_engine"], res["aimd_native"]
    w = otf["wall_s"]
    s = otf["split_s"]
    pct = {k: 100 * v / w for k, v in s.items()}
    cfg = res["config"]
    in_run = in_run_aimd_step(otf) or float("nan")
    lines = [header("Speed-up over AIMD (Table I)", res["command"], info, wall), ""]
    total = res["config"]["md"]["total_steps"]
    parts = otf.get("parts", [])
    if len(parts) > 1 or wall < w:
        lines += [f"Run with `--workdir` in {len(parts)} part(s) of the campaign "
                  f"({', '.join('%.0f s to step %d' % (part['wall_s'], part['step']) for part in parts)}); the wall time in the line "
                  "above is the last invocation's, which read back what earlier ones measured (baselines, campaign, "
                  "audit labels).", ""]
    if otf.get("status", "completed") != "completed":
        lines += [f"**Not finished: the campaign is {otf['status']} at step {otf['md_steps']} of {total}** "
                  f"(in {len(otf.get('parts', []))} part(s)); every figure below covers the steps run so far. "
                  "Run the same command again to continue.", ""]
    lines.append(
        f"System: {res['system']}. GAP preset `{cfg['model'].get('preset', 'default')}`, "
        f"{otf['md_steps']} MD steps of {cfg['md']['timestep_fs']} fs, Langevin {cfg['md']['temperature_K']} K; "
        f"CP2K settings: {res['cp2k_settings']}.\n"
    )
    lines.append(table(
        ["", "this run", "paper, liquid Si (250 atoms)"],
        [
            ["time in DFT (reference)", f"{pct['reference']:.1f} %", "2.5 %"],
            ["time in gap_fit", f"{pct['fit']:.1f} %", "3.0 %"],
            ["time in ML-MD (GAP forces + integrator)", f"{pct['ml_md']:.1f} %", "94.5 % (incl. system)"],
            ["time in orchestration and store", f"{pct['orchestration_and_store']:.1f} %", "(in the above)"],
            ["MD steps", otf["md_steps"], "100 000"],
            ["DFT calls (initial MD + checks)",
             f"{otf['dft_calls']} ({otf['dft_calls_initial']} + {otf['dft_calls_checks']})", "36"],
            ["refits (fits in total)", f"{otf['refits']} ({otf['fits']})", "12"],
            ["MD steps per DFT call", f"{otf['md_steps_per_dft_call']:.0f}", "2563 (per DFT computation)"],
            ["OTF wall time", f"{w:.0f} s", ""],
            ["AIMD step, through the engine", f"{eng['step_cost_s']:.1f} s", ""],
            ["AIMD step, CP2K's own MD", f"{nat['step_cost_s']:.1f} s", ""],
            *([["AIMD step, CP2K's own MD measured again after the run",
                f"{res['aimd_native_after']['step_cost_s']:.1f} s", ""]] if res.get("aimd_native_after") else []),
            ["AIMD step, through the engine, in the OTF run's initial MD", f"{in_run:.1f} s", ""],
            ["AIMD steps in the same time (engine / CP2K MD)",
             f"{w / eng['step_cost_s']:.0f} / {w / nat['step_cost_s']:.0f}", "≈ 5400"],
            ["**speed-up** vs AIMD through the engine", f"**{res['speedup_vs_engine_aimd']:.0f}×**", "≈ 20×"],
            ["**speed-up** vs CP2K's own MD", f"**{res['speedup_vs_native_aimd']:.0f}×**", ""],
            *([["speed-up vs CP2K's own MD measured after the run", f"{res['speedup_vs_native_aimd_after']:.0f}×", ""]]
              if res.get("aimd_native_after") else []),
            ["speed-up vs the OTF run's own initial AIMD steps", f"{otf['md_steps'] * in_run / w:.0f}×", ""],
        ],
    ))
    an = res.get("analysis")
    if an and an.get("limit"):
        lines += ["", "Against CP2K's own MD step, "
                  f"{an['aimd_step_s']:.1f} s, and the run's ML-MD step, {1e3 * otf['ml_md_step_s']:.0f} ms "
                  f"({otf['ml_md_steps']} ML-MD steps):", ""]
        steady = otf["steady_state"]
        rows = [["the whole run", f"{res['speedup_vs_native_aimd']:.0f}×", "≥ 200×"]]
        if res.get("audit"):
            rows.append([f"the whole run with the audit's {res['audit']['frames']} DFT calls",
                         f"{res['speedup_vs_native_aimd_with_audit']:.0f}×", ""])
        lines.append(table(
            ["", "this run", "target"],
            rows + [
                ["the limit (AIMD step / ML-MD step)", f"{an['limit']:.0f}×", ""],
                [f"steady state: steps {steady['from_step']}–{otf['md_steps']}, after "
                 f"{steady.get('after', 'the last fit')} ({steady['dft_calls']} DFT checks"
                 f"{', %d refits after passed checks' % steady['refits'] if steady.get('refits') else ''}, "
                 f"{steady['wall_s']:.0f} s)",
                 f"{an['steady_speedup']:.0f}× = {an['steady_over_limit']:.2f} of the limit"
                 if an.get("steady_speedup") else "–", "≥ 0.8 of the limit"],
            ] + projection_rows(res.get("projection"), an["limit"]),
        ))
        lines += segments_markdown(otf, an["aimd_step_s"], an["limit"])
    e = otf["errors_after_first_10pct"]
    passed = 100 * (e["passed_fraction"] or 0)
    lines += ["", f"Errors of the {e['checks']} checks after the first 10 % of the steps (passed: {passed:.0f} %):", ""]
    lines.append(table(
        ["metric", "mean", "median", "95th pct", "max"],
        [[name, d["mean"], d["median"], d["p95"], d["max"]] for name, d in (
            ("ediff (eV/atom)", e["ediff_eV_per_atom"]), ("fmax (eV/Å)", e["fmax_eV_per_A"]),
            ("frmse (eV/Å)", e["frmse_eV_per_A"]), ("vmax (eV/atom)", e["vmax_eV_per_atom"]))],
    ))
    lines += audit_markdown(res.get("audit"), cfg["tolerances"])
    lines += checks_markdown(otf)
    d = otf["ml_md_detail_s"]
    ref = otf["reference_call_s"]
    cp2k_mean = otf["cp2k_internal_s"]["mean"]
    over = otf["engine_overhead_per_call_s"]
    fits = ", ".join(f"{x:.0f}" for x in otf["fit_seconds"])
    detail = (
        f"ML-MD detail: GAP force calls {d['gap_force']:.0f} s, integrator/guard/trajectory "
        f"{d['md_machinery']:.1f} s, model loading {d['model_loading']:.1f} s. "
        f"DFT call through the engine: mean {ref['mean']:.1f} s"
    )
    if cp2k_mean is not None and over is not None:
        detail += (f", of which CP2K's own run {cp2k_mean:.1f} s (engine overhead {over:.1f} s per call: "
                   "atomate2 input set, custodian, parsing)")
    lines += ["", detail + f". Fits: {fits} s."]
    return "\n".join(lines)


def projection_rows(pro: dict | None, limit: float) -> list[list[str]]:
    """The projection's rows of the speed-up table (run length for each goal, the long-run asymptote)."""
    if not pro:
        return []
    rows = [[f"MD steps a run needs for {x}× (projected from this run's costs and schedule)",
             f"{pro[f'steps_for_{x}x']:,}" if pro.get(f"steps_for_{x}x") else f"never: the asymptote is below {x}×", ""]
            for x in SPEEDUP_GOALS]
    rows.append(["a long run, every interval at `n_max` (projected)",
                 f"{pro['asymptote']:.0f}× = {pro['asymptote'] / limit:.2f} of the limit", ""])
    return rows


def segments_markdown(otf: dict, aimd_step_s: float, limit: float) -> list[str]:
    """What each interval cost (its ML-MD, its check, the refit after it) and the speed-up over it."""
    segs = [g for g in otf.get("segments") or [] if g["interval"] >= 64]
    if not segs:
        return []
    lines = ["", "What each interval cost (its ML-MD, its DFT check, the refit after it), from 64 steps on:", ""]
    lines.append(table(
        ["check at step", "interval", "ML-MD s", "DFT s", "fit s", "s per MD step", "speed-up over it", "of the limit"],
        [[g["step"], g["interval"], f"{g['ml_md_s']:.0f}", f"{g['dft_s']:.0f}", f"{g['fit_s']:.1f}",
          f"{g['wall_s'] / g['interval']:.3f}", f"{aimd_step_s * g['interval'] / g['wall_s']:.0f}×",
          f"{aimd_step_s * g['interval'] / g['wall_s'] / limit:.2f}"] for g in segs],
    ))
    return lines


def checks_markdown(otf: dict) -> list[str]:
    """Every check of the campaign: where, why (schedule, uncertainty trigger, guard), its errors, the outcome."""
    rows = otf.get("check_rows") or []
    if not rows:
        return []
    lines = ["", f"Every check ({len(rows)}; a failed check refits the model and re-runs its segment):", ""]
    lines.append(table(
        ["MD step", "interval", "trigger", "frmse (eV/Å)", "ediff (eV/atom)", "passed", "refit", "next interval"],
        [[r["step"], r["interval"], r.get("trigger", "interval"), r["frmse"], r["ediff"],
          "yes" if r["passed"] else "**no**", "yes" if r["refit"] else "", r["new_interval"]] for r in rows],
    ))
    return lines


def figure(res: dict, path: Path) -> bool:
    """The checks' force errors along the run (and the audit's), and the wall time against CP2K's own MD."""
    otf = res["otf"]
    rows, audit = otf.get("check_rows") or [], (res.get("audit") or {}).get("rows") or []
    progress = otf.get("wall_by_step")
    if not rows or not progress:
        return False
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig = Figure(figsize=(11, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 2, 1)
    tol = res["config"]["tolerances"].get("frmse")
    for passed, outcome in ((True, "passed"), (False, "failed (refit)")):
        for trigger, marker in (("interval", "o"), ("uncertainty", "^"), ("guard", "D")):
            pts = [(r["step"], r["frmse"]) for r in rows if r["passed"] == passed and r["frmse"] is not None
                   and r.get("trigger", "interval") == trigger]
            if pts:
                ax.plot(*zip(*pts), marker if passed else "x", color="C0" if passed else "C3", ls="none",
                        label=f"check {outcome}: {'scheduled' if trigger == 'interval' else trigger}")
    if audit:
        ax.plot([r["step"] for r in audit], [r["frmse"] for r in audit], "s", mfc="none", color="C2",
                label=f"audit: random frame between checks ({len(audit)})")
    if tol:
        ax.axhline(tol, color="k", lw=0.8, ls="--", label=f"tolerance {tol:g} eV/Å")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("MD step (checks at doubling intervals)")
    ax.set_ylabel("force RMSE against DFT (eV/Å)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7)
    ax.set_title("errors on frames the model had not seen", fontsize=9)
    ax = fig.add_subplot(1, 2, 2)
    steps, seconds = zip(*progress)
    ax.plot(steps, [x / 3600 for x in seconds], color="C0", label="this run (DFT checks + ML-MD + fits)")
    a = res["aimd_native"]["step_cost_s"]
    top = max(steps)
    ax.plot([1, top], [a / 3600, top * a / 3600], color="C1", label=f"CP2K's own MD ({a:.0f} s per step)")
    ax.set_yscale("log")
    ax.set_xlabel("MD step")
    ax.set_ylabel("wall time (h)")
    ax.set_title(f"{res['speedup_vs_native_aimd']:.0f}× CP2K's own MD over {otf['md_steps']} steps", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def audit_markdown(audit: dict | None, tolerances: dict) -> list[str]:
    """The audit's table: each randomly drawn ML-MD frame between the checks against its DFT label."""
    if not audit:
        return []
    low, high = audit["interval_90"]
    limits = ", ".join(f"{k} {v:g}" for k, v in tolerances.items() if v is not None)
    lines = ["", f"**Audit between the checks** (`otf audit`, seed {audit['seed']}): DFT on {audit['frames']} ML-MD "
             f"frames drawn at random from the {audit['candidates']} kept between the checks after the warm-up; "
             f"tolerances {limits}. **{audit['frames_outside']} of {audit['frames']} outside** "
             f"(90 % interval {100 * low:.0f}–{100 * high:.0f} %); the audit's DFT took {audit['dft_s']:.0f} s.", ""]
    lines.append(table(
        ["MD step", "ediff (eV/atom)", "fmax (eV/Å)", "frmse (eV/Å)", "outside"],
        [[r["step"], r["ediff"], r["fmax"], r["frmse"], "yes" if r["outside"] else ""] for r in audit["rows"]],
    ))
    return lines


def _kpoints_text(kpoints) -> str:
    from otf_flows.reference.settings import kpoint_words

    return (kpoint_words(kpoints) or ["Γ point"])[0]


def _cores_text(ref) -> str:
    """How CP2K ran: its command (e.g. 2 MPI ranks) and its OpenMP threads."""
    command = ref.cp2k_cmd or "cp2k.psmp"
    ranks = re.search(r"-(?:np|n)\s+(\d+)", command)
    where = f"{ranks.group(1)} MPI ranks" if ranks and command.split()[0] in ("mpirun", "mpiexec", "srun") else "1 process"
    return f"{where} × {ref.omp_threads or 1} OpenMP thread(s)"


def main(argv=None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=HERE / "configs" / "si8-cp2k.yaml", help="campaign YAML")
    p.add_argument("--steps", type=int, default=None, help="override md.total_steps")
    p.add_argument("--aimd-steps", type=int, default=None, help="engine-driven AIMD steps (full 3, quick 0: one single point)")
    p.add_argument("--native-steps", type=int, default=None, help="CP2K MD steps (full 6, quick 1)")
    p.add_argument("--tag", default=None, help="write results/speedup_aimd_<tag>.* (e.g. si64)")
    p.add_argument("--workdir", type=Path, default=None, metavar="DIR",
                   help="keep everything in DIR and continue from it: the AIMD baselines are measured once "
                        "(DIR/baselines.json), the campaign resumes from DIR/store (for runs longer than one sitting)")
    p.add_argument("--audit", type=int, default=0, metavar="K",
                   help="when the campaign is complete, label K random ML-MD frames between its checks with its "
                        "DFT (otf audit; K DFT calls, reported with the cost) and count those outside the tolerances")
    p.add_argument("--native-again", action="store_true",
                   help="when the campaign is complete, measure CP2K's own MD once more (kept in DIR/baselines.json): "
                        "the baseline under the machine's state at the end of the run, reported beside the first")
    p.add_argument("--stop-after", type=float, default=None, metavar="SECONDS",
                   help="stop the campaign cleanly after this long (the running job finishes); run the same "
                        "command again to continue; results of a stopped run say so")
    args = p.parse_args(argv)
    if args.audit < 0:
        p.error(f"--audit {args.audit}: the number of frames to audit must be >= 0")
    if args.stop_after is not None and args.workdir is None:
        p.error("--stop-after needs --workdir (where the stopped campaign is continued from)")
    name = f"{NAME}_{args.tag}" if args.tag else NAME
    if rerender(args, name, markdown):
        _figure(args, name, json.loads(Path(args.from_json).read_text()))
        return 0

    from otf_flows.campaign import config_from_dict
    from otf_flows.structures import build_structure

    t0 = time.perf_counter()
    data = yaml.safe_load(args.config.read_text())
    if args.quick:
        data = _merge(data, QUICK)
    if args.steps:
        data["md"]["total_steps"] = args.steps
    config = config_from_dict(data, base_dir=args.config.parent)
    aimd_steps = args.aimd_steps if args.aimd_steps is not None else (0 if args.quick else 3)
    native_steps = args.native_steps or (1 if args.quick else 6)

    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        place = contextlib.nullcontext(args.workdir.resolve())
    else:
        place = workdir(args.keep, NAME)
    with place as tmp:
        engine, native = baselines(config, tmp, aimd_steps, native_steps)
        print(f"[{NAME}] CP2K MD step {native['step_cost_s']:.1f} s; OTF campaign of "
              f"{config.md.total_steps} steps", file=sys.stderr)
        otf = run_otf(config, tmp / "store", args.stop_after, tmp / "parts.json" if args.workdir else None)
        audit = None
        if args.audit and otf["status"] == "completed":
            audit = audit_campaign(config, tmp / "store", args.audit, tmp / "audit")
        elif args.audit:
            print(f"[{NAME}] no audit yet: it runs when the campaign is complete", file=sys.stderr)
        native_after = native_again(config, tmp, native_steps) if args.native_again and otf["status"] == "completed" \
            else None
    if otf["status"] != "completed":
        print(f"[{NAME}] campaign {otf['status']} at step {otf['md_steps']} of {config.md.total_steps}; "
              f"continue with the same command", file=sys.stderr)

    n = otf["md_steps"]
    ref = config.reference
    result = {
        "benchmark": NAME,
        "quick": args.quick,
        "command": command_line(),
        "system": f"Si{len(build_structure(config.structure))} liquid, {config.md.temperature_K:.0f} K",
        "config": config.model_dump(mode="json"),
        "cp2k_settings": f"{ref.xc_functional}, {ref.basis_set}, {ref.cutoff_Ry:g}/{ref.rel_cutoff_Ry:g} Ry, "
                         f"EPS_DEFAULT {ref.eps_default:g}, EPS_SCF {ref.eps_scf:g}, {_kpoints_text(ref.kpoints)}, "
                         f"{ref.electronic_temperature_K} K smearing, {_cores_text(ref)}",
        "aimd_engine": engine,
        "aimd_native": native,
        "otf": otf,
        "speedup_vs_engine_aimd": n * engine["step_cost_s"] / otf["wall_s"],
        "speedup_vs_native_aimd": n * native["step_cost_s"] / otf["wall_s"],
        "speedup_vs_in_run_aimd": n * (in_run_aimd_step(otf) or float("nan")) / otf["wall_s"],
        "analysis": speedup_analysis(otf, native["step_cost_s"]),
    }
    adaptive = config.adaptive_method_parameters
    if adaptive is not None:
        result["projection"] = projection(otf, native["step_cost_s"], adaptive.n_max, adaptive.factor)
    if native_after is not None:
        result["aimd_native_after"] = native_after
        result["speedup_vs_native_aimd_after"] = n * native_after["step_cost_s"] / otf["wall_s"]
    if audit is not None:
        result["audit"] = audit
        result["speedup_vs_native_aimd_with_audit"] = n * native["step_cost_s"] / (otf["wall_s"] + audit["dft_s"])
    info = machine()
    result["machine"] = info
    wall = time.perf_counter() - t0
    result["benchmark_wall_s"] = wall
    write_results(args.out, name, args.quick, result, markdown(result, info, wall))
    _figure(args, name, result)
    return 0


def _figure(args, name: str, result: dict) -> None:
    png = Path(args.out) / (f"{name}_quick.png" if result["quick"] else f"{name}.png")
    if figure(result, png):
        print(f"wrote {png}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
