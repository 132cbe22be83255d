"""A real CP2K campaign on Si8 (atomate2 + custodian), its labels cross-checked against a direct
CP2K run, and a CP2K failure ending the documented way."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase import Atoms, units
from conftest import run_otf
from test_cp2k_engine import CP2K, run_direct

pytestmark = [pytest.mark.cp2k, pytest.mark.skipif(CP2K is None, reason="cp2k is not on PATH")]

SI8 = {
    "name": "si8-cp2k",
    "structure": {"builder": "bulk", "element": "Si", "crystalstructure": "diamond", "a": 5.43, "cubic": True,
                  "rattle_A": 0.05, "seed": 7},
    "md": {"ensemble": "nvt_langevin", "temperature_K": 1000, "timestep_fs": 2.0, "total_steps": 14, "seed": 5,
           "trajectory_interval": 2},
    "reference": {"engine": "cp2k"},
    "compat": "hybrid-md",  # hybrid-md's rule: no uncertainty trigger, refits on failed checks only
    "can_update": True,
    "num_initial_steps": 2,
    "check_interval": 4,  # fixed interval: checks at steps 6, 10, 14
    "tolerances": {"ediff": 0.01, "frmse": 0.3},
}


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    import yaml

    tmp = tmp_path_factory.mktemp("si8")
    path = tmp / "si8.yaml"
    path.write_text(yaml.safe_dump(SI8))
    store = tmp / "store"
    result = run_otf("run", str(path), "--store", str(store), cwd=tmp)
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp, store


def test_cp2k_campaign_runs_with_checks(campaign):
    _, store = campaign
    checks = json.loads(run_otf("checks", "si8-cp2k", "--store", str(store), "--json").stdout)
    assert [c["step"] for c in checks] == [6, 10, 14]
    assert all(c["interval"] == 4 and c["ediff"] is not None and c["vmax"] is not None for c in checks)
    status = json.loads(run_otf("status", "si8-cp2k", "--store", str(store), "--json").stdout)
    assert status["status"] == "completed" and status["reference_seconds"] > 0
    models = json.loads(run_otf("models", "--campaign", "si8-cp2k", "--store", str(store), "--json").stdout)
    assert len(models) == 1 + sum(not c["passed"] for c in checks)


def test_stored_labels_equal_a_direct_cp2k_run(campaign):
    from otf_flows.store import OtfStore

    tmp, store = campaign
    st = OtfStore(str(store))
    frames = st.frames_of("si8-cp2k")
    assert len(frames) == 3 + 3  # steps 0..2 of the initial MD, three checks
    frame = [f for f in frames if f.source == "check"][-1]
    atoms = Atoms(numbers=frame.numbers, positions=frame.positions, cell=frame.cell, pbc=frame.pbc)
    direct = run_direct(atoms, tmp / "direct")
    n = len(atoms)
    assert frame.energy / n == pytest.approx(direct["energy"] * units.Hartree / n, abs=1e-5)
    np.testing.assert_allclose(frame.forces, direct["forces"] * units.Hartree / units.Bohr, atol=1e-4)
    np.testing.assert_allclose(frame.virial, direct["stress"] * units.GPa * atoms.get_volume(), atol=1e-3)


def test_stored_cp2k_frames_show_version_scf_steps_and_corrections(campaign):
    """Each DFT frame keeps the essentials of its atomate2 task document, checked against the run's own files."""
    import gzip
    import re
    from pathlib import Path

    from pymatgen.core import Structure

    _, store = campaign
    rows = json.loads(run_otf("data", "frames", "si8-cp2k", "--store", str(store), "--json").stdout)
    assert len(rows) == 6
    for row in rows:
        p = row["provenance"]
        run_dir = Path(p["run_dir"])

        def text(name: str, run_dir: Path = run_dir) -> str:  # atomate2 gzips the outputs after parsing
            plain = run_dir / name
            return plain.read_text() if plain.exists() else gzip.open(f"{plain}.gz", "rt").read()

        output = text("cp2k.out")
        assert p["code"] == "cp2k" and p["code_version"] and p["code_version"] in output
        assert p["scf_converged"] is True and p["scf_steps"] > 1
        assert re.findall(r"SCF run converged in\s+(\d+)\s+steps", output)[-1] == str(p["scf_steps"])
        custodian = json.loads(text("custodian.json"))
        assert p["corrections"] == [{"errors": c.get("errors"), "actions": c.get("actions")}
                                    for run in custodian for c in run.get("corrections", [])]
        assert p["input_set"] == "StaticSetGenerator" and p["input_settings"]["user_input_settings"]
        assert p["level_of_theory"].startswith("cp2k PBE ") and p["attempts"] == 1
        assert p["wall_seconds"] > 0 and p["code_seconds"] > 0
        frame = json.loads(run_otf("data", "frame", row["frame_id"], "--store", str(store)).stdout)
        assert Structure.from_dict(frame["structure"]).composition.reduced_formula == "Si"


def test_cp2k_failure_is_recorded_and_resumable(tmp_path, write_config):
    from otf_flows.store import OtfStore

    config = json.loads(json.dumps(SI8))
    config["name"] = "si8-fails"
    config["reference"] = {"engine": "cp2k", "max_scf": 1, "eps_scf": 1.0e-10, "retries": 1}
    path = write_config(config)
    store = tmp_path / "store"
    result = run_otf("run", str(path), "--store", str(store))
    assert result.returncode == 1
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("otf: failed:") and "attempt" in line
    doc = OtfStore(str(store)).require_campaign("si8-fails")
    assert doc.status == "failed" and "attempt" in doc.message
    assert OtfStore(str(store)).frames_of("si8-fails") == []  # nothing half-labelled
    status = json.loads(run_otf("status", "si8-fails", "--store", str(store), "--json").stdout)
    assert status["status"] == "failed" and status["message"]
    # the same campaign can be resumed (here it fails the same way: the SCF settings are impossible)
    again = run_otf("run", str(path), "--store", str(store), "--resume")
    assert again.returncode == 1 and "otf: failed:" in again.stderr
