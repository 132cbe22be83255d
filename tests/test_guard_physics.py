"""Guard and physics fixes: the guard/rollback loop ends by itself, species-aware smallest
distances, vmax without a reference virial, ASE references without stress, one reference call
per MD step with NPTBerendsen."""

from __future__ import annotations

import copy
import io
import logging
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import ClassVar

import numpy as np
import pytest
import yaml
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io import read
from ase.neighborlist import neighbor_list
from conftest import CONFIGS, run_otf

from otf_flows.campaign import GuardSettings, config_from_dict, load_config
from otf_flows.checks import passes
from otf_flows.errors import ConfigError, FitFailedError, OtfError
from otf_flows.jobs.base import forget_stores
from otf_flows.jobs.decide import rollback_target
from otf_flows.md.guard import ShortDistances, distance_limits, make_guard
from otf_flows.reference.ase import AseEngine
from otf_flows.schemas.documents import CheckDoc
from otf_flows.store import OtfStore

NULL = {"ediff": None, "fmax": None, "frmse": None, "vmax": None}


class NoStressEMT(EMT):
    """EMT that, like many ASE calculators, does not implement the stress."""

    implemented_properties: ClassVar[list[str]] = ["energy", "forces"]


class CountingEMT(EMT):
    """EMT counting its calculations (one instance per reference label)."""

    calls = 0

    def calculate(self, *args, **kwargs):
        type(self).calls += 1
        super().calculate(*args, **kwargs)


def _small_cu(cu_config, **changes) -> dict:
    data = copy.deepcopy(cu_config)
    data.update(num_initial_steps=3, check_interval=5, **changes)
    data["md"]["total_steps"] = 60
    return data


def _one_line_failure(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("otf:")]
    assert len(lines) == 1, stderr[-2000:]
    return lines[0]


# ----------------------------------------------------------------- 1. the guard/rollback loop ends


def test_guard_trip_without_updates_stops_at_once_and_resume_stops_again(tmp_path, cu_config, write_config):
    data = _small_cu(cu_config, name="no-update", can_update=False)
    data["md"]["guard"] = {"max_force_eV_A": 0.01}  # trips at the first ML-MD step
    # with the reference disagreeing at the trip (a bad model's, not a hot state's: test_guard_hot_state.py)
    data["tolerances"] = {"ediff": 1e-9, "fmax": 1e-9, "frmse": None, "vmax": None}
    path = write_config(data)
    store = tmp_path / "store"
    result = run_otf("run", str(path), "--store", str(store), cwd=tmp_path, timeout=900)
    assert result.returncode == 1, result.stderr[-2000:]
    line = _one_line_failure(result.stderr)
    assert line.startswith("otf: failed:") and "campaign stopped" in line and "can_update is false" in line
    st = OtfStore(str(store))
    doc = st.require_campaign("no-update")
    assert doc.status == "failed" and "campaign stopped" in doc.message
    checks = st.checks("no-update")
    assert [c.kind for c in checks] == ["guard"]  # one trip, not a loop
    assert doc.state_id == checks[0].rolled_back_state_id  # resumable from the rollback state
    # --resume replays the stored segment and check and stops the same way, adding nothing
    result = run_otf("run", str(path), "--store", str(store), "--resume", cwd=tmp_path, timeout=900)
    assert result.returncode == 1 and "campaign stopped" in _one_line_failure(result.stderr)
    st = OtfStore(str(store))
    assert len(st.checks("no-update")) == 1 and st.require_campaign("no-update").status == "failed"


@pytest.mark.timeout(900)  # a guard against the loop not ending, not a speed limit
def test_failed_refit_keeping_the_parent_stops_the_guard_loop(tmp_path, cu_config, monkeypatch):
    from otf_flows.jobs import fit
    from otf_flows.managers.local import run_campaign

    real, calls = fit.fit_model, []

    def first_fit_only(*args, **kwargs):  # the first fit works, every refit fails (parent kept)
        calls.append(1)
        if len(calls) > 1:
            raise FitFailedError("gap_fit failed (test)")
        return real(*args, **kwargs)

    monkeypatch.setattr(fit, "fit_model", first_fit_only)
    data = _small_cu(cu_config, name="refit-fails", can_update=True)
    data["md"]["guard"] = {"min_distance_A": 3.0}  # Cu-Cu neighbours are 2.55 Å apart: trips at once
    data["tolerances"] = {"ediff": 1e-9, "fmax": 1e-9, "frmse": None, "vmax": None}  # a bad model's trip
    config = config_from_dict(data)
    with pytest.raises(OtfError, match="its refit failed") as err:
        run_campaign(config, OtfStore(str(tmp_path / "store")))
    assert "\n" not in str(err.value)
    st = OtfStore(str(tmp_path / "store"))
    checks = st.checks("refit-fails")
    assert [c.kind for c in checks] == ["guard"] and checks[0].refit_error
    assert st.require_campaign("refit-fails").status == "failed"
    assert len(calls) == 2


def _check(i: int, kind: str) -> CheckDoc:
    return CheckDoc(
        check_id=f"w:check:{i}", campaign="w", step=i, interval=1, passed=kind == "check", new_interval=1,
        refit=False, model_id="w-v1", frame_id=f"f{i}", kind=kind,
        created_at=datetime(2024, 1, 1, tzinfo=UTC) + timedelta(seconds=i),
    )


def test_guard_trips_between_passes_count_within_a_window(tmp_path):
    st = OtfStore(str(tmp_path / "store"))
    guard = GuardSettings(max_consecutive_trips=4)  # window: the last 8 checks
    start = SimpleNamespace(step=0, state_id="w:state:0:initial", start_state_id=None)
    for i, kind in enumerate(["guard", "check", "guard", "check"]):
        st.put_check(_check(i, kind))
    assert rollback_target(st, "w", start, guard) is start  # 3 trips with this one: go on
    st.put_check(_check(4, "check"))
    st.put_check(_check(5, "guard"))
    with pytest.raises(OtfError, match="tripped 4 times in the last 7 checks"):
        rollback_target(st, "w", start, guard)
    # trips older than the window do not count
    for i in range(6, 12):
        st.put_check(_check(i, "check"))
    assert rollback_target(st, "w", start, guard) is start
    assert rollback_target(st, "w", start, GuardSettings(max_consecutive_trips=4, trip_window=12)) is start
    with pytest.raises(OtfError, match="tripped 4 times"):
        rollback_target(st, "w", start, GuardSettings(max_consecutive_trips=4, trip_window=13))


def test_a_walkers_repeated_trips_stop_with_a_message_naming_the_walker(tmp_path):
    st = OtfStore(str(tmp_path / "store"))
    start = SimpleNamespace(step=0, state_id="w@hot:state:0:initial", start_state_id=None)
    for i in range(3):
        st.put_check(_check(i, "guard").model_copy(update={"walker": "hot", "check_id": f"w@hot:check:{i}"}))
        st.put_check(_check(10 + i, "guard").model_copy(update={"walker": "cold", "check_id": f"w@cold:check:{i}"}))
    with pytest.raises(OtfError, match=r"^walker hot: blow-up guard tripped 4 times in the last 4 checks"):
        rollback_target(st, "w", start, GuardSettings(max_consecutive_trips=4), "hot")
    assert rollback_target(st, "w", start, GuardSettings(max_consecutive_trips=5), "hot") is start  # its own 3


def test_trip_window_must_hold_the_trips(cu_config):
    data = copy.deepcopy(cu_config)
    data["md"]["guard"] = {"max_consecutive_trips": 5, "trip_window": 4}
    with pytest.raises(ConfigError, match=r"md\.guard: trip_window \(4\) must be >= max_consecutive_trips \(5\)"):
        config_from_dict(data)


# ----------------------------------------------------------------- 2. species-aware smallest distance


def _h2_in_cu() -> Atoms:
    return read(CONFIGS / "cu-h2-start.xyz")


def test_distance_limits_from_covalent_radii_pairs_and_override():
    numbers = [1, 8, 29]
    table = distance_limits(GuardSettings(), numbers)
    assert table[1, 1] == pytest.approx(0.6 * 0.62) and table[1, 8] == pytest.approx(0.6 * (0.31 + 0.66))
    assert table[29, 29] == pytest.approx(0.6 * 2.64) and table[8, 1] == table[1, 8]
    table = distance_limits(GuardSettings(min_distance_A=1.0, min_distance_pairs={"O-H": 0.6}), numbers)
    assert table[1, 8] == table[8, 1] == 0.6 and table[1, 1] == table[29, 29] == 1.0
    table = distance_limits(GuardSettings(min_distance_factor=0.0, min_distance_pairs={"H-H": 0.5}), numbers)
    assert table[1, 1] == 0.5 and table[29, 29] == 0.0


def test_h2_bond_is_not_a_collision_but_fused_atoms_are():
    atoms = _h2_in_cu()
    atoms.calc = EMT()
    assert atoms.get_distance(32, 33) == pytest.approx(0.74)
    assert make_guard(GuardSettings(), 500)(atoms, 1) is None
    # the former single limit of 1.0 Å, kept as an explicit override, takes the bond for a collision
    reason = make_guard(GuardSettings(min_distance_A=1.0), 500)(atoms, 1)
    assert reason == "atoms 32 (H) and 33 (H) 0.74 Å apart (< 1.00 Å for H-H) at step 1"
    assert "H-H" in make_guard(GuardSettings(min_distance_pairs={"H-H": 0.8}), 500)(atoms, 1)
    atoms.positions[33] = atoms.positions[32] + [0.3, 0, 0]
    assert "< 0.37 Å for H-H" in make_guard(GuardSettings(), 500)(atoms, 2)
    cu = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
    cu.positions[1] = cu.positions[0] + [1.5, 0, 0]
    cu.calc = EMT()
    assert "< 1.58 Å for Cu-Cu" in make_guard(GuardSettings(), 500)(cu, 3)


@pytest.mark.parametrize("bad, match", [
    ({"Xx-H": 0.5}, "'Xx' is not a chemical symbol"),
    ({"H": 0.5}, "is not a pair 'A-B'"),
    ({"O-H": 0.5, "H-O": 0.6}, "'O-H' and 'H-O' name the same pair"),
    ({"H-H": -1}, "greater than or equal to 0"),
])
def test_pair_keys_are_validated(cu_config, bad, match):
    data = copy.deepcopy(cu_config)
    data["md"]["guard"] = {"min_distance_pairs": bad}
    with pytest.raises(ConfigError, match=match) as err:
        config_from_dict(data)
    assert str(err.value).startswith("md.guard.min_distance_pairs") and "\n" not in str(err.value)


def test_verlet_list_finds_what_a_fresh_neighbour_list_finds(monkeypatch):
    settings = GuardSettings(min_distance_A=2.3)  # close to Cu-Cu neighbours: pairs come and go
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
    rng = np.random.default_rng(5)
    short = ShortDistances(settings)
    builds = []  # ASE's list rebuilt: its pairs are gathered again
    build = short._pairs
    monkeypatch.setattr(short, "_pairs", lambda a: (builds.append(1), build(a)))
    for step in range(300):
        atoms.positions += rng.normal(0, 0.02, atoms.positions.shape)
        if step == 150:
            atoms.set_cell(atoms.cell * 1.01, scale_atoms=True)  # NPT
        if step == 200:
            atoms.positions[3] += atoms.cell[0]  # a wrapped atom
        i, j, d = neighbor_list("ijd", atoms, 2.3)
        found = short(atoms)
        if len(d) == 0:
            assert found is None
        else:
            assert found is not None and found[2] == pytest.approx(d.min())
            assert {found[0], found[1]} == {i[np.argmin(d)], j[np.argmin(d)]}
    assert 3 <= len(builds) < 100


def _worst_pair_brute_force(settings, atoms):
    """(distance, limit) of the pair furthest below its limit from a fresh full neighbour list, or None."""
    table = distance_limits(settings, atoms.numbers)
    i, j, d = neighbor_list("ijd", atoms, float(table.max()))
    limits = table[atoms.numbers[i], atoms.numbers[j]]
    below = (limits > 0) & (d < limits)
    if not below.any():
        return None
    k = np.argmin(np.where(below, d / np.where(limits > 0, limits, 1.0), np.inf))
    return float(d[k]), float(limits[k])


def test_verlet_list_trips_on_the_frames_brute_force_does_with_species_and_far_moves(monkeypatch):
    # Cu-H with per-pair limits near the actual distances, so trips come and go; atoms jump far
    settings = GuardSettings(min_distance_pairs={"Cu-Cu": 2.1, "Cu-H": 1.0, "H-H": 0.0})
    cu = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
    atoms = cu + Atoms("H4", positions=[[0.9, 0.9, 0.9], [2.7, 2.7, 0.9], [0.9, 2.7, 2.7], [2.7, 0.9, 2.7]])
    rng = np.random.default_rng(7)
    short = ShortDistances(settings, skin_A=0.5)
    trips, builds = [], []
    build = short._pairs
    monkeypatch.setattr(short, "_pairs", lambda a: (builds.append(1), build(a)))
    for step in range(400):
        atoms.positions += rng.normal(0, 0.01, atoms.positions.shape)
        if step % 50 == 25:  # one atom jumps several Å (every other time a whole cell further), then back
            k, jump = int(rng.integers(len(atoms))), rng.normal(0, 2.0, 3) + (atoms.cell[1] if step % 100 == 25 else 0)
            atoms.positions[k] += jump
        if step % 50 == 35:
            atoms.positions[k] -= jump
        if step == 300:
            atoms.set_cell(atoms.cell * 0.99, scale_atoms=True)
        found, expected = short(atoms), _worst_pair_brute_force(settings, atoms)
        assert (found is None) == (expected is None), step
        if found is not None:
            assert found[2:] == pytest.approx(expected), step
            trips.append(step)
    assert 20 < len(trips) < 380  # both kinds of frame were compared
    assert len(builds) < 200  # and the list was reused between rebuilds


def test_cu_h2_campaign_runs_without_bond_trips(tmp_path):
    data = yaml.safe_load((CONFIGS / "cu-h2-emt.yaml").read_text())
    assert load_config(CONFIGS / "cu-h2-emt.yaml").md.total_steps <= 500
    data["md"]["total_steps"] = 120  # the shipped 300 steps take ~1.5 min
    data["structure"]["file"] = str(CONFIGS / data["structure"]["file"])
    path = tmp_path / "cu-h2.yaml"
    path.write_text(yaml.safe_dump(data))
    result = run_otf("run", str(path), "--store", str(tmp_path / "store"), cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    st = OtfStore(str(tmp_path / "store"))
    assert st.require_campaign("cu-h2-emt").status == "completed"
    assert [c.guard_reason for c in st.checks("cu-h2-emt") if c.kind == "guard"] == []
    # the molecule stayed bound the whole time: a single 1.0 Å limit would have stopped every segment
    bonds = []
    for doc in st.collection("states").query({"campaign": "cu-h2-emt"}):
        if doc.get("trajectory"):
            frames = read(io.StringIO(st.get_blob(doc["trajectory"]).decode()), index=":", format="extxyz")
            bonds += [f.get_distance(32, 33, mic=True) for f in frames]
    assert bonds and max(bonds) < 1.0 and min(bonds) > 0.6


# ----------------------------------------------------------------- 3. vmax without a virial; no stress


def test_vmax_without_virial_is_not_checked_with_a_warning(caplog):
    errors = {"ediff": 0.001, "fmax": 0.1, "frmse": 0.05, "vmax": None}
    with caplog.at_level(logging.WARNING, logger="otf_flows.checks"):
        assert passes(errors, {**NULL, "ediff": 0.01, "vmax": 0.001})
    assert "vmax" in caplog.text and "no virial" in caplog.text
    assert not passes(errors, {**NULL, "ediff": 0.0001, "vmax": 0.001})  # the other tolerances still count
    assert not passes({**errors, "vmax": 0.01}, {**NULL, "vmax": 0.001})
    assert not passes({**errors, "fmax": None}, {**NULL, "fmax": 1.0})


def test_ase_reference_without_stress_labels_without_virial(tmp_path):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    atoms.rattle(0.05, seed=2)
    labels = AseEngine(f"{__name__}.NoStressEMT").label(atoms, tmp_path)
    assert labels.virial is None
    atoms.calc = EMT()
    assert labels.energy == pytest.approx(atoms.get_potential_energy())
    assert np.allclose(labels.forces, atoms.get_forces())
    assert AseEngine("ase.calculators.emt.EMT").label(atoms, tmp_path).virial is not None


# ----------------------------------------------------------------- 4. initial MD: one reference call per step


@pytest.mark.parametrize("ensemble", ["npt_berendsen", "nvt_langevin", "nve"])
def test_initial_md_labels_each_step_once(tmp_path, cu_config, ensemble):
    from otf_flows.flows.lifecycle import prepare_campaign
    from otf_flows.jobs.reference import InitialMDMaker
    from otf_flows.managers.local import run_flow

    n = 6
    data = copy.deepcopy(cu_config)
    data.update(name=f"init-{ensemble}", num_initial_steps=n)
    data["md"].update(ensemble=ensemble, trajectory_interval=2, pressure_GPa=1.0, taup_fs=50.0)
    data["reference"] = {"engine": "ase", "calculator": f"{__name__}.CountingEMT"}
    config = config_from_dict(data)
    st = OtfStore(str(tmp_path / "store"))
    prepare_campaign(config, st)  # registers the campaign; only its initial MD job runs here
    CountingEMT.calls = 0
    try:
        run_flow(InitialMDMaker().make(config.name, str(st.path)), st.jobstore, tmp_path / "runs")
    finally:
        forget_stores()
    assert CountingEMT.calls == n + 1
    st = OtfStore(str(tmp_path / "store"))
    frames = sorted(st.frames_of(config.name), key=lambda f: f.md_step)
    assert [f.md_step for f in frames] == list(range(n + 1))
    # each label is EMT of the frame it is stored with, and that frame is the trajectory's at its step
    for f in frames:
        atoms = Atoms(numbers=f.numbers, positions=f.positions, cell=f.cell, pbc=f.pbc)
        atoms.calc = EMT()
        assert f.energy == pytest.approx(atoms.get_potential_energy(), abs=1e-9)
    end = st.get_state(f"{config.name}:state:{n}:initial")
    assert np.allclose(frames[n].positions, end.positions) and np.allclose(frames[n].cell, end.cell)
    trajectory = read(io.StringIO(st.get_blob(end.trajectory).decode()), index=":", format="extxyz")
    assert [t.info["md_step"] for t in trajectory] == [2, 4, 6]
    for t in trajectory:
        assert np.allclose(t.positions, frames[t.info["md_step"]].positions, atol=1e-6)
    if ensemble == "npt_berendsen":
        assert not np.allclose(frames[0].cell, frames[n].cell)  # the barostat did act
