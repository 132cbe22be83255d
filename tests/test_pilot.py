"""The FireWorks pilot (``launchers/pilot.sh`` with ``pilot.slurm``/``pilot.pbs``): one allocation, one worker
per job kind, the fireworks of several campaigns, no queue job per firework.

The LaunchPad is FireWorks' mongomock persistence file (as in test_slurm): every FireWorks process reads it
when it starts and writes it back when it exits, so the pilot's workers and its end test run their
rlaunch/lpad under one flock (``OTF_RLAUNCH``/``OTF_LPAD``). Against MongoDB they run at the same time.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, cu_emt_data
from test_reliability import _assert_consistent
from test_slurm import RLAUNCH_WRAPPER, slurm  # noqa: F401 - slurm: the module fixture (a running SLURM)

from otf_flows.campaign import config_from_dict
from otf_flows.store import OtfStore

LAUNCHERS = REPO / "launchers"
LP_NAME = "otf_pilot"
KINDS = ("dft", "md", "fit", "light")


def _run(args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, check=False, **kwargs)


def campaign(name: str, inline: bool, a: float = 3.61) -> dict:
    """The shipped EMT example, 60 steps: checks at 35, 50 and 60, the first fails and triggers a refit.
    (Campaigns in one store need other structures: frames are stored by content, so equal starts share frames.)"""
    cfg = cu_emt_data()
    cfg.update(name=name, check_interval=30)
    cfg["md"]["total_steps"] = 60
    cfg["structure"]["a"] = a
    cfg["execution"] = {"md": {"omp_threads": 1}, "fit": {"omp_threads": 1}, "light": {"inline": inline}}
    return cfg


class PilotSetup:
    """A LaunchPad (mongomock file), its FireWorks files in OTF_FW_DIR, one store, campaigns submitted to both."""

    def __init__(self, root: Path, campaigns: list[dict]):
        if shutil.which("flock") is None or shutil.which("lpad") is None:
            pytest.skip("needs flock and FireWorks' lpad on PATH")
        pytest.importorskip("mongomock_persistence", reason="the file-backed LaunchPad needs fireworks[mongomock]")
        self.root = root
        self.fw_dir = root / "fireworks"
        self.fw_dir.mkdir()
        self.db = root / "launchpad-db.json"
        self.db.write_text("{}")
        self.lock = root / "launchpad.lock"
        self.lock.touch()
        data = yaml.safe_load((LAUNCHERS / "my_launchpad.yaml").read_text())
        data.update(host="localhost", name=LP_NAME, username=None, password=None, authsource=None)
        self.launchpad = self.fw_dir / "my_launchpad.yaml"
        self.launchpad.write_text(yaml.safe_dump(data))
        for kind in KINDS:
            shutil.copy(LAUNCHERS / f"my_fworker_{kind}.yaml", self.fw_dir)
        wrapper = root / "rlaunch_mongomock.py"
        wrapper.write_text(RLAUNCH_WRAPPER)
        self.store = root / "store"
        self.env = {**os.environ, "MONGOMOCK_SERVERSTORE_FILE": str(self.db), "PYTHONUNBUFFERED": "1",
                    "OMP_NUM_THREADS": "1", "OTF_FW_DIR": str(self.fw_dir),
                    "OTF_RLAUNCH": f"flock {self.lock} {sys.executable} {wrapper}",
                    "OTF_LPAD": f"flock {self.lock} {shutil.which('lpad')}",
                    "OTF_PILOT_SLEEP": "1", "OTF_PILOT_IDLE": "2"}
        self.env.pop("OTF_STORE", None)
        code = f"from fireworks import LaunchPad; LaunchPad.from_file({str(self.launchpad)!r}).reset('', False)"
        assert self._locked([sys.executable, "-c", code]).returncode == 0
        self.configs = {}
        for cfg in campaigns:
            path = root / f"{cfg['name']}.yaml"
            path.write_text(yaml.safe_dump(cfg))
            self.configs[cfg["name"]] = cfg
            out = self._locked([sys.executable, "-m", "otf_flows", "submit", path, "--launchpad", self.launchpad,
                                "--store", self.store, "--json"])
            assert out.returncode == 0, out.stderr[-3000:]

    def _locked(self, args) -> subprocess.CompletedProcess:
        return _run(["flock", self.lock, *args], cwd=self.root, env=self.env, timeout=300)

    def collections(self) -> dict[str, list[dict]]:
        from bson import json_util

        with open(self.lock) as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            text = self.db.read_text()
        db = json_util.loads(text).get(LP_NAME, {}) if text.strip() else {}
        return {name: [doc for _key, doc in coll["documents"]] for name, coll in db.items()}

    def check_campaigns(self) -> None:
        """Each campaign complete and consistent in the store: the schedule, one label per step, one model per
        failed check, nothing lost or duplicated."""
        st = OtfStore(str(self.store))
        for name, cfg in self.configs.items():
            _assert_consistent(st, name, config_from_dict(cfg))
        st.close()

    def launches_by_workflow(self) -> dict[str, list[dict]]:
        data = self.collections()
        fws = {fw["fw_id"]: fw for fw in data["fireworks"]}
        campaign_of = {fw_id: wf["metadata"]["otf_campaign"] for wf in data["workflows"] for fw_id in wf["nodes"]}
        out: dict[str, list[dict]] = {}
        for launch in data["launches"]:
            out.setdefault(campaign_of[launch["fw_id"]], []).append({**launch, "fw": fws[launch["fw_id"]]})
        return out


def run_pilot(setup: PilotSetup, pilot_dir: Path, time_left: str, workers: str, margin: int = 0,
              env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**setup.env, "OTF_PILOT_TIME": time_left, "OTF_PILOT_MARGIN": str(margin), "OTF_PILOT_WORKERS": workers,
           "OTF_PILOT_DIR": str(pilot_dir), **(env or {})}
    return _run(["bash", LAUNCHERS / "pilot.sh"], cwd=setup.root, env=env, timeout=900)


def hold_first_md_step(root: Path, seconds: int) -> dict:
    """The environment that holds the first ML-MD step of all the pilot's fireworks (of every campaign, in any
    worker or allocation: the passes are counted in one file) for ``seconds``, longer than the pilot starts
    fireworks. The md worker's `rlaunch rapidfire` then runs out of time while it holds and starts no other
    ML-MD segment, and none of the campaigns can end without one: the pilot stops with work left however fast
    the machine is (enough work alone is not enough on a fast one). While it holds, the other FireWorks
    processes wait for the LaunchPad file's lock, the pilot's clock loop too."""
    return {"OTF_FAILPOINT": f"md.step:1:hold={seconds}", "OTF_FAILPOINT_COUNTS": str(root / "failpoint-counts")}


@pytest.mark.slow
def test_pilot_runs_several_campaigns_with_inline_light_jobs(tmp_path):
    """Two campaigns, light jobs inline, workers for dft, md and fit only. A first pilot stops at its stop time
    with work left (exit 3) and leaves no firework running; a second one runs both campaigns to the end and
    stops by itself when nothing is left (exit 0).

    The first pilot's first ML-MD step holds for 30 s, past its 25 s: it stops with work left on any machine;
    the firework held runs to its end after the stop."""
    setup = PilotSetup(tmp_path, [campaign("cu-a", inline=True), campaign("cu-b", inline=True, a=3.63)])

    first = run_pilot(setup, tmp_path / "pilot-1", "25", "dft md fit",
                      env=hold_first_md_step(tmp_path, 30))
    assert first.returncode == 3, first.stdout + first.stderr
    assert "stop time reached with work left" in first.stdout
    states = [fw["state"] for fw in setup.collections()["fireworks"]]
    assert "RUNNING" not in states and "COMPLETED" in states and "READY" in states, states

    second = run_pilot(setup, tmp_path / "pilot-2", "900", "dft md fit")
    assert second.returncode == 0, second.stdout + second.stderr + (tmp_path / "pilot-2" / "dft.log").read_text()
    assert "no work left" in second.stdout
    setup.check_campaigns()
    data = setup.collections()
    assert all(fw["state"] == "COMPLETED" for fw in data["fireworks"])
    assert not [fw["name"] for fw in data["fireworks"] if fw["spec"]["_category"] == "light"]
    launches = setup.launches_by_workflow()
    assert sorted(launches) == ["cu-a", "cu-b"]
    for name, rows in launches.items():
        assert all(row["state"] == "COMPLETED" for row in rows)
        decided = [row for row in rows if "decide" in row["fw"]["name"]]
        assert len(decided) >= 2 and all(row["fw"]["name"].startswith("reference check") for row in decided)
        for row in rows:  # each firework ran on the pilot's worker of its category, in that worker's folder
            category = row["fw"]["spec"]["_category"]
            assert row["fworker"]["category"] == category and row["fworker"]["name"] == f"otf-{category}"
            assert Path(row["launch_dir"]).parent.name == category
            assert Path(row["launch_dir"]).parent.parent.name in ("pilot-1", "pilot-2")
        # the second pilot ran fireworks of both campaigns
        assert any(Path(row["launch_dir"]).parent.parent.name == "pilot-2" for row in rows), name


def test_pilot_refuses_bad_settings(tmp_path):
    fw_dir = tmp_path / "fw"
    fw_dir.mkdir()
    (fw_dir / "my_launchpad.yaml").write_text("host: localhost\n")
    shutil.copy(LAUNCHERS / "my_fworker_dft.yaml", fw_dir)
    base = {**os.environ, "OTF_FW_DIR": str(fw_dir), "OTF_PILOT_TIME": "01:00:00", "OTF_PILOT_WORKERS": "dft",
            "OTF_PILOT_DIR": str(tmp_path / "p"), "OTF_RLAUNCH": "false", "OTF_LPAD": "false"}
    cases = [
        ({"OTF_FW_DIR": ""}, "set OTF_FW_DIR"),
        ({"OTF_FW_DIR": str(tmp_path / "nope")}, "is not a directory"),
        ({"OTF_PILOT_WORKERS": "dft md"}, "my_fworker_md.yaml does not exist"),
        ({"OTF_PILOT_TIME": ""}, "set OTF_PILOT_TIME"),
        ({"OTF_PILOT_TIME": "UNLIMITED"}, "is not [D-]HH:MM:SS"),
        ({"OTF_PILOT_MARGIN": "3600"}, "leaves no time"),
    ]
    for change, message in cases:
        env = {key: value for key, value in {**base, **change}.items() if value != ""}
        out = _run(["bash", LAUNCHERS / "pilot.sh"], env=env, timeout=30)
        assert out.returncode != 0 and message in out.stderr, (change, out.returncode, out.stderr)
        assert out.returncode in (1, 2)  # ${VAR:?} exits 1 in a script, every other check 2
    assert not (tmp_path / "p").exists()


#: the edits a user makes to the shipped batch scripts for the one-node test cluster
EDITS = {
    "slurm": {"#SBATCH --job-name=otf-pilot": "#SBATCH --job-name={name}", "#SBATCH --nodes=4": "#SBATCH --nodes=1",
              "#SBATCH --ntasks-per-node=128": "#SBATCH --ntasks=1", "#SBATCH --time=24:00:00": "#SBATCH --time=00:02:00",
              "#SBATCH --partition=standard": "#SBATCH --partition=debug"},
    "pbs": {"#PBS -N otf-pilot": "#PBS -N {name}", "#PBS -l nodes=4:ppn=128": "#PBS -l nodes=1:ppn=1",
            "#PBS -l walltime=24:00:00": "#PBS -l walltime=00:02:00", "#PBS -q workq": "#PBS -q debug",
            "walltime=24:00:00 ": "walltime=00:02:00 "},
}


@pytest.mark.slurm
@pytest.mark.parametrize("scheduler", ["slurm", "pbs"])
def test_pilot_allocation_through_the_scheduler(tmp_path, slurm, scheduler):  # noqa: F811 - the imported fixture
    """pilot.slurm (sbatch) and pilot.pbs (slurm-wlm-torque's qsub) as a user edits them: each 2-minute
    allocation lets its workers start fireworks for 30 s, then resubmits itself while work is left; one campaign
    with a light worker completes over >= 2 allocations, every firework in a pilot allocation, none lost.

    The campaign's first ML-MD step holds for 45 s, once (see hold_first_md_step), longer than the ~30 s in
    which the first allocation starts fireworks: that allocation stops with work left on any machine, and the
    firework held still ends well within its 2-minute walltime."""
    submit = {"slurm": "sbatch", "pbs": "qsub"}[scheduler]
    if shutil.which(submit) is None:
        pytest.skip(f"{submit} is not installed: run scripts/slurm/start.sh")
    setup = PilotSetup(tmp_path, [campaign(f"cu-pilot-{scheduler}", inline=False)])
    shutil.copy(LAUNCHERS / "pilot.sh", tmp_path)
    script = (LAUNCHERS / f"pilot.{scheduler}").read_text()
    job_name = f"otf-pilot-{scheduler}-{tmp_path.name[-8:]}"
    for old, new in EDITS[scheduler].items():
        assert old in script, old
        script = script.replace(old, new.format(name=job_name))
    (tmp_path / f"my-pilot.{scheduler}").write_text(script)
    env = {**setup.env, "OTF_PILOT_MARGIN": "90", "OTF_PILOT_RESUBMIT": "6", "OTF_FW_DIR": str(setup.fw_dir),
           **hold_first_md_step(tmp_path, 45)}
    args = ["-V"] if scheduler == "pbs" else []  # PBS passes the environment on with -V only
    out = _run([submit, *args, f"my-pilot.{scheduler}"], cwd=tmp_path, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    deadline = time.monotonic() + 900
    while _run(["squeue", "-h", "-n", job_name, "-o", "%i"], timeout=30).stdout.strip():
        if time.monotonic() > deadline:
            _run(["scancel", "-n", job_name], timeout=30)
            pytest.fail("the pilot chain did not finish in 900 s\n" + "\n".join(
                p.read_text()[-2000:] for p in tmp_path.glob("*") if p.is_file() and p.suffix not in (".json",)))
        time.sleep(3)

    # the allocations' outputs (SLURM: otf-pilot-JOB.out; the qsub wrapper names its own), by job id
    outputs = {}
    for path in tmp_path.iterdir():
        text = path.read_text(errors="replace") if path.is_file() and path.suffix != ".json" else ""
        found = re.search(r"launches in \S*/otf-pilot-(\d+)", text)
        if found:
            outputs[int(found.group(1))] = text
    texts = [outputs[job] for job in sorted(outputs)]
    assert len(texts) >= 2, sorted(p.name for p in tmp_path.iterdir())
    for text in texts[:-1]:  # stopped at its stop time, resubmitted itself
        assert "stop time reached with work left" in text and "resubmitted as job" in text, text
    assert "no work left" in texts[-1] and "resubmitted" not in texts[-1], texts[-1]
    for job_id in outputs:  # each allocation its own job with the edited resources
        fields = dict(re.findall(r"(\w+)=(\S*)", _run(["scontrol", "show", "job", "-o", str(job_id)],
                                                      timeout=30).stdout))
        if fields:  # still in slurmctld's memory
            assert fields["TimeLimit"] == "00:02:00" and fields["Partition"] == "debug", fields
    setup.check_campaigns()
    data = setup.collections()
    assert all(fw["state"] == "COMPLETED" for fw in data["fireworks"])
    assert all(not fw.get("archived_launches") for fw in data["fireworks"])  # no run was lost and rerun
    (rows,) = setup.launches_by_workflow().values()
    assert {row["fw"]["spec"]["_category"] for row in rows} == set(KINDS)
    assert len(rows) > 2 * len(outputs)  # far fewer queue jobs than fireworks
    for row in rows:
        category = row["fw"]["spec"]["_category"]
        assert row["state"] == "COMPLETED" and row["fworker"]["name"] == f"otf-{category}"
        assert Path(row["launch_dir"]).parent.name == category
        assert Path(row["launch_dir"]).parent.parent.name.startswith("otf-pilot-")
    status = _run([sys.executable, "-m", "otf_flows", "status", f"cu-pilot-{scheduler}", "--store", setup.store,
                   "--json"], env=setup.env, timeout=120)
    assert json.loads(status.stdout)["status"] == "completed", status.stderr
