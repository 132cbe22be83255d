"""The gap_fit command line (pure) and a real fit with quippy-ase."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from otf_flows.campaign import Refit
from otf_flows.errors import FitFailedError
from otf_flows.ml.gap.fit import (
    fit_gap,
    format_e0,
    gap_calculator,
    gap_fit_command,
    pack_model,
    unpack_model,
    with_option,
)
from otf_flows.ml.gap.presets import PRESETS


def test_command_line_is_built_from_settings():
    cmd = gap_fit_command(
        "train.xyz", "out/gap.xml", "distance_2b cutoff=4.0 : soap cutoff=3", default_sigma="0.002 0.2 0.2 0.0",
        e0={"Si": -158.5, "O": -432.0}, extra_gap_opts="sparse_jitter = 1.0e-8  gp_tolerance=1e-4",
    )
    assert cmd[0] == "gap_fit"
    assert "at_file=train.xyz" in cmd
    assert "gap={distance_2b cutoff=4.0 : soap cutoff=3}" in cmd
    assert "default_sigma={0.002 0.2 0.2 0.0}" in cmd
    assert "e0={Si:-158.5:O:-432.0}" in cmd
    assert not any(a.startswith("e0_method") for a in cmd)
    assert "gp_file=out/gap.xml" in cmd
    assert cmd[-2:] == ["sparse_jitter=1.0e-8", "gp_tolerance=1e-4"]
    assert "energy_parameter_name=REF_energy" in cmd and "force_parameter_name=REF_forces" in cmd


def test_e0_method_used_without_e0():
    cmd = gap_fit_command("t.xyz", "g.xml", "distance_2b cutoff=4", e0=None, e0_method="average")
    assert "e0_method=average" in cmd


@pytest.mark.parametrize("e0, text", [(-1.5, "-1.5"), ("-148.314002", "-148.314002"), ("Si:-158.5", "{Si:-158.5}"),
                                      ({"Cu": -0.007}, "{Cu:-0.007}"), (None, None)])
def test_format_e0(e0, text):
    assert format_e0(e0) == text


def test_with_option_replaces():
    assert with_option("sparse_jitter=1e-8 a={x y}", "sparse_jitter", 1e-6) == "a={x y} sparse_jitter=1e-06"


def test_empty_descriptor_rejected():
    with pytest.raises(ValueError):
        gap_fit_command("t.xyz", "g.xml", "  ")


def _frames(n=4):
    frames = []
    for i in range(n):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 1, 1))
        atoms.rattle(0.08, seed=i)
        atoms.calc = EMT()
        atoms.info["REF_energy"] = atoms.get_potential_energy()
        atoms.arrays["REF_forces"] = atoms.get_forces()
        atoms.info["REF_virial"] = -atoms.get_stress(voigt=False) * atoms.get_volume()
        atoms.calc = None
        frames.append(atoms)
    return frames


def test_real_fit_predicts_its_training_data(tmp_path):
    frames = _frames()
    result = fit_gap(frames, tmp_path / "fit", Refit(default_sigma="0.0005 0.02 0.02 0"), PRESETS["default"])
    files = sorted(p.name for p in result.model_dir.iterdir())
    assert files[0] == "gap.xml" and any("sparseX" in f for f in files)
    # archive round trip keeps XML and sparseX files together
    xml = unpack_model(pack_model(result.model_dir), tmp_path / "unpacked")
    assert sorted(p.name for p in xml.parent.iterdir()) == files
    calc = gap_calculator(xml)
    atoms = frames[0].copy()
    atoms.calc = calc
    err = np.abs(atoms.get_forces() - frames[0].arrays["REF_forces"]).max()
    assert err < 0.1
    assert abs(atoms.get_potential_energy() - frames[0].info["REF_energy"]) / len(atoms) < 0.005

    # ML-MD segments reuse the Potential of an extracted model instead of parsing its XML again
    cached = gap_calculator(xml, cached=True)
    assert cached is not calc and gap_calculator(xml, cached=True) is cached
    assert cached.results == {}  # reset: no results of an earlier segment's last frame leak in
    other = frames[1].copy()
    other.calc = cached
    assert np.allclose(other.get_forces(), gap_calculator(xml).get_forces(frames[1].copy()))


def test_failed_fit_names_log(tmp_path):
    frames = _frames(2)
    with pytest.raises(FitFailedError, match="gap_fit.log"):
        fit_gap(frames, tmp_path / "fit", Refit(extra_gap_opts="no_such_option=1"), PRESETS["default"])


def test_seed_is_passed_unless_set():
    assert "rnd_seed=7" in gap_fit_command("t.xyz", "g.xml", "distance_2b cutoff=4", seed=7)
    cmd = gap_fit_command("t.xyz", "g.xml", "distance_2b cutoff=4", extra_gap_opts="rnd_seed=3", seed=7)
    assert "rnd_seed=3" in cmd and "rnd_seed=7" not in cmd
