"""`otf trajectory export`, the rows of `otf checks`, and `otf run --json`: a short EMT campaign whose
poor first model trips the blow-up guard, so that one stored segment is rolled back."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import yaml
from ase import Atoms
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write
from conftest import CONFIGS, run_otf

from otf_flows.campaign import load_config
from otf_flows.schemas.documents import CampaignDoc, CheckDoc, StateDoc
from otf_flows.store import OtfStore
from otf_flows.trajectory import campaign_segments, trajectory_frames

NAME = "traj"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """A 100-step campaign (every frame kept) whose 2-frame first model drives hot Cu into a guard trip
    (~30-60 s). Loose tolerances keep the refits after it few, and the tripped frame (ediff 0.49 eV/atom,
    fmax 27 eV/Å) breaks them: a bad model's trip, refitted; hybrid-md's schedule (no uncertainty trigger)."""
    tmp = tmp_path_factory.mktemp("traj")
    data = yaml.safe_load((CONFIGS / "cu-emt.yaml").read_text())
    data.update(name=NAME, num_initial_steps=1, check_interval=200, compat="hybrid-md",
                adaptive_method_parameters={"n_min": 20, "n_max": 400, "factor": 2},
                tolerances={"ediff": 0.3, "fmax": 10.0, "frmse": None, "vmax": None},
                validation={"checks": False})
    data["md"].update(total_steps=100, temperature_K=2000, timestep_fs=4.0, trajectory_interval=1,
                      guard={"max_force_eV_A": 1000.0})  # the reference labels of the tripped frame count
    data["refit"].update(default_sigma="0.05 2.0 2.0 0.0", extra_gap_opts="sparse_jitter=1.0e-8 rnd_seed=1")
    config_path = tmp / "traj.yaml"
    config_path.write_text(yaml.safe_dump(data))
    store = tmp / "store"
    result = run_otf("run", str(config_path), "--store", str(store), "--json", cwd=tmp)
    assert result.returncode == 0, result.stderr[-3000:]
    return store, load_config(config_path), result


def _export(store, out, *extra):
    result = run_otf("trajectory", "export", NAME, str(out), "--store", str(store), *extra)
    assert result.returncode == 0, result.stderr
    return read(out, index=":"), result.stderr


def _guard(store) -> CheckDoc:
    guards = [c for c in OtfStore(str(store)).checks(NAME) if c.kind == "guard"]
    assert guards, "the poor first model was expected to trip the guard"
    return guards[0]


def test_run_json_prints_the_summary(guarded):
    store, config, result = guarded
    summary = json.loads(result.stdout)
    st = OtfStore(str(store))
    doc = st.require_campaign(NAME)
    assert summary["status"] == "completed" and summary["step"] == config.md.total_steps
    assert summary["model_id"] == doc.model_id
    labels = [f for f in st.frames_of(NAME) if f.source != "import"]
    assert summary["n_dft_labels"] == len(labels)
    trained = set(st.get_model(doc.model_id).training_frame_ids)
    assert summary["n_dft_labels_trained"] == sum(f.frame_id in trained for f in labels) > 0
    last = sorted(st.checks(NAME), key=lambda c: c.created_at)[-5:]
    assert summary["last_checks"]["n"] == len(last)
    assert summary["last_checks"]["n_passed"] == sum(c.passed for c in last)
    assert summary["last_checks"]["frmse_max"] == pytest.approx(max(c.frmse for c in last))
    assert summary["last_checks"]["frmse_median"] == pytest.approx(float(np.median([c.frmse for c in last])))
    assert summary["n_guard_trips"] >= 1
    assert "campaign traj" not in result.stdout  # no table on stdout
    # the cost next to the errors: every DFT call (initial MD, checks, the guard's check) per 1000 MD steps
    guard = _guard(store)
    assert guard.frame_id in {f.frame_id for f in labels}  # the guard's DFT call counts
    n_initial = sum(f.source == "initial_md" for f in labels)
    assert n_initial == config.num_initial_steps + 1  # steps 0..num_initial_steps, each a DFT call
    assert len(labels) == n_initial + len(st.checks(NAME))  # one call per check, guard checks included
    assert summary["dft_calls_per_1000_steps"] == pytest.approx(1000 * len(labels) / config.md.total_steps)


def test_status_shows_the_cost_next_to_the_errors_at_check_time(guarded):
    store, config, result = guarded
    summary = json.loads(result.stdout)
    st = OtfStore(str(store))
    status = json.loads(run_otf("status", NAME, "--store", str(store), "--json").stdout)
    n_dft = len(st.frames_of(NAME))
    assert status["n_dft_labels"] == n_dft == summary["n_dft_labels"]
    assert status["dft_calls_per_1000_steps"] == pytest.approx(1000 * n_dft / st.require_campaign(NAME).step)
    assert status["last_checks"] == summary["last_checks"]
    listing = json.loads(run_otf("status", "--store", str(store), "--json").stdout)
    assert [r["dft_calls_per_1000_steps"] for r in listing] == [status["dft_calls_per_1000_steps"]]
    table = run_otf("status", NAME, "--store", str(store))
    assert table.returncode == 0, table.stderr
    header = next(line for line in table.stdout.splitlines() if "dft_per_1000_steps" in line)
    row = next(line for line in table.stdout.splitlines() if line.strip("│ ").startswith(NAME))
    cells = dict(zip([c.strip() for c in header.split("┃")], [c.strip() for c in row.split("│")]))
    assert float(cells["dft_per_1000_steps"]) == pytest.approx(status["dft_calls_per_1000_steps"], rel=1e-3)
    assert float(cells["frmse_at_check"]) == pytest.approx(status["last_checks"]["frmse_median"], rel=1e-3)
    assert cells["dft_calls"] == str(n_dft)


def test_export_writes_each_accepted_step_once_with_the_drivers_labels(guarded, tmp_path):
    store, config, _ = guarded
    frames, err = _export(store, tmp_path / "traj.xyz")
    steps = [int(a.info["md_step"]) for a in frames]
    assert steps == list(range(1, config.md.total_steps + 1))  # every step once, in order
    assert "rolled-back" in err and len(err.strip().splitlines()) == 1
    st = OtfStore(str(store))
    n0 = config.num_initial_steps
    for atoms in frames:
        assert atoms.info["rolled_back"] is False
        assert atoms.info["segment_start_step"] < atoms.info["md_step"]
        if atoms.info["md_step"] <= n0:
            assert atoms.info["driver"] == "reference" and "model_id" not in atoms.info
        else:
            assert atoms.info["driver"] == "model" and atoms.info["model_id"].startswith(f"{NAME}-v")
    # a reference-driven frame carries the reference labels
    label = next(f for f in st.frames_of(NAME) if f.source == "initial_md" and f.md_step == 1)
    assert frames[0].get_potential_energy() == pytest.approx(label.energy, abs=1e-6)
    np.testing.assert_allclose(frames[0].get_forces(), label.forces, atol=1e-6)
    # an ML-MD frame carries its model's energy and forces
    from otf_flows.validation.evaluate import model_calculator

    frame = frames[len(frames) // 2]
    atoms = Atoms(frame.numbers, positions=frame.positions, cell=frame.cell, pbc=frame.pbc)
    atoms.calc = model_calculator(st, frame.info["model_id"])
    assert frame.get_potential_energy() == pytest.approx(atoms.get_potential_energy(), abs=1e-5)
    np.testing.assert_allclose(frame.get_forces(), atoms.get_forces(), atol=1e-5)
    # the function benchmarks import gives the same frames
    same = trajectory_frames(st, NAME)
    assert [int(a.info["md_step"]) for a in same] == steps
    assert [a.info.get("model_id") for a in same] == [a.info.get("model_id") for a in frames]


def test_rolled_back_segment_is_left_out_unless_asked(guarded, tmp_path):
    store, config, _ = guarded
    guard = _guard(store)
    assert guard.rolled_back_to is not None and guard.rolled_back_to < guard.step
    accepted, _ = _export(store, tmp_path / "a.xyz")
    every, err = _export(store, tmp_path / "b.xyz", "--include-rolled-back")
    assert "flagged rolled_back=True" in err
    rolled = [a for a in every if a.info["rolled_back"]]
    kept = [a for a in every if not a.info["rolled_back"]]
    assert len(kept) == len(accepted) == config.md.total_steps
    # the abandoned segment: from the rollback target to the tripped step, with the model that tripped
    tripped = [a for a in rolled if a.info.get("model_id") == guard.model_id
               and guard.rolled_back_to < a.info["md_step"] <= guard.step]
    assert [int(a.info["md_step"]) for a in tripped] == list(range(guard.rolled_back_to + 1, guard.step + 1))
    assert all(a.info["segment_start_step"] == guard.rolled_back_to for a in tripped)
    assert len(every) == len(accepted) + len(rolled)
    assert [int(a.info["md_step"]) for a in every] == sorted(int(a.info["md_step"]) for a in every)
    # the accepted frames at the tripped steps come from the model fitted after the trip
    assert {a.info["model_id"] for a in accepted if guard.rolled_back_to < a.info["md_step"] <= guard.step} \
        .isdisjoint({guard.model_id})


def test_checks_json_rows_have_kind_guard_reason_and_rollback(guarded):
    store, _, _ = guarded
    result = run_otf("checks", NAME, "--store", str(store), "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    for row in rows:
        assert set(row) >= {"step", "kind", "trigger", "uncertainty", "guard_reason", "rolled_back_to",
                            "refit_error", "ediff", "frmse", "passed", "model_id", "new_model_id"}
        assert row["kind"] in ("check", "guard")
    guards = [r for r in rows if r["kind"] == "guard"]
    assert guards and all(r["guard_reason"] and r["rolled_back_to"] < r["step"] for r in guards)
    # the tripped frame broke the tolerances: a bad model's trip (refitted), with the guard key that tripped
    assert all(r["reference_agreed"] is False and r["refit"] and r["guard_limit"] for r in guards)
    assert all(r["guard_reason"] is None and r["rolled_back_to"] is None for r in rows if r["kind"] == "check")
    table = run_otf("checks", NAME, "--store", str(store))
    assert table.returncode == 0 and "at check time" in table.stdout and "guard" in table.stdout


def test_bad_inputs_exit_2_with_one_line(guarded, tmp_path):
    store, _, _ = guarded
    cases = [
        (["nope", str(tmp_path / "t.xyz")], "nope"),
        ([NAME, str(tmp_path / "missing" / "t.xyz")], "does not exist"),
        ([NAME, str(tmp_path / "t.txt")], ".xyz"),
    ]
    for args, words in cases:
        result = run_otf("trajectory", "export", *args, "--store", str(store))
        assert result.returncode == 2, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and words in result.stderr, result.stderr
    assert not (tmp_path / "t.xyz").exists() and not (tmp_path / "missing").exists()


# ----------------------------------------------------------------- without running a campaign

def _state(step: int, model_id: str | None, start: str | None, frames: list[int] | None, st: OtfStore,
           stopped: str | None = None) -> StateDoc:
    atoms = bulk("Cu", cubic=True)
    traj = None
    if frames:
        buffer = io.StringIO()
        for s in frames:
            frame = atoms.copy()
            frame.calc = SinglePointCalculator(frame, energy=-float(s), forces=np.full((len(atoms), 3), 0.01 * s))
            frame.info["md_step"] = s
            write(buffer, frame, format="extxyz")
        traj = st.put_blob(buffer.getvalue().encode())
    return StateDoc(
        state_id=f"c:state:{step}:{model_id or 'initial'}", start_state_id=start, campaign="c", step=step,
        numbers=atoms.numbers.tolist(), positions=atoms.positions.tolist(), velocities=np.zeros((4, 3)).tolist(),
        cell=np.array(atoms.cell).tolist(), pbc=[True] * 3, masses=atoms.get_masses().tolist(), model_id=model_id,
        trajectory=traj, stopped_early=stopped,
    )


def _check(step: int, model_id: str, rolled_back_state_id: str | None = None) -> CheckDoc:
    return CheckDoc(check_id=f"c:check:{step}:{model_id}", campaign="c", step=step, interval=1, passed=False,
                    new_interval=2, refit=True, model_id=model_id, frame_id=f"f{step}",
                    rolled_back_state_id=rolled_back_state_id, rolled_back_to=2 if rolled_back_state_id else None)


def test_segments_on_the_chain_are_accepted_others_rolled_back_or_pending(tmp_path):
    """initial MD 0→2, m1 2→4 (accepted), m1 4→6 (guard, rolled back to 4), m2 4→6 (accepted),
    m2 6→8 (stored, not yet checked: pending)."""
    st = OtfStore(str(tmp_path / "store"))
    states = [
        _state(2, None, None, [1, 2], st),
        _state(4, "m1", "c:state:2:initial", [3, 4], st),
        _state(6, "m1", "c:state:4:m1", [5, 6], st, stopped="guard"),
        _state(6, "m2", "c:state:4:m1", [5, 6], st),
        _state(8, "m2", "c:state:6:m2", [7, 8], st),
    ]
    for s in states:
        st.put_state(s)
    for c in (_check(4, "m1"), _check(6, "m1", "c:state:4:m1"), _check(6, "m2")):
        st.put_check(c)
    st.put_campaign(CampaignDoc(name="c", config={"md": {"trajectory_interval": 1}}, total_steps=10,
                                state_id="c:state:6:m2", step=6))
    status = {s.state_id: s.status for s in campaign_segments(st, "c")}
    assert status == {"c:state:2:initial": "accepted", "c:state:4:m1": "accepted", "c:state:6:m1": "rolled_back",
                      "c:state:6:m2": "accepted", "c:state:8:m2": "pending"}
    frames = trajectory_frames(st, "c")
    assert [a.info["md_step"] for a in frames] == [1, 2, 3, 4, 5, 6]
    assert [a.info.get("model_id") for a in frames] == [None, None, "m1", "m1", "m2", "m2"]
    assert [a.info["driver"] for a in frames[:3]] == ["reference", "reference", "model"]
    assert [a.info["segment_start_step"] for a in frames] == [0, 0, 2, 2, 4, 4]
    assert frames[4].get_potential_energy() == -5.0
    every = trajectory_frames(st, "c", include_rolled_back=True)
    assert [(a.info["md_step"], a.info.get("model_id"), a.info["segment_status"]) for a in every][4:] == [
        (5, "m2", "accepted"), (5, "m1", "rolled_back"), (6, "m2", "accepted"), (6, "m1", "rolled_back"),
        (7, "m2", "pending"), (8, "m2", "pending")]
    assert [a.info["rolled_back"] for a in every].count(True) == 2


def test_campaign_without_trajectory_frames_exits_2(tmp_path):
    st = OtfStore(str(tmp_path / "store"))
    st.put_state(_state(0, None, None, None, st))
    st.put_state(_state(5, "m1", "c:state:0:initial", None, st))
    st.put_campaign(CampaignDoc(name="c", config={"md": {"trajectory_interval": 0}}, total_steps=10,
                                state_id="c:state:5:m1", step=5))
    result = run_otf("trajectory", "export", "c", str(tmp_path / "t.xyz"), "--store", str(tmp_path / "store"))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "md.trajectory_interval" in result.stderr
    assert not (tmp_path / "t.xyz").exists()
