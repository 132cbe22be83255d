"""VASP engine without VASP: written inputs against reference files, availability, parsing."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pymatgen.core
import pytest
from ase import units
from ase.build import bulk
from pymatgen.core import Lattice, Structure
from pymatgen.io.vasp.inputs import Incar, Kpoints, Poscar

from otf_flows.errors import BackendUnavailableError
from otf_flows.reference.registry import get_engine
from otf_flows.reference.vasp.engine import VaspEngine, grouped_order, labels_from_task_doc, write_vasp_inputs
from otf_flows.reference.vasp.settings import VaspReference

DATA = Path(__file__).parent / "data" / "vasp"

CASES = {
    "si8_default": (lambda: bulk("Si", "diamond", a=5.43, cubic=True), {}),
    "nacl_k222_spin": (
        lambda: bulk("NaCl", "rocksalt", a=5.64, cubic=True),  # Na, Cl interleaved
        {"kpoints": [2, 2, 2], "spin_polarized": True, "incar_updates": {"KPAR": 2, "ALGO": "Normal"}},
    ),
}


def check_inputs(written: Path, reference: Path) -> None:
    """Compare a written VASP input set with reference files (atomate2's mock_vasp checks)."""
    incar, ref_incar = Incar.from_file(written / "INCAR"), Incar.from_file(reference / "INCAR")
    assert dict(incar) == dict(ref_incar), f"INCAR differs: {set(incar.items()) ^ set(ref_incar.items())}"

    kpoints, ref_kpoints = Kpoints.from_file(written / "KPOINTS"), Kpoints.from_file(reference / "KPOINTS")
    assert kpoints.style == ref_kpoints.style
    assert [list(k) for k in kpoints.kpts] == [list(k) for k in ref_kpoints.kpts]
    assert list(kpoints.kpts_shift) == list(ref_kpoints.kpts_shift)

    poscar, ref_poscar = Poscar.from_file(written / "POSCAR"), Poscar.from_file(reference / "POSCAR")
    assert poscar.site_symbols == ref_poscar.site_symbols
    assert poscar.natoms == ref_poscar.natoms
    np.testing.assert_allclose(poscar.structure.lattice.matrix, ref_poscar.structure.lattice.matrix, atol=1e-8)
    np.testing.assert_allclose(poscar.structure.frac_coords, ref_poscar.structure.frac_coords, atol=1e-8)

    spec = (written / "POTCAR.spec").read_text().split()
    assert spec == (reference / "POTCAR.spec").read_text().split()
    assert not (written / "POTCAR").exists()


@pytest.mark.parametrize("case", sorted(CASES))
def test_written_inputs_match_reference(case, tmp_path):
    build, fields = CASES[case]
    order = write_vasp_inputs(build(), tmp_path, VaspReference(**fields), potcar_spec=True)
    check_inputs(tmp_path, DATA / case)
    assert sorted(order.tolist()) == list(range(8))


def test_md_check_overrides_are_in_the_incar(tmp_path):
    settings = VaspReference(encut_eV=520, ediff_eV=1e-5, ismear=-1, sigma_eV=0.0862, incar_updates={"LREAL": "Auto"})
    write_vasp_inputs(bulk("Si", "diamond", a=5.43, cubic=True), tmp_path, settings, potcar_spec=True)
    incar = Incar.from_file(tmp_path / "INCAR")
    assert incar["ENCUT"] == 520
    assert incar["EDIFF"] == 1e-5
    assert incar["ISMEAR"] == -1
    assert incar["SIGMA"] == pytest.approx(0.0862)
    assert incar["LREAL"] == "Auto"
    assert incar["ISPIN"] == 1 and "MAGMOM" not in incar
    assert incar["LWAVE"] is False and incar["LCHARG"] is False
    assert incar["NSW"] == 0 and incar["ISIF"] == 2


def test_interleaved_species_are_grouped_for_the_poscar(tmp_path):
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    order = write_vasp_inputs(atoms, tmp_path, VaspReference(), potcar_spec=True)
    assert order.tolist() == [0, 2, 4, 6, 1, 3, 5, 7]
    structure = Poscar.from_file(tmp_path / "POSCAR").structure
    np.testing.assert_allclose(structure.cart_coords, atoms.positions[order], atol=1e-8)
    assert grouped_order(["O", "H", "H", "O", "C"]).tolist() == [0, 3, 1, 2, 4]


@pytest.fixture
def no_vasp(monkeypatch, tmp_path):
    """An environment without VASP on PATH and without a POTCAR library."""
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    monkeypatch.setenv("PATH", str(empty_bin))
    monkeypatch.delenv("PMG_VASP_PSP_DIR", raising=False)
    monkeypatch.delitem(pymatgen.core.SETTINGS, "PMG_VASP_PSP_DIR", raising=False)
    return empty_bin


def test_check_available_names_missing_vasp_and_potcars(no_vasp):
    engine = get_engine(VaspReference())
    assert isinstance(engine, VaspEngine)
    with pytest.raises(BackendUnavailableError) as info:
        engine.check_available()
    message = str(info.value)
    assert "'vasp_std' not found on PATH" in message
    assert "PMG_VASP_PSP_DIR" in message
    assert "\n" not in message


def test_check_available_with_only_the_potcar_problem(no_vasp, monkeypatch, tmp_path):
    fake = no_vasp / "vasp_std"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    with pytest.raises(BackendUnavailableError, match="POTCARs are not configured") as info:
        VaspEngine(VaspReference()).check_available()
    assert "not found on PATH" not in str(info.value)

    monkeypatch.setenv("PMG_VASP_PSP_DIR", str(tmp_path / "missing"))
    with pytest.raises(BackendUnavailableError, match="is not a directory"):
        VaspEngine(VaspReference()).check_available()

    monkeypatch.setenv("PMG_VASP_PSP_DIR", str(tmp_path))
    VaspEngine(VaspReference()).check_available()
    assert os.environ["PATH"] == str(no_vasp)


def test_labels_from_task_doc_converts_units_and_restores_atom_order(tmp_path):
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    order = grouped_order(atoms.get_chemical_symbols())
    grouped = atoms[order]
    structure = Structure(
        Lattice(grouped.cell[:]), grouped.get_chemical_symbols(), grouped.positions, coords_are_cartesian=True
    )
    rng = np.random.default_rng(0)
    forces_grouped = rng.normal(size=(8, 3))  # eV/Å, in POSCAR order
    stress_kbar = [[10.0, 1.0, 0.0], [1.0, 20.0, 0.0], [0.0, 0.0, 30.0]]
    step = SimpleNamespace(e_fr_energy=-27.5, e_0_energy=-27.4, num_electronic_steps=12)
    doc = SimpleNamespace(
        state="successful",
        output=SimpleNamespace(structure=structure, energy=-27.4, forces=forces_grouped.tolist(), stress=stress_kbar),
        calcs_reversed=[SimpleNamespace(output=SimpleNamespace(ionic_steps=[step]), vasp_version="6.4.2")],
        custodian=[{"corrections": [{"errors": ["Eddrmm"], "actions": [], "handler": None}]}],
    )
    labels = labels_from_task_doc(doc, atoms, order, tmp_path)
    assert labels.energy == -27.5  # the free energy, consistent with the forces
    assert labels.meta["energy_sigma0"] == -27.4
    np.testing.assert_allclose(labels.forces[order], forces_grouped)
    np.testing.assert_allclose(labels.forces[1], forces_grouped[4])  # first Cl
    volume = atoms.get_volume()
    np.testing.assert_allclose(labels.virial, np.array(stress_kbar) * 0.1 * units.GPa * volume)
    assert labels.virial[2, 2] == pytest.approx(30 * 0.1 / 160.21766208 * volume, rel=1e-6)
    assert labels.meta["custodian_corrections"] == [{"errors": ["Eddrmm"], "actions": []}]

    doc.state = "failed"
    with pytest.raises(RuntimeError, match="failed"):
        labels_from_task_doc(doc, atoms, order, tmp_path)
