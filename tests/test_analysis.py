"""g(r), bond angles, neighbours, MD stability and the tolerant xyz reader.

The reference is a published 10 000-atom amorphous-carbon structure (GAP-17) with its g(r)
and bond-angle histogram (../shared/reference-data/carbon-gap17-10k beside the repository).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, fcc111, molecule
from ase.calculators.emt import EMT
from ase.io import write
from ase.neighborlist import neighbor_list

from otf_flows.analysis import (
    MalformedXyzWarning,
    bond_angle_distribution,
    coordination_numbers,
    min_interatomic_distance,
    neighbour_vectors,
    nve_stability,
    rdf,
    read_xyz_lenient,
    stability_from_series,
)
from otf_flows.errors import InputError

CARBON = Path(__file__).resolve().parents[2] / "shared" / "reference-data" / "carbon-gap17-10k"  # ../shared beside the repo
needs_carbon = pytest.mark.skipif(not CARBON.is_dir(), reason="carbon-gap17-10k reference data not available")


@pytest.fixture(scope="module")
def carbon():
    with pytest.warns(MalformedXyzWarning, match="species column missing"):
        frames = read_xyz_lenient(CARBON / "final_structure.xyz")
    return frames


# --------------------------------------------------------------------------- published data
@needs_carbon
def test_malformed_carbon_file_is_read_with_a_warning(carbon):
    assert len(carbon) == 1
    atoms = carbon[0]
    assert len(atoms) == 10_000 and set(atoms.get_chemical_symbols()) == {"C"}
    assert atoms.pbc.all() and np.allclose(atoms.cell.lengths(), 43.048609172)
    assert np.allclose(atoms.positions[0], [1.8468249288, 4.131642331, 1.5666516056])
    assert atoms.arrays["n_neighb"][0] == 3


@needs_carbon
def test_rdf_reproduces_published_gr(carbon):
    published = np.loadtxt(CARBON / "gr.dat")
    start = time.perf_counter()
    r, g = rdf(carbon, r_max=8.0, dr=0.008)
    seconds = time.perf_counter() - start
    assert seconds < 30, f"rdf of 10 000 atoms took {seconds:.1f} s"
    assert np.allclose(r, published[:, 0], rtol=0, atol=1e-12)
    below = r < 6.0
    assert np.max(np.abs(g - published[:, 1])[below]) < 1e-4
    # exact: every bin prints as the published six significant digits
    printed = (CARBON / "gr.dat").read_text().split()[1::2]
    assert [f"{x:g}" for x in g] == printed
    # and the convention matters: rho = (N - 1) / V would miss by 4e-4 at the first peak
    n = len(carbon[0])
    assert np.max(np.abs(g * n / (n - 1) - published[:, 1])[below]) > 1e-4


@needs_carbon
def test_bond_angles_match_published_histogram_shifted_by_one_bin(carbon):
    # the published n_neighb column is the coordination within 1.85 Å
    assert np.array_equal(coordination_numbers(carbon[0], 1.85), carbon[0].arrays["n_neighb"].astype(int))
    published = np.loadtxt(CARBON / "ba.dat")  # % per degree, bins labelled 0.5, 1.5, ..., 179.5
    theta, density = bond_angle_distribution(carbon, cutoff=1.85, bin_deg=1.0)
    assert np.allclose(theta, published[:, 0])
    assert np.isclose(density.sum() * 1.0, 1.0)
    percent = 100 * density
    # The published file labels the angles in [k+1, k+2) degrees as k + 0.5: one bin low.
    assert np.max(np.abs(percent[1:] - published[:-1, 1])) < 1e-9
    assert percent[0] == 0 and published[-1, 1] == 0
    # unshifted, bins differ by up to 0.45 %/degree
    assert np.max(np.abs(percent - published[:, 1])) > 0.1


# --------------------------------------------------------------------------- neighbours
@pytest.mark.parametrize(
    "atoms",
    [
        bulk("Cu", "fcc", a=3.6),  # one atom, triclinic primitive cell, cutoff > cell
        bulk("Si", "diamond", a=5.43) * (2, 1, 1),
        fcc111("Al", size=(2, 2, 3), vacuum=5.0),  # periodic in x, y only
        molecule("CH3CH2OH"),  # not periodic
    ],
    ids=["fcc-primitive", "diamond-supercell", "slab", "molecule"],
)
def test_neighbours_agree_with_ase(atoms):
    atoms = atoms.copy()
    atoms.rattle(0.05, seed=3)
    i, j, v = neighbour_vectors(atoms, 5.0)
    i2, j2, v2 = neighbor_list("ijD", atoms, 5.0)
    assert len(i) == len(i2)
    key = np.lexsort(np.c_[i, j, np.round(v, 6)].T)
    key2 = np.lexsort(np.c_[i2, j2, np.round(v2, 6)].T)
    assert np.array_equal(i[key], i2[key2]) and np.array_equal(j[key], j2[key2])
    assert np.allclose(v[key], v2[key2], atol=1e-9)


def test_rdf_first_shell_of_fcc_integrates_to_twelve():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * (3, 3, 3)
    r, g = rdf(atoms, r_max=3.0, dr=0.01)
    rho = len(atoms) / atoms.get_volume()
    shell = 4 / 3 * np.pi * ((r + 0.005) ** 3 - (r - 0.005) ** 3)
    assert np.isclose(np.sum(rho * g * shell), 12.0)
    assert np.isclose(r[np.argmax(g)], 3.6 / np.sqrt(2), atol=0.005)


def test_rdf_of_random_points_is_flat():
    rng = np.random.default_rng(0)
    frames = [Atoms("H1000", positions=rng.uniform(0, 20, (1000, 3)), cell=[20, 20, 20], pbc=True)
              for _ in range(3)]
    r, g = rdf(frames, r_max=6.0, dr=0.1)
    assert abs(g[r > 2].mean() - 999 / 1000) < 0.01


def test_bond_angles_of_perfect_fcc():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 2)
    theta, density = bond_angle_distribution(atoms, cutoff=3.0, bin_deg=7.2)
    share = density * 7.2
    expected = {60: 24 / 66, 90: 12 / 66, 120: 24 / 66, 180: 6 / 66}  # of the 66 pairs of 12 neighbours
    for angle, fraction in expected.items():
        k = min(int(angle // 7.2), len(theta) - 1)
        assert np.isclose(share[k], fraction), angle
    assert np.isclose(share.sum(), 1.0)


def test_bin_widths_must_divide_the_range():
    with pytest.raises(ValueError, match="whole number of bins"):
        rdf(bulk("Cu"), 5.0, 0.3)
    with pytest.raises(ValueError, match="whole number of bins"):
        bond_angle_distribution(bulk("Cu"), 3.0, 7.0)
    with pytest.raises(ValueError, match="periodic"):
        rdf(molecule("H2O"), 3.0, 0.1)


def test_min_interatomic_distance_sees_periodic_images():
    atoms = Atoms("Cu2", positions=[[0.1, 0, 0], [9.7, 0, 0]], cell=[10, 10, 10], pbc=True)
    assert np.isclose(min_interatomic_distance(atoms), 0.4)
    atoms.pbc = False
    assert min_interatomic_distance(atoms) == float("inf")


# --------------------------------------------------------------------------- stability
def test_stability_from_series_by_hand():
    result = stability_from_series([2.0, 1.9, 2.1, 2.0], [0.0, 0.1, 0.2, 0.3], n_atoms=10,
                                   min_distance_threshold=1.0, max_drift_per_atom=0.01)
    assert np.isclose(result.energy_drift_per_atom, 0.03)  # slope 0.1 eV/step × 3 steps / 10 atoms
    assert np.isclose(result.max_energy_deviation_per_atom, 0.03)
    assert result.min_distance == 1.9 and result.n_steps == 3
    assert not result.stable and "drift" in result.reason
    ok = stability_from_series([2.0, 1.9], [0.0, 0.05], n_atoms=10, max_drift_per_atom=0.01)
    assert ok.stable and ok.reason is None
    close = stability_from_series([2.0, 0.4], [0.0, 0.0], n_atoms=10, min_distance_threshold=0.5)
    assert not close.stable and "apart" in close.reason


def test_nve_with_emt_is_stable_and_a_huge_timestep_is_not():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 2)
    good = nve_stability(atoms, EMT(), n_steps=100, timestep_fs=1.0, temperature_K=300)
    assert good.stable, good.reason
    assert good.energy_drift_per_atom < 1e-3 and good.min_distance > 2.0
    bad = nve_stability(atoms, EMT(), n_steps=100, timestep_fs=25.0, temperature_K=3000, max_drift_per_atom=1e-3)
    assert not bad.stable


def test_atoms_on_top_of_each_other_are_unstable():
    atoms = Atoms("Cu2", positions=[[0, 0, 0], [0.3, 0, 0]], cell=[8, 8, 8], pbc=True)
    result = nve_stability(atoms, EMT(), n_steps=5)
    assert not result.stable and result.min_distance < 0.5 and "apart" in result.reason


# --------------------------------------------------------------------------- xyz reader
def test_well_formed_xyz_reads_without_warning(tmp_path, recwarn):
    frames = [bulk("Cu", "fcc", a=3.6, cubic=True), bulk("Si", "diamond", a=5.43)]
    write(tmp_path / "ok.xyz", frames, format="extxyz")
    back = read_xyz_lenient(tmp_path / "ok.xyz")
    assert [a.get_chemical_formula() for a in back] == ["Cu4", "Si2"]
    assert not [w for w in recwarn if issubclass(w.category, MalformedXyzWarning)]


def test_undeclared_trailing_column_is_kept(tmp_path):
    path = tmp_path / "extra.xyz"
    path.write_text('2\nLattice="5 0 0 0 5 0 0 0 5" Properties=pos:R:3\n'
                    "H 0 0 0 1.5\nH 0 0 0.74 2.5\n")
    with pytest.warns(MalformedXyzWarning, match="species column missing.*trailing"):
        (atoms,) = read_xyz_lenient(path)
    assert np.allclose(atoms.arrays["extra_0"], [1.5, 2.5])


def test_unreadable_xyz_is_an_input_error(tmp_path):
    path = tmp_path / "bad.xyz"
    path.write_text("two\nnothing here\n")
    with pytest.raises(InputError, match="atom count"):
        read_xyz_lenient(path)
    with pytest.raises(InputError, match="no such"):
        read_xyz_lenient(tmp_path / "missing.xyz")
