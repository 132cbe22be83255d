"""What ``--resume`` may change (the paper's restart, Sec. V), and campaigns started from a stored model."""

from __future__ import annotations

import copy
import uuid
from datetime import datetime

import pytest
from conftest import run_otf, store_snapshot

from otf_flows.campaign import config_from_dict
from otf_flows.errors import InputError
from otf_flows.flows.lifecycle import prepare_campaign, resume_changes, resumed_config, stored_config
from otf_flows.schemas.documents import CampaignDoc
from otf_flows.store import OtfStore


def _with(data: dict, key: str, value) -> dict:
    data = copy.deepcopy(data)
    *parents, last = key.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return data


ACCEPTED = [
    ("can_update", False),
    ("tolerances.ediff", 0.001),
    ("tolerances.frmse", 0.1),
    ("check_interval", 20),
    ("adaptive_method_parameters.n_max", 100),
    ("md.total_steps", 5000),
    ("md.trajectory_interval", 0),
    ("md.guard.min_distance_A", 0.8),
    ("execution.fit.omp_threads", 4),
    ("execution.dft.queue", {"nodes": 2}),
    ("reference.retries", 3),
    ("model.num_threads", 2),
    ("validation.checks", False),
    ("rollback_on_fail", True),
    ("compat", None),
    ("uncertainty.every", 10),
    ("refit.train_on", "failed"),
    ("store", "/somewhere/else"),
]

REFUSED = [
    ("name", "other"),
    ("structure.a", 3.7),
    ("md.temperature_K", 900.0),
    ("md.ensemble", "nve"),
    ("md.timestep_fs", 1.0),
    ("md.seed", 8),
    ("reference.calculator", "ase.calculators.lj.LennardJones"),
    ("refit.descriptor_str", "distance_2b cutoff=4.0 n_sparse=10 covariance_type=ard_se delta=1.0 theta_uniform=1.0"),
    ("refit.default_sigma", "0.01 0.1 0.1 0.0"),
    ("model.preset", "l-si"),
    ("num_initial_steps", 3),
]


@pytest.mark.parametrize(("key", "value"), ACCEPTED, ids=[k for k, _ in ACCEPTED])
def test_resume_accepts_a_change_of(cu_config, key, value):
    stored = config_from_dict(cu_config)
    # as --resume applies them: the keys the YAML gives over the stored settings
    changed = resume_changes(stored, resumed_config(stored, config_from_dict(_with(cu_config, key, value))))
    if key == "store":
        assert changed == {}
    elif key == "execution.dft.queue":
        assert changed == {"execution.dft.queue.nodes": [None, 2]}
    else:
        assert list(changed) == [key] and changed[key][1] == value


@pytest.mark.parametrize(("key", "value"), REFUSED, ids=[k for k, _ in REFUSED])
def test_resume_refuses_a_change_of(cu_config, key, value):
    stored = config_from_dict(cu_config)
    with pytest.raises(InputError, match=rf"^--resume: {key.replace('.', '[.]')} ") as err:
        resume_changes(stored, config_from_dict(_with(cu_config, key, value)))
    message = str(err.value)
    assert "\n" not in message and repr(value) in message


def test_refusal_names_the_first_refused_key_with_both_values(cu_config):
    data = _with(_with(cu_config, "tolerances.ediff", 0.001), "md.temperature_K", 900)
    data = _with(data, "refit.default_sigma", "0.01 0.1 0.1 0.0")
    with pytest.raises(InputError) as err:
        resume_changes(config_from_dict(cu_config), config_from_dict(data))
    assert "md.temperature_K" in str(err.value) and "stored 1200.0, new 900.0" in str(err.value)
    assert "default_sigma" not in str(err.value).split(";")[0]


def test_adaptive_schedule_switched_on_is_one_change(cu_config):
    fixed = dict(cu_config, adaptive_method_parameters=None)
    changed = resume_changes(config_from_dict(fixed), config_from_dict(cu_config))
    assert changed == {"adaptive_method_parameters": [None, {"n_min": 5, "n_max": 400, "factor": 2.0, "grow_below": 1.0,
                                                            "shrink_above": 1.0}]}


def _registered(cu_config, **fields) -> tuple[OtfStore, CampaignDoc]:
    """A campaign document as a run would leave it mid-way (no jobs run)."""
    st = OtfStore(f"memory://{uuid.uuid4().hex}")
    config = config_from_dict(cu_config)
    doc = CampaignDoc(name=config.name, config=stored_config(config), total_steps=config.md.total_steps,
                      status="stopped", **fields)
    st.put_campaign(doc)
    return st, doc


def test_schedule_change_moves_the_next_interval(cu_config):
    st, _ = _registered(cu_config, step=300, state_id="cu-emt:state:300:cu-emt-v2", model_id="cu-emt-v2",
                        interval=160)
    prepare_campaign(config_from_dict(_with(cu_config, "adaptive_method_parameters.n_max", 100)), st, resume=True)
    doc = st.require_campaign("cu-emt")
    assert doc.interval == 100 and doc.status == "running"
    assert doc.changes[0]["step"] == 300
    assert doc.changes[0]["changed"] == {"adaptive_method_parameters.n_max": [400, 100]}
    prepare_campaign(config_from_dict(_with(cu_config, "check_interval", 20)), st, resume=True)
    doc = st.require_campaign("cu-emt")
    assert doc.interval == 20 and doc.config["check_interval"] == 20
    assert doc.config["adaptive_method_parameters"]["n_max"] == 400  # this YAML has the old range again
    assert [list(c["changed"]) for c in doc.changes] == [
        ["adaptive_method_parameters.n_max"], ["check_interval", "adaptive_method_parameters.n_max"]
    ]


def test_unchanged_resume_records_nothing(cu_config):
    st, _ = _registered(cu_config, step=300, state_id="cu-emt:state:300:cu-emt-v2", model_id="cu-emt-v2",
                        interval=160)
    prepare_campaign(config_from_dict(cu_config), st, resume=True)
    doc = st.require_campaign("cu-emt")
    assert doc.changes == [] and doc.interval == 160 and doc.status == "running"


_snapshot = store_snapshot


def test_resume_with_new_tolerances_and_refits_off(tmp_path, cu_config, write_config):
    """Sec. V: a campaign restarted for more steps with refitting switched off and new tolerances."""
    cu_config["md"]["total_steps"] = 40
    store = str(tmp_path / "store")
    result = run_otf("run", str(write_config(cu_config)), "--store", store)
    assert result.returncode == 0, result.stderr[-2000:]
    st = OtfStore(store)
    checks_before = st.checks("cu-emt")
    n_models = len(st.models("cu-emt"))
    st.close()

    cu_config["md"]["total_steps"] = 80
    cu_config["can_update"] = False
    cu_config["tolerances"] = {"ediff": 1e-6, "fmax": 1e-6}  # every later check fails
    path = write_config(cu_config)
    result = run_otf("run", str(path), "--resume", "--store", store)
    assert result.returncode == 0, result.stderr[-2000:]

    st = OtfStore(store)
    doc = st.require_campaign("cu-emt")
    assert doc.status == "completed" and doc.step == 80 and doc.total_steps == 80
    [change] = doc.changes
    assert change["step"] == 40 and datetime.fromisoformat(change["at"]).tzinfo is not None
    assert change["changed"] == {
        "md.total_steps": [40, 80], "can_update": [True, False],
        "tolerances.ediff": [0.002, 1e-6], "tolerances.fmax": [0.3, 1e-6],
    }
    assert doc.config["can_update"] is False and doc.config["tolerances"]["ediff"] == 1e-6
    checks = st.checks("cu-emt")
    assert [c.check_id for c in checks if c.step <= 40] == [c.check_id for c in checks_before]
    later = [c for c in checks if c.step > 40]
    assert later and all(not c.passed and not c.refit and c.new_model_id is None for c in later)
    assert len(st.models("cu-emt")) == n_models
    st.close()

    # the same YAML again: nothing new to record
    result = run_otf("run", str(path), "--resume", "--store", store)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(OtfStore(store).require_campaign("cu-emt").changes) == 1


def test_resume_with_new_temperature_is_refused_and_writes_nothing(tmp_path, cu_config, write_config):
    cu_config["md"]["total_steps"] = 20
    store_dir = tmp_path / "store"
    result = run_otf("run", str(write_config(cu_config)), "--store", str(store_dir))
    assert result.returncode == 0, result.stderr[-2000:]
    before = _snapshot(store_dir)

    cu_config["md"]["temperature_K"] = 900
    cu_config["md"]["total_steps"] = 60  # allowed, but the whole resume is refused
    result = run_otf("run", str(write_config(cu_config)), "--resume", "--store", str(store_dir))
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "md.temperature_K" in lines[0] and "1200.0" in lines[0] and "900.0" in lines[0]
    assert _snapshot(store_dir) == before


def test_initial_model_alone_passes_its_training_frames_on(tmp_path, cu_config):
    from otf_flows.managers.local import run_campaign

    st = OtfStore(str(tmp_path / "store"))
    source = config_from_dict(_with(dict(cu_config, name="parent"), "md.total_steps", 20))
    assert run_campaign(source, st).status == "completed"
    parent = st.models("parent")[-1]
    assert parent.n_training_frames > 1

    child = dict(cu_config, name="child", num_initial_steps=0, can_update=True, model={"initial_model": parent.model_id})
    child["tolerances"] = {"ediff": 1e-6}  # the first check fails
    child["md"] = dict(cu_config["md"], total_steps=10)
    assert run_campaign(config_from_dict(child), st).status == "completed"
    [check] = st.checks("child")
    assert check.model_id == parent.model_id and not check.passed and check.new_model_id == "child-v1"
    first = st.get_model("child-v1")
    own = [f for f in st.get_frames(first.training_frame_ids) if f.campaign == "child"]
    assert [f.frame_id for f in own] == [check.frame_id]
    assert first.n_training_frames == parent.n_training_frames + len(own) == len(set(first.training_frame_ids))
    assert set(first.training_frame_ids) >= set(parent.training_frame_ids)
    # run again under another name with the parent also in previous_data: the same frames, once
    child.update(name="child2")
    child["refit"] = dict(cu_config["refit"], previous_data=[f"model:{parent.model_id}"])
    assert run_campaign(config_from_dict(child), st).status == "completed"
    again = st.get_model("child2-v1")
    assert again.n_training_frames == parent.n_training_frames + 1 == len(set(again.training_frame_ids))
    st.close()


def test_a_mace_campaign_resumes_from_its_stored_settings(tmp_path, cu_config):
    """The stored settings hold every key, the GAP-only refit keys at their defaults too: a MACE campaign's
    validate again, and --resume finds nothing changed."""
    data = copy.deepcopy(cu_config)
    data["model"] = {"backend": "mace", "committee": 2}
    data["refit"] = {}
    config = config_from_dict(data)
    store = OtfStore(str(tmp_path / "store"))
    prepare_campaign(config, store)
    prepare_campaign(config_from_dict(copy.deepcopy(data)), store, resume=True)
    assert store.require_campaign(config.name).changes == []
