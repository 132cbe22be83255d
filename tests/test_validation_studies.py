"""Cross-validation, learning curves and the model card on a small real EMT Cu campaign (GAP fits)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import CONFIGS, run_otf

from otf_flows.errors import InputError
from otf_flows.store import OtfStore
from otf_flows.validation.evaluate import model_calculator, predict
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
    """An EMT Cu campaign of 8 atoms: 6 initial DFT-MD frames, refits on failed checks (about 40 s)."""
    root = tmp_path_factory.mktemp("cu")
    data = yaml.safe_load((CONFIGS / "cu-emt.yaml").read_text())
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
