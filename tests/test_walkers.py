"""Walkers: many trajectories, one training set and one model lineage (issue 22, DESIGN §2b).

Tiny EMT Cu campaigns (8 atoms, 20-40 steps per walker, the cheapest GAP). The rules, each with a test:
(a) no two refits of one campaign at once; a refit asked for during one is merged into one more after it:
    test_refit_asked_for_during_a_refit_is_merged_into_it;
(b) no walker waits for another walker's DFT call: test_no_walker_waits_for_another_walkers_dft_call;
(c) a rolled-back walker re-runs its segment with a model trained on the failed check's label:
    test_rollback_reruns_with_a_model_trained_on_the_failed_label;
(d) every label once whatever the interleaving, SIGKILL + --resume lose and duplicate nothing, every walker
    finishes: test_sigkill_at_walker_points_then_resume, test_sigkill_of_the_run_with_workers_then_resume,
    and the consistency checks of every campaign here (_assert_walkers_consistent).
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import CONFIGS, run_otf

from otf_flows.campaign import config_from_dict, load_config
from otf_flows.errors import ConfigError
from otf_flows.store import OtfStore
from otf_flows.walkers import expand, walker_config, walker_configs

DEADLOCK_S = 600  # a run that needs longer is stuck (a walker waiting for another one): the test fails


def _tiny(name: str = "wk", steps: int = 24, **changes) -> dict:
    """A two-walker EMT Cu campaign of 8 atoms (a few seconds per walker with the cheapest GAP), under compat:
    hybrid-md (refits on failed checks only: the rules below are about walkers, not the accuracy defaults)."""
    data = {
        "name": name,
        "compat": "hybrid-md",
        "structure": {"builder": "bulk", "element": "Cu", "crystalstructure": "fcc", "a": 3.61, "cubic": True,
                      "repeat": [1, 1, 2]},
        "md": {"temperature_K": 900, "timestep_fs": 2.0, "total_steps": steps, "seed": 1, "trajectory_interval": 4},
        "reference": {"engine": "ase", "calculator": "ase.calculators.emt.EMT"},
        "model": {"preset": "default"},
        "can_update": True,
        "num_initial_steps": 2,
        "check_interval": 4,
        "adaptive_method_parameters": {"n_min": 4, "n_max": 8, "factor": 2},
        "tolerances": {"ediff": 0.002, "fmax": 0.3},
        "refit": {"default_sigma": "0.001 0.05 0.05 0.0"},
        "walkers": [{"name": "cold", "md": {"temperature_K": 600}},
                    {"name": "hot", "md": {"temperature_K": 1500, "seed": 3}}],
    }
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return data


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _assert_walkers_consistent(st: OtfStore, name: str, config, shared_start: bool = True) -> None:
    """Completed; every walker at its last step; every label stored once and owned by one check or one
    initial step; one unbroken lineage; every refit answered by a model that saw its label."""
    doc = st.require_campaign(name)
    assert doc.status == "completed", (doc.status, doc.message)
    walkers = {w.walker: w for w in st.walkers(name)}
    configs = walker_configs(config)
    assert set(walkers) == set(configs)
    for w, cfg in configs.items():
        assert walkers[w].status == "completed" and walkers[w].step == cfg.md.total_steps
        assert walkers[w].pending_refit is None
    frames = st.frames_of(name)
    assert len({f.frame_id for f in frames}) == len(frames)
    checks = st.checks(name)
    check_frames = [f.frame_id for f in frames if f.source == "check"]
    assert sorted(check_frames) == sorted(c.frame_id for c in checks), "a DFT check label without its check"
    initial = [f for f in frames if f.source == "initial_md"]
    per_walker = {(f.walker, f.md_step) for f in initial}
    assert len(per_walker) == len(initial)  # one label per walker and initial step
    # the same start structure for every walker: its frame is labelled once, shared
    assert sum(f.md_step == 0 for f in initial) == (1 if shared_start else len(configs))
    for w in configs:
        own = [c for c in checks if c.walker == w]
        assert own and max(c.step for c in own) == configs[w].md.total_steps
    models = st.models(name)
    newest = max(models, key=lambda m: m.version)
    assert len(st.lineage(newest.model_id)) == len(models), "one model line"
    assert [m.version for m in sorted(models, key=lambda m: m.version)] == list(range(1, len(models) + 1))
    by_id = {m.model_id: m for m in models}
    for c in checks:
        if c.refit and c.refit_error is None:
            assert c.new_model_id in by_id, c.check_id
            assert c.frame_id in by_id[c.new_model_id].training_frame_ids, c.check_id
    training = {f.frame_id for f in st.training_frames(name)}
    assert {f.frame_id for f in initial} <= training
    assert {c.frame_id for c in checks if c.trained_on} <= training


# ------------------------------------------------------------------ configuration
def test_grid_expands_to_named_walkers_with_merged_settings():
    config = config_from_dict(_tiny(walkers={"grid": {"md.temperature_K": [1500, 2000.0, 2500],
                                                      "md.pressure_GPa": [0, 5]}}))
    names = [w.name for w in expand(config.walkers)]
    assert names == ["T1500-P0", "T1500-P5", "T2000-P0", "T2000-P5", "T2500-P0", "T2500-P5"]
    hot = walker_config(config, "T2500-P5")
    assert (hot.md.temperature_K, hot.md.pressure_GPa, hot.md.seed, hot.md.total_steps) == (2500, 5, 1, 24)
    assert hot.walkers is None and hot.name == config.name


def test_walker_overrides_structure_md_and_tolerances(tmp_path):
    (tmp_path / "start.xyz").write_text("1\nLattice=\"3 0 0 0 3 0 0 0 3\" pbc=\"T T T\"\nCu 0 0 0\n")
    data = _tiny(walkers=[{"name": "rattled", "structure": {"rattle_A": 0.05, "seed": 4}, "tolerances": {"fmax": 0.5}},
                          {"name": "file", "structure": "start.xyz", "md": {"total_steps": 10}}])
    config = config_from_dict(data, tmp_path)
    rattled, file = walker_config(config, "rattled"), walker_config(config, "file")
    assert rattled.structure.rattle_A == 0.05 and rattled.structure.element == "Cu"
    assert rattled.tolerances.fmax == 0.5 and rattled.tolerances.ediff == 0.002
    assert Path(file.structure.file) == tmp_path / "start.xyz" and file.md.total_steps == 10


@pytest.mark.parametrize("walkers, message", [
    ([{"name": "a", "md": {"temperature_K": -5}}], "walkers: walker 'a': md.temperature_K: Input should be greater"),
    ([{"name": "a", "md": {"temperatur_K": 5}}], "walkers: walker 'a': md.temperatur_K: unknown key"),
    ([{"name": "a", "mdd": {}}], "walkers: walker 'a': mdd: unknown key; allowed keys here: name, structure, md"),
    ([{"name": "a"}, {"name": "a"}], "walkers: walker name 'a' is used twice"),
    ([{"md": {}}], "walkers: walker number 1: name: required key is missing"),
    ([{"name": "a b"}], "walkers: walker 'a b': name: String should match pattern"),
    ([{"name": "a", "md": {"total_steps": 2}}], "walkers: walker 'a': campaign: num_initial_steps (2) must be <"),
    ([{"name": "a", "structure": "missing.xyz"}], "walkers: walker 'a': structure.file: 'missing.xyz' does not"),
    ({"grid": {"mx.temperature_K": [1]}}, "walkers: grid: key 'mx.temperature_K' is not one of md.<key>"),
    ({"grid": {"md.temperature_K": [1, 1]}}, "walkers: grid: md.temperature_K: value 1 is listed twice"),
    ({"grid": {"md.temperature_K": [-1, 2]}}, "walkers: walker 'T-1': md.temperature_K: Input should be greater"),
    ([], "walkers: give at least one walker"),
    ("hot", "walkers: must be a list of walkers"),
])
def test_bad_walkers_name_the_walker_and_the_key(tmp_path, walkers, message):
    with pytest.raises(ConfigError) as err:
        config_from_dict(_tiny(walkers=walkers), tmp_path)
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value)


def test_bad_walker_through_the_cli_exits_2_and_writes_nothing(tmp_path):
    path = _write(tmp_path, _tiny(walkers=[{"name": "hot", "md": {"ensembel": "nve"}}]))
    store = tmp_path / "store"
    result = run_otf("run", str(path), "--store", str(store))
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [(
        "otf: error: walkers: walker 'hot': md.ensembel: unknown key; allowed keys here: ensemble, temperature_K, "
        "init_temperature_K, timestep_fs, total_steps, friction_per_fs, pressure_GPa, taut_fs, taup_fs, "
        "compressibility_per_GPa, seed, trajectory_interval, guard")]
    assert not store.exists() or not OtfStore(str(store)).campaigns()


def test_shipped_walker_config_loads_with_three_walkers():
    config = load_config(CONFIGS / "cu-walkers-emt.yaml")
    temperatures = {name: w.md.temperature_K for name, w in walker_configs(config).items()}
    assert temperatures == {"T800": 800, "T1200": 1200, "T1600": 1600}


# ------------------------------------------------------------------ one campaign, two walkers
def test_two_walkers_share_one_training_set_and_one_lineage(tmp_path):
    data = _tiny("share")
    path = _write(tmp_path, data)
    store = str(tmp_path / "store")
    result = run_otf("run", str(path), "--store", store)
    assert result.returncode == 0, result.stderr[-3000:]
    st = OtfStore(store)
    config = config_from_dict(data)
    _assert_walkers_consistent(st, "share", config)
    checks = st.checks("share")
    models = {m.model_id: m for m in st.models("share")}
    # every walker's labels train the one model line: the newest model saw labels of both walkers
    newest = max(models.values(), key=lambda m: m.version)
    trained = {f.walker for f in st.get_frames(newest.training_frame_ids)}
    assert trained == {"cold", "hot"}
    # a walker's segments start with the campaign's newest model: a walker checked a model fitted after
    # the other walker's failed check
    assert any(models[c.model_id].trigger_walker not in (None, c.walker) for c in checks)
    # each walker has its own schedule: its checks' intervals follow its own previous check, in the order
    # they ran (a failed check rolls its walker back to rolled_back_to, when rollback_on_fail is on)
    for w in ("cold", "hot"):
        own = sorted((c for c in checks if c.walker == w), key=lambda c: c.created_at)
        for before, after in itertools.pairwise(own):
            start = before.rolled_back_to if before.rolled_back_to is not None else before.step
            assert after.interval == min(before.new_interval, data["md"]["total_steps"] - start)
    # the log has one line per walker event, named by its walker
    assert "cold: step" in result.stderr and "hot: step" in result.stderr
    # status / checks --walker / JSON rows carry the walker
    status = run_otf("status", "share", "--store", store, "--json")
    rows = {w["walker"]: w for w in yaml.safe_load(status.stdout)["walkers"]}
    assert rows["hot"]["step"] == 24 and rows["hot"]["n_checks"] == sum(c.walker == "hot" for c in checks)
    # the cost next to the errors, per walker: its own DFT calls (initial MD + checks) per 1000 of its MD steps
    frames = st.frames_of("share")
    for w in ("cold", "hot"):
        own = [f for f in frames if f.walker == w]
        assert own and rows[w]["n_dft_labels"] == len(own)
        assert rows[w]["dft_calls_per_1000_steps"] == pytest.approx(1000 * len(own) / 24)
        recent = sorted((c for c in checks if c.walker == w), key=lambda c: c.created_at)[-5:]
        assert rows[w]["last_checks"]["frmse_median"] == pytest.approx(float(np.median([c.frmse for c in recent])))
        assert f"walker {w}: DFT calls per 1000 MD steps" in result.stderr  # the summary table's line
        assert f"{1000 * len(own) / 24:.1f} ({len(own)} calls / 24 steps)" in result.stderr
    campaign = yaml.safe_load(status.stdout)
    assert campaign["dft_calls_per_1000_steps"] == pytest.approx(1000 * len(frames) / 48)
    only = yaml.safe_load(run_otf("status", "share", "--walker", "hot", "--store", store, "--json").stdout)
    assert only["step"] == 48 and [w["walker"] for w in only["walkers"]] == ["hot"]  # the campaign row stays whole
    assert only["walkers"][0]["dft_calls_per_1000_steps"] == rows["hot"]["dft_calls_per_1000_steps"]
    hot = yaml.safe_load(run_otf("checks", "share", "--walker", "hot", "--store", store, "--json").stdout)
    assert hot and {r["walker"] for r in hot} == {"hot"}
    bad = run_otf("checks", "share", "--walker", "warm", "--store", store)
    assert bad.returncode == 2 and "--walker: 'warm' is not a walker of campaign 'share' (walkers: cold, hot)" \
        in bad.stderr
    out = tmp_path / "cold.xyz"
    assert run_otf("trajectory", "export", "share", str(out), "--walker", "cold", "--store", store).returncode == 0
    from ase.io import read

    frames = read(out, index=":")
    assert frames and {a.info["walker"] for a in frames} == {"cold"}


def test_walker_jobs_carry_the_walkers_settings_and_older_ones_get_them(tmp_path):
    """A walker's trajectory jobs carry its settings (resolved once, when the chain is built); a job serialised
    before that (the campaign's settings with its walkers, and the walker's name) gets the walker's settings
    when it runs, and its decision the campaign's for refits."""
    from otf_flows.flows.walkers import walker_chain
    from otf_flows.jobs.base import job_settings
    from otf_flows.jobs.decide import DecideMaker, MDSegmentMaker
    from otf_flows.schemas.documents import CampaignDoc

    config = config_from_dict(_tiny("carry"))
    store = OtfStore(str(tmp_path / "store"))
    store.put_campaign(CampaignDoc(name="carry", config=config.model_dump(mode="json"), total_steps=48))
    store.update_walker("carry", "hot", state_id="carry@hot:state:2", step=2, interval=4, total_steps=24)
    chain = walker_chain(config, store, str(tmp_path / "store"), "hot")
    makers = {type(j.maker).__name__: j.maker for j, _ in chain.iterflow()}
    md, decide = makers["MDSegmentMaker"], makers["DecideMaker"]
    assert md.config.walkers is None and md.config.md.temperature_K == 1500 and md.config.md.seed == 3
    assert decide.config.md.temperature_K == 1500 and decide.campaign_config.walkers is not None
    _, settings = job_settings(md.config, "carry", str(tmp_path / "store"), "hot")
    assert settings is md.config  # nothing resolved again

    old = MDSegmentMaker(config=config, walker="hot")  # as serialised before
    _, settings = job_settings(old.config, "carry", str(tmp_path / "store"), old.walker)
    assert settings.walkers is None and settings.md.temperature_K == 1500
    _, settings = job_settings(None, "carry", str(tmp_path / "store"), "cold")  # settings only in the store
    assert settings.md.temperature_K == 600
    old_decide = DecideMaker(config=config, walker="hot")
    assert (old_decide.campaign_config or old_decide.config).walkers is not None  # its refits: the campaign's


def test_campaign_without_walkers_stores_what_it_always_did(tmp_path):
    """No walkers: no walker documents, no lease, the ids of before (a store written before walkers resumes)."""
    data = _tiny("single", steps=12)
    del data["walkers"]
    path = _write(tmp_path, data)
    store = str(tmp_path / "store")
    assert run_otf("run", str(path), "--store", store).returncode == 0
    st = OtfStore(store)
    assert st.walkers("single") == [] and not list(st.collection("locks").query({}))
    assert all(c.check_id.startswith("single:check:") and c.walker is None for c in st.checks("single"))
    assert st.require_campaign("single").step == 12


# ------------------------------------------------------------------ rules (a)-(d)
def _popen(path: Path, store: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "otf_flows", "run", str(path), "--store", store],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, **env})


def _wait_for(proc: subprocess.Popen, condition, what: str) -> None:
    """Poll the store until ``condition()``; fail if the run ends or hangs first (a deadlock)."""
    start = time.monotonic()
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the run ended before {what}: {proc.stderr.read()[-3000:]}")
        if time.monotonic() - start > DEADLOCK_S:
            proc.kill()
            pytest.fail(f"stuck: {what} did not happen")
        time.sleep(0.2)


def test_refit_asked_for_during_a_refit_is_merged_into_it(tmp_path):
    """(a) walker cold's refit holds the lease (held at a fault point) while walker hot's check fails and asks
    for a refit; cold's fit, once let go, trains on hot's label too, and hot's refit fits nothing more."""
    data = _tiny("merge", steps=16, tolerances={"ediff": 1e-6, "fmax": 1e-4},  # every check fails
                 rollback_on_fail=False,  # a rollback would re-run a segment whose check can never pass, forever
                 execution={"local": {"workers": 2}})
    path = _write(tmp_path, data)
    store = str(tmp_path / "store")
    gate = tmp_path / "go"
    proc = _popen(path, store, {"OTF_HOLD": f"fit.leased@cold={gate}"})
    st = OtfStore(store)

    def hot_asked_while_cold_fits() -> bool:
        lock = st.collection("locks").query_one({"lock_id": "merge:refit"}) if (Path(store) / "db").exists() else None
        hot = st.get_walker("merge", "hot")
        return bool(lock and lock.get("pid") and lock.get("holder") == "cold" and hot and hot.pending_refit)

    _wait_for(proc, hot_asked_while_cold_fits, "a refit of walker hot asked for while cold's runs")
    merged_check = st.get_walker("merge", "hot").pending_refit
    cold_check = st.get_walker("merge", "cold").pending_refit
    gate.touch()
    assert proc.wait(timeout=DEADLOCK_S) == 0, proc.stderr.read()[-3000:]
    _assert_walkers_consistent(st, "merge", config_from_dict(data))
    cold_model = st.find_model({"campaign": "merge", "trigger_check_id": cold_check})
    assert merged_check in cold_model.merged_check_ids
    assert st.find_model({"campaign": "merge", "trigger_check_id": merged_check}) is None  # no fit of its own
    assert st.get_check(merged_check).new_model_id == cold_model.model_id
    # no two fits overlapped in time (the ledger's start and end of every fit)
    fits = sorted((d["started_at"], d["created_at"]) for d in st.collection("ledger").query({"kind": "fit"}))
    assert all(end <= next_start for (_, end), (next_start, _) in itertools.pairwise(fits))


def test_no_walker_waits_for_another_walkers_dft_call(tmp_path):
    """(b) walker cold is held inside its first DFT check; walker hot runs to its end meanwhile. Each worker's
    DFT jobs get half of the allocation's 8 tasks ({ntasks} of a run command)."""
    tasks = tmp_path / "ntasks.log"
    data = _tiny("nowait", execution={"local": {"workers": 2}},
                 reference={"engine": "ase", "calculator": "refcalcs.TasksEMT", "kwargs": {"log": str(tasks)}})
    path = _write(tmp_path, data)
    store = str(tmp_path / "store")
    gate = tmp_path / "go"
    tests = str(Path(__file__).parent)
    proc = _popen(path, store, {"OTF_HOLD": f"check.computing@cold={gate}", "SLURM_NTASKS": "8", "OTF_NTASKS": "",
                                "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")])})
    st = OtfStore(store)

    def hot_done() -> bool:
        hot = st.get_walker("nowait", "hot") if (Path(store) / "db").exists() else None
        return hot is not None and hot.status == "completed"

    _wait_for(proc, hot_done, "walker hot's end while cold is in its DFT call")
    assert not [c for c in st.checks("nowait") if c.walker == "cold"]  # cold is still in its first check
    gate.touch()
    assert proc.wait(timeout=DEADLOCK_S) == 0, proc.stderr.read()[-3000:]
    _assert_walkers_consistent(st, "nowait", config_from_dict(data))
    # the two walkers' DFT calls ran side by side: cold's first check spans calls of hot (stored start/end)
    calls = [d for d in st.collection("ledger").query({"kind": "reference"}) if d["job"].startswith("reference check")]
    cold_first = min((d for d in calls if d["walker"] == "cold"), key=lambda d: d["started_at"])
    inside = [d for d in calls if d["walker"] == "hot" and cold_first["started_at"] < d["started_at"]
              and d["created_at"] < cold_first["created_at"]]
    assert inside
    # the initial reference MD ran in the run's process (all 8 tasks), the checks in the two workers (4 each)
    seen = tasks.read_text().split()
    n_initial = sum(f.source == "initial_md" for f in st.frames_of("nowait"))  # step 0 shared, labelled once
    assert seen[:n_initial] == ["8"] * n_initial and set(seen[n_initial:]) == {"4"}


def test_rollback_reruns_with_a_model_trained_on_the_failed_label(tmp_path):
    """(c) rollback_on_fail: each walker re-runs a failed segment with a model that saw the failed label."""
    data = _tiny("rollback", steps=20, rollback_on_fail=True, execution={"local": {"workers": 2}},
                 tolerances={"ediff": 0.004, "fmax": 0.4})
    path = _write(tmp_path, data)
    store = str(tmp_path / "store")
    result = run_otf("run", str(path), "--store", store)
    assert result.returncode == 0, result.stderr[-3000:]
    st = OtfStore(store)
    _assert_walkers_consistent(st, "rollback", config_from_dict(data))
    checks = sorted(st.checks("rollback"), key=lambda c: c.created_at)
    rolled = [c for c in checks if c.rolled_back_state_id is not None]
    assert rolled, "no check failed: loosen nothing, tighten the tolerances of this test"
    for c in rolled:
        rerun = next(s for s in checks if s.walker == c.walker and s.created_at > c.created_at)
        state = st.get_state(f"rollback@{c.walker}:state:{rerun.step}:{rerun.model_id}")
        assert state.start_state_id == c.rolled_back_state_id  # the re-run of the same segment
        assert c.frame_id in st.get_model(rerun.model_id).training_frame_ids


WALKER_KILL_POINTS = [
    "initial_md.labelled@hot:2",  # in a walker's initial reference MD
    "md.step@hot:3",  # in a walker's ML-MD segment (its model pinned)
    "check.labelled@cold:1",  # a walker's DFT label stored, its check not yet
    "decide.stored@cold:1",  # check stored, the walker's pointer not yet moved
    "fit.leased@hot:1",  # a walker's refit holds the lease (a killed holder's lease is taken over)
    "between_jobs:4",
]


def test_sigkill_at_walker_points_then_resume(tmp_path):
    """(d) SIGKILL at each point, --resume: nothing lost, nothing duplicated, every walker finishes."""
    data = _tiny("killed", steps=32, tolerances={"ediff": 0.001, "fmax": 0.2})
    path = _write(tmp_path, data)
    store = str(tmp_path / "store")
    for i, point in enumerate(WALKER_KILL_POINTS):
        result = run_otf("run", str(path), "--store", store, *(["--resume"] if i else []),
                         env={"OTF_FAILPOINT": point})
        assert result.returncode == -signal.SIGKILL, (point, result.returncode, result.stderr[-2000:])
    result = run_otf("run", str(path), "--store", store, "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_walkers_consistent(OtfStore(store), "killed", config_from_dict(data))


def test_sigkill_of_the_run_with_workers_then_resume(tmp_path):
    """(d) with workers: a worker killed in a DFT check fails the run (exit 1, resumable); the run killed while
    both walkers work takes its workers with it; --resume finishes both walkers, nothing lost or doubled."""
    data = _tiny("killedw", steps=28, tolerances={"ediff": 0.001, "fmax": 0.2}, execution={"local": {"workers": 2}})
    path = _write(tmp_path, data)
    store = str(tmp_path / "store")
    result = run_otf("run", str(path), "--store", store, env={"OTF_FAILPOINT": "check.labelled@hot:2"})
    assert result.returncode == 1, result.stderr[-2000:]
    st = OtfStore(store)
    assert st.require_campaign("killedw").status == "failed"
    proc = subprocess.Popen([sys.executable, "-m", "otf_flows", "run", str(path), "--store", store, "--resume"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OTF_HOLD": f"check.computing@cold={tmp_path / 'never'}"})
    n_before = sum(c.walker == "hot" for c in st.checks("killedw"))
    _wait_for(proc, lambda: sum(c.walker == "hot" for c in st.checks("killedw")) > n_before,
              "a check of walker hot in the resumed run")
    proc.send_signal(signal.SIGKILL)  # cold's worker is inside a DFT call, hot's somewhere in its chain
    proc.wait()
    result = run_otf("run", str(path), "--store", store, "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_walkers_consistent(st, "killedw", config_from_dict(data))


def test_killed_after_a_label_while_another_walker_refits_then_resume(tmp_path):
    """(d) walker hot is killed after its check's DFT label was stored but before the check was decided, while
    walker cold's refit made a newer model: --resume re-runs hot's segment with the model it started with,
    so the stored label is its check's label (no label without a check, no second DFT call)."""
    data = _tiny("orphan", steps=16, tolerances={"ediff": 1e-6, "fmax": 1e-4},  # every check fails: refits
                 execution={"local": {"workers": 2}})
    path = _write(tmp_path, data)
    store = str(tmp_path / "store")
    proc = subprocess.Popen([sys.executable, "-m", "otf_flows", "run", str(path), "--store", store],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OTF_HOLD": f"check.labelled@hot={tmp_path / 'never'}"})
    st = OtfStore(store)

    def hot_label_older_than_newest_model() -> bool:
        hot = st.get_walker("orphan", "hot")
        if hot is None or hot.segment_model_id is None:
            return False
        labelled = any(f.source == "check" and f.walker == "hot" for f in st.frames_of("orphan"))
        pinned = st.get_model(hot.segment_model_id).version
        return labelled and max(m.version for m in st.models("orphan")) > pinned

    _wait_for(proc, hot_label_older_than_newest_model, "a refit by cold while hot holds its stored label")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    result = run_otf("run", str(path), "--store", store, "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_walkers_consistent(st, "orphan", config_from_dict(data))


def test_a_walker_without_initial_steps_starts_from_the_first_model(tmp_path):
    """walkers[].num_initial_steps: 0: the walker pays for no DFT MD of its own; it starts from the first model,
    fitted on the other walker's initial labels, and completes with the campaign."""
    data = _tiny("noinit", steps=16, walkers=[{"name": "cold", "md": {"temperature_K": 600}},
                                              {"name": "hot", "md": {"temperature_K": 1500, "seed": 3},
                                               "num_initial_steps": 0}])
    path = _write(tmp_path, data)
    store = str(tmp_path / "store")
    result = run_otf("run", str(path), "--store", store)
    assert result.returncode == 0, result.stderr[-3000:]
    st = OtfStore(store)
    initial = [f for f in st.frames_of("noinit") if f.source == "initial_md"]
    assert {f.walker for f in initial if f.md_step > 0} == {"cold"}
    first = min(st.models("noinit"), key=lambda m: m.version)
    assert {f.frame_id for f in initial} == set(first.training_frame_ids)
    assert min(c.step for c in st.checks("noinit") if c.walker == "hot") <= data["check_interval"]
    _assert_walkers_consistent(st, "noinit", config_from_dict(data))
    # every walker at 0 and nothing else to fit on: one line, exit 2
    data["num_initial_steps"] = 0
    data["walkers"][0]["num_initial_steps"] = 0
    result = run_otf("run", str(_write(tmp_path, {**data, "name": "nodata"})), "--store", str(tmp_path / "s2"))
    assert result.returncode == 2 and "num_initial_steps is 0 (for every walker)" in result.stderr, result.stderr


def test_store_takes_n_walker_processes_writing_at_once(tmp_path):
    """The embedded store under 4 processes writing walker documents, frames and lease claims at once."""
    store = str(tmp_path / "store")
    script = (
        "import sys\n"
        "from otf_flows.store import OtfStore\n"
        "from otf_flows.lineage import lease\n"
        "st = OtfStore(sys.argv[1]); w = sys.argv[2]\n"
        "for i in range(40):\n"
        "    st.update_walker('c', w, step=i, total_steps=40)\n"
        "    with lease(st, 'c', poll_s=0.01):\n"
        "        n = st.collection('ledger').count({'campaign': 'c'})\n"
        "        st.collection('ledger').update({'entry_id': f'c:{n}', 'campaign': 'c', 'by': w}, key='entry_id')\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, store, f"w{i}"]) for i in range(4)]
    assert [p.wait(timeout=DEADLOCK_S) for p in procs] == [0, 0, 0, 0]
    st = OtfStore(store)
    assert [w.step for w in st.walkers("c")] == [39, 39, 39, 39]
    entries = list(st.collection("ledger").query({"campaign": "c"}))
    # read-count-then-write under the lease: no two processes ever wrote the same entry
    assert len(entries) == 160 and {e["entry_id"] for e in entries} == {f"c:{n}" for n in range(160)}


def test_sigterm_with_workers_stops_resumably_then_more_steps(tmp_path):
    """SIGTERM (a walltime warning) reaches the workers: exit 3, "stopped"; --resume with a larger md.total_steps
    takes every walker, finished or not, to the new end."""
    data = _tiny("term", steps=16, execution={"local": {"workers": 2}})
    path = _write(tmp_path, data)
    store = str(tmp_path / "store")
    proc = subprocess.Popen([sys.executable, "-m", "otf_flows", "run", str(path), "--store", store],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ})
    for line in proc.stderr:  # into a pipe, `otf run` writes a line per walker event
        if line.startswith("hot: step"):
            proc.send_signal(signal.SIGTERM)
            break
    rest = proc.stderr.read()
    assert proc.wait(timeout=DEADLOCK_S) == 3, rest[-3000:]
    st = OtfStore(store)
    assert st.require_campaign("term").status == "stopped"
    data["md"]["total_steps"] = 24
    _write(tmp_path, data)
    result = run_otf("run", str(path), "--store", store, "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_walkers_consistent(st, "term", config_from_dict(data))


def test_lease_on_a_mongodb_store_is_exclusive():
    """The refit lease through MongoDB's code path (maggma MemoryStore): one holder at a time, a stale one taken."""
    from otf_flows import lineage

    st = OtfStore("memory://lease-test")
    assert lineage.try_acquire(st, "c", holder="a")
    doc = st.collection("locks").query_one({"lock_id": "c:refit"})
    assert doc["holder"] == "a" and doc["pid"] == os.getpid()
    # held by a live process of this host (a sleeping child): nobody else takes it until it is gone
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        st.collection("locks").update({**doc, "pid": child.pid}, key="lock_id")
        assert not lineage.try_acquire(st, "c", holder="b")
    finally:
        child.kill()
        child.wait()
    assert lineage.try_acquire(st, "c", holder="b")  # its holder died: taken over
    lineage.release(st, "c")
    assert st.collection("locks").query_one({"lock_id": "c:refit"})["pid"] is None
    assert lineage.claim(st, "c", "finish", "hot") and lineage.claim(st, "c", "finish", "hot")
    assert not lineage.claim(st, "c", "finish", "cold")


def test_maker_takes_one_walker_per_structure(tmp_path):
    """OtfMDMaker.make([atoms, atoms]): one walker each (the YAML's walkers keep their md), run in process."""
    from ase.build import bulk

    from otf_flows import OtfMDMaker
    from otf_flows.jobs.base import forget_stores
    from otf_flows.managers.runner import run_flow

    fcc = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((1, 1, 2))
    rattled = fcc.copy()
    rattled.rattle(0.05, seed=3)
    data = _tiny("maker", steps=10)
    path = _write(tmp_path, data)
    maker = OtfMDMaker.from_yaml(path, store=str(tmp_path / "store"))
    with pytest.raises(ConfigError, match="the Maker has 2 walkers and make\\(\\) got 1 structures"):
        maker.make([fcc])
    config = maker.campaign_config([fcc, rattled])
    assert [(w.name, w.md, w.structure["positions"][0]) for w in config.walkers] == [
        ("cold", {"temperature_K": 600}, [0.0, 0.0, 0.0]),
        ("hot", {"temperature_K": 1500, "seed": 3}, list(rattled.positions[0]))]
    flow = maker.make([fcc, rattled])
    st = OtfStore(str(tmp_path / "store"))
    try:
        run_flow(flow, st.jobstore, tmp_path / "runs")
    finally:
        forget_stores()
    _assert_walkers_consistent(st, "maker", config, shared_start=False)
    unnamed = OtfMDMaker(name="x", reference_maker={"calculator": "ase.calculators.emt.EMT"}, num_initial_steps=2)
    assert [w.name for w in unnamed.with_walkers([fcc, rattled, fcc]).walkers] == ["walker-1", "walker-2", "walker-3"]
