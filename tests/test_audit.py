"""``otf audit``: the campaign's reference on random ML-MD frames between its checks (issue 24, item 3).

A two-walker EMT Cu campaign of 8 atoms with every ML-MD frame kept (a few seconds); the audit's labels are
checked against EMT computed here, and a second audit with the same seed must make no DFT call.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from ase.calculators.emt import EMT
from conftest import run_otf

from otf_flows.checks import error_metrics, passes
from otf_flows.store import OtfStore
from otf_flows.trajectory import trajectory_frames
from otf_flows.validation.audit import binomial_interval

NAME = "audited"


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("audit")
    data = {
        "name": NAME,
        "compat": "hybrid-md",
        "structure": {"builder": "bulk", "element": "Cu", "crystalstructure": "fcc", "a": 3.61, "cubic": True,
                      "repeat": [1, 1, 2]},
        "md": {"temperature_K": 900, "timestep_fs": 2.0, "total_steps": 40, "seed": 1, "trajectory_interval": 1},
        "reference": {"engine": "ase", "calculator": "ase.calculators.emt.EMT"},
        "model": {"preset": "default"},
        "num_initial_steps": 2,
        "check_interval": 6,
        "tolerances": {"ediff": 0.002, "fmax": 0.2},
        "refit": {"default_sigma": "0.001 0.05 0.05 0.0"},
        "walkers": [{"name": "cold", "md": {"temperature_K": 600}}, {"name": "hot", "md": {"seed": 3}}],
    }
    path = tmp / "audited.yaml"
    path.write_text(yaml.safe_dump(data))
    store = tmp / "store"
    out = run_otf("run", str(path), "--store", str(store), cwd=tmp)
    assert out.returncode == 0, out.stderr[-2000:]
    return store


def _audit(store, *args):
    out = run_otf("audit", NAME, "--store", str(store), "--json", *args)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def test_audit_labels_random_frames_between_checks_with_the_reference(campaign):
    st = OtfStore(str(campaign))
    calls_before = sum(st.dft_calls(NAME).values())
    result = _audit(campaign, "--frames", "6", "--seed", "3")
    assert result["frames"] == 6 and result["new_dft_calls"] == 6
    assert sum(OtfStore(str(campaign)).dft_calls(NAME).values()) == calls_before + 6  # counted in the cost
    checks = {(c.walker, c.step) for c in st.checks(NAME)}
    frames = {(a.info["walker"], int(a.info["md_step"])): a for a in trajectory_frames(st, NAME)
              if a.info["driver"] == "model"}
    reached = max(step for _, step in frames)
    tolerances = {"ediff": 0.002, "fmax": 0.2, "frmse": None, "vmax": None}
    for row in result["rows"]:
        key = (row["walker"], row["step"])
        assert key not in checks and row["step"] > reached // 10  # between checks, after the warm-up
        atoms = frames[key]
        ref = atoms.copy()
        ref.calc = EMT()
        errors = error_metrics(len(atoms), atoms.get_potential_energy(), ref.get_potential_energy(),
                               atoms.get_forces(), ref.get_forces())
        assert row["fmax"] == pytest.approx(errors["fmax"], abs=1e-6)
        assert row["ediff"] == pytest.approx(errors["ediff"], abs=1e-8)
        assert row["outside"] == (not passes(errors, tolerances))
    n_out = sum(r["outside"] for r in result["rows"])
    assert result["frames_outside"] == n_out
    low, high = result["interval_90"]
    assert low <= n_out / 6 <= high
    assert {f.source for f in st.frames_of(NAME) if f.source == "audit"} == {"audit"}
    assert not any(NAME in f.training_in for f in st.frames_of(NAME) if f.source == "audit")  # never trained on

    again = _audit(campaign, "--frames", "6", "--seed", "3")  # the same frames: their stored labels
    assert again["new_dft_calls"] == 0 and again["rows"] == result["rows"]
    assert sum(OtfStore(str(campaign)).dft_calls(NAME).values()) == calls_before + 6

    hot = _audit(campaign, "--frames", "2", "--walker", "hot", "--seed", "1")
    assert {r["walker"] for r in hot["rows"]} == {"hot"}


@pytest.mark.parametrize(("args", "message"), [
    (["--frames", "0"], "--frames"),
    (["--walker", "warm"], "--walker: 'warm' is not a walker"),
    (["--after-step", "100000"], "nothing after the warm-up"),
])
def test_bad_audit_arguments_are_one_line_exit_2(campaign, args, message):
    st_before = sum(OtfStore(str(campaign)).dft_calls(NAME).values())
    out = run_otf("audit", NAME, "--store", str(campaign), *args)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr
    assert sum(OtfStore(str(campaign)).dft_calls(NAME).values()) == st_before


def test_binomial_interval_is_clopper_pearson():
    assert binomial_interval(0, 10) == pytest.approx((0.0, 0.2589), abs=1e-4)  # 1 - 0.05 ** (1 / 10)
    low, high = binomial_interval(1, 10)
    assert low == pytest.approx(0.00512, abs=1e-4) and high == pytest.approx(0.3942, abs=1e-4)
    assert binomial_interval(10, 10)[1] == 1.0
    assert np.isclose(binomial_interval(5, 10)[0], 1 - binomial_interval(5, 10)[1])
