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
    from otf_flows.managers.local import prepare_campaign, run_campaign
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


def main(argv=None) -> int:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
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
