"""Segmenting does not change the trajectory (exact continuation of the MD state)."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk

from otf_flows.campaign import MDSettings, Refit
from otf_flows.frames import frame_to_atoms  # noqa: F401 - import check of the public helpers
from otf_flows.md.segment import MDState, initial_state, run_segment
from otf_flows.ml.gap.fit import fit_gap, gap_calculator
from otf_flows.ml.gap.presets import PRESETS


@pytest.fixture(scope="module")
def fixed_model(tmp_path_factory):
    """A small real GAP for Cu fitted on EMT frames (the 'fixed model')."""
    from ase.calculators.emt import EMT

    frames = []
    for i in range(3):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 1))
        atoms.rattle(0.1, seed=i)
        atoms.calc = EMT()
        atoms.info["REF_energy"] = atoms.get_potential_energy()
        atoms.arrays["REF_forces"] = atoms.get_forces()
        atoms.calc = None
        frames.append(atoms)
    result = fit_gap(frames, tmp_path_factory.mktemp("fixed_model"), Refit(), PRESETS["default"])
    return result.model_dir / "gap.xml"


def _start(md):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 1))
    atoms.rattle(0.05, seed=3)
    return initial_state(atoms, md)


def _roundtrip(state: MDState) -> MDState:
    """What the store does to a state: lists of floats and back."""
    return MDState(
        step=state.step, numbers=np.array(state.numbers.tolist()), positions=np.array(state.positions.tolist()),
        velocities=np.array(state.velocities.tolist()), cell=np.array(np.asarray(state.cell).tolist()),
        pbc=np.array(state.pbc.tolist()), masses=np.array(state.masses.tolist()), rng_state=state.rng_state,
    )


@pytest.mark.parametrize("ensemble", ["nve", "nvt_langevin", "npt_berendsen"])
def test_segments_equal_one_run(fixed_model, ensemble):
    md = MDSettings(ensemble=ensemble, temperature_K=900, timestep_fs=2.0, total_steps=60, seed=11)
    calc = gap_calculator(fixed_model)
    start = _start(md)
    whole = run_segment(start, calc, md, 60)
    state = start
    for _ in range(6):
        state = _roundtrip(run_segment(state, gap_calculator(fixed_model), md, 10).state)
    assert state.step == whole.state.step == 60
    assert np.abs(state.positions - whole.state.positions).max() < 1e-8
    assert np.abs(state.velocities - whole.state.velocities).max() < 1e-8
    assert np.abs(np.asarray(state.cell) - np.asarray(whole.state.cell)).max() < 1e-8
    # the atoms moved: the test would notice a segment that did nothing
    assert np.abs(whole.state.positions - start.positions).max() > 0.05


def test_langevin_depends_on_seed(fixed_model):
    md1 = MDSettings(ensemble="nvt_langevin", temperature_K=900, timestep_fs=2.0, seed=1)
    md2 = MDSettings(ensemble="nvt_langevin", temperature_K=900, timestep_fs=2.0, seed=2)
    start = _start(md1)
    a = run_segment(start, gap_calculator(fixed_model), md1, 10).state
    again = run_segment(start, gap_calculator(fixed_model), md1, 10).state
    fresh = MDState(**{**start.__dict__, "rng_state": None})  # thermostat RNG seeded from md.seed
    b = run_segment(fresh, gap_calculator(fixed_model), md2, 10).state
    assert np.abs(a.positions - again.positions).max() == 0.0
    assert np.abs(a.positions - b.positions).max() > 1e-6


def test_trajectory_frames_and_guard(fixed_model):
    md = MDSettings(ensemble="nve", temperature_K=600, timestep_fs=1.0)
    result = run_segment(_start(md), gap_calculator(fixed_model), md, 20, trajectory_interval=5,
                         guard=lambda atoms, step: "stop" if step == 12 else None)
    assert result.stopped_early == "stop"
    assert result.state.step == 12
    assert result.n_frames == 2 and result.trajectory_xyz.count(b"md_step=") == 2


def _counting(calc):
    """Record the properties asked for and the calc_args of every model call of ``calc``."""
    calls = []
    inner = calc.calculate

    def calculate(atoms=None, properties=None, *args, **kwargs):
        calls.append((sorted(properties or []), calc.calc_args))
        return inner(atoms, properties, *args, **kwargs)

    calc.calculate = calculate
    return calls


@pytest.mark.parametrize("ensemble", ["nvt_langevin", "npt_berendsen"])
def test_one_model_call_per_step_and_the_virial_only_where_used(fixed_model, ensemble):
    from otf_flows.labels import virial_from_stress

    md = MDSettings(ensemble=ensemble, temperature_K=900, timestep_fs=2.0, total_steps=10, seed=11)
    calc = gap_calculator(fixed_model)
    calls = _counting(calc)
    result = run_segment(_start(md), calc, md, 10)
    with_stress = [i for i, (props, _) in enumerate(calls) if "stress" in props]
    if ensemble == "nvt_langevin":
        assert len(calls) == 11  # the start frame's forces, then one call per step
        assert with_stress == [10]  # only the last frame's virial: the frame a check compares
    else:
        # the barostat reads the stress of the frame the last call gave (no call of its own), then
        # ASE's NPTBerendsen needs the forces of the rescaled frame and of the new positions
        assert len(calls) == 21
        assert with_stress == list(range(21))
    fresh = result.state.to_atoms()
    fresh.calc = gap_calculator(fixed_model)
    expected = virial_from_stress(fresh.get_stress(voigt=False), fresh.get_volume())
    assert np.abs(result.virial - expected).max() < 1e-8
    assert np.abs(result.forces - fresh.get_forces()).max() < 1e-10


def test_variance_only_at_the_probed_frames_and_the_last(fixed_model):
    from otf_flows.md.segment import UncertaintyMonitor
    from otf_flows.ml.gap.fit import GapUncertainty

    md = MDSettings(ensemble="nvt_langevin", temperature_K=900, timestep_fs=2.0, total_steps=10, seed=11)
    calc = gap_calculator(fixed_model)
    calls = _counting(calc)
    monitor = UncertaintyMonitor(probe=GapUncertainty(calc), every=4)
    result = run_segment(_start(md), calc, md, 10, uncertainty=monitor)
    assert len(calls) == 11
    assert [i for i, (_, args) in enumerate(calls) if "local_gap_variance" in args] == [4, 8, 10]
    assert result.n_uncertainty_evals == 3 and calc.calc_args == ""
    fresh = result.state.to_atoms()
    assert result.uncertainty == pytest.approx(GapUncertainty(gap_calculator(fixed_model)).value(fresh), rel=1e-9)
