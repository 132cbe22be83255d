"""Smoke test of benchmarks/: every script runs in --quick mode and writes well-formed results.

Only the shape and internal consistency of the results are checked, never the timings
(the figures in benchmarks/README.md come from the full modes). All of them together take a
few minutes on 2 cores.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
CP2K = shutil.which("cp2k.psmp") or shutil.which("cp2k")

pytestmark = pytest.mark.slow


def run_quick(script: str, out: Path, timeout: float = 600, args: tuple[str, ...] = (),
              log: list | None = None, env: dict | None = None) -> dict:
    """Run ``benchmarks/<script> --quick --out out [args]``; return its JSON result (stderr appended to ``log``)."""
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), "--quick", "--out", str(out), *args],
        capture_output=True, text=True, timeout=timeout, check=False, env={**os.environ, **(env or {})},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    if log is not None:
        log.append(proc.stderr)
    stem = script.removesuffix(".py") + "_quick"
    md = (out / f"{stem}.md").read_text()
    assert md.startswith("## ") and "|---" in md and "--quick" in md
    data = json.loads((out / f"{stem}.json").read_text())
    assert data["quick"] is True and data["benchmark"] == script.removesuffix(".py")
    assert data["machine"]["cores"] >= 1 and data["machine"]["date_utc"]
    return data


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_orchestration_overhead_quick(tmp_path):
    data = run_quick("orchestration_overhead.py", tmp_path)
    assert set(data["scenarios"]) == {"adaptive", "job-heavy"}
    for r in data["scenarios"].values():
        s = r["split"]
        assert r["status"] == "completed" and r["md_steps"] > 0 and s["jobs"] >= 4
        assert _positive(s["wall_s"]) and _positive(s["gap_force_s"]) and _positive(s["fit_s"])
        parts = ("md_machinery_s", "model_loading_s", "validation_s", "decide_s", "job_framework_s", "runner_s")
        assert math.isclose(sum(s[k] for k in parts), s["overhead_strict_s"], rel_tol=1e-6, abs_tol=1e-6)
        assert 0 < s["orchestration_fraction"] <= s["overhead_strict_fraction"] < 1
        assert all(isinstance(v, bool) for v in r["targets"].values())
        assert sum(c["jobs"] for c in r["jobs_by_category"].values()) == s["jobs"]


def test_orchestration_scaling_quick(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(BENCH / "orchestration_overhead.py"), "--scaling", "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, check=False, env={**os.environ},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "orchestration_overhead_scaling_quick.md").read_text().startswith("## ")
    data = json.loads((tmp_path / "orchestration_overhead_scaling_quick.json").read_text())
    assert data["quick"] is True and data["benchmark"] == "orchestration_overhead_scaling"
    runs = data["runs"]
    assert [r["status"] for r in runs] == ["completed", "completed"] and runs[0]["jobs"] < runs[1]["jobs"]
    for r in runs:
        assert r["iteration_jobs"] == 3 * (r["md_steps"] - 10) and r["jobs"] == r["iteration_jobs"] + 4
        assert all(_positive(r[k]) for k in ("orchestration_ms_per_job", "orchestration_cpu_ms_per_job",
                                             "last_10pct_ms_per_job", "last_10pct_cpu_ms_per_job"))
    assert set(data["summary"]) == {"all", "all_cpu", "iter", "iter_cpu", "last", "last_cpu"}
    assert all(isinstance(v["ms_met"], bool) and v["ratio"] > 0 for v in data["summary"].values())


def test_md_throughput_quick(tmp_path):
    data = run_quick("md_throughput.py", tmp_path)
    assert data["systems"]
    for r in data["systems"]:
        assert r["gap_calls"] == r["md_steps"] + 1  # the start frame's forces, then one call per step
        assert all(_positive(v) for v in r["us_per_atom_step"].values())
        assert all(_positive(v) for v in r["segment_outside_model_s"]) and r["segment_outside_model_fraction"] > 0
        assert set(r["us_per_atom_step"]) == {"segment_job", "segment_bare", "gap_calls", "gap_kernel"}
        assert isinstance(r["target_met"], bool) and math.isfinite(r["overhead_segment_job"])


def test_adaptive_vs_fixed_quick(tmp_path):
    data = run_quick("adaptive_vs_fixed.py", tmp_path)
    assert "adaptive" in data["modes"] and any(m.startswith("fixed") for m in data["modes"])
    for r in data["modes"].values():
        assert r["md_steps"] == data["md_steps"]
        assert r["dft_calls"] >= r["checks"] >= 1
        assert r["trajectory_errors"]["frames"] >= 1
        assert r["trajectory_errors"]["fmax_eV_per_A"]["max"] >= r["trajectory_errors"]["fmax_eV_per_A"]["p95"] > 0
    assert data["comparison"]["adaptive_dft_calls"] == data["modes"]["adaptive"]["dft_calls"]


@pytest.mark.cp2k
@pytest.mark.skipif(CP2K is None, reason="cp2k is not on PATH")
def test_speedup_aimd_quick_in_two_parts(tmp_path):
    """In two parts (--workdir, --stop-after): the first stops after its first job and says so, the second
    reads the baselines back, continues the campaign without a DFT call twice, and covers both parts.

    The first part's first ML-MD step holds (a failpoint) until the stop is requested: however fast CP2K
    runs, the campaign cannot end before its 1 s."""
    work, log = tmp_path / "work", []
    first = run_quick("speedup_aimd.py", tmp_path, args=("--workdir", str(work), "--stop-after", "1"), log=log,
                      env={"OTF_FAILPOINT": "md.step:1:hold=600"})
    assert first["otf"]["status"] == "stopped" and first["otf"]["md_steps"] < first["config"]["md"]["total_steps"]
    assert "**Not finished" in (tmp_path / "speedup_aimd_quick.md").read_text()
    data = run_quick("speedup_aimd.py", tmp_path, args=("--workdir", str(work), "--audit", "1", "--native-again"),
                     log=log)
    assert "AIMD through the engine from" in log[1] and "CP2K's own MD from" in log[1]
    assert "continuing campaign" in log[1]
    assert data["aimd_engine"] == first["aimd_engine"] and data["aimd_native"] == first["aimd_native"]
    otf = data["otf"]
    assert [p["status"] for p in otf["parts"]] == ["stopped", "completed"]
    assert math.isclose(otf["wall_s"], sum(p["wall_s"] for p in otf["parts"]), rel_tol=0.02)
    assert otf["fine_split"]["reference_s"] > first["otf"]["fine_split"]["reference_s"]
    assert otf["dft_calls"] == len({r["step"] for r in otf["check_rows"]}) + otf["dft_calls_initial"]
    assert "**Not finished" not in (tmp_path / "speedup_aimd_quick.md").read_text()
    assert otf["status"] == "completed" and otf["md_steps"] == data["config"]["md"]["total_steps"]
    assert math.isclose(sum(otf["split_s"].values()), otf["wall_s"], rel_tol=1e-9)
    assert otf["dft_calls"] == otf["dft_calls_initial"] + otf["dft_calls_checks"] >= 2
    assert _positive(data["aimd_engine"]["step_cost_s"]) and _positive(data["aimd_native"]["step_cost_s"])
    assert len(data["aimd_native"]["step_seconds"]) == data["aimd_native"]["md_steps"]
    assert math.isclose(data["speedup_vs_engine_aimd"],
                        otf["md_steps"] * data["aimd_engine"]["step_cost_s"] / otf["wall_s"])
    assert otf["errors_after_first_10pct"]["checks"] >= 1
    # the audit of the finished campaign: one DFT call on a frame between the checks, reported apart from the
    # campaign's calls (the assert on dft_calls above) and in the cost (a rerun's reuse: tests/test_audit.py)
    audit = data["audit"]
    assert audit["frames"] == 1 and audit["new_dft_calls"] == 1 and _positive(audit["dft_s"])
    row = audit["rows"][0]
    assert row["step"] not in {r["step"] for r in otf["check_rows"]}
    assert row["outside"] == (row["ediff"] > data["config"]["tolerances"]["ediff"])
    assert data["speedup_vs_native_aimd_with_audit"] < data["speedup_vs_native_aimd"]
    assert math.isclose(sum(otf["split_s"].values()), otf["wall_s"], rel_tol=1e-9) and otf["split_s"]["orchestration_and_store"] >= 0
    assert "Audit between the checks" in (tmp_path / "speedup_aimd_quick.md").read_text()
    # CP2K's own MD measured once more after the campaign, beside the first baseline
    after = data["aimd_native_after"]
    assert after["md_steps"] == data["aimd_native"]["md_steps"] and _positive(after["step_cost_s"])
    assert after["step_seconds"] != data["aimd_native"]["step_seconds"] or after["wall_s"] != data["aimd_native"]["wall_s"]
    assert math.isclose(data["speedup_vs_native_aimd_after"], otf["md_steps"] * after["step_cost_s"] / otf["wall_s"])


@pytest.mark.cp2k
@pytest.mark.skipif(CP2K is None, reason="cp2k is not on PATH")
def test_engine_overhead_quick(tmp_path):
    data = run_quick("engine_overhead.py", tmp_path)
    frames = data["frames"]
    assert len(frames) == data["md_steps"] + 1 == len(data["md_calls"])
    for row in frames:
        for mode in ("before", "now"):
            r = row[mode]
            assert _positive(r["seconds"]) and _positive(r["cp2k_seconds"]) and r["scf_steps"] >= 1
            assert not r["wfn_restart"]
            assert 0 < r["cp2k_process_s"] < r["seconds"]
            assert math.isclose(r["overhead_s"], r["seconds"] - r["cp2k_process_s"])
    assert [c["wfn_restart"] for c in data["md_calls"]] == [False] + [True] * data["md_steps"]
    restart = data["restart"]
    assert restart["frames"] == data["md_steps"] >= 1
    assert restart["scf_steps_restart"]["n"] == restart["scf_steps_atomic"]["n"] == restart["frames"]
    assert 0 <= restart["max_dE_per_atom"] < 1e-4 and 0 <= restart["max_dF"] < 1e-2
    assert data["before"]["call_s"]["n"] == data["now"]["call_s"]["n"] == len(frames)


def test_hidden_error_quick(tmp_path):
    data = run_quick("hidden_error.py", tmp_path)
    assert (tmp_path / "hidden_error_quick.png").stat().st_size > 0
    assert data["systems"]
    for s in data["systems"].values():
        assert set(s["modes"]) == {"fixed", "hybrid-md", "adaptive", "adaptive+uncertainty"}
        for mode, m in s["modes"].items():
            runs = s["runs"][mode]
            assert len(runs) == len(data["seeds"]) == len(m["dft_calls_per_seed"])
            assert m["frames"] == sum(r["frames"] for r in runs) > 0
            assert 0 <= m["frames_outside"] <= m["frames"]
            assert math.isclose(m["fraction_outside"], m["frames_outside"] / m["frames"])
            assert m["worst"]["ratio"] > 0 and (m["worst"]["ratio"] >= 1) == (m["frames_outside"] > 0)
            for r in runs:
                assert r["status"] == "completed" and r["md_steps"] == s["steps"]
                assert r["dft_calls"] >= r["checks"] == r["checks_passed"] + r["checks_failed"] >= 1
                assert sum(r["checks_by_trigger"].values()) == r["checks"]
                assert len(r["series"]["step"]) == len(r["series"]["ratio"]) == r["frames"]
                assert _positive(r["ml_md_ms_per_step"])
                assert (r["uncertainty"]["evaluations"] > 0) == (mode == "adaptive+uncertainty")
            g = s["gr"]["per_seed"][mode][0]
            assert len(g["r"]) == len(g["g_otf"]) == len(g["g_ref"]) and g["integrated_abs_diff_A"] >= 0
        assert s["modes"]["fixed"]["uncertainty_checks"] == s["modes"]["adaptive"]["uncertainty_checks"] == 0
        assert s["modes"]["hybrid-md"]["uncertainty_checks"] == 0  # compat: hybrid-md has no trigger
        # hybrid-md's rule: a refit exactly on each failed check, nothing rolled back
        assert all(r["refits"] == r["checks_failed"] and r["rolled_back_frames"] == 0 for r in s["runs"]["hybrid-md"])
        c = s["correlation"]
        assert c["frames"] >= 3 and set(c["pooled"]) == {"max_local_std", "total_std", "mean_local_std"}
        assert _positive(c["cost"]["force_call_ms"])
        assert isinstance(s["target"]["met"], bool)


def test_gap_presets_quick(tmp_path):
    data = run_quick("gap_presets.py", tmp_path, timeout=1800)
    assert {"default", "l-si", "fast"} <= set(data["presets"])
    assert {s["data"] for s in data["studies"]} >= {"si", "cuau"}
    for study in data["studies"]:
        rows = {r["preset"]: r for r in study["rows"]}
        assert {"default", "l-si", "fast"} <= set(rows)
        for r in rows.values():
            assert _positive(r["ms_per_atom"]) and _positive(r["test"]["force_rmse"])
        if study["data"] != "cuau":
            t = study["target"]
            assert t["speedup_vs_l_si"] == pytest.approx(rows["l-si"]["ms_per_atom"] / rows["fast"]["ms_per_atom"])
            assert t["met"] == (t["speedup_vs_l_si"] >= 3 and t["force_rmse_ratio_vs_l_si"] <= 1.15)


def test_walkers_quick(tmp_path):
    data = run_quick("walkers.py", tmp_path, timeout=1800)
    assert (tmp_path / "walkers_quick.png").stat().st_size > 0
    (seed,) = data["per_seed"]
    walkers = ["T1200", "T1800", "T2400"]
    assert set(seed["runs"]) == {"walkers", *walkers}
    for key, run in seed["runs"].items():
        assert run["status"] == "completed" and run["dft_calls"] > 0 and run["lineage_length"] == run["models"]
        assert set(run["outside"]) == (set(walkers) if key == "walkers" else {"-"})
        for o in run["outside"].values():
            assert o["frames"] > 0 and 0 <= o["fraction_outside"] <= 1
        for t in walkers:  # every final model on reference MD of every temperature
            assert _positive(seed["test"][key][t]["force_rmse"]) and seed["test"][key][t]["frames"] > 0
    s = data["summary"]
    assert s["dft"]["walkers_per_seed"] == [seed["runs"]["walkers"]["dft_calls"]]
    assert s["dft"]["separate_per_seed"] == [sum(seed["runs"][w]["dft_calls"] for w in walkers)]
    assert math.isclose(s["dft"]["ratio"], s["dft"]["walkers_per_seed"][0] / s["dft"]["separate_per_seed"][0])
    assert all(s["fraction_outside"][w]["spread"] is None for w in walkers)  # one seed: no spread
    assert all(isinstance(v["met"], bool) for v in s["force_rmse_own_temperature"].values())
    w = s["workers"]
    assert w["workers1_wall_s"] > 0 and w["workers2_wall_s"] > 0 and w["workers2_dft_calls"] > 0
