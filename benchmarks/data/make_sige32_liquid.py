"""Record CP2K (PBE, Γ point) labels of liquid Si16Ge16 frames: the multi-species DFT set of
benchmarks/gap_presets.py.

Frames come from a Langevin MD driven by a cheap Stillinger-Weber Si-Ge potential (quippy's
``IP SW``; Si: the original SW parameters, Ge: Ding & Andersen's, Si-Ge pairs and triplets
mixed: arithmetic mean of sigma, geometric mean of epsilon and lambda). The driver only has to
explore liquid-like configurations: the labels are CP2K's, through the project's CP2K engine
with the main job's reference block (configs/si32-cp2k.yaml) at the Γ point.

Labelled frames are appended to the output file as CP2K finishes, so an interrupted run resumes
where it stopped; ``--budget-s`` stops before starting a frame once that much CP2K time is spent.

    OMP_NUM_THREADS=1 python benchmarks/data/make_sige32_liquid.py            # 16 frames, ~10 min of CP2K CPU time
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CONFIG = REPO / "configs" / "si32-cp2k.yaml"
START = REPO / "configs" / "si32-liquid-start.xyz"
OUT = HERE / "sige32-liquid-pbe.xyz"

# Stillinger-Weber, Si: PRB 31, 5262 (1985); Ge: Ding & Andersen PRB 34, 6987 (1986); Si-Ge mixed
_SI = {"sigma": 2.0951, "eps": 2.1675, "lam": 21.0}
_GE = {"sigma": 2.181, "eps": 1.918, "lam": 31.0}


def sw_sige_xml() -> str:
    par = {14: _SI, 32: _GE}

    def pair(i, j):
        s = 0.5 * (par[i]["sigma"] + par[j]["sigma"])
        e = float(np.sqrt(par[i]["eps"] * par[j]["eps"]))
        return (f'<per_pair_data atnum_i="{i}" atnum_j="{j}" AA="7.049556277" BB="0.6022245584" p="4" q="0" '
                f'a="1.80" sigma="{s:.4f}" eps="{e:.4f}" />')

    def triplet(c, j, k):
        eps = float(np.prod([par[z]["eps"] for z in (c, j, k)]) ** (1 / 3))
        lam = float(np.prod([par[z]["lam"] for z in (c, j, k)]) ** (1 / 3))
        return (f'<per_triplet_data atnum_c="{c}" atnum_j="{j}" atnum_k="{k}" lambda="{lam:.4f}" gamma="1.20" '
                f'eps="{eps:.4f}" />')

    lines = ['<SW_params n_types="2" label="SiGe_mixed">', '<per_type_data type="1" atomic_num="14" />',
             '<per_type_data type="2" atomic_num="32" />', pair(14, 14), pair(14, 32), pair(32, 32)]
    for c in (14, 32):
        for j, k in ((14, 14), (14, 32), (32, 32)):
            lines.append(triplet(c, j, k))
    return "\n".join([*lines, "</SW_params>"])


def driver_frames(n: int, every: int, equilibrate: int, temperature_K: float, a: float, seed: int):
    from ase import units
    from ase.io import read
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from quippy.potential import Potential

    atoms = read(START)
    atoms.set_cell(np.eye(3) * a, scale_atoms=True)
    rng = np.random.default_rng(seed)
    numbers = np.full(len(atoms), 14)
    numbers[rng.permutation(len(atoms))[: len(atoms) // 2]] = 32
    atoms.set_atomic_numbers(numbers)
    atoms.set_masses()
    atoms.calc = Potential("IP SW", param_str=sw_sige_xml())
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=rng)
    dyn = Langevin(atoms, 2.0 * units.fs, temperature_K=temperature_K, friction=0.02 / units.fs,
                   rng=np.random.default_rng(seed + 1))
    dyn.run(equilibrate)
    out = []
    for i in range(n):
        dyn.run(every)
        f = atoms.copy()
        f.calc = None
        f.info = {"md_step": equilibrate + (i + 1) * every, "driver": "SW Si-Ge (quippy IP SW)",
                  "driver_temperature_K": temperature_K}
        out.append(f)
    return out


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def main(argv=None) -> int:
    import yaml
    from ase.io import read, write

    from otf_flows.campaign import config_from_dict
    from otf_flows.reference.registry import get_engine

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--every", type=int, default=20, help="MD steps (2 fs) between recorded frames")
    p.add_argument("--equilibrate", type=int, default=1500)
    p.add_argument("--temperature", type=float, default=2000.0)
    p.add_argument("--a", type=float, default=8.60, help="cubic cell edge (Å)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--budget-s", type=float, default=1200.0, help="stop starting CP2K runs after this much CP2K time")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)

    frames = driver_frames(args.frames, args.every, args.equilibrate, args.temperature, args.a, args.seed)
    data = yaml.safe_load(CONFIG.read_text())
    data["reference"]["kpoints"] = [1, 1, 1]
    engine = get_engine(config_from_dict(data, base_dir=CONFIG.parent).reference)
    done = {int(a.info["frame_index"]) for a in read(args.out, ":")} if args.out.exists() else set()
    # CP2K time: the CPU time of the CP2K processes (this process's children), where recorded; the
    # wall time otherwise (an upper bound: on the shared machine CP2K got a fraction of a core)
    spent = sum(float(a.info.get("cp2k_cpu_seconds", a.info["cp2k_seconds"])) for a in read(args.out, ":")) \
        if args.out.exists() else 0.0
    with tempfile.TemporaryDirectory(prefix="sige32-cp2k-") as tmp:
        for i, f in enumerate(frames):
            if i in done:
                continue
            if spent > args.budget_s:
                print(f"CP2K budget of {args.budget_s:.0f} s spent: stopping before frame {i}", file=sys.stderr)
                break
            t, cpu = time.perf_counter(), _children_cpu()
            lab = engine.label(f.copy(), Path(tmp) / f"frame-{i}")
            sec, cpu = time.perf_counter() - t, _children_cpu() - cpu
            spent += cpu
            a = f.copy()
            a.info.update(frame_index=i, REF_energy=float(lab.energy), kpoints="1 1 1", cp2k_seconds=round(sec, 1),
                          cp2k_cpu_seconds=round(cpu, 1), load_average_1min=round(os.getloadavg()[0], 1),
                          cp2k_version=str(lab.meta.get("cp2k_version")), scf_steps=lab.meta.get("scf_steps"),
                          level_of_theory="PBE DZVP-MOLOPT-SR-GTH GTH-PBE 250/40 Ry Gamma (si32-cp2k.yaml reference)")
            if lab.virial is not None:
                a.info["REF_virial"] = np.asarray(lab.virial).reshape(9)
            a.arrays["REF_forces"] = np.asarray(lab.forces)
            write(args.out, a, format="extxyz", append=True)
            print(f"frame {i}: {sec:.0f} s ({cpu:.0f} s CPU), {lab.meta.get('scf_steps')} SCF steps, "
                  f"force RMS {np.sqrt(np.mean(a.arrays['REF_forces'] ** 2)):.2f} eV/Å", file=sys.stderr, flush=True)
    print(f"CP2K time {spent:.0f} s (CPU where recorded; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
