"""The Si64 k-sampling study of benchmarks/kpoint_sensitivity.py (``--si64``, benchmarks/_kpoint_si64.py).

Two kinds of test: a real CP2K run on the 2-atom primitive Si cell checks that the special point
(¼, ¼, ¼) reaches CP2K as one general k-point and Γ as the Γ-only code path (read back from
``cp2k.inp`` and ``cp2k.out``); the analysis, the choice rule and the resume are checked without CP2K
on real labels recorded by ``tests/data/kpoints/make_si2_labels.py`` (two rattled Si2 cells, all
four samplings, the engine on one thread).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from ase.io import read

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
import _kpoint_si64 as si64
import kpoint_sensitivity

CP2K = shutil.which("cp2k.psmp") or shutil.which("cp2k")
LABELS = Path(__file__).parent / "data" / "kpoints" / "si2-kpoint-labels.xyz"


@pytest.mark.cp2k
@pytest.mark.skipif(CP2K is None, reason="cp2k is not on PATH")
def test_special_point_reaches_cp2k_as_one_general_kpoint_and_gamma_as_gamma_only(tmp_path):
    atoms = bulk("Si", "diamond", a=5.43)
    atoms.rattle(0.05, seed=3)
    atoms.info = {"frame": 0}
    special = si64.label(atoms, "special", 1, None, tmp_path / "special", "mpi1x1")
    gamma = si64.label(atoms, "gamma", 1, None, tmp_path / "gamma", "mpi1x1")

    inp = next((tmp_path / "special").rglob("cp2k.inp*"))
    assert special.info["kpoints_input"].split("; ")[:3] == ["SCHEME GENERAL", "UNITS B_VECTOR", "KPOINT 0.25 0.25 0.25 1.0"]
    assert inp.is_file()
    assert special.info["kpoint_scheme"] == "General" and special.info["n_kpoints"] == 1
    assert [float(x) for x in special.info["kpoint_first"].split()] == [0.25, 0.25, 0.25, 1.0]
    assert gamma.info["kpoint_scheme"].startswith("Gamma only") and gamma.info["kpoints_input"] == "none"
    for a in (special, gamma):
        assert a.info["mpi_ranks"] == 1 and a.info["threads_per_rank"] == 1 and a.info["scf_steps"] > 1
    # a k-point of a 3.8 Å cell changes the physics: not Γ in disguise
    assert abs(special.info["REF_energy"] - gamma.info["REF_energy"]) / len(atoms) > 0.05
    with pytest.raises(RuntimeError, match="did not use the k-points of 'special'"):
        si64.check_kpoints("special", {k: gamma.info[k] for k in ("kpoint_scheme", "n_kpoints", "kpoint_first",
                                                                   "kpoints_input")})


def test_kpoints_used_reads_cp2ks_brillouin_lines():
    out = (" BRILLOUIN| K-point scheme                                        Monkhorst-Pack\n"
           " BRILLOUIN| List of Kpoints [2 Pi/Bohr]                                        4\n"
           " BRILLOUIN| Number           Weight            X              Y              Z\n"
           " BRILLOUIN|     1           0.25000        0.25000        0.25000        0.25000\n")
    inp = "\t\t&KPOINTS\n\t\t\tSCHEME MONKHORST-PACK 2 2 2\n\t\t\tFULL_GRID False\n\t\t&END KPOINTS\n"
    used = si64.kpoints_used(out, inp)
    assert used == {"kpoint_scheme": "Monkhorst-Pack", "n_kpoints": 4, "kpoint_first": "0.25000 0.25000 0.25000 0.25000",
                    "kpoints_input": "SCHEME MONKHORST-PACK 2 2 2; FULL_GRID False"}
    si64.check_kpoints("k222", used)
    with pytest.raises(RuntimeError):
        si64.check_kpoints("k333", used)
    with pytest.raises(RuntimeError):
        si64.check_kpoints("gamma", used)


def test_analysis_pairs_each_frame_with_its_reference_and_applies_the_choice_rule():
    records = read(LABELS, ":")
    assert {(a.info["frame"], a.info["sampling"]) for a in records} == {(f, s) for f in (0, 1) for s in si64.SAMPLINGS}
    by = {(a.info["frame"], a.info["sampling"]): a for a in records}

    res = si64.analyse(records, max_force_rms=1e3)
    assert res["reference_frames"] == [0, 1] and not res["samplings"]["k333"]["per_frame"]
    for s in ("gamma", "special", "k222"):
        row = res["samplings"][s]
        assert [p["frame"] for p in row["per_frame"]] == [0, 1]
        for p in row["per_frame"]:
            a, r = by[(p["frame"], s)], by[(p["frame"], "k333")]
            d = a.arrays["REF_forces"] - r.arrays["REF_forces"]
            assert p["force_rms_deviation"] == pytest.approx(np.sqrt(np.mean(d**2)))
            assert p["force_max_deviation"] == pytest.approx(np.abs(d).max())
            assert p["energy_difference_per_atom"] == pytest.approx((a.info["REF_energy"] - r.info["REF_energy"]) / 2)
        assert row["mean_seconds"] == pytest.approx(np.mean([by[(f, s)].info["cp2k_seconds"] for f in (0, 1)]))
    # the k-grids of a 2-atom cell are far apart: 2×2×2 is closer to 3×3×3 than Γ is
    assert res["samplings"]["k222"]["mean_force_rms_deviation"] < res["samplings"]["gamma"]["mean_force_rms_deviation"]
    # every sampling passes a loose bound: the cheapest by recorded seconds is chosen
    cheapest = min(("gamma", "special", "k222"), key=lambda s: res["samplings"][s]["mean_seconds"])
    assert res["choice"] == cheapest and "cheapest" in res["why"]
    # a bound between 2×2×2's and the others' deviations leaves 2×2×2
    dev = {s: res["samplings"][s]["mean_force_rms_deviation"] for s in ("gamma", "special", "k222")}
    if dev["k222"] < min(dev["gamma"], dev["special"]):
        bound = (dev["k222"] + min(dev["gamma"], dev["special"])) / 2
        assert si64.analyse(records, max_force_rms=bound)["choice"] == "k222"
    none = si64.analyse(records, max_force_rms=0.0)
    assert none["choice"] is None and "no sampling" in none["why"]
    # without the reference labels nothing is compared and nothing chosen
    partial = si64.analyse([a for a in records if a.info["sampling"] != "k333"])
    assert partial["choice"] is None and partial["reference_frames"] == []


def test_rerun_with_a_complete_labels_file_only_redoes_the_analysis(tmp_path, monkeypatch):
    labels = tmp_path / "labels.xyz"
    shutil.copy(LABELS, labels)
    frames = [a.copy() for a in read(LABELS, ":") if a.info["sampling"] == "gamma"]

    def no_cp2k(*args, **kwargs):
        raise AssertionError("a labelled frame was computed again")

    monkeypatch.setattr(si64, "label", no_cp2k)
    jobs = [(f, s, 1, None, "mpi1x1") for s in si64.SAMPLINGS for f in frames]
    done = si64.run_labels(jobs, labels, tmp_path, "test")
    assert len(done) == 8 and labels.read_text() == LABELS.read_text()
    md = kpoint_sensitivity.si64_markdown({
        "command": "python benchmarks/kpoint_sensitivity.py --si64", "machine": {"date_utc": "d", "load_average_1_5_15": []},
        "mpi_ranks": 1, "omp_threads": 1, "labels_file": "l.xyz", "frames_file": "f.xyz",
        "md": {"seed": 0, "temperature_K": 0.0, "timestep_fs": 1.0, "friction_per_fs": 0.0, "steps_between_frames": 0},
        **si64.analyse(list(done.values()), max_force_rms=0.0)})
    assert "**none**" in md and "--si64 --timing k222" in md and md.count("| frame |") == 1


def test_bad_options_are_one_line_errors(capsys):
    with pytest.raises(SystemExit) as exc:
        kpoint_sensitivity.main(["--timing", "gamma"])
    assert exc.value.code == 2 and "--timing is an option of the --si64 study" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        kpoint_sensitivity.main(["--si64", "--frames", "0"])
    assert exc.value.code == 2 and "--frames must be >= 1" in capsys.readouterr().err


def test_timing_rerun_reads_its_recorded_runs_and_reports_what_cp2k_used(tmp_path, monkeypatch):
    """The recorded --timing check at Γ (Si64 frame 0, real runs): a rerun computes nothing and reports
    each run's ranks × threads as CP2K printed them."""
    labels = tmp_path / "timing.xyz"
    shutil.copy(BENCH / "results" / "si64-liquid-timing-gamma.xyz", labels)

    def no_cp2k(*args, **kwargs):
        raise AssertionError("a recorded run was computed again")

    monkeypatch.setattr(si64, "label", no_cp2k)
    assert kpoint_sensitivity.main(["--si64", "--timing", "gamma", "--labels", str(labels), "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "kpoint_si64_timing_gamma.json").read_text())
    runs = {r["mode"]: r for r in data["runs"]}
    assert [(runs[m]["mpi_ranks"], runs[m]["threads_per_rank"]) for m in ("mpi1x1", "mpi1x2", "mpi2x1")] == [
        (1, 1), (1, 2), (2, 1)]
    assert runs["mpi2x1"]["cp2k_cmd"].startswith("mpirun ") and "-np 2" in runs["mpi2x1"]["cp2k_cmd"]
    assert all(r["scf_steps"] > 1 and r["force_rms_difference_from_1_thread"] < 1e-4 for r in runs.values())
    assert "--si64 --timing k222" in (tmp_path / "kpoint_si64_timing_gamma.md").read_text()
