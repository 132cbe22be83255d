"""Provenance in the store (issue 14): each frame keeps how its labels were made and its structure as a
pymatgen dict; imported frames keep their file and a level of theory; mixing levels of theory warns.

The CP2K side (version, SCF steps, custodian corrections of a real run) is tested on the real CP2K
campaign in test_cp2k_campaign.py.
"""

from __future__ import annotations

import json
import logging

import ase
import numpy as np
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io import write
from conftest import run_otf
from pymatgen.core import Molecule, Structure

from otf_flows.campaign import config_from_dict
from otf_flows.frames import level_of_theory, pymatgen_dict
from otf_flows.jobs.fit import mixed_levels_of_theory
from otf_flows.managers.local import run_campaign
from otf_flows.store import OtfStore


def _previous_data(path, levels):
    frames = []
    for i, level in enumerate(levels):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
        atoms.rattle(0.05, seed=10 + i)
        atoms.calc = EMT()
        atoms.info["REF_energy"] = atoms.get_potential_energy()
        atoms.arrays["REF_forces"] = atoms.get_forces()
        atoms.calc = None
        if level is not None:
            atoms.info["level_of_theory"] = level
        frames.append(atoms)
    write(path, frames, format="extxyz")


def test_frames_keep_their_provenance_and_mixed_levels_warn(tmp_path, cu_config, caplog):
    prev = tmp_path / "prev.xyz"
    _previous_data(prev, ["ase EMT", "ase EMT", None])
    cu_config["md"]["total_steps"] = 30
    cu_config["refit"]["previous_data"] = [str(prev)]
    store = OtfStore(str(tmp_path / "store"))
    with caplog.at_level(logging.WARNING, logger="otf_flows.jobs.fit"):
        assert run_campaign(config_from_dict(cu_config), store).status == "completed"
    frames = store.frames_of("cu-emt")
    own = [f for f in frames if f.source != "import"]
    assert {f.source for f in own} == {"initial_md", "check"}
    for f in own:
        p = f.provenance
        assert (p.code, p.calculator, p.code_version) == ("ase", "ase.calculators.emt.EMT", ase.__version__)
        assert p.level_of_theory == "ase EMT" == level_of_theory(f.reference)
        assert p.attempts == 1 and p.wall_seconds > 0 and p.source_file is None
        structure = Structure.from_dict(f.structure)
        np.testing.assert_allclose(structure.cart_coords, f.positions, atol=1e-12)
        np.testing.assert_allclose(structure.lattice.matrix, f.cell, atol=1e-12)
        assert [s.specie.Z for s in structure] == f.numbers
    imported = sorted((f for f in store.training_frames("cu-emt") if f.source == "import"),
                      key=lambda f: f.provenance.source_index)
    assert [f.provenance.source_index for f in imported] == [0, 1, 2]
    assert {f.provenance.source_file for f in imported} == {str(prev.resolve())}
    assert [f.provenance.level_of_theory for f in imported] == ["ase EMT", "ase EMT", "unknown (imported from prev.xyz)"]
    assert all(f.provenance.code == "file" for f in imported)

    # the first fit mixed "ase EMT" with the unlabelled file frame: logged and on the model
    model = store.models("cu-emt")[0]
    n_emt = len(model.training_frame_ids) - 1
    expected = f"trained on frames of 2 levels of theory: {n_emt} from ase EMT; 1 from unknown (imported from prev.xyz)"
    assert model.warnings == [expected]
    assert any("levels of theory" in r.getMessage() for r in caplog.records)
    assert model.flags == []  # a warning, not a failed promotion gate
    assert mixed_levels_of_theory(own) is None

    # visible from the command line
    rows = json.loads(run_otf("data", "frames", "cu-emt", "--store", str(store.path), "--json").stdout)
    assert len(rows) == len(frames)
    check = next(r for r in rows if r["source"] == "check")
    assert check["level_of_theory"] == "ase EMT" and check["code"] == "ase" and check["provenance"]["attempts"] == 1
    shown = json.loads(run_otf("data", "frame", check["frame_id"], "--store", str(store.path)).stdout)
    assert Structure.from_dict(shown["structure"]).num_sites == len(shown["numbers"])
    assert shown["provenance"]["code_version"] == ase.__version__
    models = json.loads(run_otf("models", "--store", str(store.path), "--json").stdout)
    assert models[0]["warnings"] == model.warnings
    missing = run_otf("data", "frame", "nope", "--store", str(store.path))
    assert missing.returncode == 2 and "'nope' is not in" in missing.stderr


def test_pymatgen_dict_of_a_molecule_and_a_slab():
    from ase.build import fcc111, molecule

    water = molecule("H2O")
    mol = Molecule.from_dict(pymatgen_dict(water))
    np.testing.assert_allclose(mol.cart_coords, water.positions)
    slab = fcc111("Cu", (2, 2, 2), vacuum=5.0)  # periodic in x and y only
    structure = Structure.from_dict(pymatgen_dict(slab))
    assert structure.lattice.pbc == (True, True, False)
    np.testing.assert_allclose(structure.cart_coords, slab.positions, atol=1e-12)
    flat = slab.copy()
    flat.cell[2] = 0.0  # no third cell vector: no Structure, the frame is stored without one
    assert pymatgen_dict(flat) is None


def test_level_of_theory_labels():
    assert level_of_theory({"engine": "cp2k", "xc_functional": "PBE", "basis_set": "DZVP-MOLOPT-SR-GTH",
                            "potential": "GTH-PBE", "cutoff_Ry": 300.0, "kpoints": [1, 1, 1]}) == \
        "cp2k PBE DZVP-MOLOPT-SR-GTH GTH-PBE 300 Ry"
    assert level_of_theory({"engine": "vasp", "gga": "PE", "encut_eV": 520.0, "kpoints": [2, 2, 2],
                            "spin_polarized": True}) == "vasp PE ENCUT 520 eV spin k 2x2x2"
    assert level_of_theory({"engine": "ase", "calculator": "ase.calculators.lj.LennardJones",
                            "kwargs": {"sigma": 2.3}}) == "ase LennardJones sigma=2.3"
    assert level_of_theory({"file": "old.xyz"}) == "unknown (imported from old.xyz)"  # frames stored before provenance
