"""The species-generic ``fast`` GAP preset: its descriptor strings (pure) and a real fit with it."""

from __future__ import annotations

import re

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from otf_flows.campaign import Refit
from otf_flows.ml.gap.fit import fit_gap, gap_calculator, gap_fit_command, split_opts
from otf_flows.ml.gap.presets import FAST_SETTINGS, PRESETS, descriptor_for, fast_descriptor, preset_names


def _terms(desc: str) -> list[str]:
    return [t.strip() for t in desc.split(" : ")]


def test_single_species_has_one_soap_turbo_and_a_short_two_body():
    terms = _terms(fast_descriptor([14] * 32))
    assert len(terms) == 2
    two_body, soap = terms
    assert two_body.startswith("distance_2b ") and "cutoff=5 " in two_body and "add_species=T" in two_body
    assert soap.startswith("soap_turbo ")
    assert "n_species=1" in soap and "species_Z={{14}}" in soap and "central_index=1" in soap
    assert "add_species=F" in soap  # soap_turbo cannot add species itself
    assert f"l_max={FAST_SETTINGS['l_max']} " in soap and f"alpha_max={{{{{FAST_SETTINGS['alpha_max']}}}}}" in soap
    assert "rcut_hard=5 rcut_soft=4.5" in soap and "basis=poly3gauss" in soap and "compress_mode=trivial" in soap


def test_one_soap_turbo_per_central_species_sorted_and_order_independent():
    desc = fast_descriptor([79, 29, 29, 79, 79])
    assert desc == fast_descriptor([29, 79]) == fast_descriptor(np.array([79, 29]))
    soaps = [t for t in _terms(desc) if t.startswith("soap_turbo")]
    assert [re.search(r"central_index=(\d+)", t).group(1) for t in soaps] == ["1", "2"]
    for t in soaps:
        assert "n_species=2" in t and "species_Z={{29 79}}" in t
        # every per-species array has one entry per species, in double braces for gap_fit
        for key in ("alpha_max", "atom_sigma_r", "atom_sigma_t", "atom_sigma_r_scaling", "atom_sigma_t_scaling",
                    "amplitude_scaling", "central_weight", "species_Z"):
            values = re.search(rf"{key}={{{{([^}}]*)}}}}", t).group(1).split()
            assert len(values) == 2, key
    assert len(fast_descriptor([1, 6, 8]).split("soap_turbo")) == 4


def test_braces_balance_and_survive_the_command_line():
    desc = fast_descriptor([14, 32])
    assert desc.count("{") == desc.count("}")
    cmd = gap_fit_command("t.xyz", "g.xml", desc)
    assert f"gap={{{desc}}}" in cmd
    assert f"gap={{{desc}}}" in split_opts(" ".join(cmd))


def test_study_keywords_change_the_string():
    desc = fast_descriptor([14], rcut=4.5, cutoff_2b=4.5, l_max=6, alpha_max=8, n_sparse=150)
    assert "rcut_hard=4.5 rcut_soft=4 " in desc and "distance_2b cutoff=4.5 " in desc
    assert "l_max=6 " in desc and "alpha_max={{8}}" in desc and "n_sparse=150 " in desc


@pytest.mark.parametrize("numbers", [[], [0], [200]])
def test_bad_numbers_rejected(numbers):
    with pytest.raises(ValueError):
        fast_descriptor(numbers)


def test_transition_must_fit_inside_the_cutoff():
    with pytest.raises(ValueError):
        fast_descriptor([14], rcut=4.0, transition=4.0)


def test_descriptor_for_presets():
    assert descriptor_for("fast", [29, 79]) == fast_descriptor([29, 79])
    for name, desc in PRESETS.items():
        assert descriptor_for(name) == desc == descriptor_for(name, [14])
    assert preset_names() == [*PRESETS, "fast"]
    with pytest.raises(ValueError, match="atomic numbers"):
        descriptor_for("fast")
    with pytest.raises(ValueError, match="unknown GAP preset"):
        descriptor_for("nope", [14])


def _cuau_frames(n=4, seed=0):
    rng = np.random.default_rng(seed)
    base = bulk("Cu", "fcc", a=3.8, cubic=True).repeat((2, 1, 1))  # 8 atoms
    base.numbers[::2] = 79
    frames = []
    for _ in range(n):
        a = base.copy()
        a.positions += rng.normal(0.0, 0.12, a.positions.shape)
        a.calc = EMT()
        a.info["REF_energy"] = float(a.get_potential_energy())
        a.arrays["REF_forces"] = a.get_forces().copy()
        a.calc = None
        frames.append(a)
    return frames


def test_fast_preset_fits_a_two_species_gap(tmp_path):
    pytest.importorskip("quippy")
    train = _cuau_frames(4)
    desc = descriptor_for("fast", train[0].numbers)
    res = fit_gap(train, tmp_path / "fit", Refit(default_sigma="0.001 0.05 0.05 0.0",
                                                 extra_gap_opts="sparse_jitter=1.0e-8"), desc)
    xml = res.model_dir / "gap.xml"
    assert xml.exists() and "soap_turbo" in xml.read_text()[:200000]
    test = _cuau_frames(1, seed=5)[0]
    a = test.copy()
    a.calc = gap_calculator(xml)
    forces, energy = a.get_forces(), a.get_potential_energy()
    assert forces.shape == (len(a), 3) and np.isfinite(forces).all() and np.isfinite(energy)
    # a working model: far closer to EMT on an unseen frame than predicting zero forces
    ref = test.arrays["REF_forces"]
    assert np.sqrt(np.mean((forces - ref) ** 2)) < 0.5 * np.sqrt(np.mean(ref**2))
