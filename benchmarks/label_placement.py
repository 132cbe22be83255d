"""Where do the hidden errors come from: where the labels sit in time, or the model?

One adaptive campaign of the hidden-error benchmark's Cu-Au case is run (or read from a kept
store with ``--store``); then, at cut steps S, GAPs of the campaign's own descriptor and sigma
are fitted on four training sets of frames before S and tested on the campaign's accepted
ML-MD frames in [S, S + window) against EMT:

* ``campaign``: the labels the campaign had at S (initial MD + every check before S);
* ``uniform``: as many frames, spread evenly over the campaign's trajectory before S;
* ``fixed40``: the initial MD frames + one frame every 40 steps (a fixed schedule);
* ``geom-cap80``: the initial frames + steps 10, 20, 40, 80, then every 80 (an adaptive schedule
  whose interval is capped at 80).

The non-campaign sets are the campaign's own trajectory frames labelled with EMT, so all four
see the same configurations; only which of them are labelled differs.

    python benchmarks/label_placement.py            # ~15 min on 2 cores
    python benchmarks/label_placement.py --quick    # 300 steps, two cuts
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hidden_error as he
from _common import command_line, machine, parser, rerender, workdir, write_results

NAME = "label_placement"
SCHEDULES = ("campaign", "uniform", "fixed40", "geom-cap80")


def labelled(atoms):
    """A copy of ``atoms`` with EMT labels in REF_energy / REF_forces."""
    from ase.calculators.emt import EMT

    b = atoms.copy()
    b.calc = EMT()
    energy, forces = b.get_potential_energy(), b.get_forces()
    b.calc = None
    b.info = {"md_step": atoms.info["md_step"], "REF_energy": float(energy)}
    b.arrays["REF_forces"] = np.array(forces)
    return b


def training_sets(labels, trajectory, cut: int) -> dict[str, list]:
    """The four training sets of frames before ``cut`` (see the module docstring)."""
    from otf_flows.frames import frame_to_atoms

    def train_atoms(doc):
        a = frame_to_atoms(doc)
        a.info.pop("REF_virial", None)  # NVT: not trained on (refit.virials auto)
        return a

    own = [train_atoms(f) for f in labels if f.md_step < cut]
    initial = [train_atoms(f) for f in labels if f.source == "initial_md"]
    pool = [a for a in trajectory if a.info["md_step"] < cut]
    by_step = {a.info["md_step"]: a for a in pool}
    spread = np.linspace(0, len(pool) - 1, len(own)).round().astype(int) if pool else []

    def at(steps):
        return initial + [labelled(by_step[k]) for k in steps if k in by_step]

    return {"campaign": own, "uniform": [labelled(pool[i]) for i in spread],
            "fixed40": at(range(40, cut, 40)), "geom-cap80": at([10, 20, 40, 80, *range(160, cut, 80)])}


def analyse(store, name: str, config, cuts, window: int, tmp: Path, log) -> list[dict]:
    from ase.calculators.emt import EMT

    from otf_flows.ml.gap.fit import descriptor_for, fit_gap, gap_calculator

    tol = he.tolerances_of(config)
    labels = sorted(store.training_frames(name), key=lambda f: f.md_step)
    trajectory = [a for a in he.accepted_frames(store, name) if a.info.get("driver") == "model"]
    rows = []
    for cut in cuts:
        test = [a for a in trajectory if cut <= a.info["md_step"] < cut + window]
        if not test:
            continue
        for kind, frames in training_sets(labels, trajectory, cut).items():
            numbers = sorted({int(z) for a in frames for z in a.numbers})
            descriptor = descriptor_for(config.model.preset, config.refit.descriptor_str, numbers)
            fit = fit_gap(frames, tmp / f"{cut}-{kind}", config.refit, descriptor)
            err = he.model_errors(gap_calculator(Path(fit.model_dir) / "gap.xml"), test, EMT())
            out = he.outside(err, tol)
            row = {"cut_step": cut, "schedule": kind, "train_frames": len(frames), "test_frames": len(test),
                   "label_steps": sorted(int(a.info.get("md_step", -1)) for a in frames),
                   "frmse_mean": float(np.mean(err["frmse"])), "fraction_outside": out["fraction_outside"]}
            log(f"  S={cut} {kind:<11} n={len(frames):>2}: frmse {row['frmse_mean']:.3f}, "
                f"outside {100 * row['fraction_outside']:.1f} %")
            rows.append(row)
    return rows


def markdown(res: dict, *_) -> str:
    out = [f"## Label placement (Cu-Au, EMT)\n\n`{res['command']}` — {res['machine']['date_utc']}, "
           f"commit {res['machine']['git_commit']}.\n",
           f"Campaign `{res['campaign']}` ({res['steps']} steps, {res['dft_calls']} DFT calls, labels at steps "
           f"{res['label_steps']}). GAPs of the campaign's descriptor and sigma fitted on frames before the cut "
           f"step S, tested on the campaign's accepted ML-MD frames in [S, S + {res['window']}) against EMT; "
           "*outside*: any tolerance of the campaign not met.\n",
           "| S | " + " | ".join(f"{k}: n, frmse, outside" for k in SCHEDULES) + " |",
           "|---|" + "---|" * len(SCHEDULES)]
    for cut in sorted({r["cut_step"] for r in res["rows"]}):
        cells = []
        for kind in SCHEDULES:
            r = next((x for x in res["rows"] if x["cut_step"] == cut and x["schedule"] == kind), None)
            cells.append("–" if r is None else
                         f"{r['train_frames']}, {r['frmse_mean']:.3f}, {100 * r['fraction_outside']:.1f} %")
        out.append(f"| {cut} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    from otf_flows.store import OtfStore

    p = parser(__doc__.splitlines()[0])
    p.add_argument("--store", help="a kept hidden-error store directory (hidden_error.py --keep) instead of a new run")
    p.add_argument("--campaign", default="he-cuau-ada-s1", help="campaign name in --store")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a campaign key of the new run (YAML value)")
    args = p.parse_args(argv)
    if rerender(args, NAME, markdown):
        return 0
    t0 = time.perf_counter()
    steps = 300 if args.quick else 1200
    cuts = [100, 200] if args.quick else [170, 330, 490, 650, 810]
    window = 100 if args.quick else 160

    def log(msg):
        print(f"[{NAME}] {msg}", file=sys.stderr, flush=True)

    with workdir(args.keep, NAME) as tmp:
        if args.store:
            store = OtfStore(args.store)
            name = args.campaign
            from otf_flows.campaign import config_from_dict

            config = config_from_dict(store.require_campaign(name).config)
        else:
            data = he.mode_config("cuau32-emt", "adaptive", 1, steps, he.overrides(args.overrides), 50)
            log(f"adaptive campaign, {steps} steps")
            _, keep = he.run_one(data, tmp / data["name"])
            store, config, name = keep["store"], keep["config"], data["name"]
        rows = analyse(store, name, config, cuts, window, tmp, log)
        labels = sorted(f.md_step for f in store.training_frames(name))
        n_dft = store.collection("ledger").count({"campaign": name, "kind": "reference"})
    res = {"benchmark": NAME, "quick": args.quick, "command": command_line(), "machine": machine(),
           "benchmark_wall_s": time.perf_counter() - t0, "campaign": name, "steps": config.md.total_steps,
           "dft_calls": n_dft, "label_steps": labels, "window": window, "rows": rows}
    write_results(args.out, NAME, args.quick, res, markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
