"""A guard trip that the reference agrees with is a hot state, not a bad model (issue 23, item 3).

The case: an H2 molecule in a Cu divacancy (configs/cu-h2-divacancy-emt.yaml). EMT dissociates
the molecule; the heat it releases takes the reference MD itself to ~1260-1560 K under the 500 K
thermostat. The tests tighten the guard's temperature limit to 1.5 x 500 K + 500 K = 1250 K so
that the state trips it within a few steps of the first ML-MD segment, with a model the reference
agrees with: a real, short run that forces the trips (the shipped 300 steps with the default
limit of 2000 K do not trip on this machine's runs, or trip once with a bad model).
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta

import pytest
import yaml
from ase.build import bulk
from ase.calculators.emt import EMT
from conftest import CONFIGS, run_otf

from otf_flows.campaign import GuardSettings, config_from_dict, load_config
from otf_flows.errors import OtfError
from otf_flows.jobs.decide import DecideMaker
from otf_flows.jobs.hot_state import agrees, hot_state_message, repeated_hot_trip, stop_if_hot_again, verified_state
from otf_flows.jobs.md import _stopped
from otf_flows.md.guard import guard_limit, make_guard
from otf_flows.schemas.documents import CampaignDoc, CheckDoc, FrameDoc, ModelDoc, StateDoc
from otf_flows.store import OtfStore
from otf_flows.structures import build_structure

NAME = "cu-h2-divacancy-emt"


def _divacancy(tmp_path, factor: float, total_steps: int = 40, **changes) -> dict:
    """The shipped divacancy case with the guard's temperature factor ``factor``; every setting the tests
    rely on is set here, whatever the campaign defaults are."""
    data = yaml.safe_load((CONFIGS / "cu-h2-divacancy-emt.yaml").read_text())
    data["structure"]["file"] = str(CONFIGS / data["structure"]["file"])
    data["md"].update(total_steps=total_steps, seed=3, temperature_K=500, timestep_fs=0.5)
    data["md"]["guard"] = {"max_temperature_factor": factor, "max_consecutive_trips": 8}
    data.update(can_update=True, rollback_on_fail=False, num_initial_steps=5, check_interval=10,
                adaptive_method_parameters={"n_min": 5, "n_max": 100, "factor": 2, "grow_below": 1.0,
                                            "shrink_above": 1.0},
                tolerances={"ediff": 0.005, "fmax": 0.5, "frmse": None, "vmax": None},
                uncertainty={"enabled": False})
    data["refit"].update(every_new_labels=None, train_on="all")
    data.update(changes)
    return data


def _write(tmp_path, data: dict, name: str = "campaign.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def _failure(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("otf:")]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def test_shipped_divacancy_config_loads_with_what_the_case_needs():
    config = load_config(CONFIGS / "cu-h2-divacancy-emt.yaml")
    assert config.rollback_on_fail is False and config.can_update is True
    assert config.md.ensemble == "nvt_langevin" and config.md.temperature_K == 500 and config.md.timestep_fs == 0.5
    assert config.md.total_steps == 300 and config.reference.engine == "ase"
    assert config.tolerances.ediff == 0.005 and config.tolerances.fmax == 0.5
    atoms = build_structure(config.structure)
    assert atoms.get_chemical_formula() == "H2Cu30"
    assert atoms.get_distance(30, 31, mic=True) == pytest.approx(0.74, abs=1e-6)
    # the molecule sits at the divacancy's centre: 2.24 A from its nearest Cu, where a Cu atom was
    assert min(atoms.get_distances(30, range(30), mic=True)) == pytest.approx(2.24, abs=0.01)


# ----------------------------------------------------------------- real runs


@pytest.mark.timeout(900)
def test_hot_state_stops_after_two_trips_without_refit_then_resumes_with_a_looser_guard(tmp_path):
    data = _divacancy(tmp_path, factor=1.5)
    path = _write(tmp_path, data)
    store = tmp_path / "store"
    result = run_otf("run", str(path), "--store", str(store), cwd=tmp_path, timeout=900)
    assert result.returncode == 1, result.stderr[-3000:]
    line = _failure(result.stderr)
    assert "the state is hot, not the model bad" in line
    assert "Raise md.guard.max_temperature_factor (now 1.5)" in line and "--resume" in line
    st = OtfStore(str(store))
    checks = sorted(st.checks(NAME), key=lambda c: c.created_at)
    trips = [c for c in checks if c.kind == "guard"]
    assert 1 <= len(trips) <= 2, [(c.step, c.guard_reason) for c in checks]
    assert all(c.guard_limit == "max_temperature_factor" for c in trips)
    hot = [c for c in trips if c.reference_agreed]
    assert hot and hot[-1] is trips[-1]  # the stop is a hot-state trip's
    for c in hot:  # no refit follows a trip the reference agreed with
        assert c.refit is False and c.new_model_id is None and c.passed is False
        assert c.ediff < 0.005 and c.fmax < 0.5  # the reference agreed within the tolerances
    for c in trips:
        if not c.reference_agreed:  # a bad model's trip keeps today's behaviour: refit
            assert c.reference_agreed is False and c.refit and c.new_model_id is not None
    # one model per refit (+ the first fit): the hot trip added none
    assert len(st.models(NAME)) == 1 + sum(c.refit for c in checks)
    doc = st.require_campaign(NAME)
    assert doc.status == "failed" and "state is hot" in doc.message
    assert doc.state_id == hot[-1].rolled_back_state_id  # resumable from the verified state
    assert doc.step == hot[-1].rolled_back_to

    # --resume with the guard loosened continues (the stopped segment runs again under the new limit)
    data["md"]["guard"]["max_temperature_factor"] = 3.0
    _write(tmp_path, data)
    result = run_otf("run", str(path), "--store", str(store), "--resume", cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    st = OtfStore(str(store))
    assert st.require_campaign(NAME).status == "completed"
    after = [c for c in st.checks(NAME) if c.created_at > checks[-1].created_at]
    assert after and max(c.step for c in after) == 40
    assert all(c.kind == "check" for c in after)  # the state that tripped 1250 K does not trip 2000 K


@pytest.mark.timeout(900)
def test_hot_state_of_a_walker_stops_naming_the_walker(tmp_path):
    data = _divacancy(tmp_path, factor=3.0, total_steps=30, name="h2-walkers")
    data["walkers"] = [{"name": "hot", "md": {"guard": {"max_temperature_factor": 1.5}}},
                       {"name": "calm", "md": {"seed": 4}}]
    data["execution"] = {"local": {"workers": 1}}
    path = _write(tmp_path, data)
    result = run_otf("run", str(path), "--store", str(tmp_path / "store"), cwd=tmp_path, timeout=900)
    assert result.returncode == 1, result.stderr[-3000:]
    line = _failure(result.stderr)
    assert "walker hot: blow-up guard tripped" in line and "the state is hot, not the model bad" in line
    st = OtfStore(str(tmp_path / "store"))
    trips = [c for c in st.checks("h2-walkers") if c.kind == "guard" and c.walker == "hot"]
    assert 1 <= len(trips) <= 2
    hot = [c for c in trips if c.reference_agreed]
    assert hot and all(not c.refit and c.new_model_id is None for c in hot)
    walker = st.get_walker("h2-walkers", "hot")
    assert walker.state_id == hot[-1].rolled_back_state_id


# ----------------------------------------------------------------- the decision on a stored campaign

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _state(st, step: int, model: str | None, start: str | None, walker: str | None = None) -> StateDoc:
    track = f"c@{walker}" if walker else "c"
    doc = StateDoc(state_id=f"{track}:state:{step}:{model or 'initial'}", start_state_id=start, campaign="c",
                   walker=walker, step=step, numbers=[29], positions=[[0.0, 0.0, 0.0]], velocities=[[0.0, 0.0, 0.0]],
                   cell=[[3.0, 0, 0], [0, 3.0, 0], [0, 0, 3.0]], pbc=[True] * 3, masses=[63.5], model_id=model)
    st.put_state(doc)
    return doc


def _check(st, state: StateDoc, passed: bool, n: int, walker: str | None = None, **fields) -> CheckDoc:
    track = f"c@{walker}" if walker else "c"
    doc = CheckDoc(check_id=f"{track}:check:{state.step}:{state.model_id}", campaign="c", walker=walker,
                   step=state.step, interval=5, passed=passed, new_interval=5, refit=not passed,
                   model_id=state.model_id, frame_id=f"f{n}", created_at=T0 + timedelta(seconds=n),
                   ediff=0.001, fmax=0.3, **fields)
    st.put_check(doc)
    return doc


def _trajectory(st, walker=None):
    """initial MD to 5 → passed check at 10 → passed at 20 → FAILED at 30 (its hot state kept) → trip at 33."""
    s5 = _state(st, 5, None, None, walker)
    s10 = _state(st, 10, "c-v1", s5.state_id, walker)
    s20 = _state(st, 20, "c-v1", s10.state_id, walker)
    s30 = _state(st, 30, "c-v1", s20.state_id, walker)
    s33 = _state(st, 33, "c-v2", s30.state_id, walker)
    _check(st, s10, True, 1, walker)
    _check(st, s20, True, 2, walker)
    _check(st, s30, False, 3, walker)
    return s5, s10, s20, s30, s33


@pytest.mark.parametrize("walker", [None, "w1"])
def test_rollback_goes_back_to_the_last_state_a_passed_check_verified(tmp_path, walker):
    st = OtfStore(str(tmp_path / "store"))
    _s5, _s10, s20, s30, _ = _trajectory(st, walker)
    # the tripped segment started at 30, whose check failed: back past it to 20, not to 30
    assert verified_state(st, "c", s30, walker).state_id == s20.state_id
    assert verified_state(st, "c", s20, walker).state_id == s20.state_id  # a verified start is its own target
    # a passed check of another walker (or of the campaign's own track) verifies nothing here
    other = "w2" if walker else "w1"
    _check(st, _state(st, 30, "c-v1", s20.state_id, other), True, 9, other)
    assert verified_state(st, "c", s30, walker).state_id == s20.state_id
    # with no passed check on the way, the end of the reference-driven initial MD is the verified state
    st2 = OtfStore(str(tmp_path / "store2"))
    t5 = _state(st2, 5, None, None, walker)
    t10 = _state(st2, 10, "c-v1", t5.state_id, walker)
    _check(st2, t10, False, 1, walker)
    assert verified_state(st2, "c", t10, walker).state_id == t5.state_id


def _trip(st, n: int, step: int, target: StateDoc, limit="max_temperature_factor", agreed=True, walker=None):
    """A stored guard trip at ``step`` (model c-vN) that rolled back to ``target``."""
    track = f"c@{walker}" if walker else "c"
    doc = CheckDoc(check_id=f"{track}:check:{step}:c-v{n}", campaign="c", walker=walker, step=step, interval=3,
                   passed=False, new_interval=5, refit=not agreed, model_id=f"c-v{n}", frame_id=f"g{n}",
                   kind="guard", guard_reason=f"temperature 1300 K (> 1250 K) at step {step}", guard_limit=limit,
                   reference_agreed=agreed, rolled_back_to=target.step, rolled_back_state_id=target.state_id,
                   ediff=0.0002, fmax=0.4, created_at=T0 + timedelta(seconds=100 + n))
    st.put_check(doc)
    return doc


@pytest.mark.parametrize("walker", [None, "w1"])
def test_a_second_hot_trip_of_the_same_limit_stops_naming_the_limit(tmp_path, walker):
    st = OtfStore(str(tmp_path / "store"))
    _, _s10, s20, _, _ = _trajectory(st, walker)
    guard = GuardSettings(max_temperature_factor=1.5)
    first = _trip(st, 1, 33, s20, walker=walker)
    stop_if_hot_again(st, "c", first, guard, walker)  # the first hot trip: roll back, go on
    assert repeated_hot_trip(st, "c", first, walker) is None
    # the re-run from 20 went on through a passed check at 25, then tripped the same limit again
    s25 = _state(st, 25, "c-v2", s20.state_id, walker)
    _check(st, s25, True, 50, walker)
    second = _trip(st, 2, 28, s25, walker=walker)
    assert repeated_hot_trip(st, "c", second, walker).check_id == first.check_id
    with pytest.raises(OtfError) as err:
        stop_if_hot_again(st, "c", second, guard, walker)
    msg = str(err.value)
    assert "\n" not in msg and "the state is hot, not the model bad" in msg
    assert "Raise md.guard.max_temperature_factor (now 1.5)" in msg and "campaign stopped at step 25" in msg
    assert msg.startswith(f"walker {walker}: ") if walker else msg.startswith("blow-up guard tripped")


def test_trips_that_do_not_repeat_a_hot_state_go_on(tmp_path):
    st = OtfStore(str(tmp_path / "store"))
    _, _s10, s20, _, _ = _trajectory(st)
    guard = GuardSettings()
    _trip(st, 1, 33, s20)
    # another limit, a bad model's trip, another walker: not the same hot state
    stop_if_hot_again(st, "c", _trip(st, 2, 34, s20, limit="max_force_eV_A"), guard)
    stop_if_hot_again(st, "c", _trip(st, 3, 35, s20, agreed=False), guard)
    other = _state(st, 20, "c-v1", None, "w9")
    assert repeated_hot_trip(st, "c", _trip(st, 4, 36, other, walker="w9"), "w9") is None
    # a hot trip that rolled back to a state off this trajectory (a branch from 10, abandoned) does not count
    fresh = OtfStore(str(tmp_path / "fresh"))
    _, f10, f20, _, _ = _trajectory(fresh)
    _trip(fresh, 1, 44, _state(fresh, 40, "c-v7", f10.state_id))
    assert repeated_hot_trip(fresh, "c", _trip(fresh, 2, 33, f20), None) is None
    # while one that rolled back to a state before this trip's target on the same trajectory does
    again = OtfStore(str(tmp_path / "again"))
    _, a10, a20, _, _ = _trajectory(again)
    _trip(again, 1, 12, a10)
    assert repeated_hot_trip(again, "c", _trip(again, 2, 33, a20), None).step == 12


def test_agreement_needs_a_tolerance_and_the_message_names_each_limit():
    assert agrees(True, {"ediff": 0.005, "fmax": None}) is True
    assert agrees(False, {"ediff": 0.005, "fmax": None}) is False
    assert agrees(True, {"ediff": None, "fmax": None}) is None  # nothing to agree on: a bad model's trip
    guard = GuardSettings()
    doc = CheckDoc(check_id="c:check:9:m", campaign="c", step=9, interval=4, passed=False, new_interval=5,
                   refit=False, model_id="m", frame_id="f", kind="guard", guard_limit="max_force_eV_A",
                   guard_reason="force component 30.0 eV/Å (> 25.0) at step 9", reference_agreed=True,
                   rolled_back_to=5, ediff=0.001, fmax=0.2)
    msg = hot_state_message(doc, guard)
    assert "Raise md.guard.max_force_eV_A (now 25)" in msg and "re-run with the same model" in msg


def test_guard_limit_names_the_key_of_every_trip():
    cu = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
    cu.calc = EMT()
    cu.positions[1] = cu.positions[0] + [1.5, 0, 0]
    assert guard_limit(make_guard(GuardSettings(), 500)(cu, 1)) == "min_distance"
    cu = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
    cu.calc = EMT()
    cu.rattle(0.2, seed=1)
    assert guard_limit(make_guard(GuardSettings(max_force_eV_A=0.01), 500)(cu, 1)) == "max_force_eV_A"
    cu.set_velocities(cu.get_velocities() + 0.5)
    assert guard_limit(make_guard(GuardSettings(max_force_eV_A=1e3), 100)(cu, 1)) == "max_temperature_factor"
    guard = make_guard(GuardSettings(max_force_eV_A=1e3, max_energy_jump_eV_per_atom=1e-4), 1e5)
    assert guard(cu, 1) is None
    cu.positions[0] += 0.3
    assert guard_limit(guard(cu, 2)) == "max_energy_jump_eV_per_atom"
    assert guard_limit("reference force component 40.0 eV/Å (> 25.0) at step 3") == "max_force_eV_A"
    assert guard_limit(None) is None and guard_limit("reference labels hold non-finite numbers") is None


def test_documents_of_older_stores_load_without_the_new_fields():
    old_check = {"check_id": "c:check:9:m", "campaign": "c", "step": 9, "interval": 4, "passed": False,
                 "new_interval": 5, "refit": True, "model_id": "m", "frame_id": "f", "kind": "guard",
                 "guard_reason": "temperature 2100 K (> 2000 K) at step 9"}
    doc = CheckDoc.model_validate(old_check)
    assert doc.reference_agreed is None and doc.guard_limit is None
    old_state = {"state_id": "c:state:9:m", "campaign": "c", "step": 9, "numbers": [29], "positions": [[0, 0, 0]],
                 "velocities": [[0, 0, 0]], "cell": [[3, 0, 0], [0, 3, 0], [0, 0, 3]], "pbc": [True] * 3,
                 "masses": [63.5], "stopped_early": "temperature 2100 K (> 2000 K) at step 9"}
    assert StateDoc.model_validate(copy.deepcopy(old_state)).guard_settings is None


def test_a_stopped_segment_is_replayed_only_under_the_guard_settings_that_stopped_it(tmp_path):
    st = OtfStore(str(tmp_path / "store"))
    start = _state(st, 5, None, None)
    tight = GuardSettings(max_temperature_factor=1.5).model_dump(mode="json")
    loose = GuardSettings(max_temperature_factor=3.0).model_dump(mode="json")
    stopped = _state(st, 7, "c-v1", start.state_id)
    st.put_state(stopped.model_copy(update={"stopped_early": "temperature 1300 K (> 1250 K) at step 7",
                                            "guard_settings": tight}))
    assert _stopped(st, start.state_id, "c-v1", tight).state_id == stopped.state_id  # a rerun replays it
    assert _stopped(st, start.state_id, "c-v1", loose) is None  # loosened on --resume: runs again
    # a stopped segment of an older store (no settings recorded) is replayed, as before
    st.put_state(stopped.model_copy(update={"stopped_early": "temperature 1300 K (> 1250 K) at step 7"}))
    assert _stopped(st, start.state_id, "c-v1", loose).state_id == stopped.state_id


# ----------------------------------------------------------------- the decide job on a stored campaign


def _campaign_store(tmp_path, walker: str | None):
    """A stored campaign of the divacancy case: initial MD to 5, a passed check at 10, a FAILED check at 20
    whose state was kept (rollback_on_fail: false); the models c-v1 and c-v2."""
    data = _divacancy(tmp_path, factor=3.0, total_steps=300, name="c")
    if walker:
        data["walkers"] = [{"name": walker}, {"name": "other"}]
    config = config_from_dict(data)
    st = OtfStore(str(tmp_path / "store"))
    st.put_campaign(CampaignDoc(name="c", config=config.model_dump(mode="json"), total_steps=300, status="running"))
    if walker:
        st.update_walker("c", walker, total_steps=300)
    for version in (1, 2):
        st.put_model(ModelDoc(model_id=f"c-v{version}", version=version, campaign="c", training_frame_ids=[],
                              n_training_frames=0, fit_seconds=1.0, artifact="none",
                              parent_model_id="c-v1" if version == 2 else None))
    s5 = _state(st, 5, None, None, walker)
    s10 = _state(st, 10, "c-v1", s5.state_id, walker)
    s20 = _state(st, 20, "c-v1", s10.state_id, walker)
    _check(st, s10, True, 1, walker)
    _check(st, s20, False, 2, walker)
    return config, st, s10, s20


def _tripped(st, step: int, start: StateDoc, walker: str | None, agree: bool, n: int):
    """A segment of c-v2 from ``start`` stopped by the temperature limit at ``step``, and the reference
    labels of its frame: within the tolerances of the model's (``agree``) or 2 eV/Å off."""
    track = f"c@{walker}" if walker else "c"
    forces = [[0.1, -0.2, 0.3]]
    state = StateDoc(state_id=f"{track}:state:{step}:c-v2", start_state_id=start.state_id, campaign="c",
                     walker=walker, step=step, numbers=[29], positions=[[0.1 * n, 0.0, 0.0]],
                     velocities=[[0.0, 0.0, 0.0]], cell=[[3.0, 0, 0], [0, 3.0, 0], [0, 0, 3.0]], pbc=[True] * 3,
                     masses=[63.5], model_id="c-v2", ml_energy=-1.0, ml_forces=forces,
                     stopped_early=f"temperature 2100 K (> 2000 K) at step {step}")
    st.put_state(state)
    ref = [[0.1 + (0.0 if agree else 2.0), -0.2, 0.3]]
    frame = FrameDoc(frame_id=f"frame{n}", campaign="c", source="check", md_step=step, walker=walker, numbers=[29],
                     positions=state.positions, cell=state.cell, pbc=state.pbc, energy=-1.001, forces=ref,
                     reference_hash="emt")
    st.add_frame(frame)
    return state, {"frame_id": frame.frame_id, "reference_seconds": 0.01}


def _decide(config, st, tmp_path, state, start, check, walker):
    maker = DecideMaker(config=config, walker=walker)
    return DecideMaker.make.original(maker, "c", str(tmp_path / "store"), {"state_id": state.state_id,
                                     "start_state_id": start.state_id}, check, 10, 10)


def _job_names(response) -> list[str]:
    return [j.name for j, _ in response.addition.iterflow()] if response.addition else []


@pytest.mark.parametrize("walker", [None, "w1"])
def test_decide_a_hot_trip_no_refit_back_past_the_failed_check_then_stop(tmp_path, walker):
    config, st, s10, s20 = _campaign_store(tmp_path, walker)
    # the segment from 20 (kept by a failed check) trips at 23; the reference agrees with the model there
    state, check = _tripped(st, 23, s20, walker, agree=True, n=3)
    response = _decide(config, st, tmp_path, state, s20, check, walker)
    doc = st.get_check(f"{'c@' + walker if walker else 'c'}:check:23:c-v2")
    assert doc.kind == "guard" and doc.reference_agreed is True and doc.guard_limit == "max_temperature_factor"
    assert doc.refit is False and doc.passed is False and doc.trained_on is True
    assert doc.rolled_back_state_id == s10.state_id and doc.rolled_back_to == 10  # not 20: its check failed
    pointer = st.get_walker("c", walker) if walker else st.require_campaign("c")
    assert pointer.state_id == s10.state_id and pointer.pending_refit is None
    names = _job_names(response)
    assert not any("refit" in name for name in names) and any(name.startswith("ml-md") for name in names)
    assert any(name.endswith("10->15") for name in names)  # the next segment starts at the verified state

    # the re-run from 10 trips the same limit again, the reference agreeing: stop, resumable from 10
    again, check = _tripped(st, 13, s10, walker, agree=True, n=4)
    with pytest.raises(OtfError) as err:
        _decide(config, st, tmp_path, again, s10, check, walker)
    msg = str(err.value)
    assert "\n" not in msg and "the state is hot, not the model bad" in msg and "after the rollback from step 23" in msg
    assert "campaign stopped at step 10" in msg and "Raise md.guard.max_temperature_factor (now 3)" in msg
    second = st.get_check(f"{'c@' + walker if walker else 'c'}:check:13:c-v2")
    assert second.reference_agreed and not second.refit and second.rolled_back_state_id == s10.state_id
    pointer = st.get_walker("c", walker) if walker else st.require_campaign("c")
    assert pointer.state_id == s10.state_id


@pytest.mark.parametrize("walker", [None, "w1"])
def test_decide_a_trip_the_reference_disagrees_with_keeps_the_refit_and_the_segment_start(tmp_path, walker):
    config, st, _s10, s20 = _campaign_store(tmp_path, walker)
    state, check = _tripped(st, 23, s20, walker, agree=False, n=3)
    response = _decide(config, st, tmp_path, state, s20, check, walker)
    doc = st.get_check(f"{'c@' + walker if walker else 'c'}:check:23:c-v2")
    assert doc.kind == "guard" and doc.reference_agreed is False and doc.fmax == pytest.approx(2.0)
    assert doc.refit is True and doc.rolled_back_state_id == s20.state_id  # today's behaviour
    assert any("refit" in name for name in _job_names(response))
