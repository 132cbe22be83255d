"""`otf report` and `otf validate` on a short real EMT campaign (real gap_fit, ASE MD)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import yaml
from conftest import cu_emt_data, run_otf

from otf_flows.report import FIGURES, performance_table
from otf_flows.store import OtfStore

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_performance_table_by_hand():
    split = {"reference": 30.0, "fit": 10.0, "ml_md": 50.0, "other": 2.0}
    t = performance_table(100.0, split, dft_calls=6, md_steps=600, fits=2)
    assert t["reference_share"] == pytest.approx(0.30) and t["fit_share"] == pytest.approx(0.10)
    assert t["ml_md_share"] == pytest.approx(0.50) and t["other_share"] == pytest.approx(0.10)
    assert t["md_steps_per_dft_call"] == pytest.approx(100.0)
    assert t["dft_calls_per_1000_steps"] == pytest.approx(10.0)  # as `otf status` shows it
    assert t["mean_reference_seconds"] == pytest.approx(5.0)
    assert t["aimd_steps_same_time"] == pytest.approx(20.0)  # 100 s / 5 s per reference step
    assert t["speedup"] == pytest.approx(30.0)  # 600 steps × 5 s / 100 s
    empty = performance_table(0.0, {}, dft_calls=0, md_steps=0, fits=0)
    assert empty["speedup"] is None and empty["reference_share"] is None


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    """A 150-step Cu/EMT campaign run through `otf run` (about 30 s on 2 cores)."""
    tmp = tmp_path_factory.mktemp("report")
    config = cu_emt_data()
    config["name"] = "cu-report"
    config["md"]["total_steps"] = 150
    config["md"]["trajectory_interval"] = 10
    path = tmp / "campaign.yaml"
    path.write_text(yaml.safe_dump(config))
    store = tmp / "store"
    result = run_otf("run", str(path), "--store", str(store), cwd=tmp)
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp, store


def _png_ok(path) -> tuple[int, int]:
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    image = imread(path)
    height, width = image.shape[:2]
    assert height >= 200 and width >= 400, (path, image.shape)
    rgb = image[..., :3].reshape(-1, 3)
    assert rgb.std() > 0.05, f"{path.name} is (nearly) blank"
    assert len(np.unique(np.round(rgb, 2), axis=0)) > 20, f"{path.name} has too few colours"
    return height, width


def test_validate_json_on_untrained_check_frames(campaign):
    _, store = campaign
    st = OtfStore(str(store))
    model = st.models("cu-report")[0]  # every label is trained on: the first model has unseen checks after it
    result = run_otf("validate", model.model_id, "--benchmark", "checks", "--store", str(store), "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    held_out = [f for f in st.frames_of("cu-report") if f.source == "check"
                and f.frame_id not in set(model.training_frame_ids)]
    assert doc["model_id"] == model.model_id and doc["benchmark"] == "checks" and doc["n_frames"] == len(held_out)
    for key in ("energy_rmse_per_atom", "energy_mae_per_atom", "force_rmse", "force_mae", "virial_rmse_per_atom"):
        assert doc[key] is not None and doc[key] >= 0
    assert doc["energy_rmse_per_atom"] >= doc["energy_mae_per_atom"] and doc["force_rmse"] >= doc["force_mae"]
    assert set(doc["by_config_type"]) == {"otf"}
    assert doc["by_config_type"]["otf"]["force_rmse"] == pytest.approx(doc["force_rmse"])
    stored = st.collection("validations").query_one({"validation_id": f"{model.model_id}:checks"})
    assert stored is not None and stored["force_rmse"] == pytest.approx(doc["force_rmse"])


def test_validation_reproduces_the_campaigns_own_check_errors(campaign):
    """A check frame evaluated again with the model that was checked gives the check's ediff and frmse."""
    from otf_flows.validation import validate_model

    _, store = campaign
    st = OtfStore(str(store))
    check = st.checks("cu-report")[0]
    frame = st.get_frames([check.frame_id])
    doc = validate_model(st, check.model_id, frame, benchmark="first-check")
    assert doc["energy_mae_per_atom"] == pytest.approx(check.ediff, rel=1e-6, abs=1e-9)
    assert doc["force_rmse"] == pytest.approx(check.frmse, rel=1e-6)


def test_report_writes_every_figure_and_the_page(campaign):
    tmp, store = campaign
    out = tmp / "report"
    result = run_otf("report", "cu-report", "--out", str(out), "--store", str(store))
    assert result.returncode == 0, result.stderr
    page = (out / "index.html").read_text()
    for name in FIGURES:
        _png_ok(out / f"{name}.png")
        assert re.search(rf"<img src='{name}\.png'", page), name
    assert "Campaign cu-report" in page and "Speed-up" in page and "DFT calls" in page
    st = OtfStore(str(store))
    n_dft = len(st.frames_of("cu-report"))
    assert re.search(rf"DFT calls \(initial MD \+ checks\)</td><td>{n_dft}<", page)
    # the latest model's card next to the report, linked from it
    card = json.loads((out / "model_card" / "model_card.json").read_text())
    assert card["model"]["model_id"] == st.require_campaign("cu-report").model_id
    assert "href='model_card/model_card.html'" in page and (out / "model_card" / "model_card.html").is_file()


def test_report_of_unknown_campaign_is_an_input_error(campaign, tmp_path):
    _, store = campaign
    result = run_otf("report", "nope", "--out", str(tmp_path / "r"), "--store", str(store))
    assert result.returncode == 2 and "campaign 'nope'" in result.stderr


def _memory_campaign(cu_config, name: str):
    import uuid

    from otf_flows.campaign import CampaignConfig
    from otf_flows.schemas.documents import CampaignDoc

    st = OtfStore(f"memory://report-{uuid.uuid4().hex}")
    config = CampaignConfig.model_validate(cu_config)
    st.put_campaign(CampaignDoc(name=name, config=config.model_dump(mode="json"), total_steps=2000))
    return st


def test_report_of_a_campaign_that_has_not_run_yet(tmp_path, cu_config):
    """A campaign with no checks, models or frames still gets every figure (saying so) and the page."""
    from otf_flows.report import write_report

    st = _memory_campaign(cu_config, "fresh")
    page = write_report(st, "fresh", tmp_path)
    for name in FIGURES:
        assert (tmp_path / f"{name}.png").read_bytes()[:8] == PNG_SIGNATURE
    assert "0 DFT checks" in page.read_text()


def test_step_plots_draw_blow_up_guard_checks(tmp_path, cu_config):
    """Guard checks (huge errors) get their own marker, pinned to the top edge of the scheduled checks' scale."""
    from otf_flows.report import collect
    from otf_flows.report.plots import plot_errors_vs_step, plot_interval_vs_step
    from otf_flows.schemas.documents import CheckDoc

    st = _memory_campaign(cu_config, "guarded")
    rows = [(15, 10, 0.004, 0.9, False), (20, 5, 0.001, 0.2, True), (40, 20, 50.0, 80.0, False)]
    for step, interval, ediff, fmax, passed in rows:
        extra = {"kind": "guard"} if step == 40 and "kind" in CheckDoc.model_fields else {}
        st.put_check(CheckDoc(check_id=f"guarded:check:{step}", campaign="guarded", step=step, interval=interval,
                              ediff=ediff, fmax=fmax, frmse=0.1, passed=passed, new_interval=10, refit=not passed,
                              model_id="m", frame_id=f"f{step}", **extra))
    data = collect(st, "guarded")
    _png_ok(plot_errors_vs_step(data, tmp_path / "e.png"))
    _png_ok(plot_interval_vs_step(data, tmp_path / "i.png"))
