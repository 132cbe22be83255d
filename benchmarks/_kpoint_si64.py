"""The liquid-Si64 k-sampling study of ``kpoint_sensitivity.py --si64`` (and its ``--timing`` option).

Every label goes through the project's CP2K engine with the reference block of
configs/si64-cp2k-k222.yaml; only the k-sampling, the threads and the CP2K command change. What CP2K
really did is read back from its output: the k-point scheme and list (``BRILLOUIN|`` lines; a Γ-only
run has none), the MPI processes and the threads per process (``GLOBAL|`` lines).
"""

from __future__ import annotations

import gzip
import os
import re
import resource
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "configs" / "si64-cp2k-k222.yaml"
START = HERE / "configs" / "si64-liquid-start.xyz"
FRAMES = HERE / "data" / "si64-liquid-frames.xyz"
NAME = "kpoint_si64"

#: The samplings, cheapest first; the last one is the reference. ``section``: the raw CP2K KPOINTS
#: section given through ``input_updates`` (the engine's ``kpoints`` key only makes Monkhorst-Pack grids).
SAMPLINGS = {
    "gamma": {"title": "Γ", "kpoints": (1, 1, 1), "section": None},
    "special": {"title": "one point (¼, ¼, ¼)", "kpoints": (1, 1, 1),
                "section": {"SCHEME": "GENERAL", "UNITS": "B_VECTOR", "KPOINT": "0.25 0.25 0.25 1.0"}},
    "k222": {"title": "2×2×2", "kpoints": (2, 2, 2), "section": None},
    "k333": {"title": "3×3×3", "kpoints": (3, 3, 3), "section": None},
}
REFERENCE = "k333"

#: SW Langevin MD that makes the frames after the start structure (as scripts/make_liquid_si.py).
MD_SEED = 24
MD_TEMPERATURE_K = 2000.0
MD_TIMESTEP_FS = 1.0
MD_FRICTION_PER_FS = 0.02
MD_SPACING_STEPS = 500

_BZ_SCHEME = re.compile(r"^\s*BRILLOUIN\|\s+K-point scheme\s+(.+?)\s*$", re.MULTILINE)
_BZ_COUNT = re.compile(r"^\s*BRILLOUIN\|\s+List of Kpoints.*?(\d+)\s*$", re.MULTILINE)
_BZ_POINT = re.compile(r"^\s*BRILLOUIN\|\s+\d+\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s*$", re.MULTILINE)
_RANKS = re.compile(r"GLOBAL\|\s+Total number of message passing processes\s+(\d+)")
_THREADS = re.compile(r"GLOBAL\|\s+Number of threads for this process\s+(\d+)")


def mpirun_command(ranks: int = 2) -> str:
    """``mpirun -np <ranks> cp2k.psmp`` (OpenMPI; ``--allow-run-as-root`` when run as root, no core binding,
    so a rank is not pinned to a core another job is using)."""
    root = ["--allow-run-as-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []
    return " ".join(["mpirun", *root, "--bind-to", "none", "-np", str(ranks), "cp2k.psmp"])


def make_frames(n: int, path: Path = FRAMES) -> list:
    """``n`` liquid Si64 frames: the start structure, then SW Langevin MD frames ``MD_SPACING_STEPS`` apart.

    Written to ``path`` once (a file with at least ``n`` frames is read, not remade; the MD is seeded,
    so a longer file starts with the same frames).
    """
    from ase.io import read, write

    if path.exists():
        frames = read(path, ":")
        if len(frames) >= n:
            return frames[:n]
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from quippy.potential import Potential

    sys.path.insert(0, str(HERE.parent / "scripts"))
    from make_liquid_si import SW_SI

    atoms = read(START)
    first = atoms.copy()
    first.info = {"frame": 0, "md_steps_from_start": 0, "source": START.name}
    frames = [first]
    atoms.calc = Potential("IP SW", param_str=SW_SI)
    rng = np.random.default_rng(MD_SEED)
    MaxwellBoltzmannDistribution(atoms, temperature_K=MD_TEMPERATURE_K, rng=rng)
    dyn = Langevin(atoms, MD_TIMESTEP_FS * units.fs, temperature_K=MD_TEMPERATURE_K,
                   friction=MD_FRICTION_PER_FS / units.fs, rng=rng)
    for k in range(1, n):
        dyn.run(MD_SPACING_STEPS)
        a = atoms.copy()
        a.calc = None
        a.wrap()
        a.info = {"frame": k, "md_steps_from_start": k * MD_SPACING_STEPS,
                  "source": (f"SW Langevin from {START.name}: seed {MD_SEED}, {MD_TEMPERATURE_K:g} K, "
                             f"{MD_TIMESTEP_FS:g} fs, friction {MD_FRICTION_PER_FS:g}/fs"),
                  "temperature_K": round(float(atoms.get_temperature()), 1)}
        frames.append(a)
    path.parent.mkdir(parents=True, exist_ok=True)
    write(path, frames, format="extxyz", columns=["symbols", "positions"])
    return frames


def engine(sampling: str, omp_threads: int, cp2k_cmd: str | None = None):
    """The CP2K engine of configs/si64-cp2k-k222.yaml's reference block with ``sampling``'s k-points."""
    import yaml

    from otf_flows.campaign import config_from_dict
    from otf_flows.reference.registry import get_engine

    data = yaml.safe_load(CONFIG.read_text())
    ref = data["reference"]
    ref["kpoints"] = list(SAMPLINGS[sampling]["kpoints"])
    ref["omp_threads"] = omp_threads
    ref.pop("cp2k_cmd", None)  # the config's MPI command is the campaign's; here each mode sets its own
    if cp2k_cmd:
        ref["cp2k_cmd"] = cp2k_cmd
    if SAMPLINGS[sampling]["section"] is not None:
        ref["input_updates"] = {"override_default_params": {"FORCE_EVAL": {"DFT": {
            "KPOINTS": dict(SAMPLINGS[sampling]["section"])}}}}
    return get_engine(config_from_dict(data, base_dir=CONFIG.parent).reference)


def _text(directory: Path, name: str) -> str:
    plain, zipped = directory / name, directory / f"{name}.gz"
    if zipped.is_file():
        with gzip.open(zipped, "rt") as handle:
            return handle.read()
    return plain.read_text()


def kpoints_used(output: str, inp: str) -> dict:
    """What CP2K did about k-points, from its output and input: scheme, count, first point, the input section.

    A run without a ``KPOINTS`` section is CP2K's Γ-only code path (no ``BRILLOUIN|`` lines).
    """
    section = re.search(r"&KPOINTS\s*\n(.*?)&END KPOINTS", inp, re.DOTALL)
    # "none", not "": ASE's extxyz writer leaves an empty value bare and its reader then takes the next key as it
    lines = "; ".join(line.strip() for line in section.group(1).splitlines() if line.strip()) if section else "none"
    scheme = _BZ_SCHEME.search(output)
    if scheme is None:
        return {"kpoint_scheme": "Gamma only (no KPOINTS section)", "n_kpoints": 1, "kpoint_first": "0 0 0 1",
                "kpoints_input": lines}
    count = _BZ_COUNT.search(output)
    first = _BZ_POINT.search(output)
    return {"kpoint_scheme": scheme.group(1), "n_kpoints": int(count.group(1)) if count else -1,
            "kpoint_first": " ".join(first.groups()[1:] + first.groups()[:1]) if first else "",
            "kpoints_input": lines}


def check_kpoints(sampling: str, used: dict) -> None:
    """Raise unless CP2K used the k-points ``sampling`` asks for (the special point really is one non-Γ point)."""
    grid = SAMPLINGS[sampling]["kpoints"]
    if sampling == "gamma":
        ok = used["kpoint_scheme"].startswith("Gamma only")
    elif SAMPLINGS[sampling]["section"] is not None:
        x, y, z, _w = (float(v) for v in used["kpoint_first"].split())
        ok = used["kpoint_scheme"] == "General" and used["n_kpoints"] == 1 and np.allclose((x, y, z), 0.25)
    else:
        ok = used["kpoint_scheme"].lower().startswith("monkhorst") and f"{grid[0]} {grid[1]} {grid[2]}" in " ".join(
            used["kpoints_input"].split())
    if not ok:
        raise RuntimeError(f"CP2K did not use the k-points of {sampling!r}: {used}")


def label(frame, sampling: str, omp_threads: int, cp2k_cmd: str | None, workdir: Path, mode: str):
    """``frame`` labelled by CP2K with ``sampling``: a copy with REF_* and the cost and k-point record in info."""
    eng = engine(sampling, omp_threads, cp2k_cmd)
    load = os.getloadavg()[0]
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    lab = eng.label(frame.copy(), workdir)
    wall = time.perf_counter() - t
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    directory = Path(lab.meta["directory"])
    output = _text(directory, "cp2k.out")
    used = kpoints_used(output, _text(directory, "cp2k.inp"))
    check_kpoints(sampling, used)
    ranks, threads = _RANKS.search(output), _THREADS.search(output)
    a = frame.copy()
    a.calc = None
    a.info = {"frame": int(frame.info["frame"]), "sampling": sampling, "mode": mode,
              "kpoints": " ".join(map(str, SAMPLINGS[sampling]["kpoints"])), "REF_energy": float(lab.energy),
              "cp2k_seconds": round(wall, 1), "cp2k_cpu_seconds": round(
                  (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime), 1),
              "cp2k_total_time": lab.meta.get("cp2k_seconds"), "scf_steps": int(lab.meta["scf_steps"]),
              "mpi_ranks": int(ranks.group(1)) if ranks else -1, "threads_per_rank": int(threads.group(1)) if threads else -1,
              "cp2k_cmd": eng.command, "load_average_1min": round(load, 2),
              "cp2k_version": str(lab.meta.get("cp2k_version")), **used}
    if lab.virial is not None:
        a.info["REF_virial"] = np.asarray(lab.virial).reshape(9)
    a.arrays["REF_forces"] = np.asarray(lab.forces)
    return a


def run_labels(jobs, labels: Path, tmp: Path, tag: str) -> dict:
    """Label each ``(frame, sampling, omp_threads, cp2k_cmd, mode)`` of ``jobs`` not yet in ``labels``.

    Returns every record of ``labels`` by ``(frame, sampling, mode)``; new ones are appended as they finish.
    """
    from ase.io import read, write

    done = {(int(a.info["frame"]), a.info["sampling"], a.info["mode"]): a for a in read(labels, ":")} \
        if labels.exists() else {}
    for frame, sampling, omp, cmd, mode in jobs:
        key = (int(frame.info["frame"]), sampling, mode)
        if key in done:
            continue
        print(f"[{tag}] frame {key[0]} {sampling} ({mode}) ...", file=sys.stderr, flush=True)
        a = label(frame, sampling, omp, cmd, tmp / f"frame-{key[0]}-{sampling}-{mode}", mode)
        labels.parent.mkdir(parents=True, exist_ok=True)
        write(labels, a, format="extxyz", append=True)
        done[key] = a
        print(f"[{tag}] frame {key[0]} {sampling} ({mode}): {a.info['cp2k_seconds']:.0f} s, "
              f"{a.info['scf_steps']} SCF steps, {a.info['n_kpoints']} k-points", file=sys.stderr, flush=True)
    return done


def analyse(records: list, reference: str = REFERENCE, max_force_rms: float = 0.1) -> dict:
    """Deviations of each sampling from ``reference`` on the frames both have, cost per call, and the choice.

    ``records`` are labelled Atoms (one mode). The choice is the cheapest sampling (mean seconds per
    call) whose mean force RMS deviation from the reference is at most ``max_force_rms`` eV/Å.
    """
    by = {(int(a.info["frame"]), a.info["sampling"]): a for a in records}
    frames = sorted({f for f, _ in by})
    out = {}
    for s in SAMPLINGS:
        mine = [by[(f, s)] for f in frames if (f, s) in by]
        if not mine:
            continue
        row = {"title": SAMPLINGS[s]["title"], "kpoints_section": mine[0].info.get("kpoints_input", ""),
               "kpoint_scheme": mine[0].info["kpoint_scheme"], "n_kpoints": int(mine[0].info["n_kpoints"]),
               "calls": len(mine), "seconds": [float(a.info["cp2k_seconds"]) for a in mine],
               "cpu_seconds": [float(a.info["cp2k_cpu_seconds"]) for a in mine],
               "scf_steps": [int(a.info["scf_steps"]) for a in mine],
               "mpi_ranks": sorted({int(a.info["mpi_ranks"]) for a in mine}),
               "threads_per_rank": sorted({int(a.info["threads_per_rank"]) for a in mine}),
               "frames": [int(a.info["frame"]) for a in mine], "per_frame": []}
        row["mean_seconds"] = float(np.mean(row["seconds"]))
        row["mean_cpu_seconds"] = float(np.mean(row["cpu_seconds"]))
        row["mean_scf_steps"] = float(np.mean(row["scf_steps"]))
        for a in mine:
            f = int(a.info["frame"])
            if s == reference or (f, reference) not in by:
                continue
            r = by[(f, reference)]
            d = a.arrays["REF_forces"] - r.arrays["REF_forces"]
            row["per_frame"].append({"frame": f, "force_rms_deviation": float(np.sqrt(np.mean(d**2))),
                                     "force_max_deviation": float(np.abs(d).max()),
                                     "energy_difference_per_atom": (a.info["REF_energy"] - r.info["REF_energy"]) / len(a)})
        if row["per_frame"]:
            for key in ("force_rms_deviation", "force_max_deviation", "energy_difference_per_atom"):
                row[f"mean_{key}"] = float(np.mean([p[key] for p in row["per_frame"]]))
            row["max_force_max_deviation"] = float(max(p["force_max_deviation"] for p in row["per_frame"]))
        out[s] = row
    ref_frames = [f for f in frames if (f, reference) in by]
    passing = [s for s, r in out.items() if s != reference and r["per_frame"]
               and len(r["per_frame"]) == len(ref_frames) and r["mean_force_rms_deviation"] <= max_force_rms]
    choice = min(passing, key=lambda s: out[s]["mean_seconds"]) if passing else None
    if choice is not None:
        why = (f"{out[choice]['title']} is the cheapest sampling ({out[choice]['mean_seconds']:.0f} s, "
               f"{out[choice]['mean_cpu_seconds']:.0f} CPU s per call) whose mean force RMS deviation from "
               f"{SAMPLINGS[reference]['title']} on {len(ref_frames)} frame{'s' if len(ref_frames) > 1 else ''}, "
               f"{out[choice]['mean_force_rms_deviation']:.3f} eV/Å, is at most {max_force_rms:g} eV/Å")
        cheaper = [s for s in out if s != reference and out[s]["mean_seconds"] < out[choice]["mean_seconds"]
                   and out[s].get("mean_force_rms_deviation") is not None]
        if cheaper:
            why += "; cheaper ones are too far: " + ", ".join(
                f"{out[s]['title']} {out[s]['mean_force_rms_deviation']:.3f} eV/Å" for s in cheaper)
    elif not ref_frames:
        why = f"no frame has a {SAMPLINGS[reference]['title']} reference label yet: no choice"
    else:
        why = f"no sampling cheaper than {SAMPLINGS[reference]['title']} is within {max_force_rms:g} eV/Å on all reference frames"
    return {"reference": reference, "max_force_rms": max_force_rms, "frames": frames, "reference_frames": ref_frames,
            "samplings": out, "choice": choice, "why": why}
