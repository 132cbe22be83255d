"""Adaptive vs fixed checking intervals: DFT calls against the error actually reached (EMT).

The same campaign (configs/cu-emt.yaml: hot Cu, EMT as the reference, refits on failed
checks) runs with the adaptive schedule as shipped and with fixed intervals of several
lengths. Errors are measured two ways after the first 10 % of the steps:

- **at the checks** (what the campaign saw; fewer checks give a noisier estimate);
- **along the whole trajectory**: every stored trajectory frame (every
  ``md.trajectory_interval`` steps) carries the driving model's energy and forces; EMT is
  cheap, so each is compared with EMT — the error the trajectory really had, whatever the
  schedule sampled.

    python benchmarks/adaptive_vs_fixed.py           # adaptive + fixed 10/30/100/300, 2000 steps each
    python benchmarks/adaptive_vs_fixed.py --quick   # adaptive + fixed 40, 80 steps each
"""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    REPO,
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

NAME = "adaptive_vs_fixed"


def modes(quick: bool, steps: int | None, intervals: list[int] | None) -> dict[str, dict]:
    base = yaml.safe_load((REPO / "configs" / "cu-emt.yaml").read_text())
    total = steps or (80 if quick else 2000)
    base["md"] = {**base["md"], "total_steps": total}
    base["validation"] = {"checks": False}  # not needed here; saves a model evaluation per refit
    out = {"adaptive": {**base, "name": "avf-adaptive"}}
    for n in intervals or ([40] if quick else [10, 30, 100, 300]):
        fixed = {**base, "name": f"avf-fixed-{n}", "check_interval": n}
        fixed.pop("adaptive_method_parameters", None)
        out[f"fixed {n}"] = fixed
    return out


def trajectory_errors(store, campaign: str, total_steps: int) -> dict:
    """Errors of the driving model against EMT on every stored ML-MD trajectory frame after 10 % of the steps."""
    from ase.calculators.emt import EMT
    from ase.io import read

    ediff, fmax, frmse = [], [], []
    for doc in store.collection("states").query({"campaign": campaign, "model_id": {"$ne": None}},
                                                properties=["trajectory"]):
        if not doc.get("trajectory"):
            continue
        text = store.get_blob(doc["trajectory"]).decode()
        for frame in read(io.StringIO(text), index=":", format="extxyz"):
            if frame.info.get("md_step", 0) <= 0.1 * total_steps:
                continue
            e_ml, f_ml = frame.get_potential_energy(), frame.get_forces()
            ref = frame.copy()
            ref.calc = EMT()
            delta = f_ml - ref.get_forces()
            ediff.append(abs(e_ml - ref.get_potential_energy()) / len(frame))
            fmax.append(float(np.abs(delta).max()))
            frmse.append(float(np.sqrt(np.mean(delta**2))))
    return {"frames": len(fmax), "ediff_eV_per_atom": stats(ediff), "fmax_eV_per_A": stats(fmax),
            "frmse_eV_per_A": stats(frmse)}


def run_one(data: dict, store_dir: Path) -> dict:
    from otf_flows.campaign import config_from_dict
    from otf_flows.flows.lifecycle import prepare_campaign
    from otf_flows.managers.local import run_campaign
    from otf_flows.store import OtfStore

    config = config_from_dict(data, base_dir=REPO / "configs")
    store = OtfStore(str(store_dir))
    flow = prepare_campaign(config, store)
    start = time.perf_counter()
    doc = run_campaign(config, store, flow)
    measured = time.perf_counter() - start
    total = config.md.total_steps
    checks = store.checks(config.name)
    late = [c for c in checks if c.step > 0.1 * total]
    n_dft = store.collection("ledger").count({"campaign": config.name, "kind": "reference"})
    result = {
        "campaign": config.name,
        "md_steps": doc.step,
        "wall_s": doc.wall_seconds,
        "wall_measured_s": measured,
        "dft_calls": n_dft,
        "checks": len(checks),
        "checks_failed": sum(not c.passed for c in checks),
        "refits": max(len(store.models(config.name)) - 1, 0),
        "guard_trips": sum(c.kind == "guard" for c in checks),
        "check_errors": {"checks": len(late), "ediff_eV_per_atom": stats([c.ediff for c in late]),
                         "fmax_eV_per_A": stats([c.fmax for c in late]),
                         "frmse_eV_per_A": stats([c.frmse for c in late])},
        "trajectory_errors": trajectory_errors(store, config.name, total),
    }
    store.close()
    return result


def comparison(results: dict) -> dict:
    """Each fixed schedule against adaptive: DFT calls and trajectory fmax p95 as ratios; and the
    cheapest fixed schedule whose trajectory fmax p95 is no worse than adaptive's."""
    ada = results["adaptive"]
    bound = ada["trajectory_errors"]["fmax_eV_per_A"]["p95"]
    ratios = {}
    for name, r in results.items():
        p95 = r["trajectory_errors"]["fmax_eV_per_A"]["p95"]
        if name == "adaptive" or p95 is None or bound is None:
            continue
        ratios[name] = {"dft_calls": r["dft_calls"] / ada["dft_calls"], "trajectory_fmax_p95": p95 / bound}
    ok = [(results[name]["dft_calls"], name) for name, q in ratios.items() if q["trajectory_fmax_p95"] <= 1.0]
    best = min(ok) if ok else None
    return {
        "adaptive_dft_calls": ada["dft_calls"],
        "adaptive_trajectory_fmax_p95": bound,
        "fixed_over_adaptive": ratios,
        "cheapest_fixed_within_bound": best[1] if best else None,
        "cheapest_fixed_dft_calls": best[0] if best else None,
        "dft_call_ratio_fixed_over_adaptive": best[0] / ada["dft_calls"] if best else None,
    }


def markdown(res: dict, info: dict, wall: float) -> str:
    lines = [header("Adaptive vs fixed checking intervals (EMT, Cu32)", res["command"], info, wall), ""]
    lines.append(f"{res['md_steps']} MD steps per campaign (configs/cu-emt.yaml: 32 atoms, 1200 K, tolerances "
                 "ediff 0.002 eV/atom and fmax 0.3 eV/Å, refit on failure; one seed). Errors after the first "
                 "10 % of the steps. Trajectory errors compare the driving model with EMT on every stored frame.\n")
    rows = []
    for name, r in res["modes"].items():
        c, t = r["check_errors"], r["trajectory_errors"]
        rows.append([name, r["dft_calls"], r["refits"], r["checks_failed"],
                     c["fmax_eV_per_A"]["p95"], c["fmax_eV_per_A"]["max"],
                     t["fmax_eV_per_A"]["p95"], t["fmax_eV_per_A"]["max"],
                     1e3 * t["ediff_eV_per_atom"]["p95"] if t["ediff_eV_per_atom"]["p95"] is not None else None,
                     t["frames"], f"{r['wall_s']:.0f}"])
    lines.append(table(["schedule", "DFT calls", "refits", "failed checks", "checks: fmax p95 (eV/Å)",
                        "checks: fmax max", "trajectory: fmax p95 (eV/Å)", "trajectory: fmax max",
                        "trajectory: ediff p95 (meV/atom)", "frames", "wall (s)"], rows))
    c = res["comparison"]
    if c.get("fixed_over_adaptive"):
        lines += ["", "Each fixed schedule relative to adaptive (trajectory errors):", ""]
        lines.append(table(["schedule", "DFT calls (× adaptive)", "fmax p95 (× adaptive)"],
                           [[n, f"{q['dft_calls']:.2f}", f"{q['trajectory_fmax_p95']:.2f}"]
                            for n, q in c["fixed_over_adaptive"].items()]))
    if c["cheapest_fixed_within_bound"]:
        lines += ["", (f"Adaptive reached a trajectory fmax p95 of {c['adaptive_trajectory_fmax_p95']:.3f} eV/Å "
                       f"with {c['adaptive_dft_calls']} DFT calls; the cheapest fixed schedule at least as good, "
                       f"`{c['cheapest_fixed_within_bound']}`, needed {c['cheapest_fixed_dft_calls']} "
                       f"({c['dft_call_ratio_fixed_over_adaptive']:.1f}×).")]
    else:
        lines += ["", (f"No fixed schedule reached the adaptive run's trajectory fmax p95 "
                       f"({c['adaptive_trajectory_fmax_p95']}) eV/Å.")]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=None, help="MD steps per campaign")
    p.add_argument("--intervals", type=int, nargs="+", default=None, help="fixed intervals to run")
    args = p.parse_args(argv)
    if rerender(args, NAME, markdown):
        return 0
    t0 = time.perf_counter()
    results = {}
    all_modes = modes(args.quick, args.steps, args.intervals)
    with workdir(args.keep, NAME) as tmp:
        for name, data in all_modes.items():
            print(f"[{NAME}] {name}: {data['md']['total_steps']} steps", file=sys.stderr)
            results[name] = run_one(data, tmp / name.replace(" ", "-"))
    info = machine()
    wall = time.perf_counter() - t0
    res = {"benchmark": NAME, "quick": args.quick, "command": command_line(), "machine": info,
           "benchmark_wall_s": wall, "md_steps": next(iter(all_modes.values()))["md"]["total_steps"],
           "modes": results, "comparison": comparison(results)}
    write_results(args.out, NAME, args.quick, res, markdown(res, info, wall))
    return 0


if __name__ == "__main__":
    sys.exit(main())
