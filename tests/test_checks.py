"""Error metrics (DESIGN §2) and the strict tolerance test."""

import numpy as np
import pytest

from otf_flows.checks import error_metrics, passes

NULL = {"ediff": None, "fmax": None, "frmse": None, "vmax": None}


def test_metrics_by_hand():
    f_ref = np.zeros((2, 3))
    f_ml = np.array([[0.1, 0.0, 0.0], [0.0, -0.3, 0.0]])
    v_ref = np.zeros((3, 3))
    v_ml = np.diag([0.4, 0.0, -0.2])
    e = error_metrics(2, -10.0, -10.5, f_ml, f_ref, v_ml, v_ref)
    assert e["ediff"] == pytest.approx(0.25)  # |0.5| / 2 atoms
    assert e["fmax"] == pytest.approx(0.3)
    assert e["frmse"] == pytest.approx(np.sqrt((0.01 + 0.09) / 6))
    assert e["vmax"] == pytest.approx(0.2)  # 0.4 / 2 atoms


def test_vmax_is_none_without_virials():
    e = error_metrics(1, 0.0, 0.0, [[0, 0, 0]], [[0, 0, 0]])
    assert e["vmax"] is None


def test_bad_force_shape():
    with pytest.raises(ValueError, match="shape"):
        error_metrics(2, 0.0, 0.0, np.zeros((3, 3)), np.zeros((3, 3)))


def test_null_tolerances_are_not_checked():
    errors = {"ediff": 0.5, "fmax": 100.0, "frmse": 3.0, "vmax": None}
    assert passes(errors, {**NULL, "ediff": 1.0})
    assert not passes(errors, {**NULL, "ediff": 1.0, "fmax": 10.0})


def test_all_null_always_passes():
    assert passes({"ediff": 1e9, "fmax": 1e9, "frmse": 1e9, "vmax": 1e9}, NULL)
    assert passes({"ediff": 1e9, "fmax": 1e9, "frmse": 1e9, "vmax": 1e9}, {})


def test_equal_to_tolerance_fails_strict():
    errors = {"ediff": 0.01, "fmax": 0.1, "frmse": 0.05, "vmax": 0.0}
    assert not passes(errors, {**NULL, "ediff": 0.01})
    assert not passes(errors, {**NULL, "fmax": 0.1})
    assert passes(errors, {**NULL, "ediff": 0.010000001})


def test_set_tolerance_without_value_fails():
    assert not passes({"ediff": None, "fmax": 0.0, "frmse": 0.0, "vmax": 0.0}, {**NULL, "ediff": 1.0})


def test_vmax_tolerance_without_virial_is_not_checked():
    # no reference virial (e.g. an ASE calculator without stress): vmax is skipped, as in hybrid-md
    assert passes({"ediff": 0.0, "fmax": 0.0, "frmse": 0.0, "vmax": None}, {**NULL, "vmax": 1.0})
