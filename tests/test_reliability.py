"""Reliability: SIGKILL at any point then --resume, gap_fit failures, the blow-up guard."""

from __future__ import annotations

import signal

from conftest import run_otf

from otf_flows.campaign import config_from_dict
from otf_flows.schedule import next_interval
from otf_flows.store import OtfStore

KILL_POINTS = [
    "initial_md.labelled:3",  # during the initial reference MD
    "md.step:25",  # in the middle of an ML-MD segment
    "fit.done:1",  # during a refit (gap_fit finished, model not yet registered)
    "check.labelled:2",  # during a DFT check (label stored, job not finished)
    "decide.stored:2",  # check stored, campaign pointer not yet moved
    "between_jobs:5",  # between two jobs
]


def _assert_consistent(st: OtfStore, name: str, config) -> None:
    doc = st.require_campaign(name)
    assert doc.status == "completed" and doc.step == config.md.total_steps
    frames = st.frames_of(name)
    assert len({f.frame_id for f in frames}) == len(frames)
    assert len({(f.source, f.md_step) for f in frames}) == len(frames)  # one label per step and kind
    checks = st.checks(name)
    steps = [c.step for c in checks]
    assert steps == sorted(set(steps)), "checks must be strictly increasing in step"
    assert steps[-1] == config.md.total_steps
    failed = [c for c in checks if not c.passed]
    models = st.models(name)
    assert len(models) == 1 + len(failed)
    chain = st.lineage(models[-1].model_id)
    assert len(chain) == len(models)  # lineage unbroken
    p = config.adaptive_method_parameters
    interval, step = config.check_interval, config.num_initial_steps
    for c in checks:
        assert c.step == step + min(interval, config.md.total_steps - step)
        assert c.new_interval == next_interval(interval, c.passed, p.n_min, p.n_max, p.factor)
        interval, step = c.new_interval, c.step
    # every label is training data (refit.train_on: all), each once; the last model saw every
    # label up to its trigger check
    assert len(st.training_frames(name)) == config.num_initial_steps + 1 + len(checks)
    trigger = chain[0].trigger_check_step if chain[0].trigger_check_step is not None else config.num_initial_steps
    assert chain[0].n_training_frames == sum(f.md_step <= trigger for f in frames)


def test_sigkill_at_six_points_then_resume(tmp_path, cu_config, write_config):
    cu_config["md"]["total_steps"] = 400
    path = write_config(cu_config)
    store = str(tmp_path / "store")
    first = True
    for point in KILL_POINTS:
        args = ["run", str(path), "--store", store] + ([] if first else ["--resume"])
        result = run_otf(*args, env={"OTF_FAILPOINT": point})
        assert result.returncode == -signal.SIGKILL, (point, result.returncode, result.stderr[-2000:])
        first = False
    result = run_otf("run", str(path), "--store", store, "--resume")
    assert result.returncode == 0, result.stderr[-2000:]
    _assert_consistent(OtfStore(store), "cu-emt", config_from_dict(cu_config))


def test_sigterm_stops_resumably_and_keeps_the_wall_time(tmp_path, cu_config, write_config):
    """A batch system's SIGTERM: the running job finishes, exit 3 (stopped, resumable), status "stopped", the
    wall time so far recorded, then --resume.

    The SIGTERM is sent when the first check's line appears; the 20th ML-MD step, in a later segment, holds
    (a failpoint) until the stop is requested, so the campaign cannot end before the signal on any machine."""
    import os
    import subprocess
    import sys

    cu_config["md"]["total_steps"] = 300
    path = write_config(cu_config)
    store = str(tmp_path / "store")
    proc = subprocess.Popen([sys.executable, "-m", "otf_flows", "run", str(path), "--store", store],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env={**os.environ, "OTF_FAILPOINT": "md.step:20:hold=600"})
    seen = []
    for line in proc.stderr:  # into a pipe, `otf run` writes a line per check
        seen.append(line)
        if "check passed" in line or "check FAILED" in line:
            proc.send_signal(signal.SIGTERM)
            break
    rest = proc.stderr.read()
    assert proc.wait(timeout=300) == 3, "".join(seen) + rest
    assert "--resume" in rest and "Traceback" not in rest
    doc = OtfStore(store).require_campaign("cu-emt")
    assert doc.status == "stopped" and 0 < doc.step < 300 and doc.wall_seconds > 0
    assert doc.message == "stopped: SIGTERM"  # taken between two jobs, nothing abandoned
    result = run_otf("run", str(path), "--store", store, "--resume")
    assert result.returncode == 0, result.stderr[-2000:]
    assert OtfStore(store).require_campaign("cu-emt").status == "completed"


def test_forced_gap_fit_failure_retries_with_larger_jitter(tmp_path, cu_config):
    from otf_flows.managers.local import run_campaign

    cu_config["md"]["total_steps"] = 60
    cu_config["refit"]["extra_gap_opts"] = "sparse_jitter=-100"  # LA_Matrix_Factorise: cannot factorise
    config = config_from_dict(cu_config)
    st = OtfStore(str(tmp_path / "store"))
    assert run_campaign(config, st).status == "completed"
    for model in st.models("cu-emt"):
        assert "sparse_jitter=1e-06" in model.fit_settings["extra_gap_opts"]
    logs = list((tmp_path / "store" / "runs").rglob("attempt_0/gap_fit.log"))
    assert logs and all("LA_Matrix_Factorise" in log.read_text() for log in logs)


def test_refit_that_always_fails_keeps_the_parent(tmp_path, cu_config, write_config):
    # a starting model fitted outside the campaign, then refits that cannot succeed
    seed = dict(cu_config, name="seed")
    seed["md"] = dict(cu_config["md"], total_steps=20)
    store = str(tmp_path / "store")
    assert run_otf("run", str(write_config(seed, "seed.yaml")), "--store", store).returncode == 0
    cu_config.update(name="keeps-parent", num_initial_steps=0)
    cu_config["model"] = {"initial_model": "seed-v1"}
    cu_config["md"]["total_steps"] = 80
    cu_config["tolerances"] = {"ediff": 1e-6}  # every check fails
    cu_config["refit"]["extra_gap_opts"] = "no_such_gap_fit_option=1"
    result = run_otf("run", str(write_config(cu_config)), "--store", store)
    assert result.returncode == 0, result.stderr[-2000:]
    st = OtfStore(store)
    checks = st.checks("keeps-parent")
    assert checks and all(not c.passed and c.refit and c.refit_error and c.new_model_id is None for c in checks)
    assert all(c.model_id == "seed-v1" for c in checks)
    assert st.models("keeps-parent") == []
    assert st.require_campaign("keeps-parent").status == "completed"


def test_poor_model_trips_the_guard_and_recovers(tmp_path, cu_config):
    """A model trained on 2 frames drives hot MD into an unphysical region; the guard rolls back."""
    from otf_flows.managers.local import run_campaign

    cu_config.update(name="poor", num_initial_steps=1, check_interval=200)
    cu_config["adaptive_method_parameters"] = {"n_min": 20, "n_max": 400, "factor": 2}
    cu_config["md"].update(total_steps=140, temperature_K=2000, timestep_fs=4.0)
    cu_config["refit"]["default_sigma"] = "0.05 2.0 2.0 0.0"  # loose: a poor model
    cu_config["refit"]["extra_gap_opts"] = "sparse_jitter=1.0e-8 rnd_seed=1"
    cu_config["validation"] = {"checks": False}
    config = config_from_dict(cu_config)
    st = OtfStore(str(tmp_path / "store"))
    assert run_campaign(config, st).status == "completed"
    checks = sorted(st.checks("poor"), key=lambda c: c.created_at)
    guards = [c for c in checks if c.kind == "guard"]
    assert guards, [(c.step, c.fmax) for c in checks]
    first = guards[0]
    assert first.refit and first.new_model_id and first.rolled_back_to is not None
    assert first.rolled_back_to < first.step
    after = checks[checks.index(first) + 1]
    assert after.step == first.rolled_back_to + 20  # continued from the rollback point with n_min
    assert st.get_frames([first.frame_id])[0].frame_id in {f.frame_id for f in st.training_frames("poor")}
    assert checks[-1].step == 140
