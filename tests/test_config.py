"""Campaign YAML: Listing 1 compatibility, the schema, and one-line errors for bad input."""

from __future__ import annotations

import json

import pytest
from conftest import run_otf

from otf_flows.campaign import AseReference, config_from_dict, load_config
from otf_flows.errors import ConfigError

LISTING_1 = """
can_update: true
num_initial_steps: 10

adaptive_method_parameters:
  n_min: 1
  n_max: 10000
  factor: 2

tolerances:
  ediff: 0.01      # eV/atom
  fmax: null       # eV/A
  frmse: null      # eV/A
  vmax: null       # eV/atom (virial)

refit:
  previous_data: [
    "init.xyz",
  ]
  default_sigma: "0.002 0.2 0.2 0.0"
  descriptor_str: "distance_2b cutoff=5.0 n_sparse=15 covariance_type=ard_se delta=1.0 theta_uniform=1.0 sparse_method=uniform"
  extra_gap_opts: "sparse_jitter = 1.0e-8"
  e0: "-148.314002"
"""

ADDITIONS = """
name: listing-1
structure: {builder: bulk, element: Si, crystalstructure: diamond, a: 5.43, repeat: [2, 2, 2]}
md: {temperature_K: 1800, timestep_fs: 1.0, total_steps: 100}
reference: {engine: ase, calculator: ase.calculators.emt.EMT}
"""


def test_listing_1_loads_with_only_our_additions(tmp_path):
    (tmp_path / "init.xyz").write_text("")
    path = tmp_path / "hybrid-md-input.yaml"
    path.write_text(LISTING_1 + ADDITIONS)
    cfg = load_config(path)
    assert cfg.can_update is True
    assert cfg.num_initial_steps == 10
    assert cfg.adaptive_method_parameters.n_max == 10000
    assert cfg.tolerances.ediff == 0.01 and cfg.tolerances.fmax is None
    assert cfg.refit.previous_data == [str((tmp_path / "init.xyz").resolve())]
    assert cfg.refit.e0 == "-148.314002"
    assert cfg.check_interval == 1  # hybrid-md's default
    assert isinstance(cfg.reference, AseReference)


def test_fixed_interval_when_adaptive_block_absent(cu_config):
    del cu_config["adaptive_method_parameters"]
    cfg = config_from_dict(cu_config)
    assert cfg.adaptive_method_parameters is None


def test_schema_command_prints_json_schema():
    result = run_otf("schema")
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    props = schema["properties"]
    for key in ("can_update", "num_initial_steps", "check_interval", "adaptive_method_parameters", "tolerances",
                "refit", "md", "reference", "structure", "model", "store"):
        assert key in props
    assert schema["additionalProperties"] is False


BAD = [
    # (mutation, words the message must contain)
    (lambda c: c.update(unknown_key=1), ["unknown_key", "unknown key", "allowed"]),
    (lambda c: c["tolerances"].update(ediffs=0.1), ["tolerances.ediffs", "ediff"]),
    (lambda c: c["adaptive_method_parameters"].update(n_min=50, n_max=10), ["adaptive_method_parameters", "n_min", "50"]),
    (lambda c: c["adaptive_method_parameters"].update(factor=1.0), ["adaptive_method_parameters.factor", "> 1", "1.0"]),
    (lambda c: c["adaptive_method_parameters"].update(factor=0.5), ["factor", "0.5"]),
    (lambda c: c.update(structure={"file": "missing.xyz"}), ["structure.file", "missing.xyz", "does not exist"]),
    (lambda c: c["md"].update(temperature_K=-5), ["md.temperature_K", "-5", "greater than or equal to 0"]),
    (lambda c: c["md"].update(ensemble="nvk"), ["md.ensemble", "nvk", "nve"]),
    (lambda c: c["reference"].update(engine="castep"), ["reference", "castep", "ase, cp2k, vasp"]),
    (lambda c: c.update(check_interval=0), ["check_interval", "0"]),
    (lambda c: c.pop("structure"), ["structure", "missing"]),
    (lambda c: c["refit"].update(default_sigma="0.1 0.2"), ["refit.default_sigma", "4"]),
    (lambda c: c["refit"].update(e0=-1.0, e0_method="average"), ["refit", "e0"]),
]


@pytest.mark.parametrize("mutate, words", BAD)
def test_bad_yaml_fails_in_one_line_with_exit_2(cu_config, write_config, tmp_path, mutate, words):
    mutate(cu_config)
    path = write_config(cu_config)
    store = tmp_path / "store"
    result = run_otf("run", str(path), "--store", str(store))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert not store.exists()  # nothing written


def test_not_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    for args in (["run", str(bad)], ["run", str(tmp_path / "nope.yaml")], ["run"], ["checks"], ["run", "--bogus"]):
        result = run_otf(*args, "--store", str(tmp_path / "store"))
        assert result.returncode == 2, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "store").exists()


def test_config_error_is_input_error(cu_config):
    cu_config["md"]["timestep_fs"] = 0
    with pytest.raises(ConfigError, match="md.timestep_fs"):
        config_from_dict(cu_config)


def test_unknown_calculator_module(cu_config, write_config, tmp_path):
    cu_config["reference"]["calculator"] = "no_such_pkg.Calc"
    result = run_otf("run", str(write_config(cu_config)), "--store", str(tmp_path / "s"))
    assert result.returncode != 0
    assert "no_such_pkg" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_stored_config_with_e0_validates_again(cu_config):
    """With refit.e0 the unused e0_method is left out of the dump, so the stored config (and --resume) loads."""
    from otf_flows.flows.lifecycle import stored_config

    cu_config["refit"] = {**cu_config.get("refit", {}), "e0": {"Cu": -0.25}}
    cu_config["refit"].pop("e0_method", None)
    stored = stored_config(config_from_dict(cu_config))
    assert "e0_method" not in stored["refit"]
    assert config_from_dict(stored).refit.e0 == {"Cu": -0.25}
    with pytest.raises(ConfigError, match="e0"):
        config_from_dict({**stored, "refit": {**stored["refit"], "e0_method": "isolated"}})
