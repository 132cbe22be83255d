"""Hidden error: how accurate is the ML-MD trajectory *between* the checks?

A check measures the model's error on one frame every ``interval`` steps; what happens in
between is hidden from the campaign. Here the reference is cheap (EMT for a Cu-Au alloy that
melts during the run, Stillinger-Weber for liquid Si), so every ML-MD frame
(``md.trajectory_interval: 1``) is recomputed with the same reference the checks use and
compared with the driving model's energy and forces. Four modes, several seeds each:

- ``fixed``: a check every ``fixed_interval`` steps;
- ``hybrid-md``: the campaign under ``compat: hybrid-md`` (hybrid-md's adaptive rule, refits on failed
  checks only, no rollback, no uncertainty trigger): the behaviour before the measured defaults;
- ``adaptive``: the campaign defaults without the uncertainty trigger;
- ``adaptive+uncertainty``: adaptive, plus GAP's predicted uncertainty (largest local-energy
  standard deviation) every ``uncertainty.every`` steps, ending the segment early above the
  threshold — the campaign config as shipped in benchmarks/configs/, i.e. the campaign defaults.

Per mode: the fraction of ML-MD frames outside the campaign's own tolerances (a frame is
outside when any set tolerance is not strictly met — the test a check applies), the worst
excursion (largest error/tolerance ratio and its MD step), reference (DFT) calls, checks
passed/failed, and the uncertainty trigger's cost per step. Also: g(r) of the on-the-fly
trajectory against reference-driven MD of the same length (same start, thermostat and seed),
the correlation between per-frame predicted uncertainty and actual error (the measure the
trigger uses and alternatives), and the error floor of the descriptor (a GAP trained on
frames spread over a reference trajectory) — the smallest fraction outside the tolerances a
model of this kind reaches.

    python benchmarks/hidden_error.py           # Cu-Au (1200 steps) and Si (600 steps), 3 seeds x 3 modes
    python benchmarks/hidden_error.py --quick   # Cu-Au only, 1 seed, 60 steps
    python benchmarks/hidden_error.py --systems cuau32-emt --seeds 1 2 --set uncertainty.every=2
"""

from __future__ import annotations

import copy
import io
import sys
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    HERE,
    command_line,
    header,
    machine,
    parser,
    stats,
    table,
    workdir,
    write_results,
)

NAME = "hidden_error"
CONFIGS = HERE / "configs"
METRICS = ("ediff", "fmax", "frmse")

#: The benchmark's systems: campaign config, run lengths, fixed interval, g(r) range.
SYSTEMS: dict[str, dict] = {
    "cuau32-emt": {"config": "cuau32-emt.yaml", "short": "cuau", "steps": 1200, "quick_steps": 60, "fixed_interval": 50,
                   "r_max": 4.0, "title": "Cu16Au16, EMT, 2400 K (crystal that melts)"},
    "si32-sw": {"config": "si32-sw.yaml", "short": "si", "steps": 600, "quick_steps": 80, "fixed_interval": 50,
                "r_max": 4.15, "title": "liquid Si32, Stillinger-Weber, 2000 K"},
}
MODES = ("fixed", "hybrid-md", "adaptive", "adaptive+uncertainty")
#: Short names in campaign names: gap_fit refuses model paths longer than ~200 characters.
SHORT = {"fixed": "fix", "hybrid-md": "hmd", "adaptive": "ada", "adaptive+uncertainty": "unc"}


# ----------------------------------------------------------------------------- configs
def reference_calculator(config):
    """A fresh instance of the campaign's reference (an ASE calculator)."""
    from otf_flows.reference.ase import AseEngine

    if config.reference.engine != "ase":
        raise SystemExit("hidden_error.py needs a cheap ASE reference (engine: ase)")
    return AseEngine(config.reference.calculator, config.reference.kwargs)._calculator_class()(
        **config.reference.kwargs)


def _set(data: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        data = data.setdefault(k, {})
    data[keys[-1]] = value


def overrides(pairs: list[str]) -> dict:
    """``--set a.b=value`` pairs (values parsed as YAML)."""
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set {pair!r}: expected key=value")
        out[key.strip()] = yaml.safe_load(value)
    return out


def mode_config(system: str, mode: str, seed: int, steps: int, extra: dict, fixed_interval: int) -> dict:
    """The campaign mapping of one run: the shipped config, ``--set`` overrides, the mode, the seed."""
    data = yaml.safe_load((CONFIGS / SYSTEMS[system]["config"]).read_text())
    for key, value in extra.items():
        _set(data, key, copy.deepcopy(value))
    data["md"]["total_steps"] = steps
    data["md"]["seed"] = seed
    data["md"]["trajectory_interval"] = 1
    data["name"] = f"he-{SYSTEMS[system]['short']}-{SHORT[mode]}-s{seed}"
    if mode == "fixed":
        data.pop("adaptive_method_parameters", None)
        data["check_interval"] = fixed_interval
    if mode == "hybrid-md":  # hybrid-md's behaviour where the config says nothing
        data["compat"] = "hybrid-md"
    elif mode != "adaptive+uncertainty":
        data["uncertainty"] = {**data.get("uncertainty", {}), "enabled": False}
    elif not _config(data).uncertainty.enabled:
        raise SystemExit(f"{SYSTEMS[system]['config']}: the shipped config must enable the uncertainty trigger")
    return data


def _config(data: dict):
    from otf_flows.campaign import config_from_dict

    return config_from_dict(data, base_dir=CONFIGS)


def tolerances_of(config) -> dict[str, float]:
    return {k: v for k, v in config.tolerances.model_dump().items() if k in METRICS and v is not None}


# ----------------------------------------------------------------------------- trajectory
def accepted_frames(store, campaign: str, include_rolled_back: bool = False):
    """The campaign's MD frames in step order (otf_flows.trajectory, or an equivalent walk of the states)."""
    try:
        from otf_flows.trajectory import trajectory_frames
    except ImportError:  # pragma: no cover - older otf_flows
        return _frames_fallback(store, campaign)
    return trajectory_frames(store, campaign, include_rolled_back=include_rolled_back)


def _frames_fallback(store, campaign: str):
    from ase.io import read

    states = {d["state_id"]: d for d in store.collection("states").query({"campaign": campaign})}
    sid, chain = store.require_campaign(campaign).state_id, []
    while sid in states:
        chain.append(states[sid])
        sid = states[sid].get("start_state_id")
    frames = []
    for d in reversed(chain):
        if not d.get("trajectory"):
            continue
        for atoms in read(io.StringIO(store.get_blob(d["trajectory"]).decode()), index=":", format="extxyz"):
            atoms.info["driver"] = "reference" if d.get("model_id") is None else "model"
            if d.get("model_id") is not None:
                atoms.info["model_id"] = d["model_id"]
            frames.append(atoms)
    return frames


def frame_errors(frames, ref_calc) -> dict[str, np.ndarray]:
    """Per frame: MD step, ediff (eV/atom), fmax and frmse (eV/Å) of the driving model against the reference."""
    steps, ediff, fmax, frmse = [], [], [], []
    for atoms in frames:
        e_ml, f_ml = atoms.get_potential_energy(), atoms.get_forces()
        ref = atoms.copy()
        ref.calc = ref_calc
        delta = f_ml - ref.get_forces()
        steps.append(int(atoms.info["md_step"]))
        ediff.append(abs(e_ml - ref.get_potential_energy()) / len(atoms))
        fmax.append(float(np.abs(delta).max()))
        frmse.append(float(np.sqrt(np.mean(delta**2))))
    return {"step": np.array(steps), "ediff": np.array(ediff), "fmax": np.array(fmax), "frmse": np.array(frmse)}


def outside(err: dict[str, np.ndarray], tol: dict[str, float]) -> dict:
    """Fraction of frames outside the tolerances and the worst excursion (error / tolerance)."""
    n = len(err["step"])
    if n == 0:
        return {"frames": 0, "frames_outside": 0, "fraction_outside": None, "outside_by_metric": {},
                "worst": None}
    ratios = np.vstack([err[k] / tol[k] for k in tol])  # metric x frame
    ratio = ratios.max(axis=0)
    bad = ratio >= 1.0  # a check passes iff value < tolerance
    i = int(np.argmax(ratio))
    return {
        "frames": n,
        "frames_outside": int(bad.sum()),
        "fraction_outside": float(bad.mean()),
        "outside_by_metric": {k: int((ratios[j] >= 1.0).sum()) for j, k in enumerate(tol)},
        "worst": {"ratio": float(ratio[i]), "step": int(err["step"][i]), "metric": list(tol)[int(np.argmax(ratios[:, i]))],
                  **{k: float(err[k][i]) for k in METRICS}},
        "ratio": ratio,
    }


# ----------------------------------------------------------------------------- one campaign
def run_one(data: dict, store_dir: Path) -> tuple[dict, dict]:
    """Run one campaign; return its result and what later analyses need (store, frames, errors)."""
    from otf_flows.campaign import config_from_dict
    from otf_flows.flows.lifecycle import prepare_campaign
    from otf_flows.managers.local import run_campaign
    from otf_flows.store import OtfStore
    from otf_flows.trajectory import campaign_segments

    config = config_from_dict(data, base_dir=CONFIGS)
    store = OtfStore(str(store_dir))
    flow = prepare_campaign(config, store)
    start = time.perf_counter()
    doc = run_campaign(config, store, flow)
    measured = time.perf_counter() - start
    name = config.name
    tol = tolerances_of(config)

    every = accepted_frames(store, name)
    ml = [a for a in every if a.info.get("driver") == "model"]
    t0 = time.perf_counter()
    err = frame_errors(ml, reference_calculator(config))
    eval_s = time.perf_counter() - t0
    out = outside(err, tol)
    ratio = out.pop("ratio", np.zeros(0))
    rolled = [a for a in accepted_frames(store, name, include_rolled_back=True)
              if a.info.get("driver") == "model" and a.info.get("segment_status") != "accepted"]

    checks = store.checks(name)
    segments = [s for s in campaign_segments(store, name) if s.model_id is not None]
    ml_steps = sum(s.step - s.start_step for s in segments)
    states = list(store.collection("states").query(
        {"campaign": name, "model_id": {"$ne": None}},
        properties=["uncertainty_seconds", "n_uncertainty_evals", "uncertainty_threshold"]))
    u_seconds = sum(d.get("uncertainty_seconds") or 0.0 for d in states)
    u_evals = sum(d.get("n_uncertainty_evals") or 0 for d in states)
    split = store.time_split(name)
    n_dft = store.collection("ledger").count({"campaign": name, "kind": "reference"})
    thresholds = [c.uncertainty_threshold for c in checks if c.uncertainty_threshold is not None]
    result = {
        "campaign": name,
        "seed": config.md.seed,
        "status": doc.status,
        "md_steps": doc.step,
        "wall_s": doc.wall_seconds,
        "wall_measured_s": measured,
        "reference_eval_s": eval_s,
        "tolerances": tol,
        **out,
        "rolled_back_frames": len(rolled),
        "errors": {k: stats(err[k]) for k in METRICS},
        "dft_calls": n_dft,
        "checks": len(checks),
        "checks_passed": sum(c.passed for c in checks),
        "checks_failed": sum(not c.passed for c in checks),
        "checks_by_trigger": {t: sum(c.trigger == t for c in checks) for t in ("interval", "uncertainty", "guard")},
        "failed_by_trigger": {t: sum(c.trigger == t and not c.passed for c in checks)
                              for t in ("interval", "uncertainty", "guard")},
        "refits": max(len(store.models(name)) - 1, 0),
        "ml_md_steps": ml_steps,
        "ml_md_seconds": split["ml_md"],
        "ml_md_ms_per_step": 1e3 * split["ml_md"] / ml_steps if ml_steps else None,
        "time_split_s": split,
        "uncertainty": {
            "evaluations": u_evals,
            "seconds": u_seconds,
            "ms_per_step": 1e3 * u_seconds / ml_steps if ml_steps else None,
            "threshold_range_eV": [min(thresholds), max(thresholds)] if thresholds else None,
        },
        "check_rows": [{"step": c.step, "interval": c.interval, "trigger": c.trigger, "passed": c.passed,
                        "refit": c.refit, "uncertainty": c.uncertainty, "threshold": c.uncertainty_threshold,
                        **{k: getattr(c, k) for k in METRICS}} for c in checks],
        "series": {"step": err["step"].tolist(), "ratio": [round(float(r), 4) for r in ratio]},
    }
    keep = {"store": store, "config": config, "frames": ml, "errors": err, "all_frames": every}
    return result, keep


def aggregate(runs: list[dict]) -> dict:
    """Pooled over seeds: frames outside, worst excursion, DFT calls, checks, uncertainty cost."""
    frames = sum(r["frames"] for r in runs)
    bad = sum(r["frames_outside"] for r in runs)
    worst = max((r for r in runs if r["worst"]), key=lambda r: r["worst"]["ratio"], default=None)
    ms_u = [r["uncertainty"]["ms_per_step"] for r in runs if r["uncertainty"]["evaluations"]]
    return {
        "seeds": [r["seed"] for r in runs],
        "frames": frames,
        "frames_outside": bad,
        "fraction_outside": bad / frames if frames else None,
        "fraction_outside_per_seed": [r["fraction_outside"] for r in runs],
        "worst": {**worst["worst"], "seed": worst["seed"]} if worst else None,
        "dft_calls_total": sum(r["dft_calls"] for r in runs),
        "dft_calls_mean": float(np.mean([r["dft_calls"] for r in runs])),
        "dft_calls_per_seed": [r["dft_calls"] for r in runs],
        "checks_passed": sum(r["checks_passed"] for r in runs),
        "checks_failed": sum(r["checks_failed"] for r in runs),
        "uncertainty_checks": sum(r["checks_by_trigger"]["uncertainty"] for r in runs),
        "uncertainty_checks_failed": sum(r["failed_by_trigger"]["uncertainty"] for r in runs),
        "refits": sum(r["refits"] for r in runs),
        "rolled_back_frames": sum(r["rolled_back_frames"] for r in runs),
        "ml_md_ms_per_step": float(np.mean([r["ml_md_ms_per_step"] for r in runs])),
        "uncertainty_ms_per_step": float(np.mean(ms_u)) if ms_u else None,
        "uncertainty_evaluations": sum(r["uncertainty"]["evaluations"] for r in runs),
    }


# ----------------------------------------------------------------------------- g(r)
def reference_md(config, steps: int, every: int):
    """Reference-driven MD from the campaign's own start (structure, velocities, thermostat, seed)."""
    from ase.io import read

    from otf_flows.md.segment import initial_state, run_segment
    from otf_flows.structures import build_structure

    start = initial_state(build_structure(config.structure), config.md)
    result = run_segment(start, reference_calculator(config), config.md, steps, every)
    return read(io.StringIO(result.trajectory_xyz.decode()), index=":", format="extxyz")


def gr_summary(r: np.ndarray, g: np.ndarray) -> dict:
    i = int(np.argmax(g))
    return {"first_peak_r_A": float(r[i]), "first_peak_g": float(g[i])}


def gr_compare(frames_otf, frames_ref, r_max: float, dr: float, window_from: int) -> dict:
    """g(r) of two trajectories over MD steps >= ``window_from``: peaks and the integrated |Δg| (Å)."""
    from otf_flows.analysis import rdf

    a = [f for f in frames_otf if f.info["md_step"] >= window_from]
    b = [f for f in frames_ref if f.info["md_step"] >= window_from]
    r, g_otf = rdf(a, r_max, dr)
    _, g_ref = rdf(b, r_max, dr)
    return {"frames": [len(a), len(b)], "otf": gr_summary(r, g_otf), "reference": gr_summary(r, g_ref),
            "integrated_abs_diff_A": float(np.sum(np.abs(g_otf - g_ref)) * dr),
            "r": r.tolist(), "g_otf": g_otf.round(4).tolist(), "g_ref": g_ref.round(4).tolist()}


# ----------------------------------------------------------------------------- uncertainty vs error
def uncertainty_correlation(samples: list[dict], every: int, tol: dict[str, float]) -> dict:
    """Spearman correlation of per-frame predicted uncertainty with the actual error.

    ``samples``: per campaign ``{"store", "frames", "errors", "stride"}``. Each sampled frame
    is recomputed with its driving model, with and without ``local_gap_variance`` (so the
    extra cost of an evaluation is measured too). Measures: ``max_local_std`` =
    sqrt(max_i var_i) (what the trigger uses), ``total_std`` = sqrt(Σ_i var_i) (std of the total
    energy if the local energies were independent), ``mean_local_std`` = mean_i sqrt(var_i).
    ``pooled`` is over all sampled frames; ``within_model`` the frame-weighted mean over driving
    models with ≥ 8 sampled frames (what a per-model calibrated threshold sees). ``auc_outside``:
    probability that a frame outside the tolerances has a larger value than one inside (ROC
    area; 0.5 = no discrimination), pooled.
    """
    from scipy.stats import spearmanr

    from otf_flows.validation.evaluate import model_calculator

    rows, plain_s, var_s = [], [], []
    for s in samples:
        calcs = {}
        idx = np.arange(0, len(s["frames"]), s["stride"])
        for i in idx:
            atoms = s["frames"][i]
            mid = atoms.info["model_id"]
            if mid not in calcs:
                calcs[mid] = model_calculator(s["store"], mid)
            pot = calcs[mid]
            frame = atoms.copy()
            frame.calc = None
            pot.calc_args = ""
            pot.reset()
            t0 = time.perf_counter()
            pot.calculate(frame, ["energy", "forces"])
            plain_s.append(time.perf_counter() - t0)
            pot.calc_args = "local_gap_variance"
            pot.reset()
            t0 = time.perf_counter()
            pot.calculate(frame, ["energy", "forces"])
            var_s.append(time.perf_counter() - t0)
            pot.calc_args = ""
            var = np.clip(np.asarray(pot.extra_results["atoms"]["local_gap_variance"], float), 0.0, None)
            rows.append({"campaign": s["campaign"], "model": mid, "step": int(atoms.info["md_step"]),
                         "max_local_std": float(np.sqrt(var.max())), "total_std": float(np.sqrt(var.sum())),
                         "mean_local_std": float(np.mean(np.sqrt(var))),
                         **{k: float(s["errors"][k][i]) for k in METRICS}})
    measures = ("max_local_std", "total_std", "mean_local_std")
    out = {"frames": len(rows), "pooled": {}, "within_model": {}}

    def rho(x, y):
        if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
            return None
        return float(spearmanr(x, y)[0])

    groups = {}
    for r in rows:
        groups.setdefault((r["campaign"], r["model"]), []).append(r)
    groups = [g for g in groups.values() if len(g) >= 8]
    out["within_model_groups"] = len(groups)
    bad = np.array([max(r[k] / tol[k] for k in tol) >= 1.0 for r in rows], bool)
    out["frames_outside"] = int(bad.sum())
    out["auc_outside"] = {}
    for m in measures:
        out["pooled"][m] = {k: rho([r[m] for r in rows], [r[k] for r in rows]) for k in METRICS}
        values = np.array([r[m] for r in rows])
        if bad.any() and (~bad).any():
            from scipy.stats import mannwhitneyu

            u_stat = mannwhitneyu(values[bad], values[~bad], alternative="two-sided").statistic
            out["auc_outside"][m] = float(u_stat / (bad.sum() * (~bad).sum()))
        else:
            out["auc_outside"][m] = None
        acc = {k: [] for k in METRICS}
        for sub in groups:
            for k in METRICS:
                v = rho([r[m] for r in sub], [r[k] for r in sub])
                if v is not None:
                    acc[k].append((v, len(sub)))
        out["within_model"][m] = {k: (float(np.average([v for v, _ in acc[k]], weights=[n for _, n in acc[k]]))
                                      if acc[k] else None) for k in METRICS}
    extra = float(np.median(var_s) - np.median(plain_s))
    out["cost"] = {"force_call_ms": 1e3 * float(np.median(plain_s)),
                   "force_call_with_variance_ms": 1e3 * float(np.median(var_s)),
                   "extra_ms_per_evaluation": 1e3 * extra,
                   "extra_ms_per_step": 1e3 * extra / every}
    out["rows"] = [{k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]
    return out


# ----------------------------------------------------------------------------- error floor
def model_errors(calc, frames, ref_calc) -> dict[str, np.ndarray]:
    """:func:`frame_errors` of the model ``calc`` (not the frames' own calculator) on ``frames``."""
    from ase.calculators.singlepoint import SinglePointCalculator

    ml = []
    for f in frames:
        a = f.copy()
        a.calc = calc
        e, forces = a.get_potential_energy(), a.get_forces()
        b = f.copy()
        b.calc = SinglePointCalculator(b, energy=e, forces=forces)
        b.info["md_step"] = f.info["md_step"]
        ml.append(b)
    return frame_errors(ml, ref_calc)


def error_floor(config, train_frames, test_frames, tol: dict, workdir_: Path) -> dict:
    """A GAP (same descriptor and sigma) trained on reference frames spread over one reference
    trajectory, tested on another seed's: the error level this kind of model reaches."""

    from otf_flows.ml.gap.fit import descriptor_for, fit_gap, gap_calculator

    def labelled(frames):
        out = []
        for f in frames:
            a = f.copy()
            a.info["REF_energy"] = float(f.get_potential_energy())
            a.arrays["REF_forces"] = np.array(f.get_forces())
            a.calc = None
            out.append(a)
        return out

    descriptor = descriptor_for(config.model.preset, config.refit.descriptor_str,
                                sorted({int(z) for a in train_frames for z in a.numbers}))
    res = fit_gap(labelled(train_frames), workdir_, config.refit, descriptor)
    err = model_errors(gap_calculator(Path(res.model_dir) / "gap.xml"), test_frames, reference_calculator(config))
    out = outside(err, tol)
    out.pop("ratio", None)
    return {"train_frames": len(train_frames), "test_frames": len(test_frames), **out,
            "errors": {k: stats(err[k]) for k in METRICS},
            "p99": {k: float(np.percentile(err[k], 99)) for k in METRICS}}


# ----------------------------------------------------------------------------- one system
def run_system(system: str, seeds: list[int], steps: int, extra: dict, fixed_interval: int, quick: bool,
               tmp: Path, floor: bool, modes_run: tuple[str, ...] = MODES) -> dict:
    from otf_flows.campaign import config_from_dict

    spec = SYSTEMS[system]
    runs: dict[str, list[dict]] = {m: [] for m in modes_run}
    keeps: dict[str, list[dict]] = {m: [] for m in modes_run}
    for seed in seeds:
        for mode in modes_run:
            data = mode_config(system, mode, seed, steps, extra, fixed_interval)
            print(f"[{NAME}] {system} {mode} seed {seed}: {steps} steps", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            result, keep = run_one(data, tmp / data["name"])
            runs[mode].append(result)
            keeps[mode].append(keep)
            print(f"[{NAME}]   {time.perf_counter() - t0:.0f} s: {result['dft_calls']} DFT calls, "
                  f"{100 * (result['fraction_outside'] or 0):.2f} % frames outside, worst "
                  f"{(result['worst'] or {}).get('ratio', 0):.2f}", file=sys.stderr, flush=True)
    first = config_from_dict(mode_config(system, "adaptive+uncertainty", seeds[0], steps, extra, fixed_interval),
                             base_dir=CONFIGS)
    tol = tolerances_of(first)
    u = first.uncertainty

    # g(r): reference-driven MD per seed, compared with each mode's trajectory (second half of the run)
    print(f"[{NAME}] {system}: reference MD for g(r)", file=sys.stderr, flush=True)
    dr, window = 0.05, steps // 2
    ref_md, gr = {}, {m: [] for m in modes_run}
    for k, seed in enumerate(seeds):
        ref_md[seed] = reference_md(keeps[modes_run[0]][k]["config"], steps, 1 if quick else 2)
        for mode in modes_run:
            gr[mode].append({"seed": seed, **gr_compare(keeps[mode][k]["all_frames"], ref_md[seed],
                                                        spec["r_max"], dr, window)})
    baseline = []
    for a, b in zip(seeds, seeds[1:] + seeds[:1]):
        if a != b:
            c = gr_compare(ref_md[a], ref_md[b], spec["r_max"], dr, window)
            baseline.append({"seeds": [a, b], "integrated_abs_diff_A": c["integrated_abs_diff_A"]})
    gr_modes = {m: {"integrated_abs_diff_A_mean": float(np.mean([x["integrated_abs_diff_A"] for x in gr[m]])),
                    "first_peak_r_A": [x["otf"]["first_peak_r_A"] for x in gr[m]],
                    "first_peak_g": [x["otf"]["first_peak_g"] for x in gr[m]]} for m in modes_run}
    gr_ref = {"first_peak_r_A": [x["reference"]["first_peak_r_A"] for x in gr[modes_run[0]]],
              "first_peak_g": [x["reference"]["first_peak_g"] for x in gr[modes_run[0]]]}

    # uncertainty vs error on a sample of frames of the uncertainty-triggered and adaptive runs
    print(f"[{NAME}] {system}: uncertainty vs error", file=sys.stderr, flush=True)
    per_campaign = 12 if quick else 100
    samples = [{"campaign": r["campaign"], "store": kp["store"], "frames": kp["frames"], "errors": kp["errors"],
                "stride": max(len(kp["frames"]) // per_campaign, 1)}
               for mode in ("adaptive+uncertainty", "adaptive") if mode in runs
               for r, kp in zip(runs[mode], keeps[mode])]
    corr = uncertainty_correlation(samples, u.every, tol) if samples else None

    floor_res = None
    if floor and len(seeds) >= 2:
        print(f"[{NAME}] {system}: error floor", file=sys.stderr, flush=True)
        a, b = ref_md[seeds[0]], ref_md[seeds[1]]
        train = [a[i] for i in np.linspace(0, len(a) - 1, 80).astype(int)]
        test = b[:: max(len(b) // 200, 1)]
        floor_res = error_floor(first, train, test, tol, tmp / f"floor-{system}")

    for mode in modes_run:
        for kp in keeps[mode]:
            kp["store"].close()
    modes = {m: aggregate(runs[m]) for m in modes_run}
    target = None
    if "adaptive" in modes and "adaptive+uncertainty" in modes:
        ada, unc = modes["adaptive"], modes["adaptive+uncertainty"]
        ratio = unc["dft_calls_total"] / ada["dft_calls_total"] if ada["dft_calls_total"] else None
        target = {
            "fraction_outside": unc["fraction_outside"],
            "dft_calls_over_adaptive": ratio,
            "met": bool(unc["fraction_outside"] is not None and unc["fraction_outside"] <= 0.01
                        and ratio is not None and ratio <= 1.5),
        }
    return {
        "title": spec["title"],
        "config_file": f"benchmarks/configs/{spec['config']}",
        "steps": steps,
        "fixed_interval": fixed_interval,
        "tolerances": tol,
        "uncertainty_settings": u.model_dump(),
        "modes": modes,
        "runs": runs,
        "gr": {"window_from_step": window, "dr_A": dr, "r_max_A": spec["r_max"], "reference": gr_ref,
               "modes": gr_modes, "per_seed": gr, "reference_seed_to_seed": baseline,
               "reference_seed_to_seed_mean": (float(np.mean([x["integrated_abs_diff_A"] for x in baseline]))
                                               if baseline else None)},
        "correlation": corr,
        "floor": floor_res,
        "target": target,
    }


# ----------------------------------------------------------------------------- output
def merge_results(parts: list[dict], modes: list[list[str] | None] | None = None) -> dict:
    """One result from runs of the same systems with different seeds or modes (run in parallel).

    ``modes[k]`` lists the modes taken from ``parts[k]`` (None: all of them), so the adaptive runs of
    one set of files can be merged with the adaptive+uncertainty runs of another. Runs, per-mode
    aggregates, g(r) and the target are recomputed over all seeds; the reference g(r) is kept once
    per seed; the uncertainty settings, overrides and uncertainty correlation are those of the first
    part (the correlation needs the stores); the wall time is the longest part's.
    """
    modes = modes or [None] * len(parts)
    first = copy.deepcopy(parts[0])
    first["seeds"] = sorted({s for p in parts for s in p["seeds"]})
    first["benchmark_wall_s"] = max(p["benchmark_wall_s"] for p in parts)
    first["command"] = " + ".join(p["command"] for p in parts)
    first["merged_from"] = [{"command": p["command"], "modes": m or sorted(next(iter(p["systems"].values()))["runs"])}
                            for p, m in zip(parts, modes)]
    for name, sysres in first["systems"].items():
        taken = []  # (part's system result, modes taken from it)
        for p, m in zip(parts, modes):
            res = p["systems"][name]
            taken.append((res, [x for x in res["runs"] if m is None or x in m]))
        all_modes = [x for x in MODES if any(x in ms for _, ms in taken)]
        sysres["runs"] = {x: sorted((r for res, ms in taken if x in ms for r in res["runs"][x]), key=lambda r: r["seed"])
                          for x in all_modes}
        per_seed = {x: sorted((g for res, ms in taken if x in ms for g in res["gr"]["per_seed"][x]),
                              key=lambda g: g["seed"]) for x in all_modes}
        sysres["gr"]["per_seed"] = per_seed
        sysres["gr"]["modes"] = {x: {
            "integrated_abs_diff_A_mean": float(np.mean([g["integrated_abs_diff_A"] for g in per_seed[x]])),
            "first_peak_r_A": [g["otf"]["first_peak_r_A"] for g in per_seed[x]],
            "first_peak_g": [g["otf"]["first_peak_g"] for g in per_seed[x]]} for x in all_modes}
        reference = {}  # seed -> the reference MD's first peak (the same MD in every part of one seed)
        for res, ms in taken:
            first_mode = next(x for x in res["runs"])
            for g in res["gr"]["per_seed"][first_mode]:
                reference.setdefault(g["seed"], g["reference"])
        sysres["gr"]["reference"] = {key: [reference[s][key] for s in sorted(reference)]
                                     for key in ("first_peak_r_A", "first_peak_g")}
        sysres["modes"] = {x: aggregate(runs) for x, runs in sysres["runs"].items()}
        sysres["target"] = None
        if "adaptive" in sysres["modes"] and "adaptive+uncertainty" in sysres["modes"]:
            ada, unc = sysres["modes"]["adaptive"], sysres["modes"]["adaptive+uncertainty"]
            ratio = unc["dft_calls_total"] / ada["dft_calls_total"] if ada["dft_calls_total"] else None
            sysres["target"] = {"fraction_outside": unc["fraction_outside"], "dft_calls_over_adaptive": ratio,
                                "met": bool(unc["fraction_outside"] is not None and unc["fraction_outside"] <= 0.01
                                            and ratio is not None and ratio <= 1.5)}
    return first


def figure(res: dict, path: Path) -> None:
    """Per system: error/tolerance ratio along the trajectory (first seed, each mode) and g(r)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    systems = list(res["systems"])
    fig = Figure(figsize=(13, 4.2 * len(systems)))
    FigureCanvasAgg(fig)
    colours = {"fixed": "tab:grey", "hybrid-md": "tab:green", "adaptive": "tab:blue", "adaptive+uncertainty": "tab:red"}
    for row, name in enumerate(systems):
        s = res["systems"][name]
        ax = fig.add_subplot(len(systems), 2, 2 * row + 1)
        for j, mode in enumerate(m for m in MODES if m in s["runs"]):
            r = s["runs"][mode][0]
            ax.plot(r["series"]["step"], r["series"]["ratio"], lw=0.6, color=colours[mode],
                    label=f"{mode}: {100 * s['modes'][mode]['fraction_outside']:.1f} % out, "
                          f"{s['modes'][mode]['dft_calls_mean']:.0f} DFT")
            for c in r["check_rows"]:
                marker = "^" if c["trigger"] == "uncertainty" else "o"
                ax.plot([c["step"]], [0.03 * 1.35**j], marker=marker, ms=3.5, color=colours[mode],
                        mfc=colours[mode] if c["passed"] else "none", ls="none")
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.set_yscale("log")
        ax.set_ylim(0.02, None)
        ax.set_xlabel("MD step")
        ax.set_ylabel("max error / tolerance (per frame)")
        ax.set_title(f"{name} (seed {next(iter(s['runs'].values()))[0]['seed']}); checks: o interval, ^ uncertainty, "
                     "open = failed", fontsize=9)
        ax.legend(fontsize=7, loc="upper right")
        ax = fig.add_subplot(len(systems), 2, 2 * row + 2)
        present = [m for m in MODES if m in s["runs"]]
        first = s["gr"]["per_seed"][present[0]][0]
        ax.plot(first["r"], first["g_ref"], color="k", lw=1.5, label="reference MD")
        for mode in present:
            g = s["gr"]["per_seed"][mode][0]
            ax.plot(g["r"], g["g_otf"], color=colours[mode], lw=0.9,
                    label=f"{mode} (∫|Δg| {g['integrated_abs_diff_A']:.3f} Å)")
        ax.set_xlabel("r (Å)")
        ax.set_ylabel("g(r)")
        ax.set_title(f"g(r), steps ≥ {s['gr']['window_from_step']}, seed {first['seed']}; seed-to-seed "
                     f"reference ∫|Δg| {s['gr']['reference_seed_to_seed_mean'] or float('nan'):.3f} Å", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _pct(x):
    return None if x is None else f"{100 * x:.2f} %"


def markdown(res: dict, info: dict, wall: float) -> str:
    lines = [header("Hidden error between checks (EMT Cu-Au, SW Si)", res["command"], info, wall), ""]
    lines.append(f"Seeds {res['seeds']}; every ML-MD frame of the accepted trajectory compared with the campaign's "
                 "own reference; a frame is *outside* when any set tolerance is not strictly met (the check's test). "
                 f"`--set` overrides: {res['overrides'] or 'none'}.\n")
    for name, s in res["systems"].items():
        tol = ", ".join(f"{k} {v}" for k, v in s["tolerances"].items())
        u = s["uncertainty_settings"]
        thr = f"threshold {u['threshold']} eV" if u.get("threshold") else f"calibrate_factor {u['calibrate_factor']}"
        lines.append(f"### {name}: {s['title']}\n")
        lines.append(f"[`{s['config_file']}`]({s['config_file'].removeprefix('benchmarks/')}), {s['steps']} steps; "
                     f"tolerances {tol}; fixed interval {s['fixed_interval']}; uncertainty every {u['every']}, "
                     f"{thr}, min_steps {u['min_steps']}.\n")
        present = [m for m in MODES if m in s["modes"]]
        rows = []
        for mode in present:
            m = s["modes"][mode]
            w = m["worst"] or {}
            per_seed = " / ".join(f"{100 * x:.1f}" for x in m["fraction_outside_per_seed"])
            rows.append([mode, m["frames"], _pct(m["fraction_outside"]), per_seed,
                         f"{w.get('ratio', 0):.2f} ({w.get('metric')}, seed {w.get('seed')}, step {w.get('step')})",
                         f"{m['dft_calls_mean']:.1f} ({'/'.join(map(str, m['dft_calls_per_seed']))})",
                         f"{m['checks_passed']}/{m['checks_failed']}",
                         f"{m['uncertainty_checks']} ({m['uncertainty_checks_failed']} failed)",
                         m["refits"],
                         f"{m['uncertainty_ms_per_step']:.2f}" if m["uncertainty_ms_per_step"] is not None else "–",
                         f"{m['ml_md_ms_per_step']:.0f}"])
        lines.append(table(["mode", "ML-MD frames", "outside tolerance", "per seed (%)", "worst error/tol",
                            "DFT calls, mean (per seed)", "checks passed/failed", "uncertainty-triggered checks",
                            "refits", "uncertainty ms/step (recorded)", "ML-MD ms/step"], rows))
        c = s["correlation"]
        cost = (c or {}).get("cost")
        if cost and "adaptive+uncertainty" in s["modes"]:
            lines += ["", (f"Uncertainty cost: recorded (`uncertainty_seconds` / ML-MD steps) as above; measured offline, a "
                       f"force call with `local_gap_variance` costs {cost['force_call_with_variance_ms']:.0f} ms vs "
                       f"{cost['force_call_ms']:.0f} ms without, i.e. {cost['extra_ms_per_evaluation']:.1f} ms per "
                       f"evaluation, {cost['extra_ms_per_step']:.2f} ms per step at every {u['every']} "
                       f"(ML-MD: {s['modes']['adaptive+uncertainty']['ml_md_ms_per_step']:.0f} ms/step).")]
        t = s["target"]
        if t:
            lines += ["", (f"**Target** (adaptive+uncertainty ≤ 1 % of frames outside at ≤ 1.5× adaptive's DFT calls): "
                       f"{_pct(t['fraction_outside'])} at {t['dft_calls_over_adaptive']:.2f}× — "
                       f"**{'met' if t['met'] else 'not met'}**.")]
        g = s["gr"]
        rows = [["reference MD", " / ".join(f"{x:.2f}" for x in g["reference"]["first_peak_r_A"]),
                 " / ".join(f"{x:.2f}" for x in g["reference"]["first_peak_g"]), "–"]]
        for mode in present:
            gm = g["modes"][mode]
            rows.append([mode, " / ".join(f"{x:.2f}" for x in gm["first_peak_r_A"]),
                         " / ".join(f"{x:.2f}" for x in gm["first_peak_g"]), f"{gm['integrated_abs_diff_A_mean']:.3f}"])
        base = g["reference_seed_to_seed_mean"]
        lines += ["", (f"g(r) over steps ≥ {g['window_from_step']} (per seed), ∫|g − g_ref| dr up to {g['r_max_A']} Å; "
                       f"noise level (reference MD, one seed against another): "
                       f"{'–' if base is None else f'{base:.3f}'} Å."), ""]
        lines.append(table(["trajectory", "first peak r (Å)", "first peak g", "∫|Δg| dr vs reference (Å), mean"], rows))
        rows = []
        for measure in ("max_local_std", "total_std", "mean_local_std") if c else ():
            p, w = c["pooled"][measure], c["within_model"][measure]
            auc = c.get("auc_outside", {}).get(measure)
            rows.append([measure] + [f"{p[k]:+.2f}" if p[k] is not None else "–" for k in METRICS]
                        + [f"{w[k]:+.2f}" if w[k] is not None else "–" for k in METRICS]
                        + [f"{auc:.2f}" if auc is not None else "–"])
        if c:
            lines += ["", (f"Spearman correlation of predicted uncertainty with the actual error ({c['frames']} frames "
                       f"sampled from the adaptive and adaptive+uncertainty runs; within-model: frame-weighted mean "
                       f"over {c.get('within_model_groups', 0)} (run, model) groups with ≥ 8 frames). "
                       "`max_local_std` = sqrt(max_i var_i) is what the trigger uses; ROC area: how well the "
                       f"measure separates the {c.get('frames_outside', 0)} sampled frames outside the tolerances "
                       "from those inside (0.5: not at all)."), ""]
            lines.append(table(["measure", "pooled: ediff", "pooled: fmax", "pooled: frmse", "within model: ediff",
                            "within model: fmax", "within model: frmse", "ROC area, outside"], rows))
        f = s.get("floor")
        if f:
            lines += ["", (f"Error floor: a GAP with the same descriptor and sigma trained on {f['train_frames']} "
                           f"reference frames spread over one reference trajectory, tested on {f['test_frames']} frames "
                           f"of another seed's: {_pct(f['fraction_outside'])} outside the tolerances; p99 "
                           + ", ".join(f"{k} {f['p99'][k]:.3g}" for k in METRICS) + ".")]
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    import json

    p = parser(__doc__.splitlines()[0])
    p.add_argument("--systems", nargs="+", choices=list(SYSTEMS), default=None)
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="MD seeds (default 1 2 3; quick: 1)")
    p.add_argument("--steps", type=int, default=None, help="MD steps per campaign (default per system)")
    p.add_argument("--fixed-interval", type=int, default=None, help="interval of the fixed mode (default per system)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a campaign key in every mode, e.g. uncertainty.every=2 (YAML value)")
    p.add_argument("--no-floor", action="store_true", help="skip the error-floor fit")
    p.add_argument("--modes", nargs="+", choices=list(MODES), default=None, help="run only these modes")
    p.add_argument("--tag", default=None, help="write results/hidden_error_<tag>.* (tuning runs)")
    p.add_argument("--merge", nargs="+", default=None, metavar="RESULT.json[:MODE,...]",
                   help="merge results of runs with different --seeds or --modes (run in parallel) into one, "
                        "write it as --tag; a ':mode,mode' suffix takes only those modes from that file")
    args = p.parse_args(argv)
    name = f"{NAME}_{args.tag}" if args.tag else NAME
    if args.merge:
        files = [f.rsplit(":", 1) if ":" in f and not Path(f).exists() else [f, None] for f in args.merge]
        res = merge_results([json.loads(Path(f).read_text()) for f, _ in files],
                            [m.split(",") if m else None for _, m in files])
        write_results(args.out, name, res["quick"], res, markdown(res, res["machine"], res["benchmark_wall_s"]))
        figure(res, Path(args.out) / f"{name}.png")
        return 0
    if args.from_json is not None:
        res = json.loads(Path(args.from_json).read_text())
        write_results(args.out, name, res["quick"], res, markdown(res, res["machine"], res["benchmark_wall_s"]))
        figure(res, Path(args.out) / (f"{name}_quick.png" if res["quick"] else f"{name}.png"))
        return 0
    systems = args.systems or (["cuau32-emt"] if args.quick else list(SYSTEMS))
    seeds = args.seeds or ([1] if args.quick else [1, 2, 3])
    extra = overrides(args.overrides)
    t0 = time.perf_counter()
    out = {}
    with workdir(args.keep, NAME) as tmp:
        for system in systems:
            spec = SYSTEMS[system]
            steps = args.steps or (spec["quick_steps"] if args.quick else spec["steps"])
            out[system] = run_system(system, seeds, steps, extra, args.fixed_interval or spec["fixed_interval"],
                                     args.quick, tmp, floor=not args.quick and not args.no_floor,
                                     modes_run=tuple(m for m in MODES if m in (args.modes or MODES)))
    info = machine()
    wall = time.perf_counter() - t0
    res = {"benchmark": NAME, "quick": args.quick, "command": command_line(), "machine": info,
           "benchmark_wall_s": wall, "seeds": seeds, "overrides": {k: v for k, v in extra.items()},
           "systems": out}
    write_results(args.out, name, args.quick, res, markdown(res, info, wall))
    png = Path(args.out) / (f"{name}_quick.png" if args.quick else f"{name}.png")
    figure(res, png)
    print(f"wrote {png}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
