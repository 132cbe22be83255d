"""Fuzz-style bad input: 50+ malformed YAMLs, structures, extxyz files and CLI arguments.

Each must fail with exit code 2 and a one-line message, and leave the store byte-for-byte unchanged.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import yaml
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io import write
from conftest import CONFIGS, store_snapshot

from otf_flows.cli import main

BASE = yaml.safe_load((CONFIGS / "cu-emt.yaml").read_text())


def _set(path: str, value):
    def mutate(c):
        *parents, last = path.split(".")
        node = c
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value

    return mutate


def _drop(path: str):
    def mutate(c):
        *parents, last = path.split(".")
        node = c
        for p in parents:
            node = node[p]
        node.pop(last)

    return mutate


YAML_CASES = [
    _set("unknown", 1), _set("md.unknown", 1), _set("tolerances.emax", 0.1), _set("refit.sigma", "1"),
    _set("adaptive_method_parameters.n_min", 0), _set("adaptive_method_parameters.n_max", 2),
    _set("adaptive_method_parameters.factor", 1), _set("adaptive_method_parameters.factor", -2),
    _set("adaptive_method_parameters.factor", "fast"), _set("check_interval", -3), _set("check_interval", 1000),
    _set("num_initial_steps", -1), _set("num_initial_steps", 5000), _set("md.total_steps", 0),
    _set("md.temperature_K", -1), _set("md.timestep_fs", 0), _set("md.ensemble", "npt"),
    _set("md.friction_per_fs", 0), _set("md.trajectory_interval", -5), _set("tolerances.ediff", -0.1),
    _set("tolerances.fmax", "big"), _set("refit.default_sigma", "a b c d"), _set("refit.e0_method", "zero"),
    _set("refit.previous_data", ["nope.xyz"]), _set("reference.engine", "gaussian"),
    _set("reference.calculator", "EMT"), _set("reference.kwargs", [1, 2]), _set("name", "bad name!"),
    _set("name", ""), _set("structure", {"file": "missing.cif"}), _set("structure.element", "Xx"),
    _set("structure.repeat", [0, 1, 1]), _set("structure.builder", "molecule"), _drop("reference"),
    _drop("name"), _set("model.backend", "nequip"), _set("model.preset", "x"),
    _set("validation.every", 0), _set("execution.gpu", {}), _set("md.guard.min_distance_A", -1),
    _set("model.initial_model", "no-such-model"), _set("refit.previous_data", ["campaign:ghost"]),
]


def _structure_files(tmp_path):
    """(name, content writer) of bad structure files."""
    cases = {}
    (tmp_path / "empty.xyz").write_text("")
    cases["empty.xyz"] = None
    (tmp_path / "garbage.xyz").write_text("this is not\nan xyz file at all\n")
    cases["garbage.xyz"] = None
    (tmp_path / "nan.xyz").write_text("2\nLattice=\"5 0 0 0 5 0 0 0 5\" pbc=\"T T T\"\nCu 0 0 0\nCu nan 1 1\n")
    cases["nan.xyz"] = None
    (tmp_path / "overlap.xyz").write_text("2\nLattice=\"5 0 0 0 5 0 0 0 5\" pbc=\"T T T\"\nCu 0 0 0\nCu 0.1 0 0\n")
    cases["overlap.xyz"] = None
    (tmp_path / "short.xyz").write_text("5\ncomment\nCu 0 0 0\n")
    cases["short.xyz"] = None
    return list(cases)


def _labelled(tmp_path, name, mutate):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    atoms.rattle(0.05, seed=1)
    atoms.calc = EMT()
    atoms.info["REF_energy"] = atoms.get_potential_energy()
    atoms.arrays["REF_forces"] = atoms.get_forces()
    atoms.calc = None
    mutate(atoms)
    write(tmp_path / name, atoms, format="extxyz")
    return str(tmp_path / name)


XYZ_MUTATIONS = {
    "no_energy.xyz": lambda a: a.info.pop("REF_energy"),
    "no_forces.xyz": lambda a: a.arrays.pop("REF_forces"),
    "nan_energy.xyz": lambda a: a.info.__setitem__("REF_energy", float("nan")),
    "nan_forces.xyz": lambda a: a.arrays["REF_forces"].__setitem__((0, 0), np.nan),
    "text_energy.xyz": lambda a: a.info.__setitem__("REF_energy", "high"),
    "bad_virial.xyz": lambda a: a.info.__setitem__("REF_virial", np.ones(4)),
    "overlap_import.xyz": lambda a: a.positions.__setitem__(1, a.positions[0] + 0.05),
}


def _snapshot(path):
    return store_snapshot(path)


@pytest.fixture
def store(tmp_path):
    """A store holding one benchmark set, to check that bad input changes nothing."""
    good = _labelled(tmp_path, "good.xyz", lambda a: None)
    store = tmp_path / "store"
    assert main(["benchmark", "add", "good", good, "--store", str(store)]) == 0
    return store


def test_malformed_inputs_exit_2_one_line_store_unchanged(tmp_path, store, capsys):
    before = _snapshot(store)
    cases = []
    for i, mutate in enumerate(YAML_CASES):
        data = copy.deepcopy(BASE)
        mutate(data)
        path = tmp_path / f"bad_{i}.yaml"
        path.write_text(yaml.safe_dump(data))
        cases.append(["run", str(path)])
    for raw in ("name: [unclosed", "- just\n- a list\n", "", "\tname: tab"):
        path = tmp_path / f"raw_{len(cases)}.yaml"
        path.write_text(raw)
        cases.append(["run", str(path)])
    for name in _structure_files(tmp_path):
        data = copy.deepcopy(BASE)
        data["structure"] = {"file": str(tmp_path / name)}
        path = tmp_path / f"struct_{name}.yaml"
        path.write_text(yaml.safe_dump(data))
        cases.append(["run", str(path)])
    for name, mutate in XYZ_MUTATIONS.items():
        xyz = _labelled(tmp_path, name, mutate)
        cases.append(["benchmark", "add", f"b-{name}", xyz])
        cases.append(["fit", xyz, "--out", str(tmp_path / f"fit-{name}")])
    cases += [
        ["run"], ["run", str(tmp_path / "none.yaml")], ["frobnicate"], ["checks"], ["checks", "ghost"],
        ["models", "--campaign", "ghost"], ["lineage", "ghost-v1"], ["validate", "ghost-v1", "--benchmark", "good"],
        ["report", "ghost", "--out", str(tmp_path / "rep")], ["data", "export", "ghost", str(tmp_path / "x.xyz")],
        ["export-model", "ghost-v1", str(tmp_path / "exp")], ["benchmark", "add", "good", str(tmp_path / "good.xyz")],
        ["fit", str(tmp_path / "good.xyz"), "--out", str(tmp_path / "f"), "--preset", "huge"],
        ["fit", str(tmp_path / "good.xyz"), "--out", str(tmp_path / "f"), "--default-sigma", "1 2"],
        ["fit", str(tmp_path / "missing.xyz"), "--out", str(tmp_path / "f")], ["status", "ghost"],
        ["run", str(CONFIGS / "cu-emt.yaml"), "--resume"], ["checks", "--json"], ["models", "--bogus"],
    ]
    assert len(cases) >= 50
    for args in cases:
        code = main([*args, "--store", str(store)])
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert code == 2, (args, code, captured.err)
        assert len(lines) == 1 and "Traceback" not in captured.err, (args, captured.err)
        assert captured.out == "", (args, captured.out)
        assert _snapshot(store) == before, args
