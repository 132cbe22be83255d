"""What older versions of otf_flows wrote still loads and resumes: a serialised Maker and flow, a FireWorks
workflow as ``otf submit --launchpad`` adds it to a LaunchPad, and an embedded store.

The fixtures in tests/data/compat were written before the package layout changed (issue 21): their
``@module`` entries name the old modules (``otf_flows.backends.ml_settings``, ``otf_flows.campaign``,
``otf_flows.jobs.*``), which the compatibility modules keep importable.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import pytest
import yaml
from conftest import run_otf
from fireworks import FWorker, LaunchPad, Workflow
from fireworks.core.rocket_launcher import launch_rocket
from jobflow import Flow, Maker, run_locally
from monty.json import MontyDecoder

from otf_flows import OtfMDMaker
from otf_flows.campaign import CampaignConfig
from otf_flows.flows.lifecycle import prepare_campaign
from otf_flows.managers.fireworks import OtfJobStore
from otf_flows.store import OtfStore

DATA = Path(__file__).parent / "data" / "compat"
OLD_LOCATION = "/nonexistent/otf-store"


def compat_config() -> dict:
    return yaml.safe_load((DATA / "compat-emt.yaml").read_text())


def test_maker_written_before_loads_with_its_settings():
    text = (DATA / "maker.json").read_text()
    assert '"otf_flows.backends.ml_settings"' in text  # an old module path
    maker = json.loads(text, cls=MontyDecoder)
    assert isinstance(maker, OtfMDMaker)
    # the old Maker carried rollback_on_fail (then false by default) as a value; the keys its blocks did not
    # set take today's defaults, as a YAML that does not name them does for a new campaign
    today = OtfMDMaker.from_yaml(DATA / "compat-emt.yaml", rollback_on_fail=False)
    assert maker.campaign_config().model_dump() == today.campaign_config().model_dump()


def test_flow_written_before_runs(tmp_path, monkeypatch):
    """The old Maker's flow (registration, then the campaign) runs to the end with jobflow's run_locally."""
    store = OtfStore(str(tmp_path / "store"))
    text = (DATA / "flow.json").read_text().replace(OLD_LOCATION, str(store.path))
    flow = MontyDecoder().process_decoded(json.loads(text))
    assert isinstance(flow, Flow)
    names = [job.name for job, _ in flow.iterflow()]
    assert names[:2] == ["register campaign", "initial reference MD"]
    for job, _ in flow.iterflow():
        assert callable(job.function) and isinstance(job.function.__self__, Maker)
    monkeypatch.chdir(tmp_path)
    run_locally(flow, store=store.jobstore, create_folders=True, log=False)
    doc = store.require_campaign("compat-emt")
    assert doc.status == "completed" and doc.step == 9


@pytest.mark.parametrize("name", ["workflow.json", "workflow_inline.json"])
def test_workflow_written_before_loads(name):
    workflow = Workflow.from_dict(json.loads((DATA / name).read_text()))
    names = sorted(fw.name for fw in workflow.fws)
    assert "initial reference MD" in names and "first fit" in names
    for fw in workflow.fws:
        for task in fw.tasks:
            assert isinstance(task["store"], OtfJobStore) and task["store"].location == OLD_LOCATION
            job = task["job"]
            assert callable(job.function)
            config = job.function.__self__.config
            assert isinstance(config, CampaignConfig) and config.name == "compat-emt"


@pytest.fixture
def launchpad(monkeypatch):
    """An empty in-memory LaunchPad (mongomock), as `lpad reset` leaves it."""
    import fireworks.core.launchpad as launchpad_module
    import fireworks.core.rocket as rocket_module
    import mongomock
    import mongomock.gridfs

    mongomock.gridfs.enable_gridfs_integration()
    monkeypatch.setattr(launchpad_module, "MongoClient", mongomock.MongoClient)
    monkeypatch.setattr(rocket_module, "start_ping_launch", lambda *args, **kwargs: None)
    lp = LaunchPad(name=f"otf_{uuid.uuid4().hex[:8]}", strm_lvl="ERROR")
    lp.reset("", require_password=False)
    return lp


def test_workflow_written_before_runs_on_a_launchpad(tmp_path, monkeypatch, launchpad):
    """The old workflow, added to a LaunchPad and run by a worker, completes the campaign with today's code."""
    store = OtfStore(str(tmp_path / "store"))
    text = (DATA / "workflow.json").read_text().replace(OLD_LOCATION, str(store.path))
    prepare_campaign(CampaignConfig.model_validate(compat_config()), store)  # what `otf submit` registers
    launchpad.add_wf(Workflow.from_dict(json.loads(text)))
    (tmp_path / "launches").mkdir()
    monkeypatch.chdir(tmp_path / "launches")
    worker = FWorker(name="any")
    for _ in range(30):
        if not launch_rocket(launchpad, worker, strm_lvl="ERROR"):
            break
    doc = store.require_campaign("compat-emt")
    assert doc.status == "completed" and doc.step == 9
    assert store.checks("compat-emt") and store.models("compat-emt")


def test_store_written_before_resumes(tmp_path):
    """The old store's campaign, checks and models load; `otf run --resume` with more steps continues it."""
    shutil.copytree(DATA / "store", tmp_path / "store")
    store = OtfStore(str(tmp_path / "store"))
    doc = store.require_campaign("compat-emt")
    assert doc.status == "completed" and doc.step == 9
    checks, models = store.checks("compat-emt"), store.models("compat-emt")
    assert [c.step for c in checks] == [9] and [m.model_id for m in models] == ["compat-emt-v1", "compat-emt-v2"]
    n_frames = len(store.frames_of("compat-emt"))

    config = compat_config()
    config["md"]["total_steps"] = 17
    path = tmp_path / "compat-emt.yaml"
    path.write_text(yaml.safe_dump(config))
    result = run_otf("run", str(path), "--store", str(tmp_path / "store"), "--resume", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    doc = store.require_campaign("compat-emt")
    assert doc.status == "completed" and doc.step == 17
    assert len(store.checks("compat-emt")) > 1 and len(store.frames_of("compat-emt")) > n_frames
    # it resumed with the settings it was started with, not today's defaults (issue 23): only the steps changed
    assert [change["changed"] for change in doc.changes] == [{"md.total_steps": [9, 17]}]
    assert doc.config["rollback_on_fail"] is False and doc.config["refit"]["every_new_labels"] is None
    assert doc.config["uncertainty"]["enabled"] is False
    assert doc.config["adaptive_method_parameters"]["grow_below"] == 1.0
    assert not any(c.rolled_back_to is not None or c.trigger == "uncertainty" for c in store.checks("compat-emt"))
