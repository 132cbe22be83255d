"""Cache and scratch directories: settings before OTF_CACHE_DIR / OTF_SCRATCH_DIR before defaults, never $HOME."""

from __future__ import annotations

import json
import os
import tempfile

import pytest
from ase.build import bulk
from conftest import run_otf

from otf_flows.campaign import config_from_dict
from otf_flows.dirs import cache_dir, scratch_dir
from otf_flows.reference.cp2k import engine as cp2k_module
from otf_flows.reference.cp2k.settings import Cp2kReference
from otf_flows.reference.registry import get_engine
from otf_flows.store import OtfStore


@pytest.fixture
def no_env(monkeypatch, tmp_path):
    """No OTF_* directory variables, and a $HOME that must stay empty."""
    monkeypatch.delenv("OTF_CACHE_DIR", raising=False)
    monkeypatch.delenv("OTF_SCRATCH_DIR", raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


def test_cache_dir_precedence(no_env, monkeypatch, tmp_path):
    monkeypatch.setenv("TMPDIR", str(tmp_path / "node-tmp"))
    (tmp_path / "node-tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", None)  # tempfile caches the temporary directory
    assert cache_dir() == tmp_path / "node-tmp" / f"otf_flows-cache-{os.getuid()}"
    monkeypatch.setenv("OTF_CACHE_DIR", str(tmp_path / "env"))
    assert cache_dir() == cache_dir(None) == tmp_path / "env"
    assert cache_dir(str(tmp_path / "setting")) == tmp_path / "setting"
    monkeypatch.delenv("OTF_CACHE_DIR")
    assert not str(cache_dir()).startswith(str(no_env))


def test_scratch_dir_precedence(no_env, monkeypatch, tmp_path):
    embedded = OtfStore(str(tmp_path / "store"))
    monkeypatch.chdir(tmp_path)
    assert scratch_dir("c1", embedded) == embedded.path / "runs" / "c1"
    assert scratch_dir("c1", OtfStore("mongodb://db.example.org/otf")) == tmp_path / "otf-runs" / "c1"
    monkeypatch.setenv("OTF_SCRATCH_DIR", str(tmp_path / "env"))
    assert scratch_dir("c1", embedded) == tmp_path / "env" / "c1"
    assert scratch_dir("c1", embedded, str(tmp_path / "setting")) == tmp_path / "setting" / "c1"


def test_yaml_directories_are_absolute_from_the_yaml_file(cu_config, tmp_path):
    cu_config["execution"] = {"cache_dir": "cache", "scratch_dir": "/scratch/me/runs"}
    config = config_from_dict(cu_config, base_dir=tmp_path / "project")
    assert config.execution.cache_dir == str((tmp_path / "project" / "cache").resolve())
    assert config.execution.scratch_dir == "/scratch/me/runs"
    assert config_from_dict(dict(cu_config, execution={}), tmp_path).execution.cache_dir is None


def test_cp2k_engine_makes_its_data_in_the_cache_it_is_given(monkeypatch, tmp_path):
    """The engine passes its cache (the campaign's, from jobs/reference.py) to ensure_pmg_cp2k_data."""
    seen = {}

    def fake_ensure(source, cache=None):
        seen["cache"] = cache
        raise RuntimeError("stop here")

    monkeypatch.setattr(cp2k_module, "find_cp2k", lambda command: ["/bin/true"])
    monkeypatch.setattr(cp2k_module, "find_cp2k_data", lambda program: tmp_path)
    monkeypatch.setattr(cp2k_module, "ensure_pmg_cp2k_data", fake_ensure)
    engine = get_engine(Cp2kReference(), cache_dir=tmp_path / "cache")
    with pytest.raises(RuntimeError, match="stop here"):
        engine.label(bulk("Si", "diamond", a=5.43, cubic=True), tmp_path / "work")
    assert seen["cache"] == tmp_path / "cache"


def test_otf_run_puts_models_and_job_folders_where_it_is_told(cu_config, tmp_path):
    """A campaign on the MongoDB code path (memory:// store): models are extracted into the YAML's cache_dir, not
    $OTF_CACHE_DIR's; job folders go under --scratch-dir, not the YAML's; nothing is written under $HOME."""
    home = tmp_path / "home"
    home.mkdir()
    cu_config["md"]["total_steps"] = 25
    cu_config["execution"] = {"cache_dir": str(tmp_path / "yaml-cache"), "scratch_dir": str(tmp_path / "yaml-runs"),
                              "md": {"omp_threads": 1}, "fit": {"omp_threads": 1}}
    config = tmp_path / "campaign.yaml"
    config.write_text(json.dumps(cu_config))
    env = {"HOME": str(home), "OTF_CACHE_DIR": str(tmp_path / "env-cache"), "OTF_SCRATCH_DIR": str(tmp_path / "env-runs"),
           "MPLCONFIGDIR": str(tmp_path / "mpl")}  # matplotlib's (a dependency imports it), not ours
    out = run_otf("run", str(config), "--store", "memory://dirs", "--scratch-dir", str(tmp_path / "cli-runs"),
                  "--json", cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout)["status"] == "completed"
    models = sorted((tmp_path / "yaml-cache" / "models").iterdir())
    assert models and all((m / "gap.xml").is_file() for m in models)
    jobs = sorted((tmp_path / "cli-runs" / "cu-emt").glob("job_*"))
    assert jobs and any(list(job.glob("fit_*")) for job in jobs)  # gap_fit ran in a job folder there
    for unused in ("env-cache", "env-runs", "yaml-runs", "otf-runs"):
        assert not (tmp_path / unused).exists(), unused
    assert not any(home.iterdir())
