"""`otf submit` without a scheduler: the FireWorks workflow of a campaign, its routing, its job store,
and a whole campaign run in process by one worker per job kind on a mongomock LaunchPad."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest
import yaml
from conftest import run_otf
from fireworks import Firework, FWorker, LaunchPad
from fireworks.core.rocket_launcher import launch_rocket
from jobflow import Flow, job

from otf_flows.campaign import CampaignConfig, config_from_dict
from otf_flows.errors import InputError
from otf_flows.flows.graph import campaign_flow
from otf_flows.managers.fireworks import (
    OtfJobStore,
    campaign_workflow,
    inline_workflow,
    store_location,
    submit_campaign,
)
from otf_flows.store import OtfStore

KINDS = ("dft", "md", "fit", "light")
EXECUTION = {
    "dft": {"queue": {"nodes": 4, "ntasks_per_node": 128, "walltime": "04:00:00"}},
    "md": {"fworker": "otf-md", "omp_threads": 8},
    "fit": {"category": "bigmem", "omp_threads": 64},
    "light": {},
}


def kind_of(name: str) -> str:
    for prefix, kind in (("initial reference MD", "dft"), ("reference check", "dft"), ("ml-md", "md"),
                         ("first fit", "fit"), ("refit", "fit"), ("decide", "light"), ("finish", "light"),
                         ("validate", "light")):
        if name.startswith(prefix):
            return kind
    raise AssertionError(f"unexpected firework {name!r}")


def expected_spec(kind: str) -> dict:
    return {
        "_category": "bigmem" if kind == "fit" else kind,
        "_fworker": "otf-md" if kind == "md" else None,
        "_queueadapter": EXECUTION["dft"]["queue"] if kind == "dft" else None,
        "otf_kind": kind,
    }


def spec_of(spec: dict) -> dict:
    return {key: spec.get(key) for key in ("_category", "_fworker", "_queueadapter", "otf_kind")}


@pytest.fixture
def small_config(cu_config) -> dict:
    """60 MD steps: checks at 35, 50 and 60, the first fails (a refit), 13 fireworks in all."""
    cu_config["md"]["total_steps"] = 60
    cu_config["check_interval"] = 30
    cu_config["execution"] = EXECUTION
    return cu_config


@pytest.fixture
def launchpad(monkeypatch):
    """An empty in-memory LaunchPad (mongomock), as `lpad reset` leaves it."""
    import fireworks.core.launchpad as launchpad_module
    import fireworks.core.rocket as rocket_module
    import mongomock
    import mongomock.gridfs

    mongomock.gridfs.enable_gridfs_integration()
    monkeypatch.setattr(launchpad_module, "MongoClient", mongomock.MongoClient)
    # mongomock is not thread-safe: no heartbeat thread next to the rocket in this process
    monkeypatch.setattr(rocket_module, "start_ping_launch", lambda *args, **kwargs: None)
    lp = LaunchPad(name=f"otf_{uuid.uuid4().hex[:8]}", strm_lvl="ERROR")
    lp.reset("", require_password=False)
    return lp


def test_every_firework_is_routed_by_kind(tmp_path, small_config):
    config = CampaignConfig.model_validate(small_config)
    location = store_location(OtfStore(str(tmp_path / "store")))
    workflow = campaign_workflow(campaign_flow(config, location), location, config.name)
    names = sorted(fw.name for fw in workflow.fws)
    assert names == ["decide 35", "first fit", "initial reference MD", "ml-md 5->35", "reference check 35"]
    for fw in workflow.fws:
        assert spec_of(fw.spec) == expected_spec(kind_of(fw.name)), fw.name
    assert workflow.metadata == {"otf_campaign": "cu-emt", "otf_store": location}


def test_job_store_travels_as_its_location(tmp_path, small_config):
    """Workers rebuild the store from an absolute path: no jobflow.yaml, no submitting shell needed."""
    config = CampaignConfig.model_validate(small_config)
    store = OtfStore(str(tmp_path / "store"))
    location = store_location(store)
    assert location == str((tmp_path / "store").resolve())
    workflow = campaign_workflow(campaign_flow(config, location), location, config.name)
    for fw in workflow.fws:
        as_dict = fw.to_dict()
        task = as_dict["spec"]["_tasks"][0]
        assert task["store"] == {
            "@module": "otf_flows.managers.fireworks", "@class": "OtfJobStore", "location": location
        }
        assert task["job"]["function_args"][1] == location  # make(campaign, store, ...)
        rebuilt = Firework.from_dict(json.loads(json.dumps(as_dict))).tasks[0]["store"]
        assert isinstance(rebuilt, OtfJobStore) and rebuilt.location == location
    # the rebuilt store is the campaign's embedded store (SQLite under <store>/db)
    rebuilt.connect()
    rebuilt.update({"uuid": "u1", "index": 1, "output": {"x": 1}}, key=["uuid", "index"])
    assert store.jobstore.query_one({"uuid": "u1"})["output"] == {"x": 1}
    assert rebuilt.docs_store.database_path == str(tmp_path.resolve() / "store" / "db")


def test_mongodb_credentials_stay_out_of_the_launchpad(small_config):
    config = CampaignConfig.model_validate(small_config)
    store = OtfStore("mongodb://alice:s3cret@db.example.org:27017/otf")
    location = store_location(store)
    assert location == "mongodb://db.example.org:27017/otf"
    workflow = campaign_workflow(campaign_flow(config, location), location, config.name)
    text = json.dumps(workflow.to_dict(), default=str)
    assert "s3cret" not in text and "alice" not in text
    assert "mongodb://db.example.org:27017/otf" in text


def test_memory_store_is_refused():
    with pytest.raises(InputError, match="one process"):
        store_location(OtfStore("memory://x"))


def test_campaign_runs_with_one_worker_per_kind(tmp_path, monkeypatch, small_config, launchpad):
    """Every firework, including those the decide jobs add, runs only on a worker of its category."""
    config = CampaignConfig.model_validate(small_config)
    store = OtfStore(str(tmp_path / "store"))
    result = submit_campaign(config, store, launchpad)
    assert result["n_fireworks"] == 5
    with pytest.raises(InputError, match="already exists"):
        submit_campaign(config, store, launchpad)
    with pytest.raises(InputError, match="live workflow"):
        submit_campaign(config, store, launchpad, resume=True)

    workers = {kind: FWorker(name=f"otf-{kind}", category=expected_spec(kind)["_category"]) for kind in KINDS}
    (tmp_path / "launches").mkdir()
    monkeypatch.chdir(tmp_path / "launches")
    # only the initial reference MD is ready: md, fit and light workers find nothing
    for kind in ("md", "fit", "light"):
        assert not launch_rocket(launchpad, workers[kind], strm_lvl="ERROR")
    ran = []
    for _ in range(40):
        ready = launchpad.fireworks.find_one({"state": "READY"}, {"fw_id": 1, "spec.otf_kind": 1})
        if ready is None:
            break
        kind = ready["spec"]["otf_kind"]
        assert launch_rocket(launchpad, workers[kind], strm_lvl="ERROR")
        ran.append(kind)
    assert set(ran) == set(KINDS)

    doc = store.require_campaign(config.name)
    assert doc.status == "completed" and doc.step == 60
    checks, models = store.checks(config.name), store.models(config.name)
    failed = [c for c in checks if not c.passed]
    assert len(checks) >= 2 and failed, "expected a failed check (fmax tolerance 0.3 eV/A) and its refit"
    assert len(models) == 1 + len(failed) and all(c.new_model_id for c in failed)
    step, interval = config.num_initial_steps, config.check_interval
    for check in checks:  # the iterations the decide jobs added followed the schedule to the end
        assert check.step == step + min(interval, 60 - step)
        step, interval = check.step, check.new_interval
    frame_ids = [f.frame_id for f in store.frames_of(config.name)]
    assert len(frame_ids) == len(set(frame_ids)) == config.num_initial_steps + 1 + len(checks)

    fws = {fw["fw_id"]: fw for fw in launchpad.fireworks.find({}, {"fw_id": 1, "name": 1, "state": 1, "spec": 1})}
    # at least: initial MD, first fit, three per iteration, the refits, finish
    assert len(fws) == len(ran) >= 2 + 3 * len(checks) + len(failed) + 1
    assert all(fw["state"] == "COMPLETED" for fw in fws.values())
    for launch in launchpad.launches.find({}):
        fw = fws[launch["fw_id"]]
        kind = kind_of(fw["name"])
        assert spec_of(fw["spec"]) == expected_spec(kind), fw["name"]
        assert launch["fworker"]["name"] == f"otf-{kind}" and launch["state"] == "COMPLETED"


def test_inline_light_jobs_run_in_the_launch_before_them(tmp_path, monkeypatch, small_config, launchpad):
    """execution.light.inline: no light firework at all, every decide (and validate, finish) runs as a task of
    the firework before it, in that launch, on that worker; the campaign is the same as with a light worker."""
    small_config["execution"] = {**EXECUTION, "light": {"inline": True}}
    config = CampaignConfig.model_validate(small_config)
    store = OtfStore(str(tmp_path / "store"))
    result = submit_campaign(config, store, launchpad)
    rows = {row["name"]: row for row in result["fireworks"]}
    assert sorted(rows) == ["first fit", "initial reference MD", "ml-md 5->35", "reference check 35 + decide 35"]
    assert rows["reference check 35 + decide 35"]["inline"] == ["decide 35"]
    assert rows["reference check 35 + decide 35"]["category"] == "dft"

    # no light worker: dft, md and fit workers run everything, the fireworks the decide jobs add too
    workers = {kind: FWorker(name=f"otf-{kind}", category=expected_spec(kind)["_category"]) for kind in KINDS}
    (tmp_path / "launches").mkdir()
    monkeypatch.chdir(tmp_path / "launches")
    by_category = {worker.category: worker for worker in workers.values()}
    ran = []
    for _ in range(40):
        ready = launchpad.fireworks.find_one({"state": "READY"}, {"spec._category": 1})
        if ready is None:
            break
        category = ready["spec"]["_category"]
        assert category != "light"
        assert launch_rocket(launchpad, by_category[category], strm_lvl="ERROR")
        ran.append(category)
    assert not launch_rocket(launchpad, workers["light"], strm_lvl="ERROR")

    doc = store.require_campaign(config.name)
    assert doc.status == "completed" and doc.step == 60
    checks, models = store.checks(config.name), store.models(config.name)
    failed = [c for c in checks if not c.passed]
    assert len(checks) >= 2 and failed and len(models) == 1 + len(failed)
    step, interval = config.num_initial_steps, config.check_interval
    for check in checks:  # the decide jobs ran (inline) and followed the schedule to the end
        assert check.step == step + min(interval, 60 - step)
        step, interval = check.step, check.new_interval

    fws = list(launchpad.fireworks.find({}, {"fw_id": 1, "name": 1, "state": 1, "spec": 1}))
    assert all(fw["state"] == "COMPLETED" for fw in fws) and len(fws) == len(ran)
    assert not [fw["name"] for fw in fws if fw["spec"]["_category"] == "light"]
    by_name = {fw["name"]: fw for fw in fws}
    for check in checks:  # the check's firework ran check then decide, as two tasks of one launch
        fw = by_name[f"reference check {check.step} + decide {check.step}"]
        assert [t["job"]["name"] for t in fw["spec"]["_tasks"]] == [f"reference check {check.step}",
                                                                     f"decide {check.step}"]
        assert fw["spec"]["_category"] == "dft" and fw["spec"]["_queueadapter"] == EXECUTION["dft"]["queue"]
        assert all(t["_fw_name"] == "{{otf_flows.managers.fireworks.InlineJobFiretask}}" for t in fw["spec"]["_tasks"])
    for check in failed:  # validate after the refit ran in the fit's firework (validation.every: refit)
        fit = next(fw for fw in fws if fw["name"].startswith(f"refit after check {check.step}"))
        assert fit["spec"]["otf_inline"] == [f"validate after check {check.step}"]
        assert fit["spec"]["_category"] == "bigmem"
    # the final validate + finish, emitted by the last decide without a job before them, ran as one firework
    # on the worker of the firework that emitted them (the last check's: dft)
    final = by_name["validate final model + finish campaign"]
    assert final["spec"]["_category"] == "dft" and final["spec"]["otf_inline"] == ["finish campaign"]
    assert len(launchpad.launches.find({}).distinct("launch_id")) == len(fws)
    for launch in launchpad.launches.find({}):
        assert launch["state"] == "COMPLETED" and launch["fworker"]["name"] != "otf-light"


def test_inline_host_is_the_parent_all_others_precede(small_config):
    """The decide job depends on the ML-MD segment and on the check; it joins the check, which follows the segment.
    A light job whose parents are unordered keeps its own firework."""

    @job
    def work(*args):
        return 1

    a, b = work(), work()
    c = work(a.output)
    light = work(a.output, c.output)
    loose = work(a.output, b.output)
    for j in (light, loose):
        j.metadata["otf_kind"] = "light"
    for j, name in ((a, "a"), (b, "b"), (c, "c"), (light, "light"), (loose, "loose")):
        j.name = name
    workflow = inline_workflow(Flow([a, b, c, light, loose]), OtfJobStore("/tmp/otf-unused"), {"_category": "x"})
    names = {fw.name: fw for fw in workflow.fws}
    assert sorted(names) == ["a", "b", "c + light", "loose"]
    assert names["loose"].spec["_category"] == "x"  # no host: the emitter's routing
    assert {p.name for p in names["loose"].parents} == {"a", "b"}
    assert {p.name for p in names["c + light"].parents} == {"a"}


def test_otf_submit_cli(tmp_path, small_config):
    """The command as a user runs it, against FireWorks' file-backed mongomock LaunchPad."""
    pytest.importorskip("mongomock_persistence", reason="the file-backed LaunchPad needs fireworks[mongomock]")
    db = tmp_path / "launchpad-db.json"
    db.write_text("{}")
    env = {"MONGOMOCK_SERVERSTORE_FILE": str(db)}
    lp_file = tmp_path / "my_launchpad.yaml"
    lp_file.write_text(yaml.safe_dump({"host": "localhost", "name": "otf_cli", "strm_lvl": "INFO"}))
    config = tmp_path / "campaign.yaml"
    config.write_text(yaml.safe_dump(small_config))
    store = tmp_path / "store"
    args = ["submit", str(config), "--launchpad", str(lp_file), "--store", str(store)]

    missing = run_otf("submit", str(config), "--launchpad", str(tmp_path / "nope.yaml"), env=env)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    fresh = run_otf(*args, env=env)
    assert fresh.returncode == 2 and "lpad -l" in fresh.stderr and "reset" in fresh.stderr
    assert not store.exists()

    reset = f"from fireworks import LaunchPad; LaunchPad.from_file({str(lp_file)!r}).reset('', require_password=False)"
    assert run_otf_python(reset, env).returncode == 0
    result = run_otf(*args, "--json", env=env)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)  # stdout holds the JSON only (FireWorks' log lines go to stderr)
    assert data["campaign"] == "cu-emt" and data["n_fireworks"] == 5
    assert {(row["name"], row["category"]) for row in data["fireworks"]} >= {
        ("initial reference MD", "dft"), ("first fit", "bigmem"), ("decide 35", "light")}
    stored = json.loads(db.read_text())["otf_cli"]["fireworks"]["documents"]
    assert sorted(doc["fw_id"] for _key, doc in stored) == sorted(row["fw_id"] for row in data["fireworks"])

    again = run_otf(*args, env=env)
    assert again.returncode == 2 and "already exists" in again.stderr
    resume = run_otf(*args, "--resume", env=env)
    assert resume.returncode == 2 and "live workflow" in resume.stderr


def run_otf_python(code: str, env: dict):
    """``python -c code`` in a subprocess with ``env`` added."""
    return subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True,
                          check=False, timeout=120)


def test_walkers_run_as_independent_chains(tmp_path, monkeypatch, launchpad):
    """A campaign with two walkers under FireWorks: after the first fit each walker's chain is its own line of
    fireworks (both walkers' jobs ready at once, for different workers); one lineage, every label once."""
    from test_walkers import _assert_walkers_consistent, _tiny

    data = _tiny("fw-walkers", steps=12)
    config = CampaignConfig.model_validate(data)
    store = OtfStore(str(tmp_path / "store"))
    submit_campaign(config, store, launchpad)
    workers = {kind: FWorker(name=f"otf-{kind}", category=kind) for kind in KINDS}
    (tmp_path / "launches").mkdir()
    monkeypatch.chdir(tmp_path / "launches")
    both_ready = False
    for _ in range(80):
        ready = list(launchpad.fireworks.find({"state": "READY"}, {"fw_id": 1, "name": 1, "spec.otf_kind": 1}))
        if not ready:
            break
        walkers = {name for fw in ready for name in ("cold", "hot") if f" {name} " in f" {fw['name']} "}
        both_ready |= walkers == {"cold", "hot"}
        assert launch_rocket(launchpad, workers[ready[0]["spec"]["otf_kind"]], strm_lvl="ERROR")
    assert both_ready, "the walkers' chains never had jobs ready at the same time"
    _assert_walkers_consistent(store, "fw-walkers", config_from_dict(data))
