"""Allocation mode without a scheduler: the batch scripts, the chain's rules, resources that take effect
and may change on --resume, and `otf run` stopping resumably (SIGTERM, --stop-after).

The real scheduler runs are in tests/test_allocation_slurm.py.
"""

from __future__ import annotations

import copy
import json
import os
import shlex
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml
from conftest import REPO, run_otf

from otf_flows.campaign import config_from_dict
from otf_flows.errors import ConfigError, InputError
from otf_flows.flows.lifecycle import resume_changes
from otf_flows.jobs.reference import _label_hashes, reference_identity
from otf_flows.labels import settings_hash
from otf_flows.managers import allocation
from otf_flows.managers.allocation import BatchSettings, decide, render_script, walltime_seconds
from otf_flows.managers.stopping import EXIT_STOPPED
from otf_flows.reference.base import run_command
from otf_flows.reference.settings import RUN_KEYS
from otf_flows.store import OtfStore

CP2K_CAMPAIGN = {
    "name": "si8",
    "structure": {"builder": "bulk", "element": "Si", "crystalstructure": "diamond", "a": 5.43, "cubic": True,
                  "rattle_A": 0.05, "seed": 7},
    "md": {"temperature_K": 1000, "timestep_fs": 2.0, "total_steps": 14, "seed": 5},
    "reference": {"engine": "cp2k", "cp2k_cmd": "cp2k.psmp"},
    "num_initial_steps": 2,
    "check_interval": 4,
}


def _with(data: dict, key: str, value) -> dict:
    data = copy.deepcopy(data)
    *parents, last = key.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return data


def _settings(tmp_path, scheduler="slurm", **kw) -> BatchSettings:
    work = tmp_path / "work dir"  # a space: every path in shell code must be quoted
    defaults = {"scheduler": scheduler, "time": "01:30:00", "campaign": "cu-emt", "config": work / "c.yaml",
                "store": str(work / "store"), "workdir": work, "alloc_dir": work / "store/runs/cu-emt/allocations"}
    return BatchSettings(**{**defaults, **kw})


def _bash_syntax_ok(text: str, tmp_path) -> None:
    script = tmp_path / "check.sh"
    script.write_text(text)
    out = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr


# ---------------------------------------------------------------------- scripts
def test_walltime_parsing():
    assert walltime_seconds("01:30:00") == 5400
    assert walltime_seconds("2-00:00:10") == 2 * 86400 + 10
    for bad in ("90", "1:30", "00:00:00", "01:61:00"):
        with pytest.raises(InputError, match="--time"):
            walltime_seconds(bad)


def test_slurm_script_from_the_shipped_template(tmp_path):
    settings = _settings(tmp_path, ntasks=64, nodes=2, queue="standard", grace_s=120, max_allocations=4)
    text = allocation.write_script(settings).read_text()
    assert settings.script == settings.alloc_dir / "chain-01.slurm" and os.access(settings.script, os.X_OK)
    lines = text.splitlines()
    for directive in ("--time=01:30:00", "--nodes=2", "--ntasks=64", "--partition=standard",
                      "--signal=B:USR1@120", f"--output={settings.alloc_dir}/slurm-%j.out"):
        assert f"#SBATCH {directive}" in lines
    assert not any("--account" in line for line in lines)  # no --account: the line is left out
    assert "{{" not in text
    assert f"cd '{settings.workdir}' || exit 1" in lines
    assert f"otf=({sys.executable} -m otf_flows)" in lines
    assert "--stop-grace 90" in text  # the grace time less 30 s for recording and resubmitting
    assert "--chain 1 --max-allocations 4" in text
    assert 'resubmit=(sbatch --parsable "--dependency=afterany:$job_id")' in lines
    assert "stop_after=''" in text and "#PBS" not in text
    _bash_syntax_ok(text, tmp_path)


def test_pbs_script_from_the_shipped_template(tmp_path):
    settings = _settings(tmp_path, scheduler="pbs", ntasks=64, nodes=2, queue="workq", account="e123",
                         grace_s=300, stop_after_s=600)
    text = allocation.write_script(settings).read_text()
    lines = text.splitlines()
    for directive in ("-l walltime=01:30:00", "-l nodes=2:ppn=32", "-q workq", "-A e123", "-N otf-cu-emt"):
        assert f"#PBS {directive}" in lines
    assert "#SBATCH" not in text and "{{" not in text
    assert "stop_after=$(( 5400 - 300 - SECONDS ))   # from the start of the job" in lines
    assert "user_stop_after=600" in lines
    assert 'resubmit=(qsub -W "depend=afterany:$job_id")' in lines
    _bash_syntax_ok(text, tmp_path)


def test_an_edited_template_and_its_errors(tmp_path):
    edited = tmp_path / "mine.slurm"
    shipped = (REPO / "launchers" / "allocation.slurm").read_text()
    edited.write_text(shipped.replace("# module load cp2k/2024.1", "module load cp2k/2025.1")
                      + "#SBATCH --qos={{account}}\n")
    text = allocation.write_script(_settings(tmp_path), edited).read_text()
    assert "\nmodule load cp2k/2025.1\n" in text and "--qos" not in text
    with pytest.raises(InputError, match=r"line 2 has the unknown placeholder \{\{walltime\}\}"):
        render_script("#!/bin/bash\n#SBATCH --time={{walltime}}\n", _settings(tmp_path).values())
    with pytest.raises(InputError, match=r"line 1 needs \{\{account\}\}"):
        render_script("echo {{account|q}}\n", _settings(tmp_path).values())
    with pytest.raises(InputError, match="--template"):
        allocation.write_script(_settings(tmp_path), tmp_path / "missing.slurm")
    with pytest.raises(InputError, match="--grace"):
        _settings(tmp_path, time="00:01:00", grace_s=60)


# ---------------------------------------------------------------------- the chain
@pytest.mark.parametrize(("exit_code", "signal", "status", "index", "resubmit", "reason"), [
    (EXIT_STOPPED, "warning", "stopped", 1, True, "stopped (walltime warning); resubmitted"),
    (EXIT_STOPPED, "none", "stopped", 2, True, "stopped (stop time reached); resubmitted"),
    (143, "warning", "running", 1, True, "stopped (walltime warning); resubmitted"),  # TERM during start-up
    (EXIT_STOPPED, "warning", "stopped", 3, False, "resubmit limit reached (3 allocations)"),
    (EXIT_STOPPED, "term", "stopped", 1, False, "cancelled or past its walltime"),  # scancel/qdel end the chain
    (0, "none", "completed", 1, False, "completed"),
    (EXIT_STOPPED, "warning", "completed", 1, False, "completed"),  # stopped after the last job
    (1, "none", "failed", 1, False, "failed (exit 1)"),
    (2, "none", "running", 1, False, "bad input"),
    (143, "none", "stopped", 1, False, "failed (exit 143)"),
])
def test_resubmit_rules(exit_code, signal, status, index, resubmit, reason):
    decision, why = decide(exit_code, signal, status, index, max_allocations=3)
    assert decision is resubmit and reason in why


def test_chain_records(cu_config):
    from otf_flows.flows.lifecycle import prepare_campaign

    st = OtfStore(f"memory://{uuid.uuid4().hex}")
    prepare_campaign(config_from_dict(cu_config), st)
    logs = Path("/scratch/allocations")
    first = allocation.start_allocation(st, "cu-emt", scheduler="slurm", job_id="101", chain=1, max_allocations=2,
                                        log_dir=logs, ntasks=64, host="nid001")
    assert (first.number, first.index, first.log) == (1, 1, "/scratch/allocations/allocation-001.log")
    st.update_campaign("cu-emt", step=40, status="stopped", message="stopped: SIGTERM")
    assert allocation.end_allocation(st, "cu-emt", job_id="101", exit_code=EXIT_STOPPED, signal="warning").resubmit
    allocation.record_next(st, "cu-emt", job_id="101", next_job_id="102")
    with pytest.raises(InputError, match="has ended"):
        allocation.end_allocation(st, "cu-emt", job_id="101", exit_code=0)
    second = allocation.start_allocation(st, "cu-emt", scheduler="slurm", job_id="102", chain=1, max_allocations=2,
                                         log_dir=logs)
    assert (second.number, second.index, second.step_start) == (2, 2, 40)
    st.update_campaign("cu-emt", step=70, message="stopped: --stop-after 100 s")
    end = allocation.end_allocation(st, "cu-emt", job_id="102", exit_code=EXIT_STOPPED)
    assert not end.resubmit and "resubmit limit reached (2 allocations)" in end.reason
    assert allocation.next_chain(st, "cu-emt", logs) == 2
    rows = allocation.allocation_rows(allocation.allocations(st, "cu-emt"))
    assert [(r["job_id"], r["index"], r["steps"], r["exit_code"], r["next_job_id"]) for r in rows] == [
        ("101", "1/2", "0-40", 3, "102"), ("102", "2/2", "40-70", 3, None)]


# ---------------------------------------------------------------------- run commands and the labels' identity
def test_run_command_takes_the_allocation_task_count(tmp_path):
    assert run_command("cp2k.psmp", "reference.cp2k_cmd", {}) == "cp2k.psmp"
    template = "srun -n {ntasks} --nodes={nodes} cp2k.psmp"
    env = {"SLURM_NTASKS": "256", "SLURM_JOB_NUM_NODES": "2"}
    assert run_command(template, "k", env) == "srun -n 256 --nodes=2 cp2k.psmp"
    assert run_command(template, "k", {**env, "OTF_NTASKS": "128"}) == "srun -n 128 --nodes=2 cp2k.psmp"
    nodefile = tmp_path / "nodes"
    nodefile.write_text("n1\nn1\nn2\nn2\n")
    assert run_command("mpirun -np {ntasks} x{nodes}", "k", {"PBS_NODEFILE": str(nodefile)}) == "mpirun -np 4 x2"
    with pytest.raises(ConfigError, match=r"reference.cp2k_cmd: .* placeholder other than \{ntasks\}"):
        run_command("mpirun -np {ranks} cp2k.psmp", "reference.cp2k_cmd", env)


def test_run_settings_are_not_part_of_the_labels_hash():
    base = config_from_dict(CP2K_CAMPAIGN)
    hashed, settings = reference_identity(base)
    assert "cp2k_cmd" not in settings and "omp_threads" not in settings and "retries" not in settings
    for key, value in [("reference.cp2k_cmd", "srun -n {ntasks} cp2k.psmp"), ("reference.omp_threads", 4),
                       ("reference.retries", 3), ("reference.custodian_max_errors", 9),
                       ("execution.dft.omp_threads", 2)]:
        assert reference_identity(config_from_dict(_with(CP2K_CAMPAIGN, key, value)))[0] == hashed, key
    assert reference_identity(config_from_dict(_with(CP2K_CAMPAIGN, "reference.cutoff_Ry", 400)))[0] != hashed


def test_scf_mixing_is_not_part_of_the_labels_hash_but_is_stored():
    """Kerker damping (``mixing_beta``, or ``beta`` through input_updates), the mixing scheme and the SCF
    iteration limit change the SCF's path, not its converged labels: same hash, resumable; the settings
    stored with the labels still carry them (CP2K's input: test_cp2k_engine.py)."""
    base = config_from_dict(CP2K_CAMPAIGN)
    hashed, _ = reference_identity(base)
    for key, value in [("reference.mixing_beta", 1.5), ("reference.mixing_alpha", 0.2),
                       ("reference.mixing_nbuffer", 4), ("reference.mixing_method", "PULAY_MIXING"),
                       ("reference.max_scf", 300), ("reference.input_updates", {"beta": 1.5})]:
        changed = config_from_dict(_with(CP2K_CAMPAIGN, key, value))
        assert reference_identity(changed)[0] == hashed, key
        assert resume_changes(base, changed), key  # accepted, and recorded as a change
    damped = config_from_dict(_with(CP2K_CAMPAIGN, "reference.mixing_beta", 1.5))
    assert reference_identity(damped)[1]["mixing_beta"] == 1.5
    physics = config_from_dict(_with(CP2K_CAMPAIGN, "reference.input_updates", {"beta": 1.5, "cutoff": 400}))
    assert reference_identity(physics)[0] != hashed
    assert reference_identity(config_from_dict(_with(CP2K_CAMPAIGN, "reference.eps_scf", 1e-7)))[0] != hashed
    # a label stored before the SCF keys left the hash is still found by a job rerun across the upgrade
    old = settings_hash(base.reference.model_dump(mode="json", exclude=set(RUN_KEYS) | {"mixing_beta"}))
    assert old in _label_hashes(base, hashed)


@pytest.mark.parametrize(("key", "value"), [
    ("reference.cp2k_cmd", "mpirun -np {ntasks} cp2k.psmp"), ("reference.omp_threads", 8),
    ("reference.retries", 4), ("reference.custodian_max_errors", 2), ("execution.dft.omp_threads", 16),
    ("execution.md.omp_threads", 4), ("execution.dft.queue", {"nodes": 8}), ("model.num_threads", 32),
])
def test_resume_accepts_other_resources(key, value):
    changed = resume_changes(config_from_dict(CP2K_CAMPAIGN), config_from_dict(_with(CP2K_CAMPAIGN, key, value)))
    assert len(changed) == 1 and next(iter(changed)).startswith(key)


def test_resume_still_refuses_physics():
    with pytest.raises(InputError, match=r"^--resume: md.temperature_K "):
        resume_changes(config_from_dict(CP2K_CAMPAIGN),
                       config_from_dict(_with(CP2K_CAMPAIGN, "md.temperature_K", 1500.0)))
    with pytest.raises(InputError, match=r"^--resume: reference.cutoff_Ry "):
        resume_changes(config_from_dict(CP2K_CAMPAIGN), config_from_dict(_with(CP2K_CAMPAIGN, "reference.cutoff_Ry", 400)))


# ---------------------------------------------------------------------- otf submit on a login node
@pytest.fixture
def login_node(tmp_path):
    """A PATH with a fake sbatch (records its arguments, prints a job id) and no CP2K on it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "sbatch-calls.txt"
    fake = bin_dir / "sbatch"
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\necho '4242;cluster'\n")
    fake.chmod(0o755)
    return {"env": {"PATH": str(bin_dir), "OTF_STORE": ""}, "calls": calls}


def _snapshot(store_dir: Path) -> dict:
    st = OtfStore(str(store_dir))
    docs = {name: sorted(str(sorted(d.items())) for d in st.collection(name).query({}))
            for name in ("campaigns", "allocations")}
    st.close()
    return docs


def test_submit_without_cp2k_then_resume_with_other_resources(tmp_path, login_node):
    path = tmp_path / "si8.yaml"
    path.write_text(yaml.safe_dump(CP2K_CAMPAIGN))
    store = tmp_path / "store"
    args = ["submit", str(path), "--batch", "slurm", "--time", "00:30:00", "--store", str(store), "--json"]
    env = login_node["env"]

    # the login node has no CP2K: --check-engine says so, plain submit does not need it
    out = run_otf(*args, "--check-engine", env=env, cwd=tmp_path)
    assert out.returncode == 1 and "not found on PATH" in out.stderr, out.stderr
    assert not (store / "db").exists()
    out = run_otf(*args, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    script = Path(result["script"])
    assert result["job_id"] == "4242" and script == store / "runs" / "si8" / "allocations" / "chain-01.slurm"
    assert login_node["calls"].read_text().split() == ["--parsable", str(script)]
    assert f"run {shlex.quote(str(path))} --resume" in script.read_text()
    doc = OtfStore(str(store)).require_campaign("si8")
    assert doc.status == "created" and "batch job 4242" in doc.message

    # stopped at the walltime: continue on more cores with another launcher and more threads
    faster = _with(_with(CP2K_CAMPAIGN, "reference.cp2k_cmd", "srun -n {ntasks} cp2k.psmp"),
                   "execution.dft.omp_threads", 4)
    path.write_text(yaml.safe_dump(faster))
    out = run_otf(*args, "--resume", "--ntasks", "256", env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["chain"] == 2
    assert "#SBATCH --ntasks=256" in (store / "runs/si8/allocations/chain-02.slurm").read_text()
    [change] = OtfStore(str(store)).require_campaign("si8").changes
    assert change["changed"] == {"reference.cp2k_cmd": ["cp2k.psmp", "srun -n {ntasks} cp2k.psmp"],
                                 "execution.dft.omp_threads": [None, 4]}

    # a change of physics is still refused, before anything is written or queued
    before = _snapshot(store)
    path.write_text(yaml.safe_dump(_with(faster, "md.temperature_K", 1500.0)))
    out = run_otf(*args, "--resume", env=env, cwd=tmp_path)
    assert out.returncode == 2 and "md.temperature_K" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert _snapshot(store) == before
    assert len(login_node["calls"].read_text().splitlines()) == 2

    # neither or both modes
    assert run_otf("submit", str(path), "--store", str(store), env=env).returncode == 2
    out = run_otf(*args[:4], "--store", str(store), env=env)  # --batch without --time
    assert out.returncode == 2 and "--time" in out.stderr


def test_dry_run_writes_the_script_only(tmp_path, cu_config, write_config, login_node):
    path = write_config(cu_config)
    out = run_otf("submit", str(path), "--batch", "pbs", "--time", "02:00:00", "--queue", "workq", "--ntasks", "8",
                  "--store", str(tmp_path / "store"), "--dry-run", env=login_node["env"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "#PBS -l nodes=1:ppn=8" in out.stdout and "#PBS -q workq" in out.stdout
    assert not (tmp_path / "store" / "db").exists() and not login_node["calls"].exists()


# ---------------------------------------------------------------------- otf run stops resumably
def test_stop_after_abandons_the_running_job_and_resume_loses_nothing(tmp_path, cu_config, write_config):
    """--stop-grace 0: the job running at the stop is abandoned at once; --resume reruns it, and the campaign
    ends as an uninterrupted run does (same checks, models and labels).

    The first ML-MD step holds (a failpoint) until the stop is requested, so the stop finds that job running
    however fast the machine is; a slower machine is stopped earlier, in whatever job runs at 6 s."""
    cu_config["md"]["total_steps"] = 40
    path = write_config(cu_config)
    whole, cut = str(tmp_path / "whole"), str(tmp_path / "cut")
    assert run_otf("run", str(path), "--store", whole).returncode == 0
    out = run_otf("run", str(path), "--store", cut, "--stop-after", "6", "--stop-grace", "0",
                  env={"OTF_FAILPOINT": "md.step:1:hold=600"})
    assert out.returncode == EXIT_STOPPED, out.stderr[-2000:]
    assert out.stderr.strip().splitlines()[-1].startswith("otf: stopped (--stop-after 6 s; ")
    doc = OtfStore(cut).require_campaign("cu-emt")
    assert doc.status == "stopped" and "abandoned" in doc.message and doc.step < 40
    out = run_otf("run", str(path), "--store", cut, "--resume")
    assert out.returncode == 0, out.stderr[-2000:]

    def outcome(location):
        st = OtfStore(location)
        checks = [(c.step, c.passed, c.new_model_id) for c in st.checks("cu-emt")]
        frames = sorted((f.source, f.md_step, round(f.energy, 6)) for f in st.frames_of("cu-emt"))
        return checks, frames, [m.model_id for m in st.models("cu-emt")], st.require_campaign("cu-emt").step

    assert outcome(cut) == outcome(whole)


# ---------------------------------------------------------------------- threads that take effect
def test_md_threads_limit_quip_in_ml_md(tmp_path, cu_config, monkeypatch):
    """execution.md.omp_threads limits the thread pools of the ML-MD process (where quip runs); the
    initial reference MD keeps the process's own."""
    from threadpoolctl import threadpool_info

    import otf_flows.jobs.md as md_job
    import otf_flows.jobs.reference as ref_job
    from otf_flows.managers.local import run_campaign

    baseline = {p["filepath"]: p["num_threads"] for p in threadpool_info()}
    seen = {"ml": [], "reference": []}

    def recording(kind, real):
        def run(*args, **kwargs):
            seen[kind].append({p["filepath"]: p["num_threads"] for p in threadpool_info()})
            return real(*args, **kwargs)
        return run

    monkeypatch.setattr(md_job, "run_segment", recording("ml", md_job.run_segment))
    monkeypatch.setattr(ref_job, "run_segment", recording("reference", ref_job.run_segment))
    cu_config["md"]["total_steps"] = 20
    cu_config["execution"] = {"md": {"omp_threads": 1}}
    assert run_campaign(config_from_dict(cu_config), OtfStore(str(tmp_path / "store"))).status == "completed"
    assert seen["ml"] and seen["reference"]
    quip = [path for path in seen["ml"][0] if "quippy" in path]
    assert quip, "quip's libraries are not among the limited thread pools"
    assert all(n == 1 for pools in seen["ml"] for n in pools.values())
    assert all(pools == baseline for pools in seen["reference"])  # the limit holds inside ML-MD only
    if all(n == 1 for n in baseline.values()):
        pytest.skip("every thread pool has one thread anyway (one core or OMP_NUM_THREADS=1): nothing to tell")


CP2K = shutil.which("cp2k.psmp")


@pytest.mark.cp2k
@pytest.mark.skipif(CP2K is None or shutil.which("mpirun") is None, reason="cp2k.psmp and mpirun are needed")
def test_cp2k_runs_with_the_allocation_tasks_and_dft_threads(tmp_path, monkeypatch):
    """reference.cp2k_cmd 'mpirun -np {ntasks} cp2k.psmp' with the allocation's 2 tasks and
    execution.dft.omp_threads 1: CP2K's own output reports both."""
    import gzip

    from otf_flows.jobs.reference import reference_engine
    from otf_flows.structures import build_structure

    monkeypatch.setenv("OTF_NTASKS", "2")
    monkeypatch.setenv("OMPI_ALLOW_RUN_AS_ROOT", "1")  # CI runs as root
    monkeypatch.setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    data = _with(_with(CP2K_CAMPAIGN, "reference.cp2k_cmd", "mpirun -np {ntasks} cp2k.psmp"),
                 "execution.dft.omp_threads", 1)
    config = config_from_dict(data)
    labels = reference_engine(config).label(build_structure(config.structure), tmp_path)
    assert labels.forces.shape == (8, 3)
    with gzip.open(tmp_path / "attempt_1" / "cp2k.out.gz", "rt") as fh:
        out = fh.read()
    assert " ".join(line.split()[-1] for line in out.splitlines()
                    if "GLOBAL| Total number of message passing processes" in line) == "2"
    assert " ".join(line.split()[-1] for line in out.splitlines()
                    if "GLOBAL| Number of threads for this process" in line) == "1"


def test_a_walltime_warning_before_otf_run_starts_still_stops_it_resumably(tmp_path, cu_config, write_config,
                                                                            login_node):
    """SLURM once sent the walltime warning (USR1) 1 s into a job, while the script was still in
    `otf allocation start`: the traps come first, so the script lives, passes the warning on to
    `otf run` as soon as it starts (stopped, exit 3) and resubmits itself.

    `otf allocation start` holds (a failpoint) until the warning has been sent, so the warning comes while it
    runs however fast the machine starts Python."""
    import signal

    path = write_config(cu_config)
    store = tmp_path / "store"
    env = {**os.environ, "PATH": login_node["env"]["PATH"] + os.pathsep + os.environ["PATH"], "OTF_STORE": ""}
    out = run_otf("submit", str(path), "--batch", "slurm", "--time", "00:30:00", "--store", str(store), "--json",
                  env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    script = Path(json.loads(out.stdout)["script"])
    sent = tmp_path / "warning-sent"
    hold = {"OTF_FAILPOINT": "allocation.started:1:hold=300", "OTF_FAILPOINT_RELEASE": str(sent)}
    proc = subprocess.Popen(["bash", str(script)], env={**env, **hold, "SLURM_JOB_ID": "4242"}, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stderr:  # `otf allocation start` has recorded the allocation and holds
        seen.append(line)
        if "failpoint allocation.started: holding" in line:
            break
    proc.send_signal(signal.SIGUSR1)
    sent.touch()
    stdout, stderr = proc.communicate(timeout=300)
    stderr = "".join(seen) + stderr
    assert proc.returncode == 0, (proc.returncode, stdout, stderr)
    assert "otf run not started (signal: warning came first)" in stdout and "resubmitted as job 4242" in stdout
    row = OtfStore(str(store)).collection("allocations").query_one({"campaign": "cu-emt"})
    assert row["exit_code"] == 3 and row["resubmit"] and row["next_job_id"] == "4242"
    log = Path(row["log"]).read_text()
    assert "came before otf run started" in log and "continue with `otf run" in log
