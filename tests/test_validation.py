"""Validation metrics (hand-computed) and validating a stored model on stored frames."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from otf_flows.errors import InputError, NotFoundError
from otf_flows.frames import frame_from_labels
from otf_flows.labels import Labels, virial_from_stress
from otf_flows.schemas.documents import ModelDoc
from otf_flows.store import OtfStore
from otf_flows.validation import (
    CHECKS,
    Labelled,
    compare,
    get_validation,
    metrics,
    run_validation,
    summarise,
    untrained_check_frames,
    validate_model,
)

# --------------------------------------------------------------------------- hand-computed metrics
# frame A: 2 atoms "bulk", dE = +0.2 eV, force errors (0.1, 0, 0, 0, -0.2, 0), virial error xx = 0.4 eV
# frame B: 1 atom "surface", dE = -0.3 eV, force errors (0, 0, 0.3), no virial
PRED = [
    Labelled(-9.8, np.array([[0.1, 0, 0], [0, -0.2, 0]]), np.diag([0.4, 0, 0]), "bulk"),
    Labelled(4.7, np.array([[1, 1, 1.3]]), None, "surface"),
]
REF = [
    Labelled(-10.0, np.zeros((2, 3)), np.zeros((3, 3)), "bulk"),
    Labelled(5.0, np.array([[1.0, 1, 1]]), None, "surface"),
]


def test_metrics_equal_hand_values():
    m = summarise(compare(PRED, REF))
    # energy per atom errors: +0.1, -0.3
    assert m["n_frames"] == 2 and m["n_atoms"] == 3 and m["n_virial_frames"] == 1
    assert m["energy_mae_per_atom"] == pytest.approx(0.2)
    assert m["energy_rmse_per_atom"] == pytest.approx(np.sqrt(0.05))
    # per sqrt(N): 0.2/sqrt(2), -0.3
    assert m["energy_mae_per_sqrt_atom"] == pytest.approx((0.2 / np.sqrt(2) + 0.3) / 2)
    assert m["energy_rmse_per_sqrt_atom"] == pytest.approx(np.sqrt(0.055))
    # nine force components
    assert m["force_mae"] == pytest.approx(0.6 / 9)
    assert m["force_rmse"] == pytest.approx(np.sqrt(0.14 / 9))
    # nine virial components of frame A, per atom: 0.2 and eight zeros
    assert m["virial_mae_per_atom"] == pytest.approx(0.2 / 9)
    assert m["virial_rmse_per_atom"] == pytest.approx(np.sqrt(0.04 / 9))

    bulk_m, surface = m["by_config_type"]["bulk"], m["by_config_type"]["surface"]
    assert set(m["by_config_type"]) == {"bulk", "surface"}
    assert bulk_m["energy_mae_per_atom"] == pytest.approx(0.1) and bulk_m["energy_rmse_per_atom"] == pytest.approx(0.1)
    assert bulk_m["force_mae"] == pytest.approx(0.05)
    assert bulk_m["force_rmse"] == pytest.approx(np.sqrt(0.05 / 6))
    assert bulk_m["virial_rmse_per_atom"] == pytest.approx(np.sqrt(0.04 / 9))
    assert surface["energy_mae_per_atom"] == pytest.approx(0.3)
    assert surface["force_mae"] == pytest.approx(0.1)
    assert surface["force_rmse"] == pytest.approx(np.sqrt(0.03))
    assert surface["virial_rmse_per_atom"] is None and surface["virial_mae_per_atom"] is None


def test_distributions_are_kept_for_plots():
    c = compare(PRED, REF)
    assert np.allclose(c.energy_error_per_atom, [0.1, -0.3])
    assert np.allclose(c.force_error, [0.1, 0, 0, 0, -0.2, 0, 0, 0, 0.3])
    assert np.array_equal(c.force_frame, [0, 0, 0, 0, 0, 0, 1, 1, 1])
    assert np.allclose(c.virial_error_per_atom, [0.2, 0, 0, 0, 0, 0, 0, 0, 0])
    surface = c.by_config_type()["surface"]
    assert surface.n_frames == 1 and np.array_equal(surface.force_frame, [0, 0, 0])
    assert np.allclose(surface.force_error, [0, 0, 0.3]) and len(surface.virial_frame) == 0


def test_no_virials_gives_none():
    m = metrics(compare(PRED[1:], REF[1:]))
    assert m["virial_rmse_per_atom"] is None and m["n_virial_frames"] == 0


def test_mismatched_inputs_are_rejected():
    with pytest.raises(ValueError, match="predictions"):
        compare(PRED, REF[:1])
    with pytest.raises(ValueError, match="forces of shape"):
        compare([Labelled(0.0, np.zeros((2, 3)))], [Labelled(0.0, np.zeros((3, 3)))])


# --------------------------------------------------------------------------- stored models and frames
def _emt_frame(seed: int, source: str, step: int, campaign: str = "c", energy_shift: float = 0.0):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 2)
    atoms.rattle(0.05, seed=seed)
    atoms.calc = EMT()
    labels = Labels(atoms.get_potential_energy() + energy_shift, atoms.get_forces(),
                    virial_from_stress(atoms.get_stress(), atoms.get_volume()))
    return frame_from_labels(atoms, labels, source=source, reference_hash="emt", reference={"engine": "emt"},
                             campaign=campaign, md_step=step)


@pytest.fixture
def store():
    """An in-memory store with a model trained on two frames, three check frames and a benchmark set."""
    st = OtfStore(f"memory://validation-{uuid.uuid4().hex}")
    frames = [_emt_frame(0, "initial_md", 0), _emt_frame(1, "check", 10, energy_shift=0.032),
              _emt_frame(2, "check", 20, energy_shift=-0.064), _emt_frame(3, "check", 40, energy_shift=0.032)]
    for f in frames:
        st.add_frame(f, training_in="c" if f.md_step in (0, 10) else None)
    st.put_model(ModelDoc(model_id="c-v1", version=1, campaign="c", training_frame_ids=[frames[0].frame_id,
                          frames[1].frame_id], n_training_frames=2, fit_seconds=1.0, artifact="none"))
    st.collection("benchmarks").update({"name": "rattled", "frame_ids": [frames[1].frame_id]}, key="name")
    return st, frames


def test_check_frames_not_trained_on(store):
    st, _ = store
    held_out = untrained_check_frames(st, st.get_model("c-v1"))
    assert [f.md_step for f in held_out] == [20, 40]


def test_validate_model_on_check_frames(store):
    st, _ = store
    doc = run_validation(st, "c-v1", CHECKS, calculator=EMT())
    # EMT reproduces its own labels; the stored energies were shifted by -0.064 and +0.032 eV on 32 atoms
    assert doc["validation_id"] == "c-v1:checks" and doc["benchmark"] == "checks" and doc["n_frames"] == 2
    assert doc["energy_mae_per_atom"] == pytest.approx(0.0015)
    assert doc["energy_rmse_per_atom"] == pytest.approx(np.sqrt((0.002**2 + 0.001**2) / 2))
    assert np.allclose(doc["energy_error_per_atom"], [0.002, -0.001])
    assert doc["force_rmse"] == pytest.approx(0.0, abs=1e-10)
    assert doc["virial_rmse_per_atom"] == pytest.approx(0.0, abs=1e-10)
    assert set(doc["by_config_type"]) == {"otf"}
    stored = get_validation(st, "c-v1", CHECKS)
    assert stored["energy_mae_per_atom"] == doc["energy_mae_per_atom"] and stored["model_id"] == "c-v1"


def test_validate_model_on_a_benchmark_set(store):
    st, frames = store
    doc = run_validation(st, "c-v1", "rattled", calculator=EMT())
    assert doc["n_frames"] == 1 and doc["energy_mae_per_atom"] == pytest.approx(0.001)
    direct = validate_model(st, "c-v1", frames[:1], benchmark="x", calculator=EMT())
    assert direct["validation_id"] == "c-v1:x" and direct["energy_mae_per_atom"] == pytest.approx(0.0, abs=1e-12)
    assert get_validation(st, "c-v1", "x") is None  # validate_model does not store


def test_unknown_benchmark_and_model(store):
    st, _ = store
    with pytest.raises(NotFoundError, match="benchmarks: checks, rattled"):
        run_validation(st, "c-v1", "nope", calculator=EMT())
    with pytest.raises(NotFoundError, match="c-v9"):
        run_validation(st, "c-v9", CHECKS, calculator=EMT())
    st.put_model(ModelDoc(model_id="free", version=1, training_frame_ids=[], n_training_frames=0,
                          fit_seconds=1.0, artifact="none"))
    with pytest.raises(InputError, match="no campaign"):
        run_validation(st, "free", CHECKS, calculator=EMT())
