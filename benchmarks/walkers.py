"""Walkers: one campaign with three walkers at three temperatures against three separate campaigns.

The system is the melting Cu-Au alloy of ``hidden_error.py`` (benchmarks/configs/cuau32-emt.yaml,
EMT as the reference, ``md.trajectory_interval: 1`` so every ML-MD frame can be recomputed with the
reference). Per seed, with the same settings everywhere (the shipped config; the seed, the number
of steps and the temperature changed):

- ``walkers``: one campaign, walkers ``T1200``, ``T1800``, ``T2400`` (``md.temperature_K``), one
  training set and one model lineage;
- ``separate``: three campaigns, one per temperature.

Reported: reference (DFT) calls in total (the ledger's reference entries: initial MD steps and
checks); per walker the fraction of its ML-MD frames outside the tolerances (a frame is outside
when any set tolerance is not strictly met — the test a check applies) against the separate
campaign at that temperature, with the seed-to-seed spread; the errors (force RMSE over
components, energy RMSE per atom) of each final model on reference-driven MD frames of every
temperature (the same length, start, thermostat and seed as the walker's run); and the wall time
of the walker campaign with ``execution.local.workers: 2`` against 1 (first seed only).

Targets (issue 22): walkers <= 0.6x the DFT calls of the three separate campaigns; no walker's
fraction outside worse than its separate campaign's by more than the seed-to-seed spread (the
larger sample standard deviation over seeds of the two); the one final model's force RMSE on each
temperature within 1.2x that of the separate model of that temperature.

    python benchmarks/walkers.py                       # 3 seeds, 120 steps per trajectory
    python benchmarks/walkers.py --quick               # 1 seed, 12 steps
    python benchmarks/walkers.py --seeds 2 --steps 200 --no-workers --tag s2    # one seed (run several at once)
    python benchmarks/walkers.py --merge results/walkers_s1.json results/walkers_s2.json --tag merged
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import HERE, command_line, header, machine, parser, table, workdir, write_results
from hidden_error import (
    _set,
    frame_errors,
    outside,
    overrides,
    reference_calculator,
    reference_md,
    tolerances_of,
)

NAME = "walkers"
CONFIG = HERE / "configs" / "cuau32-emt.yaml"
TEMPERATURES_K = (1200, 1800, 2400)
STEPS, QUICK_STEPS = 120, 12
#: Changes to the shipped config, the same in every campaign: the cheaper GAP preset and refits on failed
#: checks only (the shipped `fast` preset with a refit after every check costs ~3x the time per step and
#: ~3x the fits, too much for 3 seeds on a shared 2-core machine). `--set` adds or overrides.
SETTINGS = {"model.preset": "default", "refit.every_new_labels": None}
REFERENCE_FRAMES = 20  # reference-MD frames per temperature the final models are tested on


# ----------------------------------------------------------------------------- configs
def walker_name(temperature_K: int) -> str:
    return f"T{temperature_K}"


def base_config(seed: int, steps: int) -> dict:
    """The shipped Cu-Au campaign with :data:`SETTINGS`, this seed and length, every ML-MD frame kept."""
    data = yaml.safe_load(CONFIG.read_text())
    for key, value in SETTINGS.items():
        _set(data, key, copy.deepcopy(value))
    data["md"]["total_steps"] = steps
    data["md"]["seed"] = seed
    data["md"]["trajectory_interval"] = 1
    return data


def separate_config(temperature_K: int, seed: int, steps: int) -> dict:
    data = base_config(seed, steps)
    data["md"]["temperature_K"] = temperature_K
    data["name"] = f"wb-{walker_name(temperature_K)}-s{seed}"  # short: gap_fit refuses long model paths
    return data


SHARED_INITIAL = False
"""With ``--shared-initial``: only the first walker runs reference-driven MD before the first fit; the others
start from that model (``walkers[].num_initial_steps: 0``)."""


def walkers_config(seed: int, steps: int, workers: int = 1) -> dict:
    data = base_config(seed, steps)
    data["name"] = f"wb-w{workers}-s{seed}"
    data["walkers"] = [{"name": walker_name(t), "md": {"temperature_K": t}} for t in TEMPERATURES_K]
    if SHARED_INITIAL:
        for walker in data["walkers"][1:]:
            walker["num_initial_steps"] = 0
    data.setdefault("execution", {}).setdefault("local", {})["workers"] = workers
    return data


# ----------------------------------------------------------------------------- one campaign
def run_campaign(data: dict, store_dir: Path) -> tuple[dict, object, object]:
    """Run one campaign; its summary (with the frames outside per walker), its store and its configuration."""
    from otf_flows.campaign import config_from_dict
    from otf_flows.managers.local import prepare_campaign
    from otf_flows.managers.local import run_campaign as run
    from otf_flows.store import OtfStore
    from otf_flows.trajectory import trajectory_frames
    from otf_flows.walkers import names

    config = config_from_dict(copy.deepcopy(data), base_dir=CONFIG.parent)
    store = OtfStore(str(store_dir))
    flow = prepare_campaign(config, store)
    load0 = list(os.getloadavg())
    t0 = time.perf_counter()
    doc = run(config, store, flow)
    wall = time.perf_counter() - t0
    name, tol = config.name, tolerances_of(config)
    ref = reference_calculator(config)
    per_walker = {}
    for walker in names(config) or [None]:
        ml = [a for a in trajectory_frames(store, name, walker=walker) if a.info.get("driver") == "model"]
        out = outside(frame_errors(ml, ref), tol)
        out.pop("ratio", None)
        per_walker[walker or "-"] = out
    checks = store.checks(name)
    models = store.models(name)
    newest = max(models, key=lambda m: m.version)
    ledger = list(store.collection("ledger").query({"campaign": name, "kind": "reference"},
                                                   properties=["started_at", "seconds", "walker"]))
    result = {
        "campaign": name,
        "status": doc.status,
        "wall_s": wall,
        "load_average_1min_start_end": [load0[0], os.getloadavg()[0]],
        "dft_calls": len(ledger),
        "labels": len(store.frames_of(name)),
        "checks": len(checks),
        "checks_failed": sum(not c.passed for c in checks),
        "checks_by_walker": {w: sum(c.walker == (None if w == "-" else w) for c in checks) for w in per_walker},
        "models": len(models),
        "lineage_length": len(store.lineage(newest.model_id)),
        "final_model": newest.model_id,
        "final_training_frames": len(newest.training_frame_ids),
        "time_split_s": store.time_split(name),
        "outside": per_walker,
    }
    return result, store, config


def model_on_frames(calc, frames) -> dict:
    """Force RMSE (eV/Å, over components) and energy RMSE (eV/atom) of a model's calculator on labelled frames."""
    df, de = [], []
    for f in frames:
        a = f.copy()
        a.calc = calc
        df.append((a.get_forces() - f.arrays["REF_forces"]).ravel())
        de.append((a.get_potential_energy() - f.info["REF_energy"]) / len(a))
    df, de = np.concatenate(df), np.array(de)
    return {"frames": len(frames), "force_rmse": float(np.sqrt(np.mean(df**2))),
            "energy_rmse_per_atom": float(np.sqrt(np.mean(de**2))),
            "energy_mean_error_per_atom": float(np.mean(de))}


def reference_frames(data: dict, temperature_K: int, steps: int) -> list:
    """Reference-driven MD at ``temperature_K`` from the campaign's start (structure, velocities, seed):
    :data:`REFERENCE_FRAMES` evenly spaced frames after step 0, labelled (``REF_energy``, ``REF_forces``)."""
    from otf_flows.campaign import config_from_dict

    d = copy.deepcopy(data)
    d.pop("walkers", None)
    d["md"]["temperature_K"] = temperature_K
    config = config_from_dict(d, base_dir=CONFIG.parent)
    every = max(steps // REFERENCE_FRAMES, 1)
    frames = [f for f in reference_md(config, steps, every) if f.info["md_step"] > 0]
    out = []
    for f in frames:
        a = f.copy()
        a.info["REF_energy"] = float(f.get_potential_energy())
        a.arrays["REF_forces"] = np.array(f.get_forces())
        a.calc = None
        out.append(a)
    return out


# ----------------------------------------------------------------------------- one seed
def run_workers(seed: int, steps: int, tmp: Path) -> dict:
    """The walker campaign with ``execution.local.workers: 2`` (its wall time against the 1-worker run)."""
    d = walkers_config(seed, steps, workers=2)
    print(f"[{NAME}] seed {seed}: walker campaign with execution.local.workers: 2", file=sys.stderr, flush=True)
    result, _, _ = run_campaign(d, tmp / d["name"])
    _progress(result)
    return result


def run_seed(seed: int, steps: int, tmp: Path, workers_timing: bool) -> dict:
    """The walker campaign, the three separate campaigns, the final models on reference MD of every T."""
    runs, stores = {}, {}
    print(f"[{NAME}] seed {seed}: walker campaign, {steps} steps per walker", file=sys.stderr, flush=True)
    data = walkers_config(seed, steps)
    runs["walkers"], stores["walkers"], _ = run_campaign(data, tmp / data["name"])
    _progress(runs["walkers"])
    for t in TEMPERATURES_K:
        d = separate_config(t, seed, steps)
        print(f"[{NAME}] seed {seed}: separate campaign at {t} K", file=sys.stderr, flush=True)
        runs[walker_name(t)], stores[walker_name(t)], _ = run_campaign(d, tmp / d["name"])
        _progress(runs[walker_name(t)])
    print(f"[{NAME}] seed {seed}: reference MD and final models", file=sys.stderr, flush=True)
    from otf_flows.validation.evaluate import model_calculator

    calcs = {key: model_calculator(store, runs[key]["final_model"]) for key, store in stores.items()}
    test = {}
    for t in TEMPERATURES_K:
        frames = reference_frames(data, t, steps)
        for key in stores:
            test.setdefault(key, {})[walker_name(t)] = model_on_frames(calcs[key], frames)
    out = {"seed": seed, "steps": steps, "runs": runs, "test": test}
    if workers_timing:
        out["workers2"] = run_workers(seed, steps, tmp)
    return out


def _progress(r: dict) -> None:
    frac = ", ".join(f"{w} {100 * (o['fraction_outside'] or 0):.1f} %" for w, o in r["outside"].items())
    print(f"[{NAME}]   {r['campaign']}: {r['wall_s']:.0f} s, {r['dft_calls']} DFT calls, {r['models']} models; "
          f"outside: {frac}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- summary
def _std(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.std(values, ddof=1)) if len(values) > 1 else None


def summarise(per_seed: list[dict]) -> dict:
    """DFT calls, fractions outside, model errors and targets over the seeds."""
    walkers = [walker_name(t) for t in TEMPERATURES_K]
    dft_w = [s["runs"]["walkers"]["dft_calls"] for s in per_seed]
    dft_s = [sum(s["runs"][w]["dft_calls"] for w in walkers) for s in per_seed]
    ratio = sum(dft_w) / sum(dft_s) if sum(dft_s) else None
    fractions = {}
    for w in walkers:
        fw = [s["runs"]["walkers"]["outside"][w]["fraction_outside"] for s in per_seed]
        fs = [s["runs"][w]["outside"]["-"]["fraction_outside"] for s in per_seed]
        spreads = [x for x in (_std(fw), _std(fs)) if x is not None]
        spread = max(spreads) if spreads else None
        mw, ms = float(np.mean([x or 0 for x in fw])), float(np.mean([x or 0 for x in fs]))
        fractions[w] = {"walker_per_seed": fw, "separate_per_seed": fs, "walker_mean": mw, "separate_mean": ms,
                        "spread": spread, "excess": mw - ms,
                        "met": None if spread is None else bool(mw - ms <= spread)}
    errors = {}
    for key in ["walkers", *walkers]:
        errors[key] = {t: {m: float(np.mean([s["test"][key][t][m] for s in per_seed]))
                           for m in ("force_rmse", "energy_rmse_per_atom")} for t in walkers}
    rmse = {w: {"walkers": errors["walkers"][w]["force_rmse"], "separate": errors[w][w]["force_rmse"],
                "ratio": errors["walkers"][w]["force_rmse"] / errors[w][w]["force_rmse"],
                "ratio_per_seed": [s["test"]["walkers"][w]["force_rmse"] / s["test"][w][w]["force_rmse"]
                                   for s in per_seed]} for w in walkers}
    for v in rmse.values():
        v["met"] = bool(v["ratio"] <= 1.2)
    timing = [s["workers2"] for s in per_seed if "workers2" in s]
    workers = None
    if timing:
        one, two = per_seed[0]["runs"]["walkers"], timing[0]
        workers = {"seed": per_seed[0]["seed"], "workers1_wall_s": one["wall_s"], "workers2_wall_s": two["wall_s"],
                   "speedup": one["wall_s"] / two["wall_s"], "workers1_dft_calls": one["dft_calls"],
                   "workers2_dft_calls": two["dft_calls"], "workers1_models": one["models"],
                   "workers2_models": two["models"], "load_1min": [one["load_average_1min_start_end"],
                                                                   two["load_average_1min_start_end"]],
                   "workers2_outside": {w: o["fraction_outside"] for w, o in two["outside"].items()}}
    return {
        "seeds": [s["seed"] for s in per_seed],
        "steps": per_seed[0]["steps"],
        "dft": {"walkers_per_seed": dft_w, "separate_per_seed": dft_s, "ratio": ratio,
                "ratio_per_seed": [a / b for a, b in zip(dft_w, dft_s)], "met": bool(ratio is not None and ratio <= 0.6)},
        "fraction_outside": fractions,
        "errors": errors,
        "force_rmse_own_temperature": rmse,
        "workers": workers,
        "targets_met": {"dft": bool(ratio is not None and ratio <= 0.6),
                        "fraction_outside": None if any(f["met"] is None for f in fractions.values())
                        else all(f["met"] for f in fractions.values()),
                        "force_rmse": all(v["met"] for v in rmse.values())},
    }


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.2f} %"


def markdown(res: dict, info: dict, wall: float) -> str:
    s = res["summary"]
    walkers = [walker_name(t) for t in TEMPERATURES_K]
    lines = [header("Walkers: one campaign at three temperatures against three campaigns (EMT Cu-Au)",
                    res["command"], info, wall), ""]
    lines.append(f"Seeds {s['seeds']}, {s['steps']} MD steps per trajectory, "
                 f"[`configs/cuau32-emt.yaml`](../configs/cuau32-emt.yaml) with `md.temperature_K` "
                 f"{' / '.join(map(str, TEMPERATURES_K))} K, every ML-MD frame kept, and in every campaign "
                 + ", ".join(f"`{k}: {v}`" for k, v in res.get("settings", {}).items()) + ".\n")
    d = s["dft"]
    lines.append(table(
        ["seed", "DFT calls: walker campaign", "three separate campaigns", "ratio"],
        [[seed, a, b, f"{a / b:.2f}"] for seed, a, b in zip(s["seeds"], d["walkers_per_seed"], d["separate_per_seed"])]
        + [["all", sum(d["walkers_per_seed"]), sum(d["separate_per_seed"]), f"{d['ratio']:.2f}"]]))
    lines += ["", f"**DFT calls (target ≤ 0.6×): {d['ratio']:.2f}× — {'met' if d['met'] else 'not met'}.**", ""]
    rows = []
    for w in walkers:
        f = s["fraction_outside"][w]
        rows.append([w, " / ".join(_pct(x) for x in f["walker_per_seed"]), _pct(f["walker_mean"]),
                     " / ".join(_pct(x) for x in f["separate_per_seed"]), _pct(f["separate_mean"]),
                     f"{100 * f['excess']:+.2f} pp", "–" if f["spread"] is None else f"{100 * f['spread']:.2f} pp",
                     "–" if f["met"] is None else ("met" if f["met"] else "not met")])
    lines.append(table(["temperature", "walker: outside per seed", "mean", "separate: outside per seed", "mean",
                        "walker − separate", "seed-to-seed spread", "target"], rows))
    lines += ["", ("Errors of each final model on reference-driven MD frames of every temperature (mean over seeds; "
                   "force RMSE eV/Å over components / energy RMSE meV/atom):"), ""]
    rows = []
    for key in ["walkers", *walkers]:
        label = "walker campaign (one model)" if key == "walkers" else f"separate {key}"
        rows.append([label] + [f"{s['errors'][key][t]['force_rmse']:.3f} / "
                               f"{1e3 * s['errors'][key][t]['energy_rmse_per_atom']:.1f}" for t in walkers])
    lines.append(table(["model", *(f"on {t} frames" for t in walkers)], rows))
    rows = [[w, f"{v['walkers']:.3f}", f"{v['separate']:.3f}", f"{v['ratio']:.2f}",
             " / ".join(f"{x:.2f}" for x in v["ratio_per_seed"]), "met" if v["met"] else "not met"]
            for w, v in s["force_rmse_own_temperature"].items()]
    lines += ["", ("Force RMSE on each temperature: the walker campaign's one model against the separate model "
                   "of that temperature (target ≤ 1.2×):"), ""]
    lines.append(table(["temperature", "one model", "separate model", "ratio", "per seed", "target"], rows))
    w = s["workers"]
    if w:
        lines += ["", (f"`execution.local.workers`: the seed-{w['seed']} walker campaign took "
                       f"{w['workers1_wall_s']:.0f} s with 1 worker and {w['workers2_wall_s']:.0f} s with 2 "
                       f"({w['speedup']:.2f}×; 1-min load average at start/end "
                       f"{w['load_1min'][0][0]:.1f}/{w['load_1min'][0][1]:.1f} and "
                       f"{w['load_1min'][1][0]:.1f}/{w['load_1min'][1][1]:.1f} on {info['cores']} cores); "
                       f"{w['workers1_dft_calls']} and {w['workers2_dft_calls']} DFT calls, "
                       f"{w['workers1_models']} and {w['workers2_models']} models.")]
    rows = []
    for seed in res["per_seed"]:
        for key, r in seed["runs"].items():
            t = r["time_split_s"]
            rows.append([seed["seed"], r["campaign"], f"{r['wall_s']:.0f}", r["dft_calls"], r["checks"],
                         r["checks_failed"], r["models"], r["lineage_length"], r["final_training_frames"],
                         f"{t['fit']:.0f}", f"{t['ml_md']:.0f}"])
    lines += ["", "Per campaign:", ""]
    lines.append(table(["seed", "campaign", "wall s", "DFT calls", "checks", "failed", "models", "lineage",
                        "final training frames", "fit s", "ML-MD s"], rows))
    return "\n".join(lines)


def figure(res: dict, path: Path) -> None:
    """Force RMSE of every final model on every temperature, and fractions outside per walker."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    s = res["summary"]
    walkers = [walker_name(t) for t in TEMPERATURES_K]
    fig = Figure(figsize=(11, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 2, 1)
    x = np.arange(len(walkers))
    keys = ["walkers", *walkers]
    for i, key in enumerate(keys):
        ax.bar(x + (i - 1.5) * 0.2, [s["errors"][key][t]["force_rmse"] for t in walkers], 0.2,
               label="one model (walkers)" if key == "walkers" else f"separate {key}")
    ax.set_xticks(x, [f"{t} frames" for t in walkers])
    ax.set_ylabel("force RMSE (eV/Å)")
    ax.set_title("final models on reference MD", fontsize=9)
    ax.legend(fontsize=7)
    ax = fig.add_subplot(1, 2, 2)
    for i, (label, key) in enumerate((("walker", "walker_per_seed"), ("separate", "separate_per_seed"))):
        for j, w in enumerate(walkers):
            values = [100 * (v or 0) for v in s["fraction_outside"][w][key]]
            ax.plot([j + (i - 0.5) * 0.2] * len(values), values, "o", color=f"C{i}",
                    label=label if j == 0 else None)
    ax.set_xticks(x, walkers)
    ax.set_ylabel("ML-MD frames outside the tolerances (%)")
    ax.set_title(f"per seed ({len(s['seeds'])})", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write(res: dict, args, name: str, info: dict, wall: float) -> None:
    write_results(args.out, name, res["quick"], res, markdown(res, info, wall))
    png = Path(args.out) / (f"{name}_quick.png" if res["quick"] else f"{name}.png")
    figure(res, png)
    print(f"wrote {png}", file=sys.stderr)


def main(argv=None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="MD seeds (default 1 2 3; quick: 1)")
    p.add_argument("--steps", type=int, default=None, help=f"MD steps per trajectory (default {STEPS}; quick: "
                   f"{QUICK_STEPS})")
    p.add_argument("--no-workers", action="store_true", help="skip the execution.local.workers: 2 timing run")
    p.add_argument("--shared-initial", action="store_true",
                   help="only the first walker runs reference MD before the first fit (walkers[].num_initial_steps: 0)")
    p.add_argument("--only-workers", action="store_true",
                   help="only the walker campaign with execution.local.workers: 2 (first seed; --merge it with the "
                        "run of that seed, e.g. run at the same time)")
    p.add_argument("--tag", default=None, help="write results/walkers_<tag>.*")
    p.add_argument("--merge", nargs="+", type=Path, default=None, metavar="RESULT.json",
                   help="merge the per-seed results of several runs (e.g. one seed each, run at once) into one")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="change a campaign key in every campaign, e.g. model.preset=fast (YAML value)")
    args = p.parse_args(argv)
    name = f"{NAME}_{args.tag}" if args.tag else NAME
    SETTINGS.update(overrides(args.overrides))
    global SHARED_INITIAL
    SHARED_INITIAL = args.shared_initial
    if args.merge or args.from_json:
        parts = [json.loads(Path(f).read_text()) for f in (args.merge or [args.from_json])]
        by_seed: dict[int, dict] = {}
        for r in parts:  # a seed's campaigns and its workers-2 run may come from different files
            for s in r["per_seed"]:
                by_seed.setdefault(s["seed"], {}).update(s)
        per_seed = [by_seed[k] for k in sorted(by_seed)]
        res = {**parts[0], "per_seed": per_seed, "summary": summarise(per_seed),
               "command": " + ".join(r["command"] for r in parts) if args.merge else parts[0]["command"],
               "benchmark_wall_s": max(r["benchmark_wall_s"] for r in parts)}
        write(res, args, name, res["machine"], res["benchmark_wall_s"])
        return 0
    seeds = args.seeds or ([1] if args.quick else [1, 2, 3])
    steps = args.steps or (QUICK_STEPS if args.quick else STEPS)
    t0 = time.perf_counter()
    with workdir(args.keep, NAME) as tmp:
        if args.only_workers:
            res = {"benchmark": NAME, "quick": args.quick, "command": command_line(), "machine": machine(),
                   "settings": SETTINGS, "per_seed": [{"seed": seeds[0], "steps": steps, "workers2": run_workers(seeds[0], steps, tmp)}]}
            res["benchmark_wall_s"] = time.perf_counter() - t0
            stem = f"{name}_quick" if args.quick else name
            Path(args.out).mkdir(parents=True, exist_ok=True)
            (Path(args.out) / f"{stem}.json").write_text(json.dumps(res, indent=2) + "\n")
            return 0
        per_seed = []
        for i, seed in enumerate(seeds):
            per_seed.append(run_seed(seed, steps, tmp, workers_timing=not args.no_workers and i == 0))
            partial = Path(args.out) / f"{name}.partial.json"  # what is done so far, should a later seed fail
            Path(args.out).mkdir(parents=True, exist_ok=True)
            partial.write_text(json.dumps({"benchmark": NAME, "quick": args.quick, "command": command_line(),
                                           "machine": machine(), "benchmark_wall_s": time.perf_counter() - t0,
                                           "settings": SETTINGS,
                                           "per_seed": per_seed}, default=str) + "\n")
    info, wall = machine(), time.perf_counter() - t0
    res = {"benchmark": NAME, "quick": args.quick, "command": command_line(), "machine": info,
           "benchmark_wall_s": wall, "settings": SETTINGS, "per_seed": per_seed, "summary": summarise(per_seed)}
    write(res, args, name, info, wall)
    return 0


if __name__ == "__main__":
    sys.exit(main())
