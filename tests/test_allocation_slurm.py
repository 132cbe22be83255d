"""Allocation mode on the real one-node SLURM (``scripts/slurm/start.sh``): `otf submit --batch` campaigns
that need several allocations complete, with nothing lost or duplicated.

- ``sbatch``: SLURM script, 2-minute allocations whose walltime warning (``--signal=B:USR1@100``, sent at
  slurmctld's first time-limit check, within about 30 s of the start) stops `otf run`.
- ``qsub``: the PBS script through slurm-wlm-torque's ``qsub``; PBS has no warning, so `otf run
  --stop-after` stops each allocation 100 s before its 2-minute walltime, after ~20 s.

The chain is forced, not left to the amount of work: the campaign's first ML-MD step holds (a failpoint
counted across the allocations, so it holds once) until the first allocation is asked to stop. Each script
is the shipped template with that setting in its environment section, as a user edits it (``--template``).

Both chains run at the same time (a module fixture); the tests then read the store, the logs and
`otf status`. The cluster fixture is test_slurm's: it starts SLURM if it is installed but down, and
skips without it.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import cu_emt_data
from test_reliability import _assert_consistent
from test_slurm import slurm  # noqa: F401 - the module fixture: a running one-node SLURM cluster

from otf_flows.campaign import config_from_dict
from otf_flows.managers import allocation
from otf_flows.store import OtfStore

pytestmark = pytest.mark.slurm

TIMEOUT_S = 420
GRACE_S = 100
SCENARIOS = {
    # the first allocation stops with work left however fast the machine is (the held ML-MD step); the
    # next one(s) do the rest
    "sbatch": {"batch": "slurm", "total_steps": 80, "extra": ["--partition", "debug", "--stop-after", "60"]},
    "qsub": {"batch": "pbs", "total_steps": 80, "extra": ["--queue", "debug"]},
}
HOLD = "md.step:1:hold=600"
"""The first ML-MD step of the campaign waits there until `otf run` is asked to stop (at most 600 s)."""


def _run(args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, check=False, **kwargs)


class Chain:
    """One campaign submitted with `otf submit --batch`, followed until its chain ends."""

    def __init__(self, root: Path, name: str, scenario: dict):
        self.root, self.name = root, f"cu-{name}"
        config = cu_emt_data()
        config.update(name=self.name)
        config["md"]["total_steps"] = scenario["total_steps"]
        config["execution"] = {"md": {"omp_threads": 1}, "fit": {"omp_threads": 1}}
        self.config_data = config
        self.config = root / "campaign.yaml"
        self.config.write_text(yaml.safe_dump(config))
        self.store = root / "store"
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        self.env.pop("OTF_STORE", None)
        template = root / f"my-allocation.{scenario['batch']}"
        template.write_text(_with_environment(scenario["batch"], {
            "OTF_FAILPOINT": HOLD, "OTF_FAILPOINT_COUNTS": str(root / "failpoint-counts"),
            "PYTHONPATH": os.environ.get("PYTHONPATH", "")}))  # the code under test, in a worktree too
        self.args = ["submit", self.config, "--batch", scenario["batch"], "--time", "00:02:00", "--grace",
                     str(GRACE_S), "--resubmit", "12", "--store", self.store, "--template", template,
                     *scenario["extra"], "--json"]

    def otf(self, *args) -> subprocess.CompletedProcess:
        return _run([sys.executable, "-m", "otf_flows", *args], cwd=self.root, env=self.env, timeout=120)

    def submit(self) -> dict:
        out = self.otf(*self.args)
        assert out.returncode == 0, out.stderr[-3000:]
        self.submitted = json.loads(out.stdout)
        return self.submitted

    def status(self) -> dict:
        out = self.otf("status", self.name, "--store", self.store, "--json")
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout)

    def finished(self) -> bool:
        """The chain's last allocation has ended without resubmitting (or nothing is queued any more)."""
        rows = self.status()["allocations"]
        return bool(rows) and rows[-1]["ended_at"] is not None and not rows[-1]["resubmit"] \
            and not _queued(self.name)

    def diagnostics(self) -> str:
        text = []
        for path in sorted((self.store / "runs" / self.name / "allocations").glob("*")):
            if path.suffix in (".log", ".out"):
                text.append(f"--- {path.name}\n{path.read_text()[-1500:]}")
        return "\n".join(text)


def _with_environment(batch: str, env: dict[str, str]) -> str:
    """The shipped allocation template with ``export`` lines in its environment section."""
    text = (allocation.launchers_dir() / f"allocation.{batch}").read_text()
    marker = "# ---- the environment of the job"
    assert marker in text
    exports = "".join(f"export {key}={shlex.quote(value)}\n" for key, value in env.items() if value)
    head, _, tail = text.partition(marker)
    return head + exports + marker + tail


def _queued(name: str) -> bool:
    out = _run(["squeue", "-h", "-n", f"otf-{name}", "-o", "%i"], timeout=30)
    return bool(out.stdout.strip())


@pytest.fixture(scope="module")
def chains(slurm, tmp_path_factory):  # noqa: F811 - the imported fixture
    runs = {}
    for name, scenario in SCENARIOS.items():
        if scenario["batch"] == "pbs" and shutil.which("qsub") is None:
            continue
        runs[name] = Chain(tmp_path_factory.mktemp(name), name, scenario)
    start = time.monotonic()
    for chain in runs.values():
        chain.submit()
    pending = set(runs)
    while pending and time.monotonic() - start < TIMEOUT_S:
        time.sleep(3)
        pending = {name for name in pending if not runs[name].finished()}
    for name in pending:
        _run(["scancel", "-n", f"otf-{runs[name].name}"], timeout=30)
    print(f"\nallocation chains: {time.monotonic() - start:.0f} s")
    for name, chain in runs.items():
        for row in chain.status()["allocations"]:
            print(f"  {name}: {row['number']} job {row['job_id']} steps {row['steps']} exit {row['exit_code']} "
                  f"{row['started_at']} .. {row['ended_at']}: {row['reason']}")
    if pending:
        pytest.fail(f"chains {sorted(pending)} did not finish in {TIMEOUT_S} s\n"
                    + "\n".join(runs[n].diagnostics() for n in pending))
    return runs


def _check_chain(chain: Chain, scheduler: str, why: str) -> list[dict]:
    """What both schedulers must show: a complete campaign from >= 2 allocations, each stopped resumably
    and resubmitted, the last one completing it; one numbered log per allocation; consistent data."""
    status = chain.status()
    rows = status["allocations"]
    assert status["status"] == "completed" and status["step"] == chain.config_data["md"]["total_steps"], status
    assert len(rows) >= 2, rows
    assert [r["number"] for r in rows] == list(range(1, len(rows) + 1))
    assert all(r["chain"] == 1 and r["index"] == f"{r['number']}/13" for r in rows)
    for before, after in itertools.pairwise(rows):
        # exit 3: stopped by otf run; 143: the warning came while `otf run` was still starting (Python's
        # imports, before its SIGTERM handler; seen with the machine loaded): no job ran, resubmitted too
        stopped = before["exit_code"] == 3 or (before["exit_code"] == 143 and "walltime warning" in before["reason"])
        assert stopped and before["reason"].startswith("stopped (") and "; resubmitted" in before["reason"], before
        assert before["next_job_id"] == after["job_id"]  # the script resubmitted itself
        assert before["ended_at"] <= after["started_at"]  # afterany dependency: never two at once
        assert after["steps"].split("-")[0] == before["steps"].split("-")[1]  # continued where it stopped
    # 143: the walltime warning came as `otf run` was finishing a complete campaign (the script exits 0 then)
    assert rows[-1]["exit_code"] in (0, 143) and rows[-1]["reason"] == "completed" and rows[-1]["next_job_id"] is None
    assert rows[0]["steps"].startswith("0-")
    assert any(why in r["reason"] for r in rows[:-1]), [r["reason"] for r in rows]
    alloc_dir = chain.store / "runs" / chain.name / "allocations"
    logs = sorted(p.name for p in alloc_dir.glob("allocation-*.log"))
    assert logs == [f"allocation-{r['number']:03d}.log" for r in rows]
    for row in rows[:-1]:
        if row["exit_code"] == 3:  # (killed while starting, exit 143, `otf run` wrote nothing)
            assert "continue with `otf run" in Path(row["log"]).read_text()
    assert (alloc_dir / f"chain-01.{scheduler}").is_file()
    # nothing lost or duplicated: the checks follow the schedule, one label per step and kind, one
    # model per failed check, every label trained on once
    st = OtfStore(str(chain.store))
    _assert_consistent(st, chain.name, config_from_dict(chain.config_data))
    st.close()
    return rows


def test_slurm_chain_stops_at_the_walltime_warning_and_resubmits(chains):
    if "sbatch" not in chains:
        pytest.skip("no sbatch chain")
    chain = chains["sbatch"]
    rows = _check_chain(chain, "slurm", "walltime warning")
    for row in rows:  # each allocation is its own SLURM job with the requested time limit
        out = _run(["scontrol", "show", "job", "-o", row["job_id"]], timeout=30)
        fields = dict(re.findall(r"(\w+)=(\S*)", out.stdout))
        assert fields.get("TimeLimit") == "00:02:00" and fields.get("Partition") == "debug", out.stdout
        assert fields.get("JobState") == "COMPLETED", out.stdout  # exit 0 after a resubmission, not FAILED
    script = (chain.store / "runs" / chain.name / "allocations" / "chain-01.slurm").read_text()
    assert f"#SBATCH --signal=B:USR1@{GRACE_S}" in script
    assert any("otf: stopped (SIGTERM)" in Path(r["log"]).read_text() for r in rows[:-1])


def test_pbs_chain_through_qsub_stops_before_the_walltime_and_resubmits(chains):
    if "qsub" not in chains:
        pytest.skip("PBS-style qsub (slurm-wlm-torque) is not installed: run scripts/slurm/start.sh")
    chain = chains["qsub"]
    rows = _check_chain(chain, "pbs", "stop time reached")
    script = (chain.store / "runs" / chain.name / "allocations" / "chain-01.pbs").read_text()
    assert "#PBS -l walltime=00:02:00" in script and "#SBATCH" not in script
    for row in rows:
        out = _run(["scontrol", "show", "job", "-o", row["job_id"]], timeout=30)
        assert "TimeLimit=00:02:00" in out.stdout and "Partition=debug" in out.stdout, out.stdout
    assert all("otf: stopped (--stop-after" in Path(r["log"]).read_text() for r in rows[:-1])
