"""Validation studies of a model on a small real EMT Cu campaign (GAP fits): cross-validation, learning
curves, physical benchmarks (atomate2 EOS, phonon and elastic flows, model against the reference: from the
campaign's YAML, run_locally and FireWorks workers), the hole search and the model card."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.units import GPa
from conftest import cu_emt_data, run_otf
from fireworks import FWorker
from fireworks.core.rocket_launcher import launch_rocket
from jobflow import run_locally
from pymatgen.io.ase import AseAtomsAdaptor
from test_fireworks import launchpad  # noqa: F401 - the in-memory LaunchPad fixture

from otf_flows.campaign import PhysicalBenchmark
from otf_flows.errors import InputError
from otf_flows.jobs.physical_flow import physical_flow
from otf_flows.jobs.routing import KINDS
from otf_flows.managers.fireworks import campaign_workflow
from otf_flows.store import OtfStore
from otf_flows.validation.evaluate import model_calculator, predict
from otf_flows.validation.physical import campaign_context
from otf_flows.validation.physical_analysis import adapted_kpoints, eos_fit
from otf_flows.validation.refit import (
    _campaign_config,
    _fit_and_predict,
    cross_validate,
    fit_recipe,
    kfold_indices,
    learning_curve_sizes,
    nested_subsets,
    parse_sizes,
)


# --------------------------------------------------------------------------- pure helpers
def test_folds_partition_the_frames_and_are_seeded():
    folds = kfold_indices(11, 4, seed=3)
    assert sorted(np.concatenate(folds).tolist()) == list(range(11))
    assert sorted(len(f) for f in folds) == [2, 3, 3, 3]
    assert [f.tolist() for f in folds] == [f.tolist() for f in kfold_indices(11, 4, seed=3)]
    assert [f.tolist() for f in folds] != [f.tolist() for f in kfold_indices(11, 4, seed=4)]
    with pytest.raises(InputError, match="at least 2"):
        kfold_indices(11, 1)
    with pytest.raises(InputError, match="need at least 12 training frames"):
        kfold_indices(11, 12)


def test_subsets_are_nested_and_sizes_span_the_pool():
    subsets = nested_subsets(20, [2, 5, 20], seed=1)
    assert [len(s) for s in subsets] == [2, 5, 20]
    assert set(subsets[0]) <= set(subsets[1]) <= set(subsets[2]) == set(range(20))
    assert learning_curve_sizes(20) == [2, 4, 6, 11, 20]
    assert learning_curve_sizes(1) == [1]
    assert parse_sizes("2, 4 8") == [2, 4, 8] and parse_sizes(None) is None
    for bad in ("2,x", "0,3"):
        with pytest.raises(InputError, match="--sizes"):
            parse_sizes(bad)


# --------------------------------------------------------------------------- a real campaign
@pytest.fixture(scope="module")
def cu_store(tmp_path_factory) -> Path:
    """An EMT Cu campaign of 8 atoms: 6 initial DFT-MD frames, refits on failed checks, the EOS of fcc Cu
    at the end (about 40 s)."""
    root = tmp_path_factory.mktemp("cu")
    bulk("Cu", "fcc", a=3.61).write(root / "cu.cif")
    data = cu_emt_data()
    # the final model's EOS against EMT, run by the campaign's graph after its final validation
    data["validation"] = {"physical": [{"property": "eos", "structure": "cu.cif", "n_points": 5}]}
    data["structure"]["repeat"] = [2, 1, 1]
    data["md"].update(total_steps=80, trajectory_interval=0)
    data.update(num_initial_steps=6, check_interval=10,
                adaptive_method_parameters={"n_min": 5, "n_max": 20, "factor": 2})
    (root / "c.yaml").write_text(yaml.safe_dump(data))
    res = run_otf("run", str(root / "c.yaml"), "--store", str(root / "store"), cwd=root)
    assert res.returncode == 0, res.stderr[-2000:]
    return root / "store"


def _model_with_untrained_checks(store_dir: Path) -> str:
    """The newest model that has at least two untrained check frames of its campaign."""
    st = OtfStore(str(store_dir))
    try:
        for model in reversed(st.models("cu-emt")):
            trained = set(model.training_frame_ids)
            untrained = [f for f in st.frames_of("cu-emt") if f.source == "check" and f.frame_id not in trained]
            if len(untrained) >= 2 and model.n_training_frames >= 6:
                return model.model_id
    finally:
        st.close()
    pytest.fail("the campaign left no model with two untrained checks")


def test_refit_recipe_reproduces_the_stored_model(cu_store, tmp_path):
    """The model's own settings: refitted on all its training frames, the stored GAP comes back exactly."""
    st = OtfStore(str(cu_store))
    model = st.get_model(_model_with_untrained_checks(cu_store))
    recipe = fit_recipe(model, _campaign_config(st, model))
    assert recipe.backend == "gap" and recipe.seed == 7 and recipe.virials is False
    assert recipe.refit.default_sigma == "0.001 0.05 0.05 0.0"
    frames = st.get_frames(model.training_frame_ids)
    others = [f for f in st.frames_of("cu-emt") if f.frame_id not in set(model.training_frame_ids)]
    refitted, _ = _fit_and_predict(recipe, frames, others, tmp_path / "fit", None)
    stored = predict(model_calculator(st, model.model_id), others)
    assert max(abs(a.energy - b.energy) for a, b in zip(refitted, stored)) < 1e-6
    assert max(np.abs(a.forces - b.forces).max() for a, b in zip(refitted, stored)) < 1e-6


def test_cross_validation_from_the_command_line(cu_store, tmp_path):
    model_id = _model_with_untrained_checks(cu_store)
    res = run_otf("validate", model_id, "--cv", "3", "--store", str(cu_store), "--workdir", str(tmp_path), "--json")
    assert res.returncode == 0, res.stderr[-2000:]
    doc = json.loads(res.stdout)
    st = OtfStore(str(cu_store))
    model = st.get_model(model_id)
    # every training frame is held out exactly once, by a sub-model fitted on the others
    held = [fid for f in doc["folds"] for fid in f["frame_ids"]]
    assert sorted(held) == sorted(model.training_frame_ids)
    assert all(f["n_train"] + f["n_test"] == model.n_training_frames for f in doc["folds"])
    # pooled force RMSE = sqrt of the component-weighted mean of the per-fold squares
    n_comp = [3 * 8 * f["n_test"] for f in doc["folds"]]
    pooled = np.sqrt(sum(n * f["force_rmse"] ** 2 for n, f in zip(n_comp, doc["folds"])) / sum(n_comp))
    assert doc["force_rmse"] == pytest.approx(pooled)
    values = [f["force_rmse"] for f in doc["folds"]]
    assert doc["spread"]["force_rmse"]["mean"] == pytest.approx(np.mean(values))
    assert doc["spread"]["force_rmse"]["std"] == pytest.approx(np.std(values, ddof=1))
    assert 0 < doc["force_rmse"] < 1.0 and "k-fold" in doc["definitions"]["cv"]
    stored = st.validations(model_id, "cv3")
    assert len(stored) == 1 and stored[0]["force_rmse"] == pytest.approx(doc["force_rmse"])


def test_learning_curve_on_untrained_checks(cu_store, tmp_path):
    model_id = _model_with_untrained_checks(cu_store)
    res = run_otf("learning-curve", model_id, "--benchmark", "checks", "--sizes", "2,4,6", "--store", str(cu_store),
                  "--workdir", str(tmp_path), "--json")
    assert res.returncode == 0, res.stderr[-2000:]
    doc = json.loads(res.stdout)
    st = OtfStore(str(cu_store))
    model = st.get_model(model_id)
    held = {f.frame_id for f in st.frames_of("cu-emt") if f.source == "check"} - set(model.training_frame_ids)
    stored = st.validations(model_id, "learning-curve:checks")[0]
    assert set(stored["held_out_frame_ids"]) == held and doc["n_frames"] == len(held)
    assert [p["n_train"] for p in doc["points"]] == [2, 4, 6]
    subsets = [set(p["frame_ids"]) for p in stored["points"]]
    assert subsets[0] < subsets[1] < subsets[2] <= set(model.training_frame_ids) and not subsets[2] & held
    # more data does not make the 2-frame model's force error on unseen frames look better than the 6-frame one's
    assert doc["points"][-1]["force_rmse"] < doc["points"][0]["force_rmse"]
    bad = run_otf("learning-curve", model_id, "--benchmark", "checks", "--sizes", "2,99", "--store", str(cu_store))
    assert bad.returncode == 2 and "--sizes: 99 is outside" in bad.stderr and "Traceback" not in bad.stderr


def test_bad_validate_arguments_are_one_line_errors(cu_store):
    for args, text in ((("--cv", "1"), "--cv: K must be at least 2"),
                       (("--cv", "3", "--benchmark", "checks"), "exactly one of"),
                       ((), "exactly one of")):
        res = run_otf("validate", "cu-emt-v1", *args, "--store", str(cu_store))
        assert res.returncode == 2, res.stderr
        assert text in res.stderr and len(res.stderr.strip().splitlines()) == 1


# --------------------------------------------------------------------------- physical benchmarks, holes
def _final_model(store_dir) -> str:
    st = OtfStore(str(store_dir))
    return st.require_campaign("cu-emt").model_id


def test_kpoints_keep_the_reference_density():
    # 2x2x2 on an 8.34 Å cube: spacing 2π/8.34/2 = 0.377 1/Å; a 5.431 Å cube needs 3.07 -> 4 divisions
    assert adapted_kpoints((2, 2, 2), np.eye(3) * 8.34, np.eye(3) * 5.431) == (4, 4, 4)
    assert adapted_kpoints((2, 2, 2), np.eye(3) * 8.34, np.eye(3) * 16.68) == (1, 1, 1)
    assert adapted_kpoints((2, 2, 2), np.eye(3) * 8.34, np.eye(3) * 8.34) == (2, 2, 2)


def test_campaign_yaml_runs_the_eos_against_the_reference(cu_store):
    """validation.physical in the YAML: the graph ran the EOS of its final model with the model and with EMT."""
    model_id = _final_model(cu_store)
    docs = OtfStore(str(cu_store)).validations(model_id, "physical:eos:cu")
    assert len(docs) == 1
    doc = docs[0]
    # the reference side is EMT itself at the same five strained cells: refit them independently
    cell = bulk("Cu", "fcc", a=3.61)
    volumes, energies = [], []
    for eps in np.linspace(-0.03, 0.03, 5):
        atoms = cell.copy()
        atoms.set_cell(cell.cell * (1 + eps), scale_atoms=True)
        atoms.calc = EMT()
        volumes.append(atoms.get_volume())
        energies.append(atoms.get_potential_energy())
    assert np.allclose(doc["dft"]["volumes_per_atom"], volumes) and np.allclose(doc["dft"]["energies_per_atom"],
                                                                                 energies)
    direct = eos_fit(volumes, energies)
    assert doc["dft"]["fit"]["b0_GPa"] == pytest.approx(direct["b0_GPa"], rel=1e-6)
    assert 120 < direct["b0_GPa"] < 150  # EMT's copper
    assert doc["differences"]["b0_GPa"] == pytest.approx(doc["model"]["fit"]["b0_GPa"] - direct["b0_GPa"])
    assert doc["summary"]["bulk modulus B"]["dft"] == pytest.approx(direct["b0_GPa"], abs=1e-5)


def test_phonons_run_locally(cu_store, tmp_path):
    st = OtfStore(str(cu_store))
    model_id = _final_model(cu_store)
    config, cell = campaign_context(st, model_id)
    bench = PhysicalBenchmark(property="phonons", structure="cu.cif", label="fcc", supercell=(2, 2, 2))
    structure = AseAtomsAdaptor.get_structure(bulk("Cu", "fcc", a=3.61))
    flow = physical_flow(bench, structure, str(cu_store), model_id, config, cell)
    run_locally(flow, store=st.jobstore, root_dir=tmp_path, create_folders=True, ensure_success=True, log=False)
    doc = st.validations(model_id, "physical:phonons:fcc")[0]
    model, dft = np.array(doc["model"]["band_frequencies_THz"]), np.array(doc["dft"]["band_frequencies_THz"])
    assert model.shape == dft.shape and model.shape[1] == 3 and doc["model"]["qpoints"] == doc["dft"]["qpoints"]
    assert doc["differences"]["frequency_rmse_THz"] == pytest.approx(np.sqrt(np.mean((model - dft) ** 2)))
    gamma = [i for i, q in enumerate(doc["dft"]["qpoints"]) if np.allclose(q, 0)]
    assert np.abs(dft[gamma]).max() < 0.05  # acoustic sum rule at Γ
    assert 6.0 < dft.max() < 9.0  # EMT copper's highest phonon frequency, ~7.8 THz
    assert doc["supercell_matrix"] == [[2, 0, 0], [0, 2, 0], [0, 0, 2]]


def test_elastic_on_fireworks_workers_by_kind(cu_store, tmp_path, monkeypatch, launchpad):  # noqa: F811
    """The elastic flows as a FireWorks workflow: DFT single points on the dft worker, model jobs on md."""
    st = OtfStore(str(cu_store))
    model_id = _final_model(cu_store)
    config, cell = campaign_context(st, model_id)
    bench = PhysicalBenchmark(property="elastic", structure="cu.cif", label="fcc")
    structure = AseAtomsAdaptor.get_structure(bulk("Cu", "fcc", a=3.61))
    flow = physical_flow(bench, structure, str(cu_store), model_id, config, cell)
    workflow = campaign_workflow(flow, str(cu_store), "cu-emt")
    launchpad.add_wf(workflow)
    workers = {kind: FWorker(name=f"otf-{kind}", category=kind) for kind in KINDS}
    (tmp_path / "launches").mkdir()
    monkeypatch.chdir(tmp_path / "launches")
    ran = []
    for _ in range(200):
        ready = launchpad.fireworks.find_one({"state": "READY"}, {"fw_id": 1, "name": 1, "spec._category": 1})
        if ready is None:
            break
        kind = ready["spec"]["_category"]
        assert launch_rocket(launchpad, workers[kind], strm_lvl="ERROR")
        ran.append((kind, ready["name"]))
    assert all(fw["state"] == "COMPLETED" for fw in launchpad.fireworks.find({}, {"state": 1}))
    assert {k for k, name in ran if name.startswith("dft single point")} == {"dft"}
    assert {k for k, name in ran if name.startswith("model single point")} == {"md"}
    doc = st.validations(model_id, "physical:elastic:fcc")[0]
    c = np.array(doc["dft"]["elastic_tensor_GPa"])
    assert c[0, 0] == pytest.approx(c[1, 1], abs=0.5) and c[3, 3] == pytest.approx(c[5, 5], abs=0.5)
    # one atom per cell: the clamped-ion bulk modulus is the EOS one (EMT at the strained cells)
    atoms = bulk("Cu", "fcc", a=3.61)
    atoms.calc = EMT()
    eps = 1e-3
    stresses = []
    for sign in (1, -1):
        strained = atoms.copy()
        strained.set_cell(atoms.cell * (1 + sign * eps), scale_atoms=True)
        strained.calc = EMT()
        stresses.append(-np.trace(strained.get_stress(voigt=False)) / 3)
    bulk_modulus = -(stresses[0] - stresses[1]) / (6 * eps) / GPa  # dP/d(ln V) with dlnV = 3 eps
    assert doc["dft"]["k_vrh_GPa"] == pytest.approx(bulk_modulus, rel=0.03)


def test_hole_search_with_dft_check(cu_store, tmp_path):
    model_id = _final_model(cu_store)
    res = run_otf("holes", model_id, "--n", "2", "--steps", "25", "--margin", "-10", "--dft-check", "--max-dft", "1",
                  "--store", str(cu_store), "--workdir", str(tmp_path), "--json")
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout)
    assert out["n_structures"] == 2 and out["n_flagged"] == 2 and out["n_dft_checked"] == 1
    stored = OtfStore(str(cu_store)).validations(model_id, "holes")[0]
    checked = [r for r in stored["structures"] if r.get("dft_energy_per_atom") is not None]
    lowest = min(r["energy_per_atom"] for r in stored["structures"])
    assert len(checked) == 1 and checked[0]["energy_per_atom"] == lowest
    row = checked[0]
    atoms = Atoms(numbers=row["numbers"], positions=row["positions"], cell=row["cell"], pbc=True)
    atoms.calc = EMT()
    assert row["dft_energy_per_atom"] == pytest.approx(atoms.get_potential_energy() / len(atoms), abs=1e-9)
    assert row["verdict"].startswith(("hole", "not a hole"))
    assert all(r["min_distance_A"] > 1.0 for r in stored["structures"])


@pytest.mark.parametrize(("args", "text"), [
    (("--physical", "eoss", "--structure", "x.cif"), "--physical: 'eoss' is not one of eos, phonons, elastic"),
    (("--physical", "eos"), "--physical needs --structure"),
    (("--physical", "eos", "--structure", "missing.cif"), "--structure: 'missing.cif' does not exist"),
    (("--physical", "phonons", "--structure", "x.cif", "--supercell", "2,2"), "--supercell: '2,2' is not three"),
])
def test_bad_physical_arguments(tmp_path, args, text):
    (tmp_path / "x.cif").write_text("not a cif")
    res = run_otf("validate", "any-model", *args, "--store", str(tmp_path / "store"), cwd=tmp_path)
    assert res.returncode == 2 and text in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_bad_hole_arguments(tmp_path):
    res = run_otf("holes", "any-model", "--n", "0", "--store", str(tmp_path / "store"))
    assert res.returncode == 2 and res.stderr.startswith("otf: error: --n:"), res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_model_card_gathers_the_studies(cu_store, tmp_path):
    model_id = _model_with_untrained_checks(cu_store)
    st = OtfStore(str(cu_store))
    if not st.validations(model_id, "cv3"):  # this test run alone
        cross_validate(st, model_id, 3, tmp_path / "cv")
    st.close()
    res = run_otf("model-card", model_id, "--out", str(tmp_path / "card"), "--store", str(cu_store), "--json")
    assert res.returncode == 0, res.stderr[-2000:]
    card = json.loads(res.stdout)
    assert card["model"]["model_id"] == model_id
    assert card["training_data"]["levels_of_theory"] == {"ase EMT": card["training_data"]["n_frames"]}
    assert card["cross_validation"][0]["k"] == 3 and card["check_time_errors"]["campaign"]["n"] >= 2
    assert next(m["model_id"] for m in card["lineage"]) == model_id and card["lineage"][-1]["parent_model_id"] is None
    html = (tmp_path / "card" / "model_card.html").read_text()
    for name in card["figures"].values():
        assert (tmp_path / "card" / name).stat().st_size > 5000 and f"src='{name}'" in html
    assert "cv3.png" in card["figures"].values()
    assert "2. Internal k-fold cross-validation" in html and "fold 3" in html
