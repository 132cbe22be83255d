"""Does training on virials cost force and energy accuracy under NVT? (refit.virials)

A GAP of the hidden-error benchmark's Cu-Au case (EMT, 2400 K, the benchmark config's
descriptor and default_sigma) is trained on frames of the *early* part of a reference-driven MD
(as an on-the-fly campaign's training set is) with and without the reference virials, and tested
on the *later* frames of the same trajectory (what the campaign meets next) and on another seed's.
Reported: force RMSE and energy error per frame, mean and p99, and the fraction of frames outside
the benchmark's tolerances.

    python benchmarks/virial_weight.py            # 3 training-set sizes, ~5 min on 2 cores
    python benchmarks/virial_weight.py --quick    # one size
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hidden_error as he
from _common import command_line, machine, parser, workdir, write_results

NAME = "virial_weight"


def labelled(frames, virials: bool):
    out = []
    for f in frames:
        a = f.copy()
        a.info = {"md_step": f.info.get("md_step")}
        a.info["REF_energy"] = float(f.get_potential_energy())
        a.arrays["REF_forces"] = np.array(f.get_forces())
        if virials:
            from ase.calculators.emt import EMT

            ref = f.copy()
            ref.calc = EMT()
            a.info["REF_virial"] = (-ref.get_stress(voigt=False) * ref.get_volume()).reshape(9)
        a.calc = None
        out.append(a)
    return out


def evaluate(xml: Path, frames, ref_calc, tol) -> dict:
    from otf_flows.ml.gap.fit import gap_calculator

    err = he.model_errors(gap_calculator(xml), frames, ref_calc)
    out = he.outside(err, tol)
    return {"frames": len(frames), "fraction_outside": out["fraction_outside"],
            **{f"{k}_mean": float(np.mean(err[k])) for k in he.METRICS},
            **{f"{k}_p99": float(np.percentile(err[k], 99)) for k in he.METRICS}}


def main(argv=None) -> int:
    from ase.calculators.emt import EMT

    from otf_flows.campaign import config_from_dict
    from otf_flows.ml.gap.fit import descriptor_for, fit_gap

    p = parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1200)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    sizes = [12] if args.quick else [8, 12, 17]
    steps = 400 if args.quick else args.steps
    config = config_from_dict(he.mode_config("cuau32-emt", "adaptive", 1, steps, {}, 50), base_dir=he.CONFIGS)
    other = config_from_dict(he.mode_config("cuau32-emt", "adaptive", 2, steps, {}, 50), base_dir=he.CONFIGS)
    tol = he.tolerances_of(config)
    print(f"[{NAME}] reference MD, 2 seeds x {steps} steps", file=sys.stderr, flush=True)
    traj = he.reference_md(config, steps, 2)
    traj_b = he.reference_md(other, steps, 2)
    cut = int(0.375 * len(traj))  # train on the first 3/8 of the run, test on the rest
    later, other_seed = traj[cut::2], traj_b[::3]
    descriptor = descriptor_for(config.model.preset, config.refit.descriptor_str, sorted(set(traj[0].numbers)))
    rows = []
    with workdir(args.keep, NAME) as tmp:
        for n in sizes:
            train = [traj[i] for i in np.linspace(0, cut - 1, n).astype(int)]
            for virials in (True, False):
                res = fit_gap(labelled(train, virials), tmp / f"n{n}-{virials}", config.refit, descriptor)
                xml = Path(res.model_dir) / "gap.xml"
                row = {"train_frames": n, "virials": virials, "fit_s": res.seconds,
                       "later_same_run": evaluate(xml, later, EMT(), tol),
                       "other_seed": evaluate(xml, other_seed, EMT(), tol)}
                rows.append(row)
                print(f"[{NAME}] n={n} virials={virials}: later frmse "
                      f"{row['later_same_run']['frmse_mean']:.3f}, other seed {row['other_seed']['frmse_mean']:.3f}",
                      file=sys.stderr, flush=True)
    wall = time.perf_counter() - t0
    res = {"benchmark": NAME, "quick": args.quick, "command": command_line(), "machine": machine(),
           "benchmark_wall_s": wall, "steps": steps, "train_from_first_steps": int(traj[cut].info["md_step"]),
           "tolerances": tol, "default_sigma": config.refit.default_sigma, "rows": rows}
    lines = ["## Virials in the training set under NVT (Cu-Au, EMT)\n",
             f"`{res['command']}` — {res['machine']['date_utc']}, commit {res['machine'].get('git_commit')}.\n",
             (f"GAP (benchmark descriptor, default_sigma `{config.refit.default_sigma}`) trained on n frames of "
              f"the first {res['train_from_first_steps']} steps of a {steps}-step reference MD, tested on its later "
              f"frames and on another seed's; tolerances {tol}.\n"),
             ("| n | virials | later: frmse mean / p99 | later: ediff mean / p99 | later: outside | other seed: frmse mean "
              "| other seed: ediff mean | other seed: outside |"), "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        a, b = r["later_same_run"], r["other_seed"]
        lines.append(f"| {r['train_frames']} | {'yes' if r['virials'] else 'no'} | {a['frmse_mean']:.3f} / "
                     f"{a['frmse_p99']:.3f} | {a['ediff_mean']:.4f} / {a['ediff_p99']:.4f} | "
                     f"{100 * a['fraction_outside']:.1f} % | {b['frmse_mean']:.3f} | {b['ediff_mean']:.4f} | "
                     f"{100 * b['fraction_outside']:.1f} % |")
    write_results(args.out, NAME, args.quick, res, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
