"""Rough edges a new user hits (issue 14, section 5): licence and citation files, config errors that
must be exit 2 with one line naming the key (duplicate YAML keys, unknown ASE calculators, numbers
the store cannot hold, booleans for numbers, absurd time steps, a directory as structure file), and
`otf export-model` reading the elements from the model and writing the final state for LAMMPS."""

from __future__ import annotations

import re

import numpy as np
import pytest
import yaml
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io import read, write
from conftest import CONFIGS, REPO

from otf_flows.cli import main

BASE = (CONFIGS / "cu-emt.yaml").read_text().replace("total_steps: 2000", "total_steps: 20")  # short if it ran
NAME_LINE = BASE.splitlines().index("name: cu-emt") + 1
DT_LINE = BASE.splitlines().index("  timestep_fs: 2.0") + 1


# ------------------------------------------------------------------ LICENSE, CITATION.cff, README
def test_license_and_citation_files():
    licence = (REPO / "LICENSE").read_text()
    assert licence.startswith("BSD 3-Clause License")
    assert "Copyright (c) 2026, the otf_flows developers" in licence
    assert "Neither the name of the copyright holder" in licence  # clause 3

    cff = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0"
    for key in ("message", "title", "authors"):  # required by the CFF 1.2.0 schema
        assert cff[key], key
    assert cff["title"] == "otf_flows" and cff["license"] == "BSD-3-Clause"
    assert all("name" in a or "family-names" in a for a in cff["authors"])
    (paper,) = [r for r in cff["references"] if r.get("type") == "article"]
    assert [a["family-names"] for a in paper["authors"]] == [
        "Stenczel", "El-Machachi", "Liepuoniute", "Morrow", "Bartók", "Probert", "Csányi", "Deringer"]
    assert (paper["journal"], str(paper["volume"]), str(paper["start"]), paper["year"]) == (
        "The Journal of Chemical Physics", "159", "044803", 2023)
    for ref in cff["references"]:  # required keys of a CFF reference
        assert {"type", "title", "authors"} <= set(ref), ref

    readme = (REPO / "README.md").read_text()
    assert "*J. Chem. Phys.* **159**, 044803 (2023)" in readme and "114803" not in readme
    assert "LICENSE" in readme and "CITATION.cff" in readme


# ------------------------------------------------------------------ config errors: exit 2, one line, no store
def _structure_dir(text: str, tmp_path) -> str:
    (tmp_path / "frames").mkdir()
    return re.sub(r"structure:\n(  .*\n)+", "structure:\n  file: frames\n", text)


CASES = {
    "duplicate top-level key": (
        lambda t, p: t + "name: other\n",
        ["duplicate key 'name'", f"at line {len(BASE.splitlines()) + 1}", f"first given at line {NAME_LINE})"]),
    "duplicate nested key": (
        lambda t, p: t.replace("  timestep_fs: 2.0\n", "  timestep_fs: 2.0\n  timestep_fs: 3.0\n"),
        ["duplicate key 'timestep_fs'", f"at line {DT_LINE + 1}"]),
    "duplicate key in a flow mapping": (
        lambda t, p: t + "execution:\n  md: {omp_threads: 1, omp_threads: 2}\n", ["duplicate key 'omp_threads'"]),
    "unknown ASE calculator module": (
        lambda t, p: t.replace("ase.calculators.emt.EMT", "ase.calculators.nope.Nope"),
        ["reference.calculator:", "no module named 'ase.calculators.nope'", "ase.calculators.emt.EMT"]),
    "unknown ASE calculator class": (
        lambda t, p: t.replace("ase.calculators.emt.EMT", "ase.calculators.emt.Nope"),
        ["reference.calculator:", "'ase.calculators.emt' has no 'Nope'"]),
    "ASE calculator path naming a number": (
        lambda t, p: t.replace("ase.calculators.emt.EMT", "ase.units.fs"),
        ["reference.calculator:", "not a class or callable"]),
    "n_max 1e30 (a string to PyYAML)": (
        lambda t, p: t.replace("n_max: 400", "n_max: 1e30"),
        ["adaptive_method_parameters.n_max:", "at most 2**63 - 1", "'1e30'"]),
    "n_max 1.0e+30 (a float)": (
        lambda t, p: t.replace("n_max: 400", "n_max: 1.0e+30"),
        ["adaptive_method_parameters.n_max:", "at most 2**63 - 1"]),
    "seed past int64": (
        lambda t, p: t.replace("  seed: 7\n", f"  seed: {2**63}\n"), ["md.seed:", "at most 2**63 - 1"]),
    "boolean for a float": (
        lambda t, p: t.replace("ediff: 0.002", "ediff: true"),
        ["tolerances.ediff:", "must be a number, not a boolean", "(got True)"]),
    "boolean inside a list of ints": (
        lambda t, p: t.replace("repeat: [2, 2, 2]", "repeat: [2, true, 2]"),
        ["structure.repeat.1:", "not a boolean"]),
    "boolean for validation.every": (
        lambda t, p: t + "validation:\n  every: true\n", ["validation.every:", "not a boolean"]),
    "time step of 50 fs": (
        lambda t, p: t.replace("timestep_fs: 2.0", "timestep_fs: 50"),
        ["md.timestep_fs:", "less than or equal to 20", "(got 50)"]),
    "structure.file naming a directory": (
        _structure_dir, ["structure.file:", "'frames' is a directory"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_config_errors_exit_2_with_one_line_and_store_nothing(case, tmp_path, capsys):
    mutate, expected = CASES[case]
    text = mutate(BASE, tmp_path)
    assert text != BASE
    path = tmp_path / "campaign.yaml"
    path.write_text(text)
    store = tmp_path / "store"
    code = main(["run", str(path), "--store", str(store)])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured.err
    assert len(lines) == 1 and lines[0].startswith("otf: error: ") and "Traceback" not in captured.err
    for part in expected:
        assert part in lines[0], (part, lines[0])
    assert captured.out == ""
    assert not store.exists()


def test_fit_config_with_a_duplicate_key_is_an_input_error(tmp_path, capsys):
    config = tmp_path / "refit.yaml"
    config.write_text("refit:\n  default_sigma: 0.001 0.05 0.05 0.0\n  default_sigma: 1 1 1 0\n")
    code = main(["fit", str(tmp_path / "train.xyz"), "--out", str(tmp_path / "model"), "--config", str(config),
                 "--store", str(tmp_path / "store")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "duplicate key 'default_sigma'" in err and "line 3" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "model").exists() and not (tmp_path / "store").exists()


def test_boundary_values_still_validate():
    """The new limits reject only what they name: 20 fs, 2**63 - 1, booleans where booleans belong,
    a big float where floats belong, and YAML merge keys (not duplicates) still load."""
    from otf_flows.campaign import config_from_dict
    from otf_flows.yaml_config import load_yaml

    data = load_yaml(BASE)
    data["md"]["timestep_fs"] = 20
    data["md"]["seed"] = 2**63 - 1
    data["adaptive_method_parameters"]["n_max"] = 2**63 - 1
    data["structure"]["cubic"] = True
    data["tolerances"]["ediff"] = 1e30
    data["reference"]["kwargs"] = {"asap_cutoff": False}
    cfg = config_from_dict(data)
    assert cfg.md.timestep_fs == 20 and cfg.md.seed == 2**63 - 1 and cfg.reference.kwargs == {"asap_cutoff": False}
    merged = load_yaml("base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  y: 3\n")
    assert merged["other"] == {"x": 1, "y": 3}


# ------------------------------------------------------------------ otf export-model
DESCRIPTOR = ("distance_2b cutoff=4.0 cutoff_transition_width=0.5 covariance_type=ard_se delta=0.5 "
              "theta_uniform=1.0 sparse_method=uniform n_sparse=8")


def _labelled(atoms, seed):
    atoms = atoms.copy()
    atoms.rattle(0.05, seed=seed)
    atoms.calc = EMT()
    atoms.info["REF_energy"] = atoms.get_potential_energy()
    atoms.arrays["REF_forces"] = atoms.get_forces()
    atoms.calc = None
    return atoms


@pytest.fixture
def campaign_model(tmp_path):
    """A real (tiny) Cu-Au GAP of campaign 'exp' whose first 50 training frames are Cu only, and the
    campaign's final state."""
    from otf_flows.campaign import Refit
    from otf_flows.data import frames_from_xyz
    from otf_flows.frames import frame_to_atoms
    from otf_flows.jobs.fit import register_fit
    from otf_flows.md.segment import MDState
    from otf_flows.md.state import state_doc
    from otf_flows.ml.gap.fit import fit_gap
    from otf_flows.schemas.documents import CampaignDoc
    from otf_flows.store import OtfStore

    cu = bulk("Cu", "fcc", a=3.61, cubic=True)
    cuau = cu.repeat(2)
    cuau.symbols[:4] = "Au"  # 4 Au of 32: Au-Au pairs at several distances, as gap_fit needs
    path = tmp_path / "train.xyz"
    write(path, [_labelled(cu, i) for i in range(50)] + [_labelled(cuau, 90 + i) for i in range(3)],
          format="extxyz")
    frames = frames_from_xyz(path, campaign="exp")
    assert all(79 not in f.numbers for f in frames[:50]) and 79 in frames[50].numbers
    st = OtfStore(str(tmp_path / "store"))
    for f in frames:
        st.add_frame(f)
    result = fit_gap([frame_to_atoms(f) for f in frames], tmp_path / "fit", Refit(), DESCRIPTOR, num_threads=1)
    model = register_fit(st, result, frames, model_id="exp-v1", version=1, campaign="exp", parent=None,
                         trigger=None, trigger_step=None, settings={"descriptor_str": DESCRIPTOR})
    final = _labelled(cuau, 7)
    final.set_velocities(np.full((len(final), 3), 0.01))
    state = state_doc("exp", MDState.from_atoms(final, 40, None), model.model_id)
    st.put_state(state)
    st.put_campaign(CampaignDoc(name="exp", config={}, total_steps=40, step=40, state_id=state.state_id,
                                model_id=model.model_id, status="completed"))
    st.close()
    return tmp_path / "store", final


def test_export_model_reads_elements_from_the_model_and_writes_the_final_state(campaign_model, tmp_path, capsys):
    store, final = campaign_model
    dest = tmp_path / "exported"
    assert main(["export-model", "exp-v1", str(dest), "--store", str(store)]) == 0
    err = capsys.readouterr().err
    assert "final_state.data" in err and "units metal" in err and "campaign exp" in err

    lammps = (dest / "lammps.in").read_text()
    (coeff,) = [line for line in lammps.splitlines() if line.startswith("pair_coeff")]
    assert coeff.endswith('" 29 79'), coeff  # Au is only in the 51st training frame
    assert "# read_data final_state.data" in lammps and "atom types Cu Au" in lammps

    text = (dest / "final_state.data").read_text()
    assert "2 atom types" in text and "Masses" in text and "Velocities" in text
    back = read(dest / "final_state.data", format="lammps-data", units="metal", atom_style="atomic",
                Z_of_type={1: 29, 2: 79})
    assert back.get_chemical_symbols() == final.get_chemical_symbols()
    assert np.allclose(back.positions, final.positions, atol=1e-6)
    assert np.allclose(back.cell[:], final.cell[:], atol=1e-6)
    assert np.allclose(back.get_velocities(), final.get_velocities(), rtol=1e-5)


def test_gap_species_reads_every_descriptor_form(tmp_path):
    from otf_flows.ml.gap.backend import gap_species

    xml = tmp_path / "gap.xml"
    xml.write_text(
        "<Potential><GAP_params label='GAP_x'>"
        "<gpCoordinates><descriptor>soap n_species=2 Z=8 species_Z={1 8 } n_max=4</descriptor></gpCoordinates>"
        "<gpCoordinates><descriptor>distance_2b Z1=1 Z2=14 cutoff=4</descriptor></gpCoordinates>"
        "<gpCoordinates><descriptor>angle_3b Z=0 Z1=6 Z2=6</descriptor></gpCoordinates>"
        "</GAP_params></Potential>"
    )
    assert gap_species(xml) == [1, 6, 8, 14]
