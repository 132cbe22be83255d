"""otf_flows as a cluster user installs it: `pip install .` (not editable) into a fresh virtual environment,
then `otf` from a directory outside the repository. Files the package needs at run time (the batch and
FireWorks templates) must be in the installed package, not found next to a source checkout."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import CONFIGS, REPO

from otf_flows.store import OtfStore


def _run(args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, check=False, **kwargs)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """A venv (dependencies from this Python's site-packages) with otf_flows installed from a copy of the
    repository's build files, non-editable; the environment to run it in (no PYTHONPATH, no OTF_STORE)."""
    root = tmp_path_factory.mktemp("install")
    source = root / "source"  # a copy: an in-tree build would leave build/ and *.egg-info in the repository
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source)
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    venv = root / "venv"
    # without its own pip and setuptools: this Python's (the build needs setuptools >= 70.1 for bdist_wheel)
    out = _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv], timeout=300)
    assert out.returncode == 0, out.stderr
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "OTF_STORE")}
    out = _run([venv / "bin" / "python", "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-input",
                "-q", "."], cwd=source, env=env, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    work = root / "work"
    work.mkdir()
    out = _run([venv / "bin" / "python", "-c", "import otf_flows; print(otf_flows.__file__)"], cwd=work, env=env,
               timeout=120)
    assert out.returncode == 0, out.stderr
    module = Path(out.stdout.strip())
    assert module.is_relative_to(venv), f"otf_flows imported from {module}, not from the venv's own install"
    return {"venv": venv, "env": env, "work": work}


def _otf(installed: dict, *args) -> subprocess.CompletedProcess:
    return _run([installed["venv"] / "bin" / "otf", *args], cwd=installed["work"], env=installed["env"], timeout=900)


def test_submit_batch_dry_run_from_an_installed_package(installed):
    """The allocation template ships with the package: the dry run writes the script from it."""
    config = installed["work"] / "cu-emt.yaml"
    shutil.copy(CONFIGS / "cu-emt.yaml", config)
    out = _otf(installed, "submit", config, "--batch", "slurm", "--time", "00:10:00", "--store",
               installed["work"] / "submit-store", "--dry-run")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "#SBATCH --time=00:10:00" in out.stdout and "{{" not in out.stdout
    assert f"run {shlex.quote(str(config))} --resume" in out.stdout
    pbs = _otf(installed, "submit", config, "--batch", "pbs", "--time", "00:10:00", "--store",
               installed["work"] / "submit-store", "--dry-run")
    assert pbs.returncode == 0 and "#PBS -l walltime=00:10:00" in pbs.stdout, pbs.stderr[-3000:]


def test_emt_campaign_from_an_installed_package(installed):
    """The EMT example, shortened, run by the installed `otf` from a directory outside the repository."""
    data = yaml.safe_load((CONFIGS / "cu-emt.yaml").read_text())
    data["md"]["total_steps"] = 20
    config = installed["work"] / "cu-short.yaml"
    config.write_text(yaml.safe_dump(data))
    store = installed["work"] / "store"
    out = _otf(installed, "run", config, "--store", store)
    assert out.returncode == 0, out.stderr[-3000:]
    st = OtfStore(str(store))
    doc = st.require_campaign(data["name"])
    assert doc.status == "completed" and doc.step == 20
    checks = st.checks(data["name"])
    assert checks and checks[-1].step == 20 and st.models(data["name"])
    st.close()
    listed = _otf(installed, "checks", data["name"], "--store", store, "--json")
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert len(json.loads(listed.stdout)) == len(checks)
