"""An EMT campaign of 2000 MD steps end to end under ``compat: hybrid-md``: real gap_fit, real ASE MD, the CLI as
a user runs it, and every check, interval and refit exactly as hybrid-md's rule makes them (refits on failed
checks only, no rollback, no uncertainty trigger). The measured defaults end to end: tests/test_defaults.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from ase import Atoms
from ase.calculators.emt import EMT
from conftest import CONFIGS, run_otf

from otf_flows.campaign import load_config
from otf_flows.schedule import next_interval
from otf_flows.store import OtfStore


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    """Run configs/cu-emt.yaml with compat: hybrid-md once through `otf run` (about 2-3 minutes on 2 cores)."""
    tmp = tmp_path_factory.mktemp("cu_emt")
    store = tmp / "store"
    (tmp / "cu-emt.yaml").write_text(yaml.safe_dump({**_shipped(), "compat": "hybrid-md"}))
    result = run_otf("run", str(tmp / "cu-emt.yaml"), "--store", str(store), cwd=tmp)
    assert result.returncode == 0, result.stderr[-3000:]
    return store, result


def _shipped() -> dict:
    return yaml.safe_load((CONFIGS / "cu-emt.yaml").read_text())


def _config(store):
    """The campaign's settings as run (the shipped YAML with compat: hybrid-md)."""
    return load_config(store.parent / "cu-emt.yaml")


def _json(*args):
    result = run_otf(*args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_campaign_completes_with_summary(campaign):
    store, result = campaign
    config = _config(store)
    assert config.md.total_steps >= 2000
    assert "DFT calls" in result.stderr and "wall time: ML-MD" in result.stderr
    st = OtfStore(str(store))
    doc = st.require_campaign("cu-emt")
    assert doc.status == "completed" and doc.step == config.md.total_steps
    split = st.time_split("cu-emt")
    assert split["ml_md"] > 0 and split["fit"] > 0 and split["reference"] > 0


def test_checks_refits_and_models(campaign):
    store, _ = campaign
    checks = _json("checks", "cu-emt", "--store", str(store), "--json")
    models = _json("models", "--campaign", "cu-emt", "--store", str(store), "--json")
    assert len(checks) >= 3
    for row in checks:
        assert set(row) >= {"step", "interval", "ediff", "fmax", "frmse", "vmax", "passed", "new_interval", "refit",
                            "model_id", "new_model_id"}
    failed = [c for c in checks if not c["passed"]]
    assert failed, "expected at least one failed check triggering a refit"
    assert all(c["refit"] and c["new_model_id"] for c in failed)
    assert all(not c["refit"] and c["new_model_id"] is None for c in checks if c["passed"])
    assert len(models) == 1 + len(failed)
    # each check tested the model current at the time
    current = "cu-emt-v1"
    for c in checks:
        assert c["model_id"] == current
        current = c["new_model_id"] or current


def test_interval_sequence_obeys_the_rule(campaign):
    store, _ = campaign
    config = _config(store)
    p = config.adaptive_method_parameters
    checks = _json("checks", "cu-emt", "--store", str(store), "--json")
    interval = config.check_interval
    step = config.num_initial_steps
    for c in checks:
        expected_steps = min(interval, config.md.total_steps - step)
        assert c["interval"] == expected_steps
        assert c["step"] == step + expected_steps
        assert c["new_interval"] == next_interval(interval, c["passed"], p.n_min, p.n_max, p.factor)
        passed = all(c[k] < getattr(config.tolerances, k) for k in ("ediff", "fmax", "frmse", "vmax")
                     if getattr(config.tolerances, k) is not None)
        assert c["passed"] == passed
        interval, step = c["new_interval"], c["step"]
    assert step == config.md.total_steps


def test_every_stored_label_is_emt(campaign):
    store, _ = campaign
    st = OtfStore(str(store))
    frames = st.frames_of("cu-emt")
    config = _config(store)
    n_checks = len(st.checks("cu-emt"))
    assert len(frames) == config.num_initial_steps + 1 + n_checks
    for frame in frames:
        atoms = Atoms(numbers=frame.numbers, positions=frame.positions, cell=frame.cell, pbc=frame.pbc)
        atoms.calc = EMT()
        assert frame.energy == pytest.approx(atoms.get_potential_energy(), abs=1e-9)
        assert np.allclose(frame.forces, atoms.get_forces(), atol=1e-9)
        assert np.allclose(frame.virial, -atoms.get_stress(voigt=False) * atoms.get_volume(), atol=1e-8)
    # training data = every label paid for (refit.train_on: all): initial frames + every check, each once
    training = st.training_frames("cu-emt")
    assert len(training) == config.num_initial_steps + 1 + n_checks
    assert len({f.frame_id for f in training}) == len(training)
    # the last model was fitted after its trigger check: trained on every label up to that check
    last = st.get_model(st.require_campaign("cu-emt").model_id)
    assert last.n_training_frames == sum(f.md_step <= last.trigger_check_step for f in frames)


def test_lineage_of_last_model(campaign):
    store, _ = campaign
    models = _json("models", "--campaign", "cu-emt", "--store", str(store), "--json")
    chain = _json("lineage", models[-1]["model_id"], "--store", str(store), "--json")
    assert [m["model_id"] for m in chain] == [m["model_id"] for m in reversed(models)]
    assert chain[-1]["parent_model_id"] is None and chain[-1]["trigger_check_step"] is None
    counts = [m["n_training_frames"] for m in reversed(chain)]
    assert counts == sorted(counts) and len(set(counts)) == len(counts)


def test_model_files_not_inside_job_outputs(campaign):
    store, _ = campaign
    st = OtfStore(str(store))
    for doc in st.collection("jobs").query({}):
        assert len(json.dumps(doc, default=str)) < 20_000
    blobs = list((store / "blobs").rglob("*"))
    assert any(p.is_file() for p in blobs)


def test_rerun_same_name_is_refused(campaign):
    store, _ = campaign
    result = run_otf("run", str(store.parent / "cu-emt.yaml"), "--store", str(store))
    assert result.returncode == 2 and "--resume" in result.stderr


def test_resume_of_completed_campaign_adds_nothing(campaign):
    store, _ = campaign
    st = OtfStore(str(store))
    before = (len(st.checks("cu-emt")), len(st.models("cu-emt")), len(st.frames_of("cu-emt")))
    result = run_otf("run", str(store.parent / "cu-emt.yaml"), "--store", str(store), "--resume")
    assert result.returncode == 0, result.stderr
    st = OtfStore(str(store))
    assert (len(st.checks("cu-emt")), len(st.models("cu-emt")), len(st.frames_of("cu-emt"))) == before
