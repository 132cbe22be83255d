"""DFT-verified accuracy: every label trained on, errors at check time out-of-sample, the
uncertainty trigger, unphysical labels flagged, the promotion gate on common frames."""

from __future__ import annotations

import numpy as np
import pytest

from otf_flows.campaign import config_from_dict
from otf_flows.errors import ConfigError
from otf_flows.managers.local import run_campaign
from otf_flows.md.segment import UncertaintyMonitor, initial_state, run_segment
from otf_flows.store import OtfStore


def _short(cu_config, **overrides) -> dict:
    data = {**cu_config, "name": "acc"}
    data["md"] = {**cu_config["md"], "total_steps": 160, "trajectory_interval": 0}
    data.update(overrides)
    return data


def _run(tmp_path, data):
    st = OtfStore(str(tmp_path / "store"))
    doc = run_campaign(config_from_dict(data), st)
    return OtfStore(str(tmp_path / "store")), doc


def _campaign_data(cu_config, train_on: str) -> dict:
    data = _short(cu_config)
    data["refit"] = {**cu_config["refit"], "train_on": train_on}
    if train_on == "all":  # also records the uncertainty at every check (calibrated trigger)
        data["uncertainty"] = {"enabled": True, "every": 5, "calibrate_factor": 3.0}
    return data


@pytest.fixture(scope="module")
def campaigns(tmp_path_factory):
    """One short EMT campaign per ``refit.train_on`` value, run once for the module."""
    import yaml
    from conftest import CONFIGS

    cu_config = yaml.safe_load((CONFIGS / "cu-emt.yaml").read_text())
    out = {}
    for train_on in ("all", "failed"):
        data = _campaign_data(cu_config, train_on)
        st, doc = _run(tmp_path_factory.mktemp(train_on), data)
        out[train_on] = (st, doc, data)
    return out


@pytest.mark.parametrize("train_on", ["all", "failed"])
def test_refits_train_on_every_label_paid_for(campaigns, train_on):
    st, doc, data = campaigns[train_on]
    assert doc.status == "completed"
    frames = st.frames_of("acc")
    checks = {c.frame_id: c for c in st.checks("acc")}
    models = st.models("acc")
    assert len(models) >= 2, "expected a refit"
    for model in models:
        # every label stored before the model was fitted (with a rollback, labels of later steps come first)
        paid = [f for f in frames if f.created_at <= model.created_at]
        if train_on == "failed":  # initial frames, and check frames of failed checks only
            paid = [f for f in paid if f.frame_id not in checks or not checks[f.frame_id].passed]
        assert sorted(model.training_frame_ids) == sorted(f.frame_id for f in paid), model.model_id
    for c in checks.values():
        # the errors of a check are out-of-sample: the checked model had not seen the frame
        assert c.frame_id not in st.get_model(c.model_id).training_frame_ids
        assert c.trained_on == (train_on == "all" or not c.passed)
    if train_on == "all":
        assert len(st.training_frames("acc")) == len(frames)
    else:
        assert len(st.training_frames("acc")) < len(frames)


def test_unphysical_reference_labels_are_flagged_and_never_trained_on(tmp_path, cu_config):
    from refcalcs import SpikyEMT

    SpikyEMT.calls = 0
    data = _short(cu_config)
    # num_initial_steps 5 -> 6 labellings; the 7th is the first check (10 steps after the start; the
    # rollback re-runs the segment with the shortest interval, 5 steps, so it reaches another frame)
    data["reference"] = {"engine": "ase", "calculator": "refcalcs.SpikyEMT", "kwargs": {"spike_on": 7}}
    st, doc = _run(tmp_path, data)
    flagged = [f for f in st.frames_of("acc") if f.flags]
    assert len(flagged) == 1 and "max_label_force_eV_A" in flagged[0].flags[0]
    spiky = [c for c in st.checks("acc") if c.frame_id == flagged[0].frame_id]
    assert len(spiky) == 1 and not spiky[0].passed and not spiky[0].trained_on and not spiky[0].refit
    assert flagged[0].frame_id not in {f.frame_id for f in st.training_frames("acc")}
    assert all(flagged[0].frame_id not in m.training_frame_ids for m in st.models("acc"))


class _FakeProbe:
    """An uncertainty that grows by ``increment`` eV at every evaluation."""

    def __init__(self, increment: float):
        self.increment = increment
        self.armed = 0
        self.calls = 0

    def arm(self):
        self.armed += 1

    def disarm(self):
        pass

    def value(self, atoms):
        self.calls += 1
        return self.calls * self.increment


def test_segment_ends_early_when_uncertain(cu_config):
    from ase.build import bulk
    from ase.calculators.emt import EMT

    md = config_from_dict(_short(cu_config)).md
    state = initial_state(bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2), md)
    probe = _FakeProbe(0.03)
    monitor = UncertaintyMonitor(probe=probe, every=3, threshold=0.10, min_steps=1)
    result = run_segment(state, EMT(), md, 50, uncertainty=monitor)
    # evaluated at steps 3, 6, 9, 12: 0.12 > 0.10 at step 12
    assert result.state.step == 12 and result.uncertainty == pytest.approx(0.12)
    assert result.uncertainty_stop and "step 12" in result.uncertainty_stop
    assert result.n_uncertainty_evals == 4 and probe.armed == 4
    # min_steps holds the segment on until step 20 (evaluated at 15 and 18, then 21 > 20)
    result = run_segment(state, EMT(), md, 50,
                         uncertainty=UncertaintyMonitor(probe=_FakeProbe(0.03), every=3, threshold=0.1, min_steps=20))
    assert result.state.step == 21
    # below the threshold the segment runs to its end, and the last frame is measured too
    result = run_segment(state, EMT(), md, 10, uncertainty=UncertaintyMonitor(probe=_FakeProbe(0.0), every=3,
                                                                              threshold=0.1))
    assert result.state.step == 10 and result.uncertainty_stop is None and result.n_uncertainty_evals == 4


class _PeakProbe(_FakeProbe):
    """An uncertainty that peaks at the ``peak``-th evaluation."""

    def __init__(self, peak: int):
        super().__init__(0.0)
        self.peak = peak

    def value(self, atoms):
        self.calls += 1
        return 1.0 - 0.1 * abs(self.calls - self.peak)


def test_most_uncertain_frame_is_returned_with_the_model_labels(cu_config):
    """check: most_uncertain: the evaluated frame with the largest value, with the model's energy, forces and
    virial of exactly that frame (compared with a plain run stopped there); none when it is the last."""
    from ase.build import bulk
    from ase.calculators.emt import EMT

    from otf_flows.labels import virial_from_stress

    md = config_from_dict(_short(cu_config)).md
    state = initial_state(bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2), md)
    # evaluated at steps 3, 6, 9, 12, 15 (the last frame): the peak is the 2nd evaluation, step 6
    result = run_segment(state, EMT(), md, 15,
                         uncertainty=UncertaintyMonitor(probe=_PeakProbe(2), every=3, check="most_uncertain"))
    cf = result.check_frame
    assert result.state.step == 15 and cf["step"] == 6 and cf["uncertainty"] == pytest.approx(1.0)
    upto = run_segment(state, EMT(), md, 6)
    assert np.allclose(cf["positions"], upto.state.positions, atol=1e-10)
    assert cf["energy"] == pytest.approx(upto.energy, abs=1e-10)
    assert np.allclose(cf["forces"], upto.forces, atol=1e-10)
    assert np.allclose(cf["virial"], upto.virial, atol=1e-8)
    atoms = upto.state.to_atoms()
    atoms.calc = EMT()
    assert np.allclose(cf["virial"], virial_from_stress(atoms.get_stress(voigt=False), atoms.get_volume()))
    # the peak at the last evaluation (the last frame), or check: end: the last frame is checked as before
    last = run_segment(state, EMT(), md, 15,
                       uncertainty=UncertaintyMonitor(probe=_PeakProbe(5), every=3, check="most_uncertain"))
    end = run_segment(state, EMT(), md, 15, uncertainty=UncertaintyMonitor(probe=_PeakProbe(2), every=3))
    assert last.check_frame is None and end.check_frame is None


def test_checks_label_the_most_uncertain_frame_in_a_campaign(tmp_path, cu_config):
    """The DFT check labels the recorded frame: its md_step is the check's frame_step, inside the segment, its
    errors are the model's on that frame, and it joins the training data like any check."""
    from otf_flows.checks import error_metrics

    data = _short(cu_config)
    data["md"]["total_steps"] = 120
    data["uncertainty"] = {"enabled": True, "every": 2, "calibrate_factor": 5.0, "check": "most_uncertain"}
    st, doc = _run(tmp_path, data)
    assert doc.status == "completed"
    checks = [c for c in st.checks("acc") if c.kind == "check"]
    inside = [c for c in checks if c.frame_step is not None]
    assert inside, [(c.step, c.frame_step) for c in checks]
    for c in inside:
        frame = st.get_frames([c.frame_id])[0]
        assert frame.md_step == c.frame_step and c.step - c.interval < c.frame_step < c.step
        state = st.get_state(f"acc:state:{c.step}:{c.model_id}")
        cf = state.check_frame
        assert cf["step"] == c.frame_step and c.uncertainty == pytest.approx(cf["uncertainty"])
        expected = error_metrics(len(frame.numbers), cf["energy"], frame.energy, cf["forces"], frame.forces,
                                 cf["virial"], frame.virial)
        assert c.frmse == pytest.approx(expected["frmse"]) and c.ediff == pytest.approx(expected["ediff"])
        assert c.trained_on
    trained = set(st.models("acc")[-1].training_frame_ids)
    assert {c.frame_id for c in inside if c.new_model_id or c.refit} <= trained | {checks[-1].frame_id}


def test_gap_uncertainty_probe_matches_a_direct_variance_call(campaigns):
    """The armed MD force call gives the same variance as a separate call, at no extra model call."""
    from otf_flows.ml.gap.fit import GapUncertainty
    from otf_flows.validation.evaluate import model_calculator

    st, _, data = campaigns["all"]
    pot = model_calculator(st, "acc-v1")
    probe = GapUncertainty(pot)
    md = config_from_dict(data).md
    from otf_flows.md.state import state_from_doc

    start = state_from_doc(st.get_state("acc:state:5:initial"))

    def counted(calc):
        calls = {"n": 0}
        inner = calc.calculate

        def calculate(*args, **kwargs):
            if calc.calculation_required(args[0] if args else kwargs.get("atoms"), ["energy", "forces"]):
                calls["n"] += 1
            return inner(*args, **kwargs)

        calc.calculate = calculate
        return calls

    plain = model_calculator(st, "acc-v1")
    plain_calls = counted(plain)
    reference = run_segment(start, plain, md, 7)
    calls = counted(pot)
    # steps 6..12: evaluated at 6, 9 and 12 (the last frame), each inside the MD step's own force call
    result = run_segment(start, pot, md, 7, uncertainty=UncertaintyMonitor(probe=probe, every=3))
    assert result.n_uncertainty_evals == 3 and calls["n"] == plain_calls["n"]
    assert np.allclose(result.state.positions, reference.state.positions, atol=1e-10)
    atoms = result.state.to_atoms()
    pot2 = model_calculator(st, "acc-v1")
    pot2.calculate(atoms, ["energy", "forces"], calc_args="local_gap_variance")
    expected = float(np.sqrt(pot2.extra_results["atoms"]["local_gap_variance"].max()))
    assert result.uncertainty == pytest.approx(expected, rel=1e-8) and expected > 0
    variance = pot2.extra_results["atoms"]["local_gap_variance"]
    for measure, value in (("mean_local", np.mean(np.sqrt(variance))), ("total", np.sqrt(variance.sum()))):
        assert GapUncertainty(model_calculator(st, "acc-v1"), measure).value(atoms) == pytest.approx(value, rel=1e-8)
    with pytest.raises(ValueError, match="allowed: max_local, mean_local, total"):
        GapUncertainty(pot2, "median")


def test_uncertainty_trigger_in_a_campaign(tmp_path, cu_config):
    """An absolute threshold below every frame's uncertainty ends each segment after min_steps;
    the check records the trigger and the schedule goes on from the steps actually run."""
    data = _short(cu_config)
    data["md"]["total_steps"] = 80
    data["uncertainty"] = {"enabled": True, "every": 1, "threshold": 1e-6, "min_steps": 4}
    data["compat"] = "hybrid-md"  # hybrid-md's interval rule and no rollback around the trigger
    st, doc = _run(tmp_path, data)
    assert doc.status == "completed"
    checks = st.checks("acc")
    early = [c for c in checks if c.trigger == "uncertainty"]
    assert early, [c.trigger for c in checks]
    for c in early:
        assert c.interval == 4 and c.uncertainty > 1e-6 and c.uncertainty_threshold == 1e-6
        p = data["adaptive_method_parameters"]
        expected = min(int(4 * p["factor"]), p["n_max"]) if c.passed else max(int(4 / p["factor"]), p["n_min"])
        assert c.new_interval == expected
    states = st.collection("states").query({"campaign": "acc", "n_uncertainty_evals": {"$gt": 0}})
    assert sum(1 for _ in states) >= len(early)


def test_calibrated_threshold_uses_passed_checks_of_the_model(campaigns):
    from otf_flows.campaign import UncertaintySettings
    from otf_flows.jobs.md import calibrated_threshold

    st, _, data = campaigns["all"]
    checks = st.checks("acc")
    settings = UncertaintySettings(**data["uncertainty"])
    by_model = {}
    for c in checks:
        if c.passed:
            by_model.setdefault(c.model_id, []).append(c.uncertainty)
    assert by_model
    model, values = next(iter(by_model.items()))
    assert calibrated_threshold(st, "acc", settings, model) == pytest.approx(3.0 * max(values))
    assert calibrated_threshold(st, "acc", settings.model_copy(update={"threshold": 0.5,
                                                                       "calibrate_factor": None}), model) == 0.5


def test_uncertainty_settings_need_one_threshold(cu_config):
    from otf_flows.errors import ConfigError

    for bad in ({"enabled": True, "calibrate_factor": None}, {"enabled": True, "threshold": 0.1, "calibrate_factor": 2.0}):
        with pytest.raises(ConfigError, match="uncertainty"):
            config_from_dict(_short(cu_config, uncertainty=bad))


def test_promotion_gate_compares_on_frames_neither_model_saw(campaigns):
    from otf_flows.validation.sets import CHECKS, common_untrained_frames

    st, _, _ = campaigns["all"]
    models = st.models("acc")
    child, parent = models[-1], models[-2]
    frames = common_untrained_frames(st, child, parent, CHECKS)
    trained = set(child.training_frame_ids) | set(parent.training_frame_ids)
    checks_after = [f for f in st.frames_of("acc") if f.source == "check" and f.frame_id not in trained]
    assert [f.frame_id for f in frames] == [f.frame_id for f in checks_after]
    # with every label trained on, these are exactly the checks after the child's trigger check
    trigger = st.trigger_check(child.model_id).step
    assert all(f.md_step > trigger for f in frames)


def test_refit_after_new_labels_even_when_checks_pass(tmp_path, cu_config):
    """refit.every_new_labels: 2 refits once two unseen labels joined, passed checks included."""
    data = _short(cu_config)
    data["md"]["total_steps"] = 120
    data["tolerances"] = {"ediff": 1.0}  # every check passes
    data["refit"] = {**cu_config["refit"], "every_new_labels": 2}
    st, doc = _run(tmp_path, data)
    assert doc.status == "completed"
    checks = st.checks("acc")
    assert all(c.passed for c in checks) and len(checks) >= 4
    # a refit at every second check: after it, the model has seen every label up to that check
    assert [c.refit for c in checks] == [i % 2 == 1 for i in range(len(checks))]
    for c in checks:
        if c.refit:
            model = st.get_model(c.new_model_id)
            assert model.n_training_frames == sum(f.md_step <= c.step for f in st.frames_of("acc"))
    assert not any(c.rolled_back_to for c in checks)


def test_within_margin_scales_every_set_tolerance():
    from otf_flows.checks import within_margin

    errors = {"ediff": 0.004, "fmax": 0.5, "frmse": 0.2, "vmax": None}
    tol = {"ediff": 0.01, "fmax": 1.0, "frmse": 0.3, "vmax": None}
    assert within_margin(errors, tol, 1.0)
    assert within_margin(errors, tol, 0.7)  # 0.2 < 0.21, 0.5 < 0.7, 0.004 < 0.007
    assert not within_margin(errors, tol, 0.6)  # frmse 0.2 >= 0.18
    assert not within_margin({**errors, "ediff": 0.02}, tol, 1.0)


def test_passed_checks_without_margin_hold_the_interval(tmp_path, cu_config):
    """adaptive_method_parameters.grow_below: a pass above grow_below x tolerance keeps the interval."""
    data = _short(cu_config)
    data["md"]["total_steps"] = 100
    data["can_update"] = False
    data["tolerances"] = {"ediff": 1.0, "fmax": None, "frmse": None, "vmax": None}  # every check passes
    data["compat"] = "hybrid-md"  # no uncertainty trigger: every segment runs its whole interval
    data["adaptive_method_parameters"] = {**cu_config["adaptive_method_parameters"], "grow_below": 1e-9}
    st, doc = _run(tmp_path, data)
    checks = st.checks("acc")
    assert doc.status == "completed" and all(c.passed for c in checks) and len(checks) >= 5
    assert {c.new_interval for c in checks} == {data["check_interval"]}  # never grew
    data["name"] = "acc-grow"
    data["adaptive_method_parameters"]["grow_below"] = 1.0
    doc = run_campaign(config_from_dict(data), st)
    grown = st.checks("acc-grow")
    assert [c.new_interval for c in grown][:2] == [2 * data["check_interval"], 4 * data["check_interval"]]


def test_near_misses_shrink_the_interval_and_stay_passed(tmp_path, cu_config):
    """adaptive_method_parameters.shrink_above: a pass at >= shrink_above x tolerance shrinks the interval
    like a failure, without the failure's rollback or refit."""
    data = _short(cu_config)
    data["md"]["total_steps"] = 60
    data["can_update"] = False
    data["rollback_on_fail"] = True
    data["tolerances"] = {"ediff": 1.0, "fmax": None, "frmse": None, "vmax": None}  # every check passes
    data["adaptive_method_parameters"] = {**cu_config["adaptive_method_parameters"], "n_min": 2,
                                          "grow_below": 1e-9, "shrink_above": 1e-9}
    st, doc = _run(tmp_path, data)
    checks = st.checks("acc")
    assert doc.status == "completed" and len(checks) >= 3 and all(c.passed for c in checks)
    intervals = [c.new_interval for c in checks]
    assert intervals[0] == data["check_interval"] // 2 and intervals[-1] == 2  # shrank down to n_min
    assert not any(c.refit or c.rolled_back_to is not None for c in checks)
    with pytest.raises(ConfigError, match="shrink_above"):
        config_from_dict({**data, "adaptive_method_parameters": {"grow_below": 0.8, "shrink_above": 0.7}})


@pytest.mark.parametrize(("virials", "ensemble", "vmax", "expected"), [
    ("auto", "nvt_langevin", None, False), ("auto", "npt_berendsen", None, True), ("auto", "nve", 0.05, True),
    ("train", "nvt_langevin", None, True), ("ignore", "npt_berendsen", 0.05, False),
])
def test_refits_train_on_virials_only_when_the_campaign_uses_them(cu_config, virials, ensemble, vmax, expected):
    from otf_flows.jobs.fit import training_atoms
    from otf_flows.schemas.documents import FrameDoc

    data = _short(cu_config)
    data["md"]["ensemble"] = ensemble
    data["tolerances"] = {**cu_config["tolerances"], "vmax": vmax}
    data["refit"] = {**cu_config["refit"], "virials": virials}
    config = config_from_dict(data)
    assert config.trains_on_virials is expected
    frame = FrameDoc(frame_id="f", numbers=[29], positions=[[0, 0, 0]], cell=[[3, 0, 0], [0, 3, 0], [0, 0, 3]],
                     pbc=[True] * 3, energy=-1.0, forces=[[0, 0, 0]], virial=[[1, 0, 0], [0, 1, 0], [0, 0, 1]],
                     source="check", reference_hash="h")
    (atoms,) = training_atoms([frame], config.trains_on_virials)
    assert ("REF_virial" in atoms.info) is expected and "REF_energy" in atoms.info
