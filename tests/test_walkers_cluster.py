"""Walkers on a cluster (issue 22): the walkers' chains side by side under FireWorks and in a SLURM allocation.

- FireWorks: the walkers are independent chains of fireworks. Run in process by one worker per job kind on a
  mongomock LaunchPad (as test_fireworks), always taking a ready firework of another walker than the last one
  run: DFT checks of both walkers are ready at once (two dft workers would run them side by side), no firework
  of one walker waits for a firework of another, and the campaign ends with one lineage, every label once.
- SLURM (marked ``slurm``): `otf submit --batch slurm --ntasks 2` with ``execution.local.workers: 2``. Walker
  cold is held inside its first DFT check (the ``OTF_HOLD`` fault point) until walker hot has finished, so the
  two walkers' DFT jobs overlap, as their stored start and end times (the ledger) show; every DFT job of a worker
  got its share of the allocation, ``{ntasks}`` = 2 // 2 = 1, and ran a real ``srun --exclusive -n {ntasks}``
  job step inside the allocation.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from fireworks import FWorker
from fireworks.core.rocket_launcher import launch_rocket
from test_fireworks import launchpad  # noqa: F401 - the fixture: an in-memory (mongomock) LaunchPad
from test_slurm import slurm  # noqa: F401 - the module fixture: a running one-node SLURM cluster
from test_walkers import _assert_walkers_consistent, _tiny

from otf_flows.campaign import CampaignConfig, config_from_dict
from otf_flows.managers.fireworks import submit_campaign
from otf_flows.store import OtfStore

TESTS = Path(__file__).resolve().parent
KINDS = ("dft", "md", "fit", "light")
TIMEOUT_S = 600


def _walker_of(name: str) -> str | None:
    """The walker in a firework's name (the jobs of a walker's chain carry it), None for shared jobs."""
    for walker in ("cold", "hot"):
        if f" {walker}" in f" {name} ".replace("@", " "):
            return walker
    return None


def test_walkers_are_independent_chains_under_fireworks(tmp_path, monkeypatch, launchpad):  # noqa: F811
    data = _tiny("wkfw", steps=16)
    data["execution"] = {"md": {"omp_threads": 1}, "fit": {"omp_threads": 1}}
    config = CampaignConfig.model_validate(data)
    store = OtfStore(str(tmp_path / "store"))
    submit_campaign(config, store, launchpad)
    workers = {kind: FWorker(name=f"otf-{kind}", category=kind) for kind in KINDS}
    (tmp_path / "launches").mkdir()
    monkeypatch.chdir(tmp_path / "launches")
    ran, both_checks_ready, last = [], False, None
    for _ in range(200):
        ready = list(launchpad.fireworks.find({"state": "READY"}, {"fw_id": 1, "name": 1, "spec.otf_kind": 1}))
        if not ready:
            break
        checks = {_walker_of(fw["name"]) for fw in ready if fw["name"].startswith("reference check")}
        both_checks_ready |= checks >= {"cold", "hot"}
        # another walker than the last one whenever possible: the chains interleave
        fw = next((fw for fw in ready if _walker_of(fw["name"]) not in (None, last)), ready[0])
        assert launch_rocket(launchpad, workers[fw["spec"]["otf_kind"]], strm_lvl="ERROR", fw_id=fw["fw_id"])
        ran.append(fw["name"])
        last = _walker_of(fw["name"]) or last
    assert not launchpad.fireworks.count_documents({"state": {"$ne": "COMPLETED"}})
    _assert_walkers_consistent(store, "wkfw", config)
    assert both_checks_ready, "the DFT checks of both walkers were never ready at the same time"
    # the walkers' chains interleaved: some job of walker hot ran between two jobs of walker cold
    order = [_walker_of(n) for n in ran if _walker_of(n) is not None]
    first_cold, last_cold = order.index("cold"), len(order) - 1 - order[::-1].index("cold")
    assert "hot" in order[first_cold:last_cold]
    # no firework of one walker's chain has a parent of the other walker's chain
    fws = {fw["fw_id"]: fw["name"] for fw in launchpad.fireworks.find({}, {"fw_id": 1, "name": 1})}
    links = launchpad.workflows.find_one({})["links"]
    for parent, children in links.items():
        for child in children:
            a, b = _walker_of(fws[int(parent)]), _walker_of(fws[child])
            assert a is None or b is None or a == b, (fws[int(parent)], fws[child])


def _run(args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, check=False, **kwargs)


@pytest.mark.slurm
def test_walkers_side_by_side_in_a_slurm_allocation(slurm, tmp_path):  # noqa: F811 - the imported fixture
    log, gate = tmp_path / "srun.log", tmp_path / "go"
    data = _tiny("wkslurm", steps=16)
    data["reference"] = {"engine": "ase", "calculator": "refcalcs.SrunEMT", "kwargs": {"log": str(log)}}
    data["execution"] = {"md": {"omp_threads": 1}, "fit": {"omp_threads": 1}, "local": {"workers": 2}}
    config = tmp_path / "wkslurm.yaml"
    config.write_text(yaml.safe_dump(data))
    store = tmp_path / "store"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "OTF_NTASKS": "",
           "OTF_HOLD": f"check.computing@cold={gate}",  # sbatch passes the environment on to the job
           "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    env.pop("OTF_STORE", None)

    def otf(*args) -> subprocess.CompletedProcess:
        return _run([sys.executable, "-m", "otf_flows", *args], cwd=tmp_path, env=env, timeout=120)

    out = otf("submit", config, "--batch", "slurm", "--time", "00:15:00", "--ntasks", "2", "--partition", "debug",
              "--store", store, "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    st, start = None, time.monotonic()

    def status() -> dict:
        res = otf("status", "wkslurm", "--store", store, "--json")
        assert res.returncode == 0, res.stderr[-2000:]
        return json.loads(res.stdout)

    def wait(condition, what: str) -> None:
        while not condition():
            rows = status()["allocations"]
            if rows and rows[-1]["ended_at"] is not None and what != "the chain's end":
                pytest.fail(f"the allocation ended before {what}: {rows[-1]}\n{Path(rows[-1]['log']).read_text()[-3000:]}")
            if time.monotonic() - start > TIMEOUT_S:
                _run(["scancel", "-n", "otf-wkslurm"], timeout=30)
                pytest.fail(f"{what} did not happen in {TIMEOUT_S} s (waiting for a free node counts too)")
            time.sleep(2)

    def hot_done() -> bool:
        walkers = {w["walker"]: w for w in status().get("walkers") or []}
        return walkers.get("hot", {}).get("status") == "completed"

    wait(hot_done, "walker hot's end while cold is held in its first DFT check")
    st = OtfStore(str(store))
    assert not [c for c in st.checks("wkslurm") if c.walker == "cold"]  # cold is still in its first check
    gate.touch()

    def chain_ended() -> bool:
        rows = status()["allocations"]
        return bool(rows) and rows[-1]["ended_at"] is not None and not rows[-1]["resubmit"]

    wait(chain_ended, "the chain's end")
    rows = status()["allocations"]
    assert len(rows) == 1 and rows[0]["exit_code"] == 0 and rows[0]["reason"] == "completed", rows
    assert rows[0]["ntasks"] == 2, rows
    _assert_walkers_consistent(st, "wkslurm", config_from_dict(data))
    # the DFT jobs of the two walkers overlapped: cold's first check (stored start and end) spans checks of hot
    calls = [d for d in st.collection("ledger").query({"kind": "reference"}) if d["job"].startswith("reference check")]
    cold_first = min((d for d in calls if d["walker"] == "cold"), key=lambda d: d["started_at"])
    inside = [d for d in calls if d["walker"] == "hot" and cold_first["started_at"] < d["started_at"]
              and d["created_at"] < cold_first["created_at"]]
    assert inside, calls
    # every DFT job ran a real `srun --exclusive -n {ntasks}` step in the allocation: the initial reference MD in
    # the allocation's `otf run` process with all 2 tasks, the checks in the two workers with 2 // 2 = 1 each
    lines = [line.split() for line in log.read_text().splitlines()]
    n_initial = sum(f.source == "initial_md" for f in st.frames_of("wkslurm"))
    n_checks = len(st.checks("wkslurm"))
    assert len(lines) == n_initial + n_checks, lines
    assert all(ntasks == ran for ntasks, ran, _ in lines), lines  # the step got the tasks it asked for
    assert [ntasks for ntasks, _, _ in lines] == ["2"] * n_initial + ["1"] * n_checks, lines
    assert len({step for _, _, step in lines}) == len(lines)  # each its own job step
    st.close()
