"""Energies, forces, SCF steps and times of CP2K outputs, each against the first one.

    python compare_outputs.py run_engine-gamma/engine-gamma.out run_plain/plain.out ...

Forces come from the ATOMIC FORCES block (converted to eV/Å), times from CP2K's timing report
(wall s) and from the ``time.txt`` that run_variants.sh writes next to each output (CPU s).
"""

from __future__ import annotations

import gzip
import re
import sys
from pathlib import Path

import numpy as np
from ase import units


def read(path: str):
    """(energy eV, forces eV/Å, SCF steps, CP2K timings by routine, CPU seconds or None) of one output."""
    p = Path(path)
    text = gzip.decompress(p.read_bytes()).decode() if p.suffix == ".gz" else p.read_text()
    energy = float(re.findall(r"ENERGY\| Total FORCE_EVAL \( QS \) energy \[a\.u\.\]:\s+(\S+)", text)[-1])
    block = text[text.rindex("ATOMIC FORCES in [a.u.]"):].split("SUM OF ATOMIC FORCES")[0]
    rows = re.findall(r"^\s+\d+\s+\d+\s+\S+\s+(\S+)\s+(\S+)\s+(\S+)\s*$", block, re.MULTILINE)
    forces = np.array(rows, float) * units.Hartree / units.Bohr
    steps = int(re.findall(r"SCF run converged in\s+(\d+)", text)[-1])
    timings = {k: float(v) for k, v in re.findall(
        r"^ (CP2K|qs_energies|qs_forces)\s+\d+\s+\S+\s+\S+\s+\S+\s+\S+\s+(\S+)", text, re.MULTILINE)}
    cpu = None
    time_txt = p.parent / "time.txt"
    if time_txt.exists():
        t = time_txt.read_text()
        cpu = sum(float(re.search(rf"{k} time \(seconds\): (\S+)", t).group(1)) for k in ("User", "System"))
    return energy * units.Hartree, forces, steps, timings, cpu


def main(paths: list[str]) -> None:
    ref = read(paths[0])
    print("| output | SCF steps | CP2K wall s | SCF part s | forces (+stress) part s | CPU s | ΔE (meV/atom) | "
          "force RMS diff. (eV/Å) | max diff. (eV/Å) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for path in paths:
        e, f, steps, tim, cpu = read(path)
        d = f - ref[1]
        print(f"| {path} | {steps} | {tim.get('CP2K', 0):.1f} | {tim.get('qs_energies', 0):.1f} | "
              f"{tim.get('qs_forces', 0) - tim.get('qs_energies', 0):.1f} | {f'{cpu:.1f}' if cpu is not None else '–'} | "
              f"{1000 * (e - ref[0]) / len(f):+.4f} | {np.sqrt(np.mean(d**2)):.1e} | {np.abs(d).max():.1e} |")


if __name__ == "__main__":
    main(sys.argv[1:])
