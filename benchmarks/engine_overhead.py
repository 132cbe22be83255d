"""DFT engine overhead: what an atomate2 + custodian CP2K call costs beyond CP2K, and what reusing the
wavefunction between consecutive reference-driven MD steps saves.

In one run, on liquid Si8 with the settings of ``benchmarks/configs/si8-cp2k.yaml``:

1. **reference-driven MD with wavefunction restart**: ``--steps`` MD steps driven by the CP2K engine,
   each call given the previous frame and its labels (what ``InitialMDMaker`` does): SCF steps and
   CP2K time per step;
2. **every frame of that MD again, through the engine as it was before and as it is now**, right
   after its MD call and in alternating order, both from atomic densities. "Before" is the engine before issue 14 (custodian polling
   every 1 s, pymatgen parsing the element data file on every call), patched back in this process
   only. The CP2K process is timed from its start to its exit (``waitid`` without reaping it), so the
   **overhead per call = call − CP2K process** (input set, custodian, parsing, the task document and
   the time until custodian notices the exit) does not depend on how long CP2K took on the loaded
   machine. Also given: call − CP2K's own reported run time (the definition of ``speedup_aimd.py``,
   which also counts the start-up and shut-down of the CP2K process, ~1 s here);
3. **restart vs atomic guess** on the same frames: SCF steps, CP2K seconds, and the label differences
   (energy per atom, largest force component), which must stay within the SCF tolerance.

    python benchmarks/engine_overhead.py            # si8-cp2k.yaml's CP2K settings, 4 MD steps (~5-10 min)
    python benchmarks/engine_overhead.py --quick    # cheap CP2K settings, 1 MD step (about 1-2 min)
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from pathlib import Path
from typing import ClassVar

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import HERE, command_line, header, machine, parser, rerender, stats, table, workdir, write_results

NAME = "engine_overhead"

#: Quick mode: cheap CP2K settings (as speedup_aimd.py --quick).
QUICK_REFERENCE = {"cutoff_Ry": 120.0, "rel_cutoff_Ry": 30.0, "ngrids": 3, "eps_default": 1.0e-7,
                   "eps_scf": 1.0e-5, "max_scf": 40}


@contextlib.contextmanager
def engine_as_before():
    """The engine as it was before issue 14 (custodian polls every 1 s; pymatgen parses the element
    data file on every call), in this process only."""
    from otf_flows.reference.cp2k import engine as cp2k

    saved = (cp2k._POLL_SECONDS, cp2k._MONITOR_EVERY, cp2k._cached_element_data)
    cp2k._POLL_SECONDS, cp2k._MONITOR_EVERY, cp2k._cached_element_data = 1, 30, contextlib.nullcontext
    try:
        yield
    finally:
        cp2k._POLL_SECONDS, cp2k._MONITOR_EVERY, cp2k._cached_element_data = saved


@contextlib.contextmanager
def cp2k_process_timer():
    """Wall time of every CP2K process custodian starts, from ``Popen`` to the process's exit.

    A thread waits for the exit with ``waitid(..., WNOWAIT)``, which leaves the process to custodian's
    own ``poll()``; yields the list of ``{"start", "end"}`` records (``time.perf_counter``).
    """
    from custodian.cp2k import jobs

    records: list[dict] = []
    original = jobs.Cp2kJob.run

    def run(job, *args, **kwargs):
        record = {"start": time.perf_counter(), "end": None}
        process = original(job, *args, **kwargs)

        def watch():
            try:
                os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)
            except ChildProcessError:  # already reaped by custodian
                pass
            record["end"] = time.perf_counter()

        record["thread"] = threading.Thread(target=watch, daemon=True)
        record["thread"].start()
        records.append(record)
        return process

    jobs.Cp2kJob.run = run
    try:
        yield records
    finally:
        jobs.Cp2kJob.run = original


def _call(engine, atoms, directory: Path, restart=None) -> tuple[dict, object]:
    """One engine call, timed: its wall time, the CP2K process's, and what the labels' meta says."""
    with cp2k_process_timer() as processes:
        start = time.perf_counter()
        labels = engine.label(atoms, directory, restart=restart)
        seconds = time.perf_counter() - start
    for p in processes:
        p.pop("thread").join()
    process = sum(p["end"] - p["start"] for p in processes)
    m = labels.meta
    return {"seconds": seconds, "cp2k_process_s": process, "overhead_s": seconds - process,
            "cp2k_seconds": m.get("cp2k_seconds"), "overhead_vs_cp2k_report_s": seconds - m["cp2k_seconds"],
            "scf_steps": m.get("scf_steps"), "wfn_restart": m.get("wfn_restart") is not None,
            "directory": m.get("directory"), "energy": labels.energy}, labels


def relabel(engine, i: int, atoms, restarted, tmp: Path) -> dict:
    """Frame ``i`` (labelled ``restarted`` from the previous step's wavefunction) through the engine as
    before and as now, from atomic densities, in alternating order."""
    order = ("before", "now") if i % 2 == 0 else ("now", "before")
    row = {"frame": i}
    for mode in order:
        with engine_as_before() if mode == "before" else contextlib.nullcontext():
            record, labels = _call(engine, atoms, tmp / mode / f"frame_{i:03d}")
        row[mode] = record
        if mode == "now":
            row["dE_per_atom_restart"] = abs(restarted.energy - labels.energy) / len(atoms)
            row["dF_max_restart"] = float(np.abs(np.asarray(restarted.forces) - labels.forces).max())
    print(f"[{NAME}] frame {i}: overhead before {row['before']['overhead_s']:.2f} s, "
          f"now {row['now']['overhead_s']:.2f} s", file=sys.stderr)
    return row


def md_with_restart(engine, config, n_steps: int, tmp: Path) -> tuple[list[dict], list[dict]]:
    """``n_steps`` of reference-driven MD, each call restarting from the previous frame's wavefunction;
    right after each MD call, the same frame again as before and as now (:func:`relabel`), so the three
    calls of a frame see about the same load of the machine."""
    from ase.calculators.calculator import Calculator, all_changes

    from otf_flows.md.segment import initial_state, run_segment
    from otf_flows.structures import build_structure

    calls, rows = [], []

    class Restarting(Calculator):
        implemented_properties: ClassVar[list[str]] = ["energy", "forces"]
        previous = None

        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            frame = self.atoms.copy()
            i = len(calls)
            record, labels = _call(engine, frame, tmp / "md" / f"step_{i:03d}", restart=self.previous)
            self.previous = (frame, labels)
            calls.append(record)
            rows.append(relabel(engine, i, frame, labels, tmp))
            self.results = {"energy": labels.energy, "forces": np.asarray(labels.forces)}

    run_segment(initial_state(build_structure(config.structure), config.md), Restarting(), config.md, n_steps)
    return calls, rows


def measure(config, n_steps: int, tmp: Path) -> dict:
    from otf_flows.reference.registry import get_engine

    engine = get_engine(config.reference)
    engine.check_available()
    md_calls, rows = md_with_restart(engine, config, n_steps, tmp)

    def summary(mode: str) -> dict:
        return {"call_s": stats([r[mode]["seconds"] for r in rows]),
                "cp2k_process_s": stats([r[mode]["cp2k_process_s"] for r in rows]),
                "overhead_s": stats([r[mode]["overhead_s"] for r in rows]),
                "overhead_vs_cp2k_report_s": stats([r[mode]["overhead_vs_cp2k_report_s"] for r in rows])}

    restarted = [c for c in md_calls if c["wfn_restart"]]
    same = [r["now"] for r, c in zip(rows, md_calls) if c["wfn_restart"]]  # the same frames, atomic guess
    return {
        "md_calls": md_calls,
        "frames": rows,
        "before": summary("before"),
        "now": summary("now"),
        "restart": {
            "frames": len(restarted),
            "scf_steps_restart": stats([c["scf_steps"] for c in restarted]),
            "scf_steps_atomic": stats([c["scf_steps"] for c in same]),
            "cp2k_s_restart": stats([c["cp2k_seconds"] for c in restarted]),
            "cp2k_s_atomic": stats([c["cp2k_seconds"] for c in same]),
            "call_s_restart": stats([c["seconds"] for c in restarted]),
            "call_s_atomic": stats([c["seconds"] for c in same]),
            "max_dE_per_atom": max((r["dE_per_atom_restart"] for r, c in zip(rows, md_calls) if c["wfn_restart"]),
                                   default=None),
            "max_dF": max((r["dF_max_restart"] for r, c in zip(rows, md_calls) if c["wfn_restart"]), default=None),
        },
    }


def markdown(res: dict, info: dict, wall: float) -> str:
    b, n, r = res["before"], res["now"], res["restart"]

    def mean(s):
        return s["mean"]

    lines = [header("DFT engine overhead (atomate2 + custodian + CP2K)", res["command"], info, wall), "",
             (f"{res['system']}; CP2K {res['cp2k_settings']}; {len(res['frames'])} frames of a reference-driven "
              "MD, each through the engine as before and as now (both from atomic densities), interleaved. "
              "Overhead = call − the CP2K process (start to exit). Means over frames (s)."), ""]
    lines.append(table(
        ["engine", "call", "CP2K process", "**overhead per call**", "max", "call − CP2K's reported time"],
        [[mode, mean(x["call_s"]), mean(x["cp2k_process_s"]), f"**{mean(x['overhead_s']):.2f}**",
          x["overhead_s"]["max"], mean(x["overhead_vs_cp2k_report_s"])] for mode, x in (("before", b), ("now", n))]))
    lines += ["", (f"Wavefunction restart between consecutive MD steps ({r['frames']} restarted frames, the same "
                   "frames from atomic densities):"), ""]
    lines.append(table(
        ["SCF guess", "SCF steps", "CP2K time (s)", "call (s)"],
        [["previous step's wavefunction", mean(r["scf_steps_restart"]), mean(r["cp2k_s_restart"]),
          mean(r["call_s_restart"])],
         ["atomic", mean(r["scf_steps_atomic"]), mean(r["cp2k_s_atomic"]), mean(r["call_s_atomic"])]]))
    if r["max_dE_per_atom"] is not None:
        lines += ["", (f"Largest label difference restart vs atomic guess: {r['max_dE_per_atom']:.2g} eV/atom, "
                       f"{r['max_dF']:.2g} eV/Å (force component).")]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=HERE / "configs" / "si8-cp2k.yaml", help="campaign YAML")
    p.add_argument("--steps", type=int, default=None, help="reference-driven MD steps (full 4, quick 1)")
    args = p.parse_args(argv)
    if rerender(args, NAME, markdown):
        return 0

    from otf_flows.campaign import config_from_dict
    from otf_flows.structures import build_structure

    t0 = time.perf_counter()
    data = yaml.safe_load(args.config.read_text())
    if args.quick:
        data["reference"] = {**data["reference"], **QUICK_REFERENCE}
    data["reference"]["omp_threads"] = data["reference"].get("omp_threads") or 1
    config = config_from_dict(data, base_dir=args.config.parent)
    steps = args.steps if args.steps is not None else (1 if args.quick else 4)
    with workdir(args.keep, NAME) as tmp:
        measured = measure(config, steps, tmp)
    ref = config.reference
    result = {
        "benchmark": NAME,
        "quick": args.quick,
        "command": command_line(),
        "system": f"Si{len(build_structure(config.structure))} liquid, {config.md.temperature_K:.0f} K, "
                  f"{config.md.timestep_fs:g} fs steps",
        "cp2k_settings": f"{ref.xc_functional}, {ref.basis_set}, {ref.cutoff_Ry:g}/{ref.rel_cutoff_Ry:g} Ry, "
                         f"EPS_DEFAULT {ref.eps_default:g}, EPS_SCF {ref.eps_scf:g}, Γ point, "
                         f"{ref.electronic_temperature_K} K smearing, {ref.omp_threads} OpenMP thread(s)",
        "md_steps": steps,
        **measured,
    }
    info = machine()
    result["machine"] = info
    wall = time.perf_counter() - t0
    result["benchmark_wall_s"] = wall
    write_results(args.out, NAME, args.quick, result, markdown(result, info, wall))
    return 0


if __name__ == "__main__":
    sys.exit(main())
