"""Orchestration overhead of the local runner with the embedded store (EMT campaigns).

Overhead is campaign wall time that is neither reference calculation, fitting nor GAP force
evaluation. It is measured in-process by timing every job (``jobflow.Job.run``), every
ledger entry (the jobs' timed blocks), every ``quippy.potential.Potential.calculate`` call
and every model load, and is reported two ways:

- **strict** (the issue's definition): wall − reference − fit − GAP force calls. It
  includes the ASE integrator, the blow-up guard, trajectory frames, model loading,
  validation bookkeeping, compare + decide, the jobs' store traffic and the runner;
- **orchestration proper**: the runner loop, every job's time outside its timed block
  (jobflow reference resolution and output storage, store reads and writes, config
  validation, the Response) and compare + decide — the cost of running the campaign as a
  jobflow graph on a store rather than as one Python loop.

Targets (issue #8): under 2 % of campaign wall time, under 50 ms per job.

Two scenarios: ``adaptive`` is configs/cu-emt.yaml as shipped (few, long segments);
``job-heavy`` is the same system with a fixed interval of 10 steps and no refits (many short
jobs), which stresses per-job costs.

    python benchmarks/orchestration_overhead.py          # 2000 steps each (about 4-6 min)
    python benchmarks/orchestration_overhead.py --quick  # 100 / 60 steps (about a minute)

``--scaling`` (issue #14) asks instead whether the cost per job stays flat as jobs accumulate:
the same kind of job-heavy campaign made as cheap as possible per job (fcc Cu4, EMT reference,
a check after every ML-MD step, no refits, no validation), with about 50 and about 5000 jobs.
It reports orchestration proper per job over the whole campaign, in wall time and in thread
CPU time (the machine may be shared), and over the last 10 % of the jobs (the marginal cost).
Targets: <= 30 ms per job at 5000 jobs, within 1.3x of the 50-job campaign.

    python benchmarks/orchestration_overhead.py --scaling               # 50 and 5000 jobs
    python benchmarks/orchestration_overhead.py --scaling --jobs 50,500 # other sizes
    python benchmarks/orchestration_overhead.py --scaling --quick       # 20 and 200 jobs
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    REPO,
    CampaignTimer,
    command_line,
    header,
    machine,
    parser,
    rerender,
    table,
    workdir,
    write_results,
)

NAME = "orchestration_overhead"
TARGET_FRACTION = 0.02
TARGET_MS_PER_JOB = 50.0
SCALING_NAME = "orchestration_overhead_scaling"
SCALING_TARGET_MS_PER_JOB = 30.0
SCALING_TARGET_RATIO = 1.3
#: jobs of a campaign besides its iterations (initial MD, first fit, final validation, finish)
FIXED_JOBS = 4
INITIAL_STEPS = 10
#: the jobs every MD step repeats
ITERATION_JOBS = ("ml_md", "check", "decide")
#: (key, result field, label) of the scaling measures
SCALING_MEASURES = (
    ("all", "orchestration_ms_per_job", "all jobs + runner, wall"),
    ("all_cpu", "orchestration_cpu_ms_per_job", "all jobs + runner, CPU"),
    ("iter", "iteration_ms_per_job", "iteration jobs, wall"),
    ("iter_cpu", "iteration_cpu_ms_per_job", "iteration jobs, CPU"),
    ("last", "last_10pct_ms_per_job", "last 10 % of iteration jobs, wall"),
    ("last_cpu", "last_10pct_cpu_ms_per_job", "last 10 % of iteration jobs, CPU"),
)


def scenarios(quick: bool) -> dict[str, dict]:
    base = yaml.safe_load((REPO / "configs" / "cu-emt.yaml").read_text())
    adaptive = {**base, "name": "overhead-adaptive", "md": {**base["md"], "total_steps": 100 if quick else 2000}}
    heavy = {
        **base,
        "name": "overhead-job-heavy",
        "md": {**base["md"], "total_steps": 60 if quick else 2000},
        "can_update": False,
        "check_interval": 10,
    }
    heavy.pop("adaptive_method_parameters", None)
    return {"adaptive": adaptive, "job-heavy": heavy}


def run_one(data: dict, store_dir: Path) -> dict:
    from otf_flows.campaign import config_from_dict
    from otf_flows.flows.lifecycle import prepare_campaign
    from otf_flows.managers.local import run_campaign
    from otf_flows.store import OtfStore

    config = config_from_dict(data, base_dir=REPO / "configs")
    store = OtfStore(str(store_dir))
    flow = prepare_campaign(config, store)
    with CampaignTimer() as timer:
        start = time.perf_counter()
        doc = run_campaign(config, store, flow)
        measured = time.perf_counter() - start
    split = timer.split(doc.wall_seconds)
    result = {
        "campaign": config.name,
        "md_steps": doc.step,
        "status": doc.status,
        "checks": len(store.checks(config.name)),
        "fits": len(store.models(config.name)),
        "wall_measured_s": measured,
        "ledger_split_s": store.time_split(config.name),
        "split": split,
        "jobs_by_category": timer.by_category(),
        "targets": {
            "strict_fraction_met": split["overhead_strict_fraction"] < TARGET_FRACTION,
            "strict_ms_per_job_met": split["overhead_strict_ms_per_job"] < TARGET_MS_PER_JOB,
            "orchestration_fraction_met": split["orchestration_fraction"] < TARGET_FRACTION,
            "orchestration_ms_per_job_met": split["orchestration_ms_per_job"] < TARGET_MS_PER_JOB,
        },
    }
    store.close()
    return result


def _yes(flag: bool) -> str:
    return "met" if flag else "**not met**"


def markdown(res: dict, info: dict, wall: float) -> str:
    lines = [header("Orchestration overhead (local runner, embedded store)", res["command"], info, wall), ""]
    rows = []
    for name, r in res["scenarios"].items():
        s = r["split"]
        w = s["wall_s"]
        rows.append([
            name, r["md_steps"], s["jobs"], f"{w:.1f}",
            f"{100 * s['reference_s'] / w:.1f}", f"{100 * s['fit_s'] / w:.1f}", f"{100 * s['gap_force_s'] / w:.1f}",
            f"{100 * s['overhead_strict_fraction']:.1f} % ({s['overhead_strict_ms_per_job']:.0f} ms/job)",
            f"{100 * s['orchestration_fraction']:.1f} % ({s['orchestration_ms_per_job']:.0f} ms/job)",
        ])
    lines.append(table(["scenario", "MD steps", "jobs", "wall (s)", "reference %", "fit %", "GAP forces %",
                        "overhead, strict", "orchestration proper"], rows))
    lines += ["", "Targets: < 2 % of campaign wall time and < 50 ms per job.", ""]
    trows = []
    for name, r in res["scenarios"].items():
        t = r["targets"]
        trows.append([name, _yes(t["strict_fraction_met"]), _yes(t["strict_ms_per_job_met"]),
                      _yes(t["orchestration_fraction_met"]), _yes(t["orchestration_ms_per_job_met"])])
    lines.append(table(["scenario", "strict < 2 %", "strict < 50 ms/job", "proper < 2 %", "proper < 50 ms/job"],
                       trows))
    lines += ["", "Where the overhead goes (seconds; strict overhead = the sum of these rows):", ""]
    keys = [("md_machinery_s", "ASE integrator, guard, trajectory frames (inside ML-MD)"),
            ("model_loading_s", "model unpack + quippy Potential init (inside ML-MD)"),
            ("validation_s", "validation jobs without their GAP calls"),
            ("decide_s", "compare + decide (timed block)"),
            ("job_framework_s", "jobs outside their timed blocks (jobflow, store I/O)"),
            ("runner_s", "runner outside jobs")]
    names = list(res["scenarios"])
    lines.append(table(["component", *names],
                       [[label, *[f"{res['scenarios'][n]['split'][k]:.2f}" for n in names]] for k, label in keys]))
    lines += ["", "Per job category (job-heavy scenario): time outside the timed block, ms per job:", ""]
    cats = res["scenarios"][names[-1]]["jobs_by_category"]
    lines.append(table(["category", "jobs", "wall per job (ms)", "outside timed block (ms/job)"],
                       [[c, d["jobs"], f"{1e3 * d['wall_s'] / d['jobs']:.1f}", f"{d['shell_ms_per_job']:.1f}"]
                        for c, d in sorted(cats.items())]))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- --scaling
def scaling_config(n_jobs: int) -> dict:
    """A campaign of about ``n_jobs`` cheap jobs: 3 per MD step (ML-MD, check, decide) + 4."""
    base = yaml.safe_load((REPO / "configs" / "cu-emt.yaml").read_text())
    n_steps = max(round((n_jobs - FIXED_JOBS) / 3), 1)
    data = {
        **base, "name": f"scaling-{n_jobs}", "can_update": False, "check_interval": 1,
        "num_initial_steps": INITIAL_STEPS,
        "structure": {**base["structure"], "repeat": [1, 1, 1]},  # Cu4
        "md": {**base["md"], "total_steps": INITIAL_STEPS + n_steps, "temperature_K": 300,
               "trajectory_interval": 0},
        "validation": {"checks": False},
    }
    data.pop("adaptive_method_parameters", None)
    return data


def _orchestration_of(job: dict, cpu: bool) -> float:
    """Seconds of orchestration proper inside one job: outside its timed blocks, plus compare + decide."""
    if job["category"] == "validate":
        return 0.0
    total, ledger = (job["cpu"], job["ledger_cpu"]) if cpu else (job["wall"], job["ledger"])
    inside = sum(ledger.values())
    return total - inside + (ledger.get("other", 0.0) if job["category"] == "decide" else 0.0)


def run_scaling_one(data: dict, store_dir: Path) -> dict:
    from otf_flows.campaign import config_from_dict
    from otf_flows.flows.lifecycle import prepare_campaign
    from otf_flows.managers.local import run_campaign
    from otf_flows.store import OtfStore

    config = config_from_dict(data, base_dir=REPO / "configs")
    store = OtfStore(str(store_dir))
    flow = prepare_campaign(config, store)
    with CampaignTimer() as timer:
        start, cpu = time.perf_counter(), time.thread_time()
        doc = run_campaign(config, store, flow)
        wall, cpu = time.perf_counter() - start, time.thread_time() - cpu
    split = timer.split(doc.wall_seconds)
    jobs = timer.jobs
    n = len(jobs)
    runner_cpu = cpu - sum(j["cpu"] for j in jobs)
    orch_cpu = sum(_orchestration_of(j, cpu=True) for j in jobs) + runner_cpu
    iterations = [j for j in jobs if j["category"] in ITERATION_JOBS]
    tail = iterations[-max(len(iterations) // 10, 1):]

    def ms_per_job(some: list[dict], cpu: bool) -> float:
        return 1e3 * sum(_orchestration_of(j, cpu) for j in some) / len(some)

    result = {
        "campaign": config.name, "status": doc.status, "md_steps": doc.step, "jobs": n,
        "checks": len(store.checks(config.name)), "wall_s": wall, "cpu_s": cpu,
        "orchestration_ms_per_job": split["orchestration_ms_per_job"],
        "orchestration_cpu_ms_per_job": 1e3 * orch_cpu / n,
        "iteration_jobs": len(iterations),
        "iteration_ms_per_job": ms_per_job(iterations, False),
        "iteration_cpu_ms_per_job": ms_per_job(iterations, True),
        "last_10pct_jobs": len(tail),
        "last_10pct_ms_per_job": ms_per_job(tail, False),
        "last_10pct_cpu_ms_per_job": ms_per_job(tail, True),
        "split": split,
        "jobs_by_category": timer.by_category(),
    }
    store.close()
    return result


def scaling_markdown(res: dict, info: dict, wall: float) -> str:
    runs = res["runs"]
    lines = [header("Orchestration overhead as jobs accumulate (local runner, embedded store)", res["command"],
                    info, wall), ""]
    lines.append(
        "What was measured: real campaigns run by the local runner on the embedded store, made as cheap per "
        "job as possible: fcc Cu4, EMT reference, a check after every ML-MD step (3 *iteration jobs* per "
        "step: ML-MD, check, decide), no refits, no validation (a warm-up campaign runs first, so imports are "
        "not counted). *Orchestration proper* as in the main run: the runner, each job's time outside its "
        "timed block (jobflow reference resolution, output storage, store reads and writes, config "
        "validation) and compare + decide; per job over all jobs (the issue's measure, including the one-off "
        "jobs: initial MD, first fit, finish), over the iteration jobs only, and over the last 10 % of the "
        "iteration jobs (the marginal cost once the store holds all earlier ones); in wall time and in thread "
        "CPU time (insensitive to other load on a shared machine).")
    lines.append("")
    rows = [[r["jobs"], r["md_steps"], r["status"], f"{r['wall_s']:.0f}",
             *[f"{r[field]:.1f}" for _, field, _ in SCALING_MEASURES]] for r in runs]
    lines.append(table(["jobs", "MD steps", "status", "wall (s)",
                        *[f"{label} (ms/job)" for _, _, label in SCALING_MEASURES]], rows))
    small, large = runs[0], runs[-1]
    s = res["summary"]
    lines += ["", (f"Targets: <= {SCALING_TARGET_MS_PER_JOB:.0f} ms per job at the largest campaign "
                   f"({large['jobs']} jobs), within {SCALING_TARGET_RATIO}x of the smallest ({small['jobs']} jobs)."),
              ""]
    lines.append(table(
        ["orchestration per job", f"{large['jobs']} jobs (ms/job)", f"ratio to {small['jobs']} jobs",
         f"<= {SCALING_TARGET_MS_PER_JOB:.0f} ms", f"<= {SCALING_TARGET_RATIO}x"],
        [[label, f"{s[k]['ms_per_job']:.1f}", f"{s[k]['ratio']:.2f}", _yes(s[k]["ms_met"]), _yes(s[k]["ratio_met"])]
         for k, _, label in SCALING_MEASURES]))
    lines += ["", f"Per job category ({large['jobs']}-job campaign): time outside the timed block, ms per job:", ""]
    cats = large["jobs_by_category"]
    lines.append(table(["category", "jobs", "wall per job (ms)", "outside timed block (ms/job)"],
                       [[c, d["jobs"], f"{1e3 * d['wall_s'] / d['jobs']:.1f}", f"{d['shell_ms_per_job']:.1f}"]
                        for c, d in sorted(cats.items())]))
    return "\n".join(lines)


def scaling_summary(runs: list[dict]) -> dict:
    small, large = runs[0], runs[-1]
    out = {}
    for k, field, _ in SCALING_MEASURES:
        ratio = large[field] / small[field]
        out[k] = {"ms_per_job": large[field], "ratio": ratio, "ms_met": large[field] <= SCALING_TARGET_MS_PER_JOB,
                  "ratio_met": ratio <= SCALING_TARGET_RATIO}
    return out


def main_scaling(args) -> int:
    sizes = [int(x) for x in args.jobs.split(",")] if args.jobs else ([20, 200] if args.quick else [50, 5000])
    t0 = time.perf_counter()
    runs = []
    with workdir(args.keep, SCALING_NAME) as tmp:
        run_scaling_one(scaling_config(10), tmp / "warm-up")
        for n in sorted(sizes):
            print(f"[{SCALING_NAME}] about {n} jobs", file=sys.stderr)
            runs.append(run_scaling_one(scaling_config(n), tmp / f"jobs-{n}"))
    info = machine()
    wall = time.perf_counter() - t0
    res = {"benchmark": SCALING_NAME, "quick": args.quick, "command": command_line(), "machine": info,
           "benchmark_wall_s": wall,
           "targets": {"ms_per_job": SCALING_TARGET_MS_PER_JOB, "ratio": SCALING_TARGET_RATIO},
           "runs": runs, "summary": scaling_summary(runs)}
    write_results(args.out, SCALING_NAME, args.quick, res, scaling_markdown(res, info, wall))
    return 0


def main(argv=None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--scaling", action="store_true", help="cost per job of a 50- and a 5000-job campaign")
    p.add_argument("--jobs", default=None, help="with --scaling: comma-separated campaign sizes (about N jobs)")
    args = p.parse_args(argv)
    if args.scaling:
        if rerender(args, SCALING_NAME, scaling_markdown):
            return 0
        return main_scaling(args)
    if rerender(args, NAME, markdown):
        return 0
    t0 = time.perf_counter()
    results = {}
    with workdir(args.keep, NAME) as tmp:
        for name, data in scenarios(args.quick).items():
            print(f"[{NAME}] {name}: {data['md']['total_steps']} steps", file=sys.stderr)
            results[name] = run_one(data, tmp / name)
    info = machine()
    wall = time.perf_counter() - t0
    res = {"benchmark": NAME, "quick": args.quick, "command": command_line(), "machine": info,
           "benchmark_wall_s": wall, "targets": {"fraction": TARGET_FRACTION, "ms_per_job": TARGET_MS_PER_JOB},
           "scenarios": results}
    write_results(args.out, NAME, args.quick, res, markdown(res, info, wall))
    return 0


if __name__ == "__main__":
    sys.exit(main())
