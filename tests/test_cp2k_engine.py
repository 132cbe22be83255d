"""CP2K engine: real CP2K runs on 8 Si atoms, compared with a hand-written direct CP2K run.

The direct run uses CP2K's own data files and an input written here (not by atomate2 or
pymatgen) with the same physics as the engine's defaults; both outputs are parsed in
atomic units and converted with ASE's constants, so the comparison checks the whole
engine: structure conversion, basis/potential choice, input set, custodian, parsing and
the unit conversion at the boundary.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pymatgen.core
import pytest
from ase import Atoms, units
from ase.build import bulk

from otf_flows.errors import BackendUnavailableError, ConfigError, InputError, ReferenceFailedError
from otf_flows.labels import Labels
from otf_flows.reference.cp2k.engine import (
    RESTART_MAX_DISPLACEMENT_A,
    Cp2kEngine,
    _cached_element_data,
    added_mos,
    input_settings,
    resolve_basis_and_potential,
    reusable_wavefunction,
)
from otf_flows.reference.cp2k.env import (
    cp2k_environment,
    ensure_pmg_cp2k_data,
    find_cp2k,
    find_cp2k_data,
)
from otf_flows.reference.cp2k.settings import Cp2kReference
from otf_flows.reference.registry import get_engine

CP2K = shutil.which("cp2k.psmp") or shutil.which("cp2k")
DATA = Path(__file__).parent / "data" / "cp2k"

requires_cp2k = pytest.mark.skipif(CP2K is None, reason="cp2k (cp2k.psmp or cp2k) is not on PATH")


@pytest.fixture
def si8() -> Atoms:
    """Diamond Si, conventional 8-atom cell, rattled by 0.05 Å (fixed seed)."""
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    atoms.rattle(0.05, seed=7)
    return atoms


@pytest.fixture(scope="module")
def pmg_data() -> Path:
    """pymatgen's CP2K data dir in the user cache (made once, ~25 s, by the engine itself)."""
    if CP2K is None:
        pytest.skip("cp2k (cp2k.psmp or cp2k) is not on PATH")
    return ensure_pmg_cp2k_data(find_cp2k_data(CP2K))


# --- a direct CP2K run, independent of atomate2/pymatgen -------------------------------------

DIRECT_INPUT = """\
&GLOBAL
  PROJECT direct
  RUN_TYPE ENERGY_FORCE
  EXTENDED_FFT_LENGTHS T
&END GLOBAL
&FORCE_EVAL
  METHOD QS
  STRESS_TENSOR ANALYTICAL
  &DFT
    BASIS_SET_FILE_NAME {data}/BASIS_MOLOPT
    POTENTIAL_FILE_NAME {data}/POTENTIAL
    UKS F
    &QS
      METHOD GPW
      EPS_DEFAULT 1.0E-10
    &END QS
    &MGRID
      CUTOFF 300
      REL_CUTOFF 50
      NGRIDS 4
      PROGRESSION_FACTOR 3
    &END MGRID
    &SCF
      SCF_GUESS ATOMIC
      EPS_SCF 1.0E-6
      MAX_SCF 100
      MAX_DIIS 15
      ADDED_MOS 10
      &DIAGONALIZATION
      &END DIAGONALIZATION
      &MIXING
        METHOD BROYDEN_MIXING
        ALPHA 0.4
        BETA 0.01
        NBUFFER 8
        N_SIMPLE_MIX 3
      &END MIXING
      &SMEAR
        METHOD FERMI_DIRAC
        ELECTRONIC_TEMPERATURE [K] 1000
      &END SMEAR
    &END SCF
    &XC
      &XC_FUNCTIONAL PBE
      &END XC_FUNCTIONAL
    &END XC
  &END DFT
  &SUBSYS
    &CELL
{cell}
    &END CELL
    &COORD
{coords}
    &END COORD
    &KIND Si
      BASIS_SET DZVP-MOLOPT-SR-GTH
      POTENTIAL GTH-PBE
    &END KIND
  &END SUBSYS
  &PRINT
    &FORCES ON
    &END FORCES
    &STRESS_TENSOR ON
    &END STRESS_TENSOR
  &END PRINT
&END FORCE_EVAL
"""


def parse_cp2k_output(text: str) -> dict:
    """Energy (Hartree), forces (Hartree/Bohr), stress (GPa, CP2K's sign) from CP2K's main output."""
    energy = float(re.findall(r"ENERGY\| Total FORCE_EVAL \( QS \) energy \[a\.u\.\]:\s+(\S+)", text)[-1])
    block = text.split("ATOMIC FORCES in [a.u.]")[-1].split("SUM OF ATOMIC FORCES")[0]
    forces = [
        [float(x) for x in m]
        for m in re.findall(r"^\s+\d+\s+\d+\s+\w+\s+(\S+)\s+(\S+)\s+(\S+)\s*$", block, re.MULTILINE)
    ]
    stress_block = text.split("STRESS| Analytical stress tensor [GPa]")[-1]
    stress = [
        [float(x) for x in m]
        for m in re.findall(
            r"STRESS\|\s+[xyz]\s+([-+]?\d\.\d+E[-+]\d+)\s+([-+]?\d\.\d+E[-+]\d+)\s+([-+]?\d\.\d+E[-+]\d+)", stress_block
        )[:3]
    ]
    return {"energy": energy, "forces": np.array(forces), "stress": np.array(stress)}


def run_direct(atoms: Atoms, directory: Path) -> dict:
    """Run CP2K on a hand-written input equivalent to the engine's defaults."""
    cell = "\n".join(f"      {v} {x:.12f} {y:.12f} {z:.12f}" for v, (x, y, z) in zip("ABC", atoms.cell[:]))
    coords = "\n".join(f"      {s} {x:.12f} {y:.12f} {z:.12f}" for s, (x, y, z) in zip(atoms.symbols, atoms.positions))
    text = DIRECT_INPUT.format(data=find_cp2k_data(CP2K), cell=cell, coords=coords)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "direct.inp").write_text(text)
    env = {k: v for k, v in os.environ.items() if k != "CP2K_DATA_DIR"}  # as in the engine
    with open(directory / "direct.log", "w") as log:
        subprocess.run(
            [CP2K, "-i", "direct.inp", "-o", "direct.out"], cwd=directory, env=env, stdout=log, stderr=log, check=True
        )
    return parse_cp2k_output((directory / "direct.out").read_text())


# --- real runs ----------------------------------------------------------------------------


@pytest.mark.cp2k
@requires_cp2k
@pytest.mark.usefixtures("pmg_data")
def test_labels_match_a_direct_cp2k_run(si8, tmp_path):
    settings = Cp2kReference()
    engine = get_engine(settings)
    assert isinstance(engine, Cp2kEngine) and engine.name == "cp2k"
    engine.check_available()
    environ_before, cwd_before = dict(os.environ), os.getcwd()

    labels = engine.label(si8, tmp_path / "engine")

    assert dict(os.environ) == environ_before and os.getcwd() == cwd_before
    assert labels.meta["attempts"] == 1
    assert labels.meta["scf_steps"] > 1
    assert labels.meta["cp2k_version"]
    job_dir = Path(labels.meta["directory"])
    assert job_dir == (tmp_path / "engine" / "attempt_1").resolve()

    # The same frame through a hand-written input and CP2K directly.
    direct = run_direct(si8, tmp_path / "direct")
    n = len(si8)
    assert labels.energy / n == pytest.approx(direct["energy"] * units.Hartree / n, abs=1e-5)
    np.testing.assert_allclose(labels.forces, direct["forces"] * units.Hartree / units.Bohr, atol=1e-4)
    np.testing.assert_allclose(labels.virial, direct["stress"] * units.GPa * si8.get_volume(), atol=1e-3)

    # Units: eV and eV/Å, converted exactly once from the engine's own CP2K output.
    with gzip.open(job_dir / "cp2k.out.gz", "rt") as handle:
        raw = parse_cp2k_output(handle.read())
    assert labels.energy == pytest.approx(raw["energy"] * units.Hartree, rel=1e-7)
    np.testing.assert_allclose(labels.forces, raw["forces"] * units.Hartree / units.Bohr, rtol=1e-9, atol=1e-9)
    assert -110 < labels.energy / n < -100  # Si with a 4-electron GTH potential: about -105.8 eV/atom
    assert labels.forces.shape == (n, 3)
    np.testing.assert_allclose(labels.forces.sum(axis=0), 0.0, atol=1e-3)
    assert 0.1 < np.abs(labels.forces).max() < 5.0  # a 0.05 Å rattle gives ~0.5 eV/Å, not ~0.01 (Ha/Bohr)
    np.testing.assert_allclose(labels.virial, labels.virial.T, atol=1e-8)

    # Sign and size of the virial: -dE/d(strain) for a small isotropic strain. Another cell: the
    # wavefunction of the first frame is not reused even when offered.
    strain = 1e-3
    strained = si8.copy()
    strained.set_cell(si8.cell * (1 + strain), scale_atoms=True)
    strained_labels = engine.label(strained, tmp_path / "strained", restart=(si8, labels))
    assert strained_labels.meta["wfn_restart"] is None
    assert -(strained_labels.energy - labels.energy) / strain == pytest.approx(np.trace(labels.virial), rel=0.05)

    # The next MD step (same cell, atoms moved a little) starts from the first frame's wavefunction:
    # CP2K reads it (no fallback to the atomic guess), needs fewer SCF steps, and the labels are those of
    # the same frame from atomic densities within the SCF tolerance.
    moved = si8.copy()
    moved.positions += np.random.default_rng(3).normal(0, 0.02, moved.positions.shape)
    restarted = engine.label(moved, tmp_path / "moved", restart=(si8, labels))
    assert restarted.meta["wfn_restart"] == str(job_dir / "CP2K-RESTART.wfn.gz")
    assert restarted.meta["input_settings"]["wfn_restart"] == restarted.meta["wfn_restart"]
    with gzip.open(Path(restarted.meta["directory"]) / "cp2k.out.gz", "rt") as handle:
        output = handle.read()
    assert "ATOMIC GUESS" not in output and "Atomic guess" not in output
    atomic = engine.label(moved, tmp_path / "moved_atomic")
    assert atomic.meta["wfn_restart"] is None and restarted.meta["scf_steps"] < atomic.meta["scf_steps"]
    assert restarted.energy / n == pytest.approx(atomic.energy / n, abs=1e-6)
    np.testing.assert_allclose(restarted.forces, atomic.forces, atol=1e-3)


@pytest.mark.cp2k
@requires_cp2k
@pytest.mark.usefixtures("pmg_data")
def test_unconverged_scf_raises_reference_failed_naming_the_directory(si8, tmp_path):
    settings = Cp2kReference(max_scf=1, eps_scf=1e-10, retries=1, custodian_max_errors=1)
    workdir = tmp_path / "frame_0001"
    with pytest.raises(ReferenceFailedError) as info:
        Cp2kEngine(settings).label(si8, workdir)
    message = str(info.value)
    assert str(workdir.resolve()) in message
    assert "2 attempt(s)" in message
    assert "\n" not in message
    assert (workdir / "attempt_1").is_dir() and (workdir / "attempt_2").is_dir()


# --- no CP2K run needed ---------------------------------------------------------------------


def test_wavefunction_is_reused_only_between_consecutive_frames(si8, tmp_path):
    run = tmp_path / "attempt_1"
    run.mkdir()
    (run / "CP2K-RESTART.wfn.gz").write_bytes(b"")
    previous = (si8, Labels(0.0, np.zeros((8, 3)), meta={"directory": str(run)}))
    step = si8.copy()
    step.positions += 0.05
    assert reusable_wavefunction(previous, step) == run / "CP2K-RESTART.wfn.gz"
    wrapped = step.copy()
    wrapped.positions[0] += si8.cell[0]  # the same frame across the periodic boundary
    assert reusable_wavefunction(previous, wrapped) == run / "CP2K-RESTART.wfn.gz"

    far = si8.copy()
    far.positions[3] += [RESTART_MAX_DISPLACEMENT_A, 0, 0]
    other_cell = si8.copy()
    other_cell.set_cell(si8.cell * 1.01, scale_atoms=True)
    other_atoms = si8.copy()
    other_atoms.numbers[0] = 6
    for frame in (far, other_cell, other_atoms, si8[:7]):
        assert reusable_wavefunction(previous, frame) is None
    assert reusable_wavefunction(None, step) is None
    assert reusable_wavefunction((si8, Labels(0.0, np.zeros((8, 3)))), step) is None  # no run directory
    (run / "CP2K-RESTART.wfn.gz").unlink()
    assert reusable_wavefunction(previous, step) is None  # the run left no wavefunction


def test_element_data_is_parsed_once_and_again_when_it_changes(tmp_path, monkeypatch):
    from pymatgen.io.cp2k import sets

    parsed = []
    original = sets.YAML

    class CountingYAML(original):
        def load(self, stream):
            parsed.append(stream.name)
            return super().load(stream)

    monkeypatch.setattr(sets, "YAML", CountingYAML)
    path = tmp_path / "Si"
    path.write_text("basis_sets: {a: {name: X}}\npotentials: {b: {name: Y}}\n")

    def load():
        with open(path) as handle:
            return sets.YAML().load(handle)

    with _cached_element_data():
        first, second = load(), load()
    assert first is second and first["basis_sets"]["a"]["name"] == "X" and len(parsed) == 1
    assert sets.YAML is CountingYAML  # restored
    path.write_text("basis_sets: {a: {name: Z}}\npotentials: {b: {name: Y}}\n")
    with _cached_element_data():
        assert load()["basis_sets"]["a"]["name"] == "Z" and len(parsed) == 2


def test_mixing_beta_is_cp2ks_kerker_damping(pmg_data):
    assert "beta" not in input_settings(Cp2kReference(), ["Si"] * 8, pmg_data)  # atomate2's 0.01
    damped = input_settings(Cp2kReference(mixing_beta=1.5), ["Si"] * 8, pmg_data)
    assert damped["beta"] == 1.5 and damped["mixing_method"] == "BROYDEN_MIXING"
    with pytest.raises(ValueError, match="mixing_beta"):
        Cp2kReference(mixing_beta=0)


def test_input_settings_use_fast_restricted_defaults(pmg_data):
    settings = input_settings(Cp2kReference(), ["Si"] * 8, pmg_data)
    basis_hash, potential_hash, valence = resolve_basis_and_potential(
        "Si", "DZVP-MOLOPT-SR-GTH", "GTH-PBE", str(pmg_data)
    )
    assert valence == 4
    assert settings["basis_and_potential"] == {
        "Si": {"basis": basis_hash, "potential": potential_hash, "aux_basis": None}
    }
    assert settings["ot"] is False and settings["smearing"] is True and settings["elec_temp"] == 1000
    assert settings["cutoff"] == 300 and settings["rel_cutoff"] == 50
    scf = settings["override_default_params"]["FORCE_EVAL"]["DFT"]
    assert scf["UKS"] is False
    assert scf["SCF"] == {"MAX_SCF": 100, "ADDED_MOS": 10}
    assert added_mos(32) == 10 and added_mos(512) == 64 and added_mos(511) == 64

    expert = input_settings(
        Cp2kReference(input_updates={"override_default_params": {"FORCE_EVAL": {"DFT": {"SCF": {"MAX_SCF": 7}}}}}),
        ["Si"],
        pmg_data,
    )
    assert expert["override_default_params"]["FORCE_EVAL"]["DFT"] == {
        "UKS": False,
        "SCF": {"MAX_SCF": 7, "ADDED_MOS": 10},
    }


def test_unknown_basis_is_a_config_error(pmg_data):
    with pytest.raises(ConfigError, match="'NO-SUCH-BASIS' is not a CP2K basis set of Si"):
        input_settings(Cp2kReference(basis_set="NO-SUCH-BASIS"), ["Si"], pmg_data)
    with pytest.raises(ConfigError, match="'GTH-NOPE' is not a CP2K potential of Si"):
        input_settings(Cp2kReference(potential_by_element={"Si": "GTH-NOPE"}), ["Si"], pmg_data)


def test_settings_reject_bad_values():
    with pytest.raises(ValueError, match="rel_cutoff_Ry"):
        Cp2kReference(cutoff_Ry=40)
    with pytest.raises(ValueError, match="element symbols"):
        Cp2kReference(basis_set_by_element={"silicon": "DZVP-MOLOPT-SR-GTH"})
    with pytest.raises(ValueError, match="k-point divisions"):
        Cp2kReference(kpoints=[0, 1, 1])
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        Cp2kReference(spin_polarized=False)


def test_non_periodic_frames_are_rejected(tmp_path):
    molecule = Atoms("Si2", positions=[[0, 0, 0], [0, 0, 2.3]], cell=[10, 10, 10], pbc=False)
    with pytest.raises(InputError, match="3D-periodic"):
        Cp2kEngine(Cp2kReference()).label(molecule, tmp_path)
    assert not any(tmp_path.iterdir())


def test_missing_cp2k_names_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BackendUnavailableError, match=r"apt-get install cp2k"):
        find_cp2k("cp2k.psmp")
    with pytest.raises(BackendUnavailableError, match="not found on PATH"):
        Cp2kEngine(Cp2kReference()).check_available()


def test_find_cp2k_falls_back_to_other_names(monkeypatch, tmp_path):
    fake = tmp_path / "cp2k"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_cp2k("cp2k.psmp") == [str(fake)]
    with pytest.raises(BackendUnavailableError, match="launcher 'mpirun'"):
        find_cp2k("mpirun -np 2 cp2k.psmp")


def test_environment_is_set_inside_and_restored_after(monkeypatch, tmp_path):
    monkeypatch.setenv("CP2K_DATA_DIR", "/raw/cp2k/data")
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    monkeypatch.delenv("PMG_CP2K_DATA_DIR", raising=False)
    settings = pymatgen.core.SETTINGS
    monkeypatch.setitem(settings, "PMG_DEFAULT_CP2K_FUNCTIONAL", "LDA")
    before = dict(os.environ)

    with cp2k_environment(tmp_path, "PBE", omp_threads=2):
        assert "CP2K_DATA_DIR" not in os.environ
        assert os.environ["PMG_CP2K_DATA_DIR"] == str(tmp_path)
        assert os.environ["OMP_NUM_THREADS"] == "2"
        # pymatgen.io.cp2k.sets imported SETTINGS by reference: it sees the same dict.
        from pymatgen.io.cp2k import sets

        assert sets.SETTINGS["PMG_CP2K_DATA_DIR"] == str(tmp_path)
        assert sets.SETTINGS["PMG_DEFAULT_CP2K_FUNCTIONAL"] == "PBE"
        # and a child process does not inherit CP2K_DATA_DIR
        child = subprocess.run(["env"], capture_output=True, text=True, check=True).stdout
        assert "CP2K_DATA_DIR=" not in child.replace("PMG_CP2K_DATA_DIR=", "")

    assert dict(os.environ) == before
    assert "PMG_CP2K_DATA_DIR" not in settings
    assert settings["PMG_DEFAULT_CP2K_FUNCTIONAL"] == "LDA"

    with pytest.raises(RuntimeError), cp2k_environment(tmp_path):
        raise RuntimeError("restored on errors too")
    assert dict(os.environ) == before


def test_pmg_data_dir_is_generated_once(tmp_path):
    cache = tmp_path / "cache"
    target = ensure_pmg_cp2k_data(DATA, cache)
    assert target == cache / "pmg_cp2k"
    basis, potential, valence = resolve_basis_and_potential("Si", "DZVP-MOLOPT-SR-GTH", "GTH-PBE", str(target))
    assert valence == 4 and basis != potential
    marker = next(target.glob(".otf_flows_complete"))
    stamp = marker.stat().st_mtime_ns
    assert ensure_pmg_cp2k_data(tmp_path / "does-not-matter", cache) == target
    assert marker.stat().st_mtime_ns == stamp
    assert sorted(p.name for p in cache.iterdir()) == ["pmg_cp2k", "pmg_cp2k.lock", "pmg_cp2k.log"]
