"""`otf submit` end to end on a real scheduler: qlaunch → sbatch/qsub → rlaunch, one job kind per worker.

Needs the single-node SLURM cluster of ``scripts/slurm/start.sh`` (CI runs it before pytest and
``scripts/slurm/stop.sh`` after). If SLURM is installed but not running, this module starts it
with ``start.sh --no-install`` and stops it again at the end; without SLURM the tests are skipped.

Three small EMT campaigns run at the same time (a module fixture), each with its own store,
LaunchPad and launch directories; the tests then check what each left in its store and LaunchPad:

- ``sbatch``: SLURM templates, reservation mode (``qlaunch -r``): each queue job gets its
  firework's ``_queueadapter`` (the YAML's ``execution.<kind>.queue``);
- ``qsub``: PBS templates through slurm-wlm-torque's ``qsub``, plain ``qlaunch``;
- ``scancel``: SLURM, the first fit job is cancelled after gap_fit and before its model is registered
  (it holds there: a failpoint), found by ``lpad detect_lostruns`` and rerun.

The LaunchPad is FireWorks' mongomock persistence: one JSON file that every process reads when it
starts and writes back when it exits. Launches of a campaign are therefore serialised: the test
plays the role of ``qlaunch`` on a login node, submitting one queue job at a time for the next
ready firework with that firework's worker and queue adapter, and every process touching the file
runs under ``flock``. In a queue job, rlaunch runs through a small wrapper that writes the file on
SIGTERM, so a launch killed by the scheduler stays RUNNING in the LaunchPad, as it would in MongoDB.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, cu_emt_data

from otf_flows.store import OtfStore

pytestmark = pytest.mark.slurm

SCRIPTS = REPO / "scripts" / "slurm"
LAUNCHERS = REPO / "launchers"
KINDS = ("dft", "md", "fit", "light")
LP_NAME = "otf_test"
JOB_TIMEOUT_S = 900
"""A guard against a queue job that never ends, not a speed limit: on the 2-core node the three scenarios' jobs
queue behind each other (a loaded machine kept jobs PENDING for over 120 s)."""
#: walltimes the campaign YAML asks for per kind (execution.<kind>.queue), checked on the scheduler
WALLTIME = {"dft": "00:09:00", "fit": "00:08:00"}
DEFAULT_WALLTIME = "00:10:00"

RLAUNCH_WRAPPER = '''"""rlaunch for a LaunchPad kept by mongomock in a file (MONGOMOCK_SERVERSTORE_FILE).

The file is written when the process exits and, like a database server would keep it, also when
the scheduler terminates the job (SIGTERM): the launch then stays RUNNING for lpad detect_lostruns.
"""
import os
import signal
import sys

import fireworks.fw_config  # noqa: F401 - loads mongomock_persistence
import mongomock.store

_stores = []
_init = mongomock.store.ServerStore.__init__


def _tracking_init(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    _stores.append(self)


def _on_term(signum, frame):
    for store in _stores:
        store._to_file()
    sys.stderr.write(f"rlaunch wrapper: signal {signum}, LaunchPad written\\n")
    os._exit(128 + signum)


mongomock.store.ServerStore.__init__ = _tracking_init
signal.signal(signal.SIGTERM, _on_term)

from fireworks.scripts.rlaunch_run import rlaunch  # noqa: E402

sys.exit(rlaunch())
'''


def _run(args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, check=False, **kwargs)


def _cluster_up() -> bool:
    try:
        out = _run(["sinfo", "-h", "-o", "%T"], timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and any(s.startswith(("idle", "mixed", "allocated")) for s in out.stdout.split())


@pytest.fixture(scope="module")
def slurm():
    """A running single-node SLURM cluster; daemons this module starts are stopped at the end."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        pytest.skip("SLURM is not installed (sinfo/sbatch missing): run scripts/slurm/start.sh first")
    try:
        import mongomock_persistence  # noqa: F401
    except ImportError:
        pytest.skip("FireWorks' mongomock LaunchPad needs mongomock-persistence: pip install 'fireworks[mongomock]'")
    started = False
    if not _cluster_up():
        out = _run(["bash", SCRIPTS / "start.sh", "--no-install"], timeout=180)
        if out.returncode != 0 or not _cluster_up():
            pytest.skip(f"the SLURM cluster is down and scripts/slurm/start.sh failed: {out.stderr.strip()[-500:]}")
        started = True
    yield
    if started:
        _run(["bash", SCRIPTS / "stop.sh"], timeout=120)


class ClusterCampaign:
    """A small EMT campaign submitted with `otf submit` and run by per-kind workers through a scheduler."""

    def __init__(self, root: Path, config: dict, scheduler: str, reserve: bool, job_env: dict | None = None):
        self.root, self.scheduler, self.reserve = root, scheduler, reserve
        self.job_env = job_env or {}  # exported in every queue job
        self.store = root / "store"
        self.runs = root / "runs"
        self.runs.mkdir()
        (root / "qlogs").mkdir()
        self.db = root / "launchpad-db.json"
        self.db.write_text("{}")
        self.lock = root / "launchpad.lock"
        self.lock.touch()
        self.env = {**os.environ, "MONGOMOCK_SERVERSTORE_FILE": str(self.db), "PYTHONUNBUFFERED": "1"}
        self.env.pop("OTF_STORE", None)
        self.config = root / "campaign.yaml"
        self.config.write_text(yaml.safe_dump(config))
        self.name = config["name"]
        self.launchpad = self._launchpad()
        wrapper = root / "rlaunch_mongomock.py"
        wrapper.write_text(RLAUNCH_WRAPPER)
        self.fworkers = {k: self._copy(f"my_fworker_{k}.yaml") for k in KINDS}
        self.qadapters = {k: self._qadapter(k, wrapper) for k in KINDS}
        self.jobs: list[dict] = []
        self.cancelled: list[dict] = []
        self.submitted: dict = {}

    # ---------------------------------------------------------------- files from launchers/
    def _copy(self, name: str) -> Path:
        dest = self.root / name
        shutil.copy(LAUNCHERS / name, dest)
        return dest

    def _launchpad(self) -> Path:
        data = yaml.safe_load((LAUNCHERS / "my_launchpad.yaml").read_text())
        data.update(host="localhost", name=LP_NAME, username=None, password=None, authsource=None)
        dest = self.root / "my_launchpad.yaml"
        dest.write_text(yaml.safe_dump(data))
        return dest

    def _qadapter(self, kind: str, wrapper: Path) -> Path:
        """The shipped template, scaled down to this 2-core node, with rlaunch serialised by flock."""
        name = f"my_qadapter_{self.scheduler}_{kind}.yaml"
        data = yaml.safe_load((LAUNCHERS / name).read_text())
        assert data["_fw_name"] == "CommonAdapter"
        assert data["_fw_q_type"] == {"slurm": "SLURM", "pbs": "PBS"}[self.scheduler]
        assert f"my_fworker_{kind}.yaml" in data["rocket_launch"]
        if self.scheduler == "slurm":
            data.update(nodes=1, cpus_per_task=1, queue="debug")
            data.pop("ntasks_per_node", None)
            data["ntasks"] = 1
        else:
            data.update(nnodes=1, ppnode=1, queue="debug")
        data.pop("account", None)
        data["walltime"] = DEFAULT_WALLTIME
        data["logdir"] = str(self.root / "qlogs")  # qlaunch then reports the job id
        data["rocket_launch"] = (
            f"flock {self.lock} {sys.executable} {wrapper} -l {self.launchpad} -w {self.fworkers[kind]} singleshot"
        )
        data["pre_rocket"] = (
            f"{data['pre_rocket']}export PATH={os.environ['PATH']}\n"
            f"export MONGOMOCK_SERVERSTORE_FILE={self.db}\nexport OMP_NUM_THREADS=1\n"
            + "".join(f"export {key}={value}\n" for key, value in self.job_env.items())
        )
        dest = self.root / name
        dest.write_text(yaml.safe_dump(data))
        return dest

    # ---------------------------------------------------------------- LaunchPad access (serialised)
    def _locked(self, args, **kwargs) -> subprocess.CompletedProcess:
        return _run(["flock", self.lock, *args], env=self.env, timeout=300, **kwargs)

    def collections(self) -> dict[str, list[dict]]:
        """The LaunchPad's fireworks, launches and workflows, read from the mongomock file under the lock."""
        from bson import json_util

        with open(self.lock) as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            text = self.db.read_text()
        db = json_util.loads(text).get(LP_NAME, {}) if text.strip() else {}
        return {name: [doc for _key, doc in coll["documents"]] for name, coll in db.items()}

    def reset(self) -> None:
        """An empty LaunchPad (what `lpad reset` does, without its date prompt)."""
        code = (f"from fireworks import LaunchPad; "
                f"LaunchPad.from_file({str(self.launchpad)!r}).reset('', require_password=False)")
        out = self._locked([sys.executable, "-c", code], cwd=self.root)
        assert out.returncode == 0, out.stderr[-2000:]

    def submit(self) -> dict:
        self.reset()
        out = self._locked([sys.executable, "-m", "otf_flows", "submit", self.config, "--launchpad", self.launchpad,
                            "--store", self.store, "--json"], cwd=self.root)
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout)

    def lpad(self, *args) -> subprocess.CompletedProcess:
        return self._locked(["lpad", "-l", self.launchpad, *args], cwd=self.root)

    # ---------------------------------------------------------------- queue launches
    def qlaunch(self, fw: dict) -> dict:
        """Reserve ``fw`` and submit its queue job with the worker and adapter of its kind."""
        kind = fw["spec"]["_category"]
        launch_dir = self.runs / f"{len(self.jobs):03d}-{kind}-fw{fw['fw_id']}"
        launch_dir.mkdir()
        t0 = time.monotonic()
        reserve = ["-r"] if self.reserve else []
        fw_id = ["-f", fw["fw_id"]] if self.reserve else []
        args = ["qlaunch", *reserve, "-l", self.launchpad, "-w", self.fworkers[kind], "-q", self.qadapters[kind],
                "--launch_dir", launch_dir, "singleshot", *fw_id]
        out = self._locked(args, cwd=self.runs)
        found = re.search(r"job_id is (\d+)", out.stdout + out.stderr)
        assert out.returncode == 0 and found, (
            f"qlaunch failed for fw {fw['fw_id']}:\n{out.stdout[-2000:]}{out.stderr[-2000:]}"
        )
        job = {"job_id": found.group(1), "fw_id": fw["fw_id"], "name": fw["name"], "kind": kind, "dir": launch_dir,
               "t0": t0, "qlaunch_s": time.monotonic() - t0}
        self.jobs.append(job)
        return job

    def wait(self, job: dict, timeout: float = JOB_TIMEOUT_S) -> dict:
        """Wait for the queue job to leave the queue; record its final scheduler state and time limit."""
        deadline = time.monotonic() + timeout
        while True:
            out = _run(["scontrol", "show", "job", "-o", job["job_id"]], timeout=30)
            fields = dict(re.findall(r"(\w+)=(\S*)", out.stdout))
            if fields.get("JobState") not in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", None):
                job.update(state=fields["JobState"], time_limit=fields.get("TimeLimit"),
                           total_s=time.monotonic() - job["t0"], run_time=fields.get("RunTime"))
                return job
            if time.monotonic() > deadline:
                _run(["scancel", job["job_id"]])
                pytest.fail(f"queue job {job['job_id']} ({job['name']}) still {fields.get('JobState')} "
                            f"after {timeout} s\n{self.job_output(job)}")
            time.sleep(0.2)

    def job_output(self, job: dict) -> str:
        text = []
        for path in sorted(job["dir"].glob("*")):
            if path.is_file() and path.suffix in (".out", ".error", ".script") or path.name.startswith("FW_job"):
                text.append(f"--- {path.name}\n{path.read_text()[-3000:]}")
        return "\n".join(text)

    def identify(self, job: dict) -> None:
        """The firework the queue job actually ran (a plain worker pulls any ready one of its kind)."""
        launches = [la for la in self.collections()["launches"] if la.get("launch_dir") == str(job["dir"])]
        if launches:
            fw_id = launches[-1]["fw_id"]
            if fw_id != job["fw_id"]:
                fw = next(fw for fw in self.collections()["fireworks"] if fw["fw_id"] == fw_id)
                job.update(fw_id=fw_id, name=fw["name"])

    def fw_state(self, fw_id: int) -> str:
        return next(fw["state"] for fw in self.collections()["fireworks"] if fw["fw_id"] == fw_id)

    def cancel_first_fit(self, job: dict) -> bool:
        """scancel the first fit job where it holds (FIT_HOLD: gap_fit has finished, the model is not yet
        registered), then recover it with lpad detect_lostruns --rerun."""
        if self.cancelled or job["kind"] != "fit":
            return False
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while not any("failpoint fit.done: holding" in path.read_text(errors="replace")
                      for path in job["dir"].glob("*.error")):
            if time.monotonic() > deadline:
                pytest.fail("the fit never reached its failpoint\n" + self.job_output(job))
            time.sleep(0.05)
        _run(["scancel", job["job_id"]], timeout=30)
        self.wait(job)
        self.identify(job)
        job["fw_state_after_cancel"] = self.fw_state(job["fw_id"])  # RUNNING: a lost run, as MongoDB would show it
        st = OtfStore(str(self.store))
        job["models_after_cancel"] = len(st.models(self.name))
        st.close()
        # --time 1: a RUNNING launch not updated for 1 s is lost; the killed one was last updated before the
        # kill (its process is gone), so after 1.1 s it is found however fast the steps above were
        time.sleep(1.1)
        out = self.lpad("detect_lostruns", "--time", "1", "--rerun")
        job["detect_lostruns"] = out.stdout + out.stderr
        self.cancelled.append(job)
        return True

    def drive(self, on_start=None, max_jobs: int = 60) -> None:
        """Launch the next ready firework through the queue until the workflow is done.

        ``on_start(job)`` is called right after each submission (it may cancel the job and must
        then recover the launch); otherwise every queue job must end with its firework COMPLETED.
        """
        for _ in range(max_jobs):
            data = self.collections()
            (workflow,) = data["workflows"]
            if workflow["state"] == "COMPLETED":
                return
            ready = sorted((fw for fw in data["fireworks"] if fw["state"] == "READY"), key=lambda fw: fw["fw_id"])
            states = {fw["fw_id"]: fw["state"] for fw in data["fireworks"]}
            assert ready, f"workflow {workflow['state']} with nothing ready: {states}"
            job = self.qlaunch(ready[0])
            if on_start is not None and on_start(job):
                continue
            self.wait(job)
            self.identify(job)
            state = self.fw_state(job["fw_id"])
            # a job can be COMPLETED for the scheduler although rlaunch never ran: check the firework
            assert job["state"] == "COMPLETED" and state == "COMPLETED", (
                f"queue job {job['job_id']} {job['state']}, firework {job['name']} {state}\n" + self.job_output(job)
            )
        pytest.fail(f"campaign not finished after {max_jobs} queue jobs")


def check_results(camp: ClusterCampaign) -> None:
    """The campaign's data in the store, not only job states."""
    config = yaml.safe_load(camp.config.read_text())
    st = OtfStore(str(camp.store))
    doc = st.require_campaign(camp.name)
    assert doc.status == "completed" and doc.step == config["md"]["total_steps"]
    checks = st.checks(camp.name)
    models = st.models(camp.name)
    failed = [c for c in checks if not c.passed]
    assert len(checks) >= 2 and checks[-1].step == config["md"]["total_steps"]
    assert len(models) == 1 + len(failed)
    assert all(c.refit and c.new_model_id for c in failed)
    assert len({m.model_id for m in models}) == len(models)
    frames = st.frames_of(camp.name)
    ids = [f.frame_id for f in frames]
    assert len(ids) == len(set(ids)), "duplicate frame ids"
    labelled = [(f.source, f.md_step) for f in frames]
    assert len(labelled) == len(set(labelled)), f"a step was labelled twice: {sorted(labelled)}"
    initial = [f for f in frames if f.source == "initial_md"]
    assert sorted(f.md_step for f in initial) == list(range(config["num_initial_steps"] + 1))
    assert sorted(f.md_step for f in frames if f.source == "check") == [c.step for c in checks]
    # training data: every label (refit.train_on: all), once; the last model saw every label
    # up to its trigger check
    training = st.training_frames(camp.name)
    assert len(training) == len(frames)
    last = models[-1]
    cut = last.trigger_check_step if last.trigger_check_step is not None else config["num_initial_steps"]
    assert last.n_training_frames == sum(f.md_step <= cut for f in frames)
    st.close()


def check_routing(camp: ClusterCampaign) -> None:
    """Every firework (the dynamically added ones too) ran on a worker of its kind."""
    data = camp.collections()
    fws = {fw["fw_id"]: fw for fw in data["fireworks"]}
    assert all(fw["state"] == "COMPLETED" for fw in fws.values())
    assert len(fws) > 6, "the decide jobs did not add iterations"
    completed = [la for la in data["launches"] if la["state"] == "COMPLETED"]
    assert sorted(la["fw_id"] for la in completed) == sorted(fws)
    for launch in completed:
        spec = fws[launch["fw_id"]]["spec"]
        kind = spec["otf_kind"]
        assert spec["_category"] == kind and launch["fworker"]["category"] == kind
        assert launch["fworker"]["name"] == f"otf-{kind}"
        assert spec.get("_fworker") == ("otf-md" if kind == "md" else None)
        assert spec.get("_queueadapter") == ({"walltime": WALLTIME[kind]} if kind in WALLTIME else None)
    assert {job["kind"] for job in camp.jobs} == set(KINDS)
    for job in camp.jobs:
        if job.get("state") == "COMPLETED":
            # reservation mode (qlaunch -r) applies the firework's _queueadapter to the queue job
            expected = WALLTIME.get(job["kind"], DEFAULT_WALLTIME) if camp.reserve else DEFAULT_WALLTIME
            assert job["time_limit"] == expected, job


def campaign_config(total_steps: int) -> dict:
    """The shipped EMT example, shortened, with per-kind execution settings.

    60 steps: about three checks (35, 50, 60); the first usually fails and triggers a refit,
    so about 15 fireworks.
    """
    cfg = cu_emt_data()
    cfg["md"]["total_steps"] = total_steps
    cfg["check_interval"] = 30
    cfg["execution"] = {
        "dft": {"queue": {"walltime": WALLTIME["dft"]}},
        "md": {"fworker": "otf-md", "omp_threads": 1},
        "fit": {"queue": {"walltime": WALLTIME["fit"]}},
        "light": {},
    }
    return cfg


def fit_hold(root: Path) -> dict:
    """The queue jobs' environment that holds the campaign's first fit between gap_fit's end and the model's
    registration (once: the passes are counted in one file, so its rerun goes through), where it is
    cancelled: without it, a fit over before the scancel would leave nothing to recover on a fast machine."""
    return {"OTF_FAILPOINT": "fit.done:1:hold=600", "OTF_FAILPOINT_COUNTS": str(root / "failpoint-counts")}


SCENARIOS = {
    "sbatch": {"scheduler": "slurm", "reserve": True, "total_steps": 60, "cancel_first_fit": False},
    "qsub": {"scheduler": "pbs", "reserve": False, "total_steps": 60, "cancel_first_fit": False},
    "scancel": {"scheduler": "slurm", "reserve": False, "total_steps": 60, "cancel_first_fit": True},
}


@pytest.fixture(scope="module")
def campaigns(slurm, tmp_path_factory):
    """Run every scenario to completion concurrently; ``{name: (campaign, error or None)}``."""
    runs = {}
    for name, sc in SCENARIOS.items():
        if sc["scheduler"] == "pbs" and shutil.which("qsub") is None:
            continue
        root = tmp_path_factory.mktemp(name)
        camp = ClusterCampaign(root, campaign_config(sc["total_steps"]), sc["scheduler"], sc["reserve"],
                               job_env=fit_hold(root) if sc["cancel_first_fit"] else None)
        runs[name] = {"camp": camp, "cancel": sc["cancel_first_fit"], "error": None}

    def scenario(run):
        camp = run["camp"]
        try:
            camp.submitted = camp.submit()
            camp.drive(on_start=camp.cancel_first_fit if run["cancel"] else None)
        except BaseException as err:  # noqa: BLE001 - pytest.fail raises BaseException; re-raised by the test
            run["error"] = err

    threads = [threading.Thread(target=scenario, args=(run,), name=name) for name, run in runs.items()]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for name, run in runs.items():
        print(f"\n{name}: {len(run['camp'].jobs)} queue jobs, all scenarios {time.monotonic() - start:.0f} s")
        for job in run["camp"].jobs:
            print(f"  {job['job_id']:>5} {job['name']:<24} {job.get('state')} after {job.get('total_s', 0):5.1f} s")
    return {name: (run["camp"], run["error"]) for name, run in runs.items()}


def _finished(campaigns, name: str) -> ClusterCampaign:
    if name not in campaigns:
        pytest.skip("PBS-style qsub (slurm-wlm-torque) is not installed: run scripts/slurm/start.sh")
    camp, error = campaigns[name]
    if error is not None:
        raise error
    return camp


def test_campaign_through_sbatch(campaigns):
    """SLURM templates, reservation mode: each queue job gets its firework's resources."""
    camp = _finished(campaigns, "sbatch")
    assert {row["category"] for row in camp.submitted["fireworks"]} == {"dft", "fit", "md", "light"}
    check_routing(camp)
    check_results(camp)
    for job in camp.jobs:
        script = (job["dir"] / "FW_submit.script").read_text()
        assert "#SBATCH --partition=debug" in script
        assert f"#SBATCH --time={WALLTIME.get(job['kind'], DEFAULT_WALLTIME)}" in script
    # `otf status` reads the same store
    out = _run([sys.executable, "-m", "otf_flows", "status", camp.name, "--store", camp.store, "--json"], env=camp.env)
    assert out.returncode == 0 and json.loads(out.stdout)["status"] == "completed", out.stderr


def test_campaign_through_pbs_qsub(campaigns):
    """PBS templates through slurm-wlm-torque's qsub; plain qlaunch (workers pull ready fireworks)."""
    camp = _finished(campaigns, "qsub")
    check_routing(camp)
    check_results(camp)
    for job in camp.jobs:
        script = (job["dir"] / "FW_submit.script").read_text()
        assert "#PBS -q debug" in script and f"#PBS -l walltime={DEFAULT_WALLTIME}" in script
        assert "#SBATCH" not in script


def test_cancelled_job_is_recovered(campaigns):
    """scancel of the first fit job (held after gap_fit, before its model is registered); lpad detect_lostruns
    --rerun; the campaign completes, nothing twice."""
    camp = _finished(campaigns, "scancel")
    assert len(camp.cancelled) == 1, "no fit job was cancelled"
    job = camp.cancelled[0]
    assert job["state"] == "CANCELLED" and job["fw_state_after_cancel"] == "RUNNING"
    assert "Lost FireWorks: 1" in job["detect_lostruns"]
    assert job["models_after_cancel"] == 0  # killed after gap_fit, before the model was registered
    check_routing(camp)
    check_results(camp)
    fw = next(fw for fw in camp.collections()["fireworks"] if fw["fw_id"] == job["fw_id"])
    assert fw["state"] == "COMPLETED" and len(fw["archived_launches"]) == 1  # the killed launch, kept for the record
    rerun = [j for j in camp.jobs if j["fw_id"] == job["fw_id"] and j is not job]
    assert [j["state"] for j in rerun] == ["COMPLETED"]
