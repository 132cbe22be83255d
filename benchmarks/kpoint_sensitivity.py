"""How far are the main job's Γ-point CP2K labels from k-point-converged ones, and which can GAP learn?

The main job (configs/si32-cp2k.yaml) labels 32-atom liquid Si at the Γ point only. This script
recomputes frames of its recorded prior data (configs/si32-liquid-pbe-prior.xyz, the exact
reference block of the main job) with a Monkhorst-Pack k-grid, and reports per frame the force RMS
difference between the two, the energy difference and the CP2K time. It then fits the l-Si GAP
leave-one-out on the relabelled frames and on the same frames with their Γ labels: the force RMSE
on the left-out frame says which labels a local model can learn.

CP2K runs are appended to an extxyz file as they finish (``--labels``), so an interrupted run
resumes, and a rerun with the same file only redoes the analysis.

    python benchmarks/kpoint_sensitivity.py --frames 5              # ~10 min on 2 idle cores
    python benchmarks/kpoint_sensitivity.py --frames 5 --kpoints 3 3 3
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, command_line, machine, parser, workdir, write_results

NAME = "kpoint_sensitivity"
PRIOR = REPO / "configs" / "si32-liquid-pbe-prior.xyz"
CONFIG = REPO / "configs" / "si32-cp2k.yaml"
#: frames of the prior file, spread over both recorded campaigns, in the order they are relabelled
ORDER = (0, 22, 6, 18, 10, 14, 3, 20, 8, 16, 12, 5, 1, 21, 9, 13, 17, 4, 19, 11, 15, 7, 2)


def relabel(frames, kpoints, labels: Path, n: int, tmp: Path) -> list:
    """The first ``n`` frames of ORDER with k-point labels (from ``labels``, else computed and appended)."""
    import yaml
    from ase.io import read, write

    from otf_flows.campaign import config_from_dict
    from otf_flows.reference.registry import get_engine

    data = yaml.safe_load(CONFIG.read_text())
    data["reference"]["kpoints"] = list(kpoints)
    engine = get_engine(config_from_dict(data, base_dir=CONFIG.parent).reference)
    done = {int(a.info["prior_index"]): a for a in read(labels, ":")} if labels.exists() else {}
    out = []
    for i in ORDER[:n]:
        if i not in done:
            f, t = frames[i], time.perf_counter()
            lab = engine.label(f.copy(), tmp / f"frame-{i}")
            a = f.copy()
            a.info = {k: v for k, v in f.info.items() if k not in ("REF_energy", "REF_virial")}
            a.info.update(prior_index=i, REF_energy=float(lab.energy), kpoints=" ".join(map(str, kpoints)),
                          cp2k_seconds=round(time.perf_counter() - t, 1),
                          cp2k_version=str(lab.meta.get("cp2k_version")), scf_steps=lab.meta.get("scf_steps"))
            if lab.virial is not None:
                a.info["REF_virial"] = np.asarray(lab.virial).reshape(9)
            a.arrays["REF_forces"] = np.asarray(lab.forces)
            write(labels, a, format="extxyz", append=True)
            done[i] = a
            print(f"[{NAME}] frame {i}: {a.info['cp2k_seconds']:.0f} s", file=sys.stderr, flush=True)
        out.append(done[i])
    return out


def loo(frames, tmp: Path, tag: str) -> list[float]:
    """Leave-one-out force RMSE (eV/Å) of the l-Si GAP (the main job's refit settings, no virials)."""
    from otf_flows.campaign import Refit
    from otf_flows.ml.gap.fit import fit_gap, gap_calculator
    from otf_flows.ml.gap.presets import PRESETS

    refit = Refit(default_sigma="0.002 0.1 0.1 0.0", extra_gap_opts="sparse_jitter=1.0e-8")
    errors = []
    for i in range(len(frames)):
        train = []
        for j, f in enumerate(frames):
            if j != i:
                a = f.copy()
                a.info.pop("REF_virial", None)
                train.append(a)
        res = fit_gap(train, tmp / f"{tag}-{i}", refit, PRESETS["l-si"])
        a = frames[i].copy()
        a.calc = gap_calculator(Path(res.model_dir) / "gap.xml")
        errors.append(float(np.sqrt(np.mean((a.get_forces() - frames[i].arrays["REF_forces"]) ** 2))))
    return errors


def main(argv=None) -> int:
    from ase.io import read

    p = parser(__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=5, help="prior frames to relabel (max 23)")
    p.add_argument("--kpoints", type=int, nargs=3, default=(2, 2, 2))
    p.add_argument("--labels", type=Path, default=None,
                   help="extxyz of k-point labels, appended as CP2K finishes (default results/si32-k<grid>.xyz)")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    grid = "".join(map(str, args.kpoints))
    labels = args.labels or Path(args.out) / f"si32-liquid-pbe-k{grid}.xyz"
    prior = read(PRIOR, ":")
    with workdir(args.keep, NAME) as tmp:
        k = relabel(prior, args.kpoints, labels, args.frames, tmp)
        gamma = [prior[int(a.info["prior_index"])] for a in k]
        rows = []
        for a, g in zip(k, gamma):
            d = a.arrays["REF_forces"] - g.arrays["REF_forces"]
            rows.append({"prior_index": int(a.info["prior_index"]), "source": g.info.get("source"),
                         "force_rms_difference": float(np.sqrt(np.mean(d**2))), "force_max_difference": float(np.abs(d).max()),
                         "energy_difference_per_atom": (a.info["REF_energy"] - g.info["REF_energy"]) / len(a),
                         "force_rms_kpoints": float(np.sqrt(np.mean(a.arrays["REF_forces"] ** 2))),
                         "cp2k_seconds": float(a.info["cp2k_seconds"]), "scf_steps": int(a.info["scf_steps"])})
        loo_k, loo_g = loo(k, tmp, f"k{grid}"), loo(gamma, tmp, "gamma")
    wall = time.perf_counter() - t0
    diff = [r["force_rms_difference"] for r in rows]
    res = {"benchmark": NAME, "quick": False, "command": command_line(), "machine": machine(), "benchmark_wall_s": wall,
           "kpoints": list(args.kpoints), "labels_file": str(labels.relative_to(REPO)) if labels.is_relative_to(REPO) else str(labels),
           "frames": rows, "force_rms_difference_mean": float(np.mean(diff)),
           "loo_force_rmse": {"kpoints": loo_k, "gamma": loo_g,
                              "kpoints_mean": float(np.mean(loo_k)), "gamma_mean": float(np.mean(loo_g))}}
    lines = [f"## Γ point against a {'×'.join(map(str, args.kpoints))} k-grid: liquid Si32, the main job's CP2K settings\n",
             (f"`{res['command']}` — {res['machine']['date_utc']}, load average {res['machine']['load_average_1_5_15']}, "
             f"commit {res['machine'].get('git_commit')}. Labels: `{res['labels_file']}`.\n"),
             ("| prior frame | source | force RMS difference (eV/Å) | max component difference | ΔE (eV/atom) | "
             "DFT force RMS (eV/Å) | CP2K s (k-grid) | SCF steps |"), "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['prior_index']} | {r['source']} | {r['force_rms_difference']:.3f} | {r['force_max_difference']:.2f} | "
                     f"{r['energy_difference_per_atom']:+.4f} | {r['force_rms_kpoints']:.2f} | {r['cp2k_seconds']:.0f} | "
                     f"{r['scf_steps']} |")
    lines += ["", f"Mean force RMS difference Γ vs k-grid: **{res['force_rms_difference_mean']:.3f} eV/Å**.", "",
              (f"Leave-one-out force RMSE of the l-Si GAP on these {len(rows)} frames (train on the others): "
              f"k-grid labels {res['loo_force_rmse']['kpoints_mean']:.3f} eV/Å "
              f"({', '.join(f'{x:.3f}' for x in loo_k)}), Γ labels {res['loo_force_rmse']['gamma_mean']:.3f} eV/Å "
              f"({', '.join(f'{x:.3f}' for x in loo_g)}).")]
    write_results(args.out, NAME, False, res, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
