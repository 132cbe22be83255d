"""The MACE backend with a tiny real model on EMT Cu: a fit from scratch, a fine-tune that starts
from the parent's weights, a `model.backend: mace` campaign end to end with a 2-member committee
and the uncertainty trigger (refits as fine-tuned versions, lineage, validation, uncertainty at
the checks), the committee's uncertainty probe, `otf export-model` loadable by mace's
``MACECalculator`` and `otf fit --backend mace`."""

from __future__ import annotations

import itertools
import json
import re
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io import write
from conftest import run_otf

from otf_flows.campaign import Refit, config_from_dict
from otf_flows.errors import ConfigError
from otf_flows.ml.mace.settings import MaceModel
from otf_flows.ml.registry import get_backend
from otf_flows.store import OtfStore

pytest.importorskip("mace", reason="mace-torch is not installed (scripts/setup.sh --test installs it)")

# a guard against a hang, not a speed limit: the module fixtures fit real models (a loaded 2-core machine
# took over 300 s for the campaign fixture)
pytestmark = pytest.mark.timeout(1800)

TINY = {"backend": "mace", "num_channels": 8, "max_L": 0, "num_interactions": 2, "correlation": 2,
        "r_max_A": 4.0, "num_radial_basis": 6, "max_num_epochs": 12, "finetune_epochs": 3, "batch_size": 2,
        "energy_weight": 10.0, "num_threads": 1}


def _frames(n: int, seed0: int = 0):
    """``n`` rattled 8-atom fcc Cu cells labelled by EMT in ``REF_*`` keys (as jobs/fit.py writes them)."""
    out = []
    for i in range(n):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 1, 1))
        atoms.rattle(0.12, seed=seed0 + i)
        atoms.calc = EMT()
        atoms.info["REF_energy"] = atoms.get_potential_energy()
        atoms.arrays["REF_forces"] = atoms.get_forces()
        atoms.calc = None
        out.append(atoms)
    return out


def _errors(calc, frames):
    """(energy RMSE per atom, force RMSE) in eV/atom and eV/Å."""
    de, df = [], []
    for a in frames:
        a = a.copy()
        a.calc = calc
        de.append((a.get_potential_energy() - a.info["REF_energy"]) / len(a))
        df.append((a.get_forces() - a.arrays["REF_forces"]).ravel())
    return float(np.sqrt(np.mean(np.square(de)))), float(np.sqrt(np.mean(np.concatenate(df) ** 2)))


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    """A tiny MACE fitted from scratch on 6 frames by `otf fit TRAIN.xyz --backend mace` (settings
    from the config's model: block) and registered in a store: (backend, frames, FitResult-like, store)."""
    tmp = tmp_path_factory.mktemp("mace_parent")
    frames = _frames(6)
    write(tmp / "train.xyz", frames, format="extxyz")
    (tmp / "mace.yaml").write_text(yaml.safe_dump({"model": TINY}))
    out, store = tmp / "model", tmp / "store"
    result = run_otf("fit", str(tmp / "train.xyz"), "--backend", "mace", "--config", str(tmp / "mace.yaml"),
                     "--out", str(out), "--store", str(store), "--name", "cu-mace-fit", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    row = json.loads(result.stdout)  # stdout is only the JSON (mace's import-time print goes to stderr)
    assert row["model_id"] == "cu-mace-fit" and row["n_training_frames"] == 6
    model = OtfStore(str(store)).get_model("cu-mace-fit")
    fit = SimpleNamespace(model_dir=out, command=model.fit_settings["command"],
                          meta={"started_from": model.fit_settings["started_from"]}, doc=model)
    return get_backend("mace"), frames, fit


def test_fit_from_scratch_gives_a_working_calculator(parent):
    backend, frames, result = parent
    assert result.meta == {"started_from": "scratch"}
    assert (result.model_dir / "mace.model").is_file() and backend.species(result.model_dir) == [29]
    assert "--num_channels=8" in result.command and "--foundation_model" not in " ".join(result.command)
    calc = backend.calculator(result.model_dir)
    atoms = frames[0].copy()
    atoms.calc = calc
    assert np.isfinite(atoms.get_potential_energy())
    assert atoms.get_forces().shape == (8, 3) and atoms.get_stress().shape == (6,)
    # it learned the forces: clearly better than predicting zero force
    ref_rms = float(np.sqrt(np.mean(np.concatenate([a.arrays["REF_forces"].ravel() for a in frames]) ** 2)))
    _, f_rmse = _errors(calc, frames)
    assert f_rmse < 0.7 * ref_rms, (f_rmse, ref_rms)
    # the cached calculator is the same object, reset
    assert backend.calculator(result.model_dir, cached=True) is backend.calculator(result.model_dir, cached=True)
    assert backend.uncertainty(calc, None) is None


def test_refit_fine_tunes_the_parent_weights(parent, tmp_path):
    backend, frames, result = parent
    more = frames + _frames(2, seed0=100)
    parent_calc = backend.calculator(result.model_dir)
    e_parent, f_parent = _errors(parent_calc, more)
    child = backend.fit(more, tmp_path / "child", MaceModel(**TINY), Refit(), parent_dir=result.model_dir, seed=1,
                        num_threads=1)
    assert child.meta == {"started_from": "parent"}
    assert f"--foundation_model={result.model_dir / 'mace.model'}" in child.command
    assert "--max_num_epochs=3" in child.command
    # before its first epoch the child predicts what the parent does on the child's training frames
    log = (tmp_path / "child" / "mace_train.log").read_text()
    initial = re.search(r"Initial: .*RMSE_E_per_atom=\s*([\d.]+) meV, RMSE_F=\s*([\d.]+) meV", log)
    assert initial, log[-2000:]
    assert float(initial.group(1)) == pytest.approx(1000 * e_parent, abs=0.02)
    assert float(initial.group(2)) == pytest.approx(1000 * f_parent, abs=0.02)
    # ... and training changed the weights, keeping the parent's architecture
    import torch

    p = torch.load(result.model_dir / "mace.model", weights_only=False)
    c = torch.load(child.model_dir / "mace.model", weights_only=False)
    pp, cp = dict(p.named_parameters()), dict(c.named_parameters())
    assert set(pp) <= set(cp) and all(pp[k].shape == cp[k].shape for k in pp)
    assert any(not torch.equal(pp[k], cp[k]) for k in pp)


def test_config_of_the_mace_backend():
    base = {"name": "m", "structure": {"builder": "bulk", "element": "Cu", "crystalstructure": "fcc", "a": 3.61},
            "reference": {"calculator": "ase.calculators.emt.EMT"}, "num_initial_steps": 2, "md": {"total_steps": 5}}
    assert config_from_dict(base).model.backend == "gap"
    assert config_from_dict({**base, "model": {"backend": "mace"}}).model.finetune_epochs == 20
    with pytest.raises(ConfigError, match="model.backend mace has no uncertainty with model.committee 1"):
        config_from_dict({**base, "model": {"backend": "mace"},
                          "uncertainty": {"enabled": True, "threshold": 0.1}})
    committee = config_from_dict({**base, "model": {"backend": "mace", "committee": 3},
                                  "uncertainty": {"enabled": True, "threshold": 0.1, "measure": "mean_local"}})
    assert committee.model.committee == 3 and committee.model.committee_md == "first"
    with pytest.raises(ConfigError, match="model.committee"):
        config_from_dict({**base, "model": {"backend": "mace", "committee": 5}})
    with pytest.raises(ConfigError, match="refit.descriptor_str is a GAP setting"):
        config_from_dict({**base, "model": {"backend": "mace"}, "refit": {"descriptor_str": "soap"}})
    with pytest.raises(ConfigError, match="model.foundation_model: 'mp-small.model' is not a file"):
        config_from_dict({**base, "model": {"backend": "mace", "foundation_model": "mp-small.model"}})
    with pytest.raises(ConfigError, match="model.preset: unknown key"):
        config_from_dict({**base, "model": {"backend": "mace", "preset": "l-si"}})


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    """A `model.backend: mace` EMT campaign through `otf run` with a 2-member committee and the
    uncertainty trigger recording (calibrate_factor: no check passes, so no threshold): every check
    fails (ediff tolerance far below the tiny model's error), so each one refits by fine-tuning."""
    tmp = tmp_path_factory.mktemp("mace_campaign")
    data = {
        "name": "cu-mace",
        "structure": {"builder": "bulk", "element": "Cu", "crystalstructure": "fcc", "a": 3.61, "cubic": True,
                      "repeat": [2, 1, 1]},
        "md": {"ensemble": "nvt_langevin", "temperature_K": 600, "timestep_fs": 2.0, "total_steps": 14,
               "seed": 3, "trajectory_interval": 4},
        "reference": {"engine": "ase", "calculator": "ase.calculators.emt.EMT"},
        "model": {**TINY, "max_num_epochs": 8, "finetune_epochs": 2, "committee": 2},
        "uncertainty": {"enabled": True, "every": 3, "calibrate_factor": 2.0},
        "can_update": True, "num_initial_steps": 4, "check_interval": 10,
        "tolerances": {"ediff": 1.0e-7, "fmax": None},
        "validation": {"benchmarks": ["cu-unseen"]},
    }
    path = tmp / "cu-mace.yaml"
    path.write_text(yaml.safe_dump(data))
    store = tmp / "store"
    write(tmp / "unseen.xyz", _frames(3, seed0=200), format="extxyz")
    added = run_otf("benchmark", "add", "cu-unseen", str(tmp / "unseen.xyz"), "--store", str(store))
    assert added.returncode == 0, added.stderr
    result = run_otf("run", str(path), "--store", str(store), cwd=tmp, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return store, tmp


def _json(*args):
    result = run_otf(*args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_campaign_refits_are_fine_tuned_versions_with_lineage(campaign):
    store, _ = campaign
    st = OtfStore(str(store))
    doc = st.require_campaign("cu-mace")
    assert doc.status == "completed" and doc.step == 14
    models = st.models("cu-mace")
    checks = st.checks("cu-mace")
    assert len(checks) >= 1 and not any(c.passed for c in checks)
    assert len(models) == 1 + len(checks)
    assert all(m.backend == "mace" for m in models)
    assert models[0].parent_model_id is None and models[0].fit_settings["started_from"] == "scratch"
    for prev, model in itertools.pairwise(models):
        assert model.parent_model_id == prev.model_id and model.version == prev.version + 1
        assert model.fit_settings["started_from"] == "parent"
        assert model.n_training_frames > prev.n_training_frames
    chain = _json("lineage", models[-1].model_id, "--store", str(store), "--json")
    assert [m["model_id"] for m in chain] == [m.model_id for m in reversed(models)]
    # every refitted version validated on the unseen benchmark frames, with its own predictions
    docs = [st.validations(m.model_id, "cu-unseen") for m in models[1:]]
    assert all(len(d) == 1 and d[0]["n_frames"] == 3 for d in docs)
    rmses = [d[0]["force_rmse"] for d in docs]
    assert all(np.isfinite(r) and r > 0 for r in rmses) and len(set(rmses)) == len(rmses)


def test_campaign_committee_members_and_uncertainty_at_checks(campaign):
    store, _ = campaign
    st = OtfStore(str(store))
    models = st.models("cu-mace")
    for model in models:
        members = model.fit_settings["members"]
        assert [m["seed"] for m in members] == [3, 4]  # md.seed, md.seed + 1
        want = "scratch" if model.parent_model_id is None else "parent"
        assert [m["started_from"] for m in members] == [want, want]
    checks = st.checks("cu-mace")
    # the committee's uncertainty was measured at every checked frame, recorded with the check
    assert all(c.uncertainty is not None and c.uncertainty > 0 for c in checks)
    assert all(c.uncertainty_threshold is None for c in checks)  # calibrate_factor: no check passed
    assert len({c.uncertainty for c in checks}) == len(checks)
    states = [s for s in st.collection("states").query({"campaign": "cu-mace", "ml_uncertainty": {"$ne": None}})]
    assert states and all(s["n_uncertainty_evals"] >= 1 and s["ml_uncertainty"] > 0 for s in states)


def test_committee_probe(campaign, tmp_path):
    """The probe of a stored 2-member model: the committee's std of local energies (> 0, changing
    with the structure, by uncertainty.measure), MD driven by member 0."""
    from mace.calculators import MACECalculator

    from otf_flows.campaign import UncertaintySettings
    from otf_flows.ml.mace.backend import MaceCommitteeUncertainty, member_files

    store, _ = campaign
    st = OtfStore(str(store))
    backend = get_backend("mace")
    model_dir = backend.unpack(st.get_blob(st.models("cu-mace")[0].artifact), tmp_path / "m")
    assert [p.name for p in member_files(model_dir)] == ["mace.model", "mace.member1.model"]
    calc = backend.calculator(model_dir)
    probe = backend.uncertainty(calc, UncertaintySettings())
    assert isinstance(probe, MaceCommitteeUncertainty) and probe.measure == "max_local"
    frames = _frames(2, seed0=300)
    values = []
    for atoms in frames:
        atoms.calc = calc
        atoms.get_forces()  # the MD step's own call: member 0's local energies come with it
        probe.arm()
        local = probe.local_energies(atoms)
        assert local.shape == (2, 8)
        assert local[0].sum() == pytest.approx(atoms.get_potential_energy(), abs=1e-8)
        values.append(probe.value(atoms))
        probe.disarm()
        std = np.std(local, axis=0)
        assert values[-1] == pytest.approx(std.max())
        by = {m: MaceCommitteeUncertainty(calc, m).value(atoms) for m in ("mean_local", "total")}
        assert by["mean_local"] == pytest.approx(std.mean()) and by["total"] == pytest.approx(np.sqrt(np.sum(std**2)))
        calc.reset()  # without the step's own results the probe runs every member itself
        assert np.allclose(probe.local_energies(atoms), local, atol=1e-10)
    assert all(v > 0 for v in values) and values[0] != values[1]
    # MD is driven by member 0 (committee_md: first); mace's own committee agrees on the members' energies
    atoms = frames[0]
    atoms.calc = MACECalculator(model_paths=[str(p) for p in member_files(model_dir)], device="cpu",
                                default_dtype="float64")
    atoms.get_potential_energy()
    assert np.allclose(atoms.calc.results["energy_comm"], probe.local_energies(atoms).sum(axis=1), atol=1e-8)
    atoms.calc = calc
    assert atoms.get_potential_energy() == pytest.approx(float(atoms.calc.results["energy"]))


def test_export_model_is_loadable_by_mace_calculator(campaign, tmp_path):
    from mace.calculators import MACECalculator

    store, _ = campaign
    st = OtfStore(str(store))
    model = st.models("cu-mace")[-1]
    dest = tmp_path / "exported"
    result = run_otf("export-model", model.model_id, str(dest), "--store", str(store))
    assert result.returncode == 0, result.stderr
    names = {p.name for p in dest.iterdir()}
    assert {"mace.model", "mace.member1.model", "mace.json", "lammps.in", "ase_example.py",
            "final_state.data"} <= names
    assert "member 0 of a committee of 2" in (dest / "ase_example.py").read_text()
    lammps = (dest / "lammps.in").read_text()
    assert "pair_style mace" in lammps and "pair_coeff * * mace.model-lammps.pt Cu" in lammps
    frame = st.training_frames("cu-mace")[0]
    from otf_flows.frames import frame_to_atoms

    atoms = frame_to_atoms(frame)
    atoms.calc = MACECalculator(model_paths=str(dest / "mace.model"), device="cpu", default_dtype="float64")
    standalone = atoms.get_potential_energy()
    atoms.calc = get_backend("mace").calculator(dest)
    assert standalone == pytest.approx(atoms.get_potential_energy(), abs=1e-10)
    assert "ML-MACE" in lammps
    # the pair_style mace model of mace.cli.create_lammps_model: a TorchScript module
    import torch

    assert torch.jit.load(str(dest / "mace.model-lammps.pt")).r_max.item() == pytest.approx(4.0)


def test_otf_fit_backend_mace(parent, tmp_path):
    """`otf fit TRAIN.xyz --backend mace` (the parent fixture): a registered MACE model of the config's
    model: block; GAP's options are refused."""
    _, _, fit = parent
    model = fit.doc
    assert model.backend == "mace" and model.campaign is None and model.parent_model_id is None
    assert "--max_num_epochs=12" in fit.command and "--seed=1" in fit.command and "members" not in model.fit_settings
    assert {"mace.model", "mace.json"} <= {p.name for p in fit.model_dir.iterdir()}
    train = tmp_path / "train.xyz"
    write(train, _frames(2), format="extxyz")
    bad = run_otf("fit", str(train), "--backend", "mace", "--preset", "l-si", "--out", str(tmp_path / "m"))
    assert bad.returncode != 0 and "preset is a GAP setting" in bad.stderr
