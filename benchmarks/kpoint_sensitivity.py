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

``--si64`` is the k-sampling study of liquid Si64 (the reference block of
configs/si64-cp2k-k222.yaml with only the k-sampling changed): on ``--frames`` (default 3) liquid
frames, CP2K through the engine at Γ, at the one special point (¼, ¼, ¼) (``KPOINTS`` with ``SCHEME
GENERAL``), on the 2×2×2 and on the 3×3×3 Monkhorst-Pack grid (the reference). It reports each
sampling's force and energy deviation from the reference and its cost per call, and picks the
cheapest sampling whose mean force RMS deviation is at most ``--max-force-rms`` (0.1 eV/Å, a third of
the Si64 run's force tolerance). The frames are the start structure and SW Langevin MD frames at
2000 K from it (data/si64-liquid-frames.xyz, made once by this script). Labels are appended to
``--labels`` (default results/si64-liquid-kpoints.xyz) as CP2K finishes, like above.

    python benchmarks/kpoint_sensitivity.py --si64 --omp-threads 1     # ~75 CPU-min on one core

(CPU per call on one thread: Γ ~90 s, (¼, ¼, ¼) ~125 s, 2×2×2 ~290 s, 3×3×3 several times more; 3×3×3
runs last.) ``--analyse-only`` writes the results of the labels recorded so far without running CP2K.

``--timing SAMPLING`` labels the first frame with one sampling three ways: one thread, two OpenMP
threads, and ``mpirun -np 2`` with one thread per rank; it records seconds and SCF steps of each
(results/kpoint_si64_timing_<sampling>.json/.md). Run it on an otherwise idle machine:

    python benchmarks/kpoint_sensitivity.py --si64 --timing k222       # ~10 min on 2 idle cores
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _kpoint_si64 as si64
from _common import REPO, command_line, header, machine, parser, workdir, write_results

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
    p.add_argument("--frames", type=int, default=None, help="prior frames to relabel (max 23; default 5), "
                   "with --si64 liquid Si64 frames (default 3)")
    p.add_argument("--kpoints", type=int, nargs=3, default=(2, 2, 2))
    p.add_argument("--labels", type=Path, default=None,
                   help="extxyz of k-point labels, appended as CP2K finishes (default results/si32-k<grid>.xyz; "
                   "with --si64 results/si64-liquid-kpoints.xyz)")
    p.add_argument("--si64", action="store_true", help="the liquid-Si64 k-sampling study (see above)")
    p.add_argument("--samplings", nargs="+", choices=list(si64.SAMPLINGS), default=list(si64.SAMPLINGS),
                   help="--si64: samplings to label (default all; 3×3×3 is the reference)")
    p.add_argument("--omp-threads", type=int, default=1, help="--si64: OpenMP threads of CP2K (default 1)")
    p.add_argument("--mpi-ranks", type=int, default=1,
                   help="--si64: MPI ranks of CP2K (default 1; more runs it under mpirun -np N)")
    p.add_argument("--max-force-rms", type=float, default=0.1,
                   help="--si64: largest mean force RMS deviation from 3×3×3 a chosen sampling may have (eV/Å)")
    p.add_argument("--analyse-only", action="store_true",
                   help="--si64: no CP2K runs, only the analysis of the labels already in --labels (e.g. of a study "
                   "still running)")
    p.add_argument("--timing", choices=list(si64.SAMPLINGS), default=None, metavar="SAMPLING",
                   help="--si64: time one frame with SAMPLING on 1 thread, 2 OpenMP threads and mpirun -np 2 "
                   f"({', '.join(si64.SAMPLINGS)})")
    args = p.parse_args(argv)
    for key in ("frames", "omp_threads", "mpi_ranks"):
        if getattr(args, key) is not None and getattr(args, key) < 1:
            p.exit(2, f"{p.prog}: error: --{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}\n")
    if args.timing and not args.si64:
        p.exit(2, f"{p.prog}: error: --timing is an option of the --si64 study\n")
    if args.si64:
        return si64_study(args) if args.timing is None else si64_timing(args)
    args.frames = args.frames or 5
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


def si64_study(args) -> int:
    """``--si64``: label the frames with each sampling (reference last), then compare and choose."""
    t0 = time.perf_counter()
    labels = args.labels or Path(args.out) / "si64-liquid-kpoints.xyz"
    frames = si64.make_frames(args.frames or 3)
    cmd = si64.mpirun_command(args.mpi_ranks) if args.mpi_ranks > 1 else None
    mode = f"mpi{args.mpi_ranks}x{args.omp_threads}"
    order = [s for s in si64.SAMPLINGS if s in args.samplings]  # cheapest first, the reference last
    jobs = [] if args.analyse_only else [(f, s, args.omp_threads, cmd, mode) for s in order for f in frames]
    with workdir(args.keep, si64.NAME) as tmp:
        done = si64.run_labels(jobs, labels, tmp, si64.NAME)
    records = [a for (f, s, m), a in done.items() if m == mode and f < len(frames)]
    res = {"benchmark": si64.NAME, "quick": False, "command": command_line(), "machine": machine(),
           "benchmark_wall_s": time.perf_counter() - t0, "labels_file": _rel(labels), "frames_file": _rel(si64.FRAMES),
           "mode": mode, "omp_threads": args.omp_threads, "mpi_ranks": args.mpi_ranks,
           "frames": [{k: v for k, v in f.info.items()} for f in frames],
           "md": {"seed": si64.MD_SEED, "temperature_K": si64.MD_TEMPERATURE_K, "timestep_fs": si64.MD_TIMESTEP_FS,
                  "friction_per_fs": si64.MD_FRICTION_PER_FS, "steps_between_frames": si64.MD_SPACING_STEPS},
           **si64.analyse(records, max_force_rms=args.max_force_rms)}
    # the cheaper samplings against 2×2×2 as well: a figure before the 3×3×3 labels are all in
    res["versus_k222"] = {s: r for s, r in si64.analyse(
        [a for a in records if a.info["sampling"] != si64.REFERENCE], reference="k222")["samplings"].items() if r["per_frame"]}
    write_results(args.out, si64.NAME, False, res, si64_markdown(res))
    print(f"[{si64.NAME}] choice: {res['choice']}: {res['why']}", file=sys.stderr)
    return 0


def si64_markdown(res: dict) -> str:
    """The study's tables: per sampling (means) and per frame."""
    ref = si64.SAMPLINGS[res["reference"]]["title"]
    lines = [f"## k-sampling of liquid Si64 (configs/si64-cp2k-k222.yaml's CP2K settings): Γ, (¼, ¼, ¼), 2×2×2 against {ref}\n",
             (f"`{res['command']}` — {res['machine']['date_utc']}, load average {res['machine']['load_average_1_5_15']}, "
              f"commit {res['machine'].get('git_commit')}. CP2K: {res['mpi_ranks']} MPI rank(s) × {res['omp_threads']} "
              f"thread(s), one call at a time. Labels: `{res['labels_file']}`; frames: `{res['frames_file']}`.\n"),
             (f"Frames: the start structure and SW Langevin MD from it (quippy `IP SW`, seed {res['md']['seed']}, "
              f"{res['md']['temperature_K']:g} K, {res['md']['timestep_fs']:g} fs, friction {res['md']['friction_per_fs']:g}/fs), "
              f"a frame every {res['md']['steps_between_frames']} steps. Frames with all samplings so far: "
              f"{res['reference_frames']} of {res['frames']}.\n"),
             ("| sampling | CP2K k-points used | calls | mean s per call | mean CPU s | mean SCF steps | ranks × threads | "
              "force RMS dev. from ref., mean (eV/Å) | per frame | max component dev. (eV/Å) | ΔE mean (meV/atom) |"),
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s, r in res["samplings"].items():
        pf = r["per_frame"]
        per = ", ".join(f"{q['force_rms_deviation']:.3f}" for q in pf)
        lines.append(
            f"| {r['title']} | {r['kpoint_scheme']}, {r['n_kpoints']} | {r['calls']} | {r['mean_seconds']:.0f} "
            f"({', '.join(f'{x:.0f}' for x in r['seconds'])}) | {r['mean_cpu_seconds']:.0f} | {r['mean_scf_steps']:.1f} | "
            f"{'/'.join(map(str, r['mpi_ranks']))} × {'/'.join(map(str, r['threads_per_rank']))} | "
            + (f"**{r['mean_force_rms_deviation']:.3f}** | {per} | "
               f"{r['max_force_max_deviation']:.2f} | {1000 * r['mean_energy_difference_per_atom']:+.1f} |" if pf
               else ("reference |  |  |  |" if s == res["reference"] else "– |  |  |  |")))
    if res.get("versus_k222"):
        lines += ["", "The cheaper samplings against 2×2×2 (not the reference; on the frames that have both):", "",
                  "| sampling | frames | force RMS dev. from 2×2×2, mean (eV/Å) | per frame | max component dev. (eV/Å) | ΔE mean (meV/atom) |",
                  "|---|---|---|---|---|---|"]
        for r in res["versus_k222"].values():
            per = ", ".join(f"{q['force_rms_deviation']:.3f}" for q in r["per_frame"])
            lines.append(f"| {r['title']} | {[q['frame'] for q in r['per_frame']]} | **{r['mean_force_rms_deviation']:.3f}** | "
                         f"{per} | {r['max_force_max_deviation']:.2f} | {1000 * r['mean_energy_difference_per_atom']:+.1f} |")
    lines += ["", f"Per frame (deviation from {ref}):", "",
              "| frame | sampling | force RMS dev. (eV/Å) | max component dev. (eV/Å) | ΔE (meV/atom) |", "|---|---|---|---|---|"]
    for s, r in res["samplings"].items():
        for p in r["per_frame"]:
            lines.append(f"| {p['frame']} | {r['title']} | {p['force_rms_deviation']:.3f} | {p['force_max_deviation']:.3f} | "
                         f"{1000 * p['energy_difference_per_atom']:+.2f} |")
    lines += ["", (f"**Choice** (cheapest sampling with a mean force RMS deviation ≤ {res['max_force_rms']:g} eV/Å): "
                   f"**{si64.SAMPLINGS[res['choice']]['title'] if res['choice'] else 'none'}** — {res['why']}."), "",
              ("Seconds are wall time per engine call on a shared machine (the 1-min load average at each call's start "
               "is in the labels file); CPU s is "
               "the CPU time of the CP2K processes. The cost on both cores of a quiet machine comes from `--timing`:"), "",
              "    python benchmarks/kpoint_sensitivity.py --si64 --timing k222"]
    return "\n".join(lines) + "\n"


def si64_timing(args) -> int:
    """``--si64 --timing SAMPLING``: frame 0 on 1 thread, 2 OpenMP threads and mpirun -np 2 × 1 thread."""
    t0 = time.perf_counter()
    s = args.timing
    labels = args.labels or Path(args.out) / f"si64-liquid-timing-{s}.xyz"
    frame = si64.make_frames(1)[0]
    modes = [(frame, s, 1, None, "mpi1x1"), (frame, s, 2, None, "mpi1x2"), (frame, s, 1, si64.mpirun_command(2), "mpi2x1")]
    with workdir(args.keep, f"{si64.NAME}-timing") as tmp:
        done = si64.run_labels(modes, labels, tmp, f"{si64.NAME} timing")
    rows = []
    base = done[(0, s, "mpi1x1")]
    for _f, _s, _omp, _cmd, mode in modes:
        a = done[(0, s, mode)]
        d = a.arrays["REF_forces"] - base.arrays["REF_forces"]
        rows.append({"mode": mode, "cp2k_cmd": a.info["cp2k_cmd"], "mpi_ranks": int(a.info["mpi_ranks"]),
                     "threads_per_rank": int(a.info["threads_per_rank"]), "seconds": float(a.info["cp2k_seconds"]),
                     "cpu_seconds": float(a.info["cp2k_cpu_seconds"]), "scf_steps": int(a.info["scf_steps"]),
                     "load_average_1min": float(a.info["load_average_1min"]),
                     "force_rms_difference_from_1_thread": float(np.sqrt(np.mean(d**2)))})
    fastest = min(rows, key=lambda r: r["seconds"])
    res = {"benchmark": f"{si64.NAME}_timing_{s}", "quick": False, "command": command_line(), "machine": machine(),
           "benchmark_wall_s": time.perf_counter() - t0, "sampling": s, "labels_file": _rel(labels), "runs": rows,
           "fastest": fastest["mode"]}
    lines = [header(f"CP2K on one or two cores: liquid Si64 frame 0, {si64.SAMPLINGS[s]['title']}", res["command"],
                    res["machine"], res["benchmark_wall_s"]),
             f"Labels: `{res['labels_file']}`.\n",
             ("| run | CP2K command | ranks × threads (CP2K's output) | wall s | CPU s | SCF steps | load (1 min) at start | "
              "force RMS diff. from 1 thread (eV/Å) |"), "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['mode']} | `{r['cp2k_cmd']}` | {r['mpi_ranks']} × {r['threads_per_rank']} | {r['seconds']:.0f} | "
                     f"{r['cpu_seconds']:.0f} | {r['scf_steps']} | {r['load_average_1min']:.2f} | "
                     f"{r['force_rms_difference_from_1_thread']:.1e} |")
    lines += ["", (f"Fastest: {fastest['mode']} ({fastest['seconds']:.0f} s). Timings are only meaningful on an otherwise "
                   "idle machine (see the load column). The 2×2×2 timing:"), "",
              "    python benchmarks/kpoint_sensitivity.py --si64 --timing k222"]
    write_results(args.out, res["benchmark"], False, res, "\n".join(lines) + "\n")
    return 0


def _rel(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


if __name__ == "__main__":
    sys.exit(main())
