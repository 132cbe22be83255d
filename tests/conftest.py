"""Shared fixtures: small configs written into tmp_path, the CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def run_otf(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 1800):
    """Run the ``otf`` CLI in a subprocess, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "otf_flows", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=timeout,
        check=False,
    )


def cu_emt_data() -> dict:
    """The shipped EMT example as a mapping, under ``compat: hybrid-md``.

    The tests of plumbing (resume, stops, clusters, stores) were written for hybrid-md's rule and run it: it
    is deterministic in its schedule and costs a third of the CPU of the measured defaults on this example
    (4 refits instead of 17 in 200 steps: a fit after every label). The defaults themselves are tested in
    tests/test_defaults.py, tests/test_accuracy.py's campaigns, the docs' examples and the walkers' cluster runs.
    """
    return {**yaml.safe_load((CONFIGS / "cu-emt.yaml").read_text()), "compat": "hybrid-md"}


@pytest.fixture
def cu_config() -> dict:
    """The shipped EMT example as a mapping (:func:`cu_emt_data`: under compat: hybrid-md)."""
    return cu_emt_data()


@pytest.fixture
def write_config(tmp_path):
    """Write a config mapping to tmp_path and return its path."""

    def write(data: dict, name: str = "campaign.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data))
        return path

    return write


def store_snapshot(store_dir) -> tuple[dict, dict]:
    """What a store holds: every document of every collection, and the bytes of every file outside
    its database directory (blobs, models). The database files themselves are compared through their
    documents: SQLite rewrites pages and its -wal/-shm files on a mere open or checkpoint."""
    import hashlib

    from otf_flows.store import COLLECTIONS, OtfStore

    store_dir = Path(store_dir)
    st = OtfStore(str(store_dir))
    docs = {name: sorted(str(sorted(d.items())) for d in st.collection(name).query({}))
            for name in [*COLLECTIONS, "jobs", "jobs_data"]}
    st.close()
    files = {str(p.relative_to(store_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(store_dir.rglob("*")) if p.is_file() and "db" not in p.relative_to(store_dir).parts}
    return docs, files
