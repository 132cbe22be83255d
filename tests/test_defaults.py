"""Defaults a user can trust (issue 23): the measured-best settings when the YAML says nothing, hybrid-md's
behaviour with ``compat: hybrid-md``, and stored campaigns resuming with the settings they started with.

The end-to-end runs are EMT Cu campaigns of 8 atoms (the cheapest GAP): a few seconds of work each.
"""

from __future__ import annotations

import copy

import pytest
import yaml
from conftest import run_otf

from otf_flows.campaign import config_from_dict
from otf_flows.flows.lifecycle import prepare_campaign
from otf_flows.schedule import next_interval
from otf_flows.schemas.documents import CampaignDoc
from otf_flows.store import OtfStore

TUNING = ("rollback_on_fail", "compat")


def _plain(name: str = "plain", steps: int = 40, **changes) -> dict:
    """A campaign with no tuning key: system, MD, reference, tolerances and schedule range only."""
    data = {
        "name": name,
        "structure": {"builder": "bulk", "element": "Cu", "crystalstructure": "fcc", "a": 3.61, "cubic": True,
                      "repeat": [1, 1, 2]},
        "md": {"temperature_K": 1200, "timestep_fs": 2.0, "total_steps": steps, "seed": 2, "trajectory_interval": 4},
        "reference": {"engine": "ase", "calculator": "ase.calculators.emt.EMT"},
        "model": {"preset": "default"},
        "can_update": True,
        "num_initial_steps": 2,
        "check_interval": 4,
        "adaptive_method_parameters": {"n_min": 2, "n_max": 16, "factor": 2},
        "tolerances": {"ediff": 0.002, "fmax": 0.15},
        "refit": {"default_sigma": "0.001 0.05 0.05 0.0"},
    }
    data.update(changes)
    return data


def test_a_plain_campaign_gets_the_measured_best_settings():
    config = config_from_dict(_plain())
    assert config.compat is None
    assert config.rollback_on_fail is True
    assert config.refit.every_new_labels == 1
    assert config.adaptive_method_parameters.grow_below == 0.7
    u = config.uncertainty
    assert (u.enabled, u.check, u.calibrate_factor, u.threshold, u.every) == (True, "most_uncertain", 1.2, None, 2)
    assert config_from_dict({k: v for k, v in _plain().items() if k != "model"}).model.preset == "fast"


def test_the_uncertainty_default_follows_the_model():
    """On for GAP and a MACE committee; off (not an error) for a single MACE model; a threshold replaces the
    default calibrate_factor; enabled: false is kept."""
    assert config_from_dict(_plain(model={"backend": "mace"}, refit={})).uncertainty.enabled is False
    assert config_from_dict(_plain(model={"backend": "mace", "committee": 2}, refit={})).uncertainty.enabled is True
    u = config_from_dict(_plain(uncertainty={"threshold": 0.05})).uncertainty
    assert (u.enabled, u.threshold, u.calibrate_factor) == (True, 0.05, None)
    assert config_from_dict(_plain(uncertainty={"enabled": False})).uncertainty.enabled is False


def test_compat_hybrid_md_where_the_yaml_says_nothing_and_the_yaml_wins():
    config = config_from_dict(_plain(compat="hybrid-md"))
    assert config.rollback_on_fail is False and config.refit.every_new_labels is None
    assert config.adaptive_method_parameters.grow_below == 1.0 and config.uncertainty.enabled is False
    given = config_from_dict(_plain(compat="hybrid-md", rollback_on_fail=True,
                                    refit={"every_new_labels": 3},
                                    adaptive_method_parameters={"n_min": 2, "n_max": 16, "grow_below": 0.5}))
    assert given.rollback_on_fail is True and given.refit.every_new_labels == 3
    assert given.adaptive_method_parameters.grow_below == 0.5
    fixed = config_from_dict({k: v for k, v in _plain(compat="hybrid-md").items()
                              if k != "adaptive_method_parameters"})
    assert fixed.adaptive_method_parameters is None  # hybrid-md's fixed interval stays fixed


def test_bad_compat_value_is_one_line_with_exit_2(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_plain(compat="vasp")))
    result = run_otf("run", str(path), "--store", str(tmp_path / "store"))
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert "compat" in line and "hybrid-md" in line and "vasp" in line
    assert not (tmp_path / "store").exists()


def test_compat_campaign_follows_hybrid_md_rule(tmp_path):
    """Under compat: hybrid-md every check's next interval is hybrid-md's rule, a refit follows exactly the
    failed checks, nothing rolls back and nothing ends a segment early: each segment starts where the
    previous check's segment ended."""
    data = _plain("hmd", steps=60, compat="hybrid-md")
    path = tmp_path / "hmd.yaml"
    path.write_text(yaml.safe_dump(data))
    result = run_otf("run", str(path), "--store", str(tmp_path / "store"))
    assert result.returncode == 0, result.stderr[-3000:]
    st = OtfStore(str(tmp_path / "store"))
    checks = sorted(st.checks("hmd"), key=lambda c: c.step)
    assert len(checks) >= 4 and any(c.passed for c in checks) and any(not c.passed for c in checks)
    p = config_from_dict(data).adaptive_method_parameters
    interval, step = data["check_interval"], data["num_initial_steps"]
    for c in checks:
        assert (c.step, c.interval) == (min(step + interval, 60), min(interval, 60 - step)), c.check_id
        assert c.trigger == "interval" and c.rolled_back_to is None and c.frame_step is None
        assert c.refit is (not c.passed), c.check_id
        interval = next_interval(interval, c.passed, p.n_min, p.n_max, p.factor)
        assert c.new_interval == interval, c.check_id
        step = c.step
    assert len(st.models("hmd")) == 1 + sum(not c.passed for c in checks)


def test_default_campaign_refits_on_every_label_and_rolls_back(tmp_path):
    """The same system with the defaults: a refit after every check, passed or failed; a failed check rolls back
    to its segment's start; the uncertainty trigger is on (a check label may be a frame before the segment's end)."""
    data = _plain("dflt", steps=60)
    path = tmp_path / "dflt.yaml"
    path.write_text(yaml.safe_dump(data))
    result = run_otf("run", str(path), "--store", str(tmp_path / "store"))
    assert result.returncode == 0, result.stderr[-3000:]
    st = OtfStore(str(tmp_path / "store"))
    checks = st.checks("dflt")
    assert st.require_campaign("dflt").config["uncertainty"]["enabled"] is True
    assert checks and all(c.refit for c in checks)
    failed = [c for c in checks if not c.passed]
    assert failed and all(c.rolled_back_to == c.step - c.interval for c in failed)
    assert len(st.models("dflt")) == 1 + len(checks)


def test_a_stored_campaign_resumes_with_the_settings_it_started_with(tmp_path):
    """A campaign stored with hybrid-md's settings (as every campaign before these defaults was) and resumed
    with a YAML that does not name them keeps them; keys the YAML gives change as the resume rules allow."""
    st = OtfStore(str(tmp_path / "store"))
    before = config_from_dict(_plain("old", compat="hybrid-md")).model_dump(mode="json")
    before.pop("compat")  # what an older version stored: no compat key, its defaults written out
    st.put_campaign(CampaignDoc(name="old", config=before, total_steps=40, status="stopped", step=20,
                                state_id="old:state:20", model_id="old-v1", interval=8))
    prepare_campaign(config_from_dict(_plain("old")), st, resume=True)
    doc = st.require_campaign("old")
    assert doc.changes == [] and doc.config == before
    more = copy.deepcopy(_plain("old", steps=80))
    more["tolerances"] = {"ediff": 0.003, "fmax": 0.15}
    prepare_campaign(config_from_dict(more), st, resume=True)
    doc = st.require_campaign("old")
    assert [c["changed"] for c in doc.changes] == [{"md.total_steps": [40, 80], "tolerances.ediff": [0.002, 0.003]}]
    assert doc.config["rollback_on_fail"] is False and doc.config["uncertainty"]["enabled"] is False
    # the YAML names a default: that is a change, recorded as one
    prepare_campaign(config_from_dict({**more, "rollback_on_fail": True}), st, resume=True)
    assert st.require_campaign("old").changes[-1]["changed"] == {"rollback_on_fail": [False, True]}


@pytest.mark.parametrize("key", TUNING)
def test_every_tuning_key_is_documented_with_what_it_costs(key):
    from otf_flows.campaign import CampaignConfig

    text = CampaignConfig.model_fields[key].description
    assert "hybrid-md" in text and ("benchmarks/README.md" in text or key == "compat")


def test_a_segment_is_rerun_at_most_three_times(tmp_path):
    """Tolerances the model cannot reach: every check fails, and with the default rollback each segment is
    re-run with the refitted model at most 3 times; then the campaign goes on from the failed frame (as
    hybrid-md does) and completes instead of spending DFT calls for ever."""
    from otf_flows.jobs.decide import MAX_RERUNS

    data = _plain("tight", steps=12, tolerances={"ediff": 1e-7, "fmax": 1e-5}, uncertainty={"enabled": False})
    path = tmp_path / "tight.yaml"
    path.write_text(yaml.safe_dump(data))
    result = run_otf("run", str(path), "--store", str(tmp_path / "store"))
    assert result.returncode == 0, result.stderr[-3000:]
    st = OtfStore(str(tmp_path / "store"))
    assert st.require_campaign("tight").status == "completed"
    checks = st.checks("tight")
    assert checks and not any(c.passed for c in checks)
    reruns: dict[str, int] = {}
    for c in checks:
        if c.rolled_back_state_id is not None:
            reruns[c.rolled_back_state_id] = reruns.get(c.rolled_back_state_id, 0) + 1
    assert reruns and max(reruns.values()) == MAX_RERUNS
    assert sum(c.rolled_back_to is None for c in checks) >= 1  # went on from a failed frame


def _keys(data, prefix=""):
    """Every key path of a nested mapping."""
    out = set()
    for key, value in data.items():
        out.add(prefix + key)
        if isinstance(value, dict):
            out |= _keys(value, f"{prefix}{key}.")
    return out


@pytest.mark.parametrize("changes", [
    {},
    {"compat": "hybrid-md"},
    {"uncertainty": {"threshold": 0.05}},
    {"model": {"backend": "mace", "committee": 2}, "refit": {}},
], ids=["defaults", "compat", "threshold", "mace"])
def test_a_jobs_settings_hold_every_key_so_a_newer_default_cannot_change_a_queued_job(changes):
    """Jobs carry the campaign's settings (jobflow serialises them with ``as_dict``, into a LaunchPad too): with
    every key at the value it resolved to, and the same settings when read back."""
    from otf_flows.campaign import CampaignConfig

    config = config_from_dict(_plain(**changes))
    serialised = config.as_dict()
    assert _keys(config.model_dump(mode="json")) <= _keys(serialised)
    assert "every_new_labels" in serialised["refit"] and "grow_below" in serialised["adaptive_method_parameters"]
    again = CampaignConfig.from_dict(serialised)
    assert again.model_dump() == config.model_dump()
