"""OtfMDMaker: an atomate2-style Maker whose Flow runs with jobflow's run_locally on the project's JobStore,
converts with FireWorks' flow_to_workflow, serialises without a store and follows another job's output."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from ase.build import bulk
from conftest import CONFIGS, run_otf
from fireworks import Firework
from jobflow import Flow, OutputReference, run_locally
from jobflow.managers.fireworks import flow_to_workflow
from monty.json import MontyDecoder, MontyEncoder
from pymatgen.io.ase import AseAtomsAdaptor

from otf_flows import OtfMDMaker
from otf_flows.campaign import AseReference, Cp2kReference, StructureAtoms, load_config
from otf_flows.errors import ConfigError, InputError, StoreError
from otf_flows.jobs import base
from otf_flows.jobs.base import forget_stores
from otf_flows.managers.fireworks import OtfJobStore
from otf_flows.store import OtfStore


@pytest.fixture
def cu32():
    return bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))


@pytest.fixture
def maker(tmp_path, monkeypatch):
    """configs/cu-emt.yaml cut to 30 MD steps under compat: hybrid-md (no uncertainty trigger, refits on failed
    checks only): 5 initial EMT steps, checks at 15, 25 and 30 (about 20 s)."""
    monkeypatch.delenv("OTF_STORE", raising=False)
    otf = OtfMDMaker.from_yaml(CONFIGS / "cu-emt.yaml", store=str(tmp_path / "store"), compat="hybrid-md")
    return dataclasses.replace(otf, md=otf.md.model_copy(update={"total_steps": 30}))


@pytest.fixture
def no_config_from_store(monkeypatch):
    """Fail any job that re-reads the campaign's configuration from the store by name."""

    def refuse(campaign, store):
        raise AssertionError(f"a job re-read the configuration of {campaign!r} from the store")

    monkeypatch.setattr(base, "open_campaign", refuse)


def _run(flow, tmp_path) -> OtfStore:
    st = OtfStore(str(tmp_path / "store"))
    try:
        run_locally(flow, store=st.jobstore, create_folders=True, root_dir=tmp_path / "runs", ensure_success=True,
                    log=False)
    finally:
        forget_stores()
    return st


def test_from_yaml_make_run_locally_stores_checks_and_models(tmp_path, maker, cu32, no_config_from_store):
    flow = maker.make(cu32)
    st = _run(flow, tmp_path)
    doc = st.require_campaign("cu-emt")
    assert doc.status == "completed" and doc.step == 30
    checks = sorted(st.checks("cu-emt"), key=lambda c: c.step)
    assert [c.step for c in checks][:1] == [15] and checks[-1].step == 30
    models = st.models("cu-emt")
    assert len(models) == 1 + sum(c.refit and c.new_model_id is not None for c in checks)
    assert doc.model_id in {m.model_id for m in models}
    # the campaign registered by the first job holds the structure given to make()
    stored = load_config(CONFIGS / "cu-emt.yaml")
    assert doc.config["structure"]["numbers"] == cu32.numbers.tolist()
    assert doc.config["structure"]["source"] == "ASE Atoms"
    assert doc.config["refit"] == {**stored.refit.model_dump(mode="json"), "every_new_labels": None}  # hybrid-md
    assert doc.config["md"]["total_steps"] == 30
    # the project's JobStore holds every job's output
    names = {d["name"] for d in st.jobstore.query({}, properties=["name"])}
    assert {"register campaign", "initial reference MD", "first fit", "decide 15", "finish campaign"} <= names


def test_flow_runs_with_the_projects_runner(tmp_path, maker, cu32, no_config_from_store):
    """otf run's iterative runner (flat memory, stop between jobs) takes the Maker's flow as it is."""
    from otf_flows.managers.local import run_flow

    otf = dataclasses.replace(maker, md=maker.md.model_copy(update={"total_steps": 15}))
    st = OtfStore(str(tmp_path / "store"))
    try:
        n_jobs = run_flow(otf.make(cu32), st.jobstore, tmp_path / "runs")
    finally:
        forget_stores()
    names = [d["name"] for d in st.jobstore.query({}, properties=["name"])]
    assert n_jobs == len(names) >= 8  # with a failed check at 15 also a refit and its validation
    assert {"register campaign", "initial reference MD", "first fit", "ml-md 5->15", "reference check 15",
            "decide 15", "validate final model", "finish campaign"} <= set(names)
    doc = st.require_campaign("cu-emt")
    assert doc.status == "completed" and doc.step == 15
    assert [c.step for c in st.checks("cu-emt")] == [15] and len(st.models("cu-emt")) >= 1


def test_flow_converts_with_flow_to_workflow(tmp_path, maker, cu32):
    flow = maker.make(cu32)
    location = str((tmp_path / "store").resolve())
    workflow = flow_to_workflow(flow, store=OtfJobStore(location))
    by_name = {fw.name: fw for fw in workflow.fws}
    assert sorted(by_name) == ["decide 15", "first fit", "initial reference MD", "ml-md 5->15", "reference check 15",
                               "register campaign"]
    name_of = {fw.fw_id: fw.name for fw in workflow.fws}
    parents = {fw.name: sorted(name_of[i] for i in workflow.links.parent_links.get(fw.fw_id, []))
               for fw in workflow.fws}
    assert parents["register campaign"] == []
    assert parents["initial reference MD"] == ["register campaign"]
    assert parents["first fit"] == ["initial reference MD"]
    assert {fw.name: fw.spec["_category"] for fw in workflow.fws} == {
        "register campaign": "light", "initial reference MD": "dft", "first fit": "fit", "ml-md 5->15": "md",
        "reference check 15": "dft", "decide 15": "light"}
    # a worker gets each job with its settings and the store's location, nothing else
    for fw in workflow.fws:
        task = Firework.from_dict(json.loads(json.dumps(fw.to_dict()))).tasks[0]
        assert task["store"].location == location
        if fw.name != "register campaign":
            assert task["job"].maker.config.md.total_steps == 30
            assert task["job"].function_args[:2] == ["cu-emt", location]


def test_maker_serialises_and_jobs_show_their_settings_without_a_store(tmp_path, maker, cu32):
    text = json.dumps(maker.as_dict(), cls=MontyEncoder)
    again = OtfMDMaker.from_dict(json.loads(text))
    assert again == maker
    assert again.md.total_steps == 30 and again.reference == AseReference(calculator="ase.calculators.emt.EMT")

    flow = MontyDecoder().process_decoded(json.loads(json.dumps(maker.make(cu32).as_dict(), cls=MontyEncoder)))
    jobs = {job.name: job for job, _ in flow.iterflow()}
    assert not (tmp_path / "store").exists()  # built, serialised and read back without a database
    register = jobs["register campaign"]
    assert register.maker.otf == maker
    config = jobs["ml-md 5->15"].maker.config
    assert config.md.timestep_fs == 2.0 and config.md.temperature_K == 1200
    assert config.tolerances.fmax == 0.3 and config.check_interval == 10
    assert config.store is None  # the jobs get the store's location as an argument, not from the config
    assert isinstance(config.structure, StructureAtoms)
    np.testing.assert_allclose(config.structure.positions, cu32.positions)
    assert jobs["decide 15"].maker.config == config == jobs["first fit"].maker.config


def test_an_atomate2_cp2k_static_maker_is_the_reference(tmp_path, maker, cu32):
    from atomate2.cp2k.jobs.core import StaticMaker
    from atomate2.cp2k.sets.core import StaticSetGenerator
    from pymatgen.io.vasp.inputs import Kpoints

    static = StaticMaker(
        input_set_generator=StaticSetGenerator(
            user_input_settings={"cutoff": 400, "rel_cutoff": 60, "eps_scf": 1e-7,
                                 "override_default_params": {"FORCE_EVAL": {"DFT": {"QS": {"EPS_PGF_ORB": 1e-8}}}}},
            user_kpoints_settings=Kpoints.monkhorst_automatic((2, 2, 2)),
        ),
        run_cp2k_kwargs={"cp2k_cmd": "mpirun -np 2 cp2k.psmp", "max_errors": 3},
    )
    otf = dataclasses.replace(maker, reference_maker=static)
    assert otf.reference == Cp2kReference(
        cutoff_Ry=400, rel_cutoff_Ry=60, eps_scf=1e-7, kpoints=(2, 2, 2), cp2k_cmd="mpirun -np 2 cp2k.psmp",
        custodian_max_errors=3, input_updates={"override_default_params": {"FORCE_EVAL": {"DFT": {"QS": {
            "EPS_PGF_ORB": 1e-8}}}}})
    again = OtfMDMaker.from_dict(json.loads(json.dumps(otf.as_dict(), cls=MontyEncoder)))
    assert isinstance(again.reference_maker, StaticMaker) and again.reference == otf.reference
    config = next(j for j, _ in otf.make(cu32).iterflow() if j.name == "reference check 15").maker.config
    assert config.reference == otf.reference
    with pytest.raises(ConfigError, match=r"run_cp2k_kwargs\['handlers'\] cannot be carried over"):
        dataclasses.replace(maker, reference_maker=StaticMaker(run_cp2k_kwargs={"handlers": ()}))


def test_bad_input_fails_when_the_flow_is_made(maker):
    with pytest.raises(ConfigError, match="reference_maker: required"):
        OtfMDMaker()
    with pytest.raises(InputError, match="expected ASE Atoms or a pymatgen Structure, got str"):
        maker.make("Cu.xyz")
    with pytest.raises(ConfigError, match=r"md.timestep_fs: .*less than or equal to 20"):
        OtfMDMaker(reference_maker={"calculator": "ase.calculators.emt.EMT"}, md={"timestep_fs": 1000})
    with pytest.raises(ConfigError, match="num_initial_steps is 0"):
        OtfMDMaker(reference_maker={"calculator": "ase.calculators.emt.EMT"}).make(bulk("Cu", cubic=True))


def test_follows_an_atomate2_relaxation(tmp_path, maker, no_config_from_store):
    """The relaxed structure of atomate2's EMT relax job is the campaign's start: Flow([relax, otf.make(...)])."""
    from atomate2.ase.jobs import EmtRelaxMaker

    start = AseAtomsAdaptor.get_structure(bulk("Cu", "fcc", a=3.75, cubic=True).repeat((2, 2, 2)))
    relax = EmtRelaxMaker(relax_cell=True).make(start)
    otf = dataclasses.replace(maker, md=maker.md.model_copy(update={"total_steps": 15}))
    flow = otf.make(relax.output.structure)
    assert [j.name for j in flow.jobs] == ["register campaign"]  # the rest follows once the structure is known
    assert isinstance(flow.jobs[0].function_args[1], OutputReference)
    st = _run(Flow([relax, flow]), tmp_path)
    relaxed = st.jobstore.get_output(relax.uuid)["structure"]
    doc = st.require_campaign("cu-emt")
    assert doc.status == "completed" and doc.step == 15
    assert doc.config["structure"]["source"] == "pymatgen Structure"
    np.testing.assert_allclose(doc.config["structure"]["cell"], relaxed["lattice"]["matrix"])
    assert abs(relaxed["lattice"]["a"] - 2 * 3.75) > 0.05  # EMT's Cu lattice constant is not 3.75 Å
    assert [c.step for c in st.checks("cu-emt")] == [15] and st.models("cu-emt")


def test_resume_builds_the_continuation_from_the_new_settings(tmp_path, maker, cu32, no_config_from_store):
    short = dataclasses.replace(maker, md=maker.md.model_copy(update={"total_steps": 15}))
    st = _run(short.make(cu32), tmp_path)
    assert st.require_campaign("cu-emt").status == "completed"
    interval = st.require_campaign("cu-emt").interval  # the schedule's next interval
    longer = dataclasses.replace(short, md=short.md.model_copy(update={"total_steps": 25}),
                                 tolerances=short.tolerances.model_copy(update={"fmax": 0.5}), resume=True)
    flow = longer.make(cu32)
    assert [j.name for j in flow.jobs] == ["register campaign"]
    response = flow.jobs[0].run(store=st.jobstore)  # the registering job alone: what it adds
    emitted = {job.name: job for job, _ in response.addition.iterflow()}
    end = 15 + min(interval, 10)
    assert sorted(emitted) == [f"decide {end}", f"ml-md 15->{end}", f"reference check {end}"]
    assert {j.maker.config.md.total_steps for j in emitted.values()} == {25}
    assert {j.maker.config.tolerances.fmax for j in emitted.values()} == {0.5}
    doc = st.require_campaign("cu-emt")
    assert doc.changes[-1]["changed"] == {"md.total_steps": [15, 25], "tolerances.fmax": [0.3, 0.5]}
    with pytest.raises(InputError, match="md.temperature_K of campaign 'cu-emt' cannot change on resume"):
        hotter = dataclasses.replace(longer, md=longer.md.model_copy(update={"temperature_K": 2000}))
        hotter.make(cu32).jobs[0].run(store=st.jobstore)
    forget_stores()


def test_yaml_round_trips_through_the_maker():
    for path in sorted(CONFIGS.glob("*.yaml")):
        assert OtfMDMaker.from_yaml(path).campaign_config() == load_config(path), path.name


def test_relative_paths_are_fixed_when_the_flow_is_made(tmp_path, monkeypatch, cu32):
    """The register job runs in its own directory (or on a worker): the paths it reads are absolute."""
    from ase.calculators.emt import EMT
    from ase.io import write

    monkeypatch.delenv("OTF_STORE", raising=False)
    write(tmp_path / "start.xyz", cu32)
    monkeypatch.chdir(tmp_path)
    otf = OtfMDMaker(name="cu", reference_maker=EMT, num_initial_steps=2, md={"total_steps": 10},
                     structure={"file": "start.xyz"}, store="store", execution={"scratch_dir": "scratch"})
    register = otf.make().jobs[0]
    assert register.function_args[0] == str((tmp_path / "store").resolve())
    monkeypatch.chdir("/")
    config = register.maker.otf.campaign_config(register.function_args[1])
    assert config.structure.file == str((tmp_path / "start.xyz").resolve())
    assert config.execution.scratch_dir == str((tmp_path / "scratch").resolve())
    assert config.reference == AseReference(calculator="ase.calculators.emt.EMT")


def test_a_flow_without_a_store_uses_the_store_it_runs_in(tmp_path, monkeypatch, cu32, no_config_from_store):
    """A Maker of a YAML without ``store:`` (and no OTF_STORE, no store=): its jobs write the campaign into the
    store the flow runs in, as jobflow's own jobs do, not into ./otf-store."""
    monkeypatch.delenv("OTF_STORE", raising=False)
    monkeypatch.chdir(tmp_path)
    otf = OtfMDMaker.from_yaml(CONFIGS / "cu-emt.yaml", compat="hybrid-md")
    assert otf.store is None
    otf = dataclasses.replace(otf, md=otf.md.model_copy(update={"total_steps": 15}))
    elsewhere = OtfStore(str(tmp_path / "elsewhere"))
    try:
        run_locally(otf.make(cu32), store=elsewhere.jobstore, create_folders=True, root_dir=tmp_path / "runs",
                    ensure_success=True, log=False)
    finally:
        forget_stores()
    doc = elsewhere.require_campaign("cu-emt")
    assert doc.status == "completed" and doc.step == 15
    assert [c.step for c in elsewhere.checks("cu-emt")] == [15] and elsewhere.models("cu-emt")
    assert not [str(p) for p in tmp_path.rglob("otf-store")]
    listed = run_otf("checks", "cu-emt", "--store", str(tmp_path / "elsewhere"), "--json")
    assert listed.returncode == 0 and [c["step"] for c in json.loads(listed.stdout)] == [15], listed.stderr


def test_a_flow_without_a_store_refuses_a_foreign_job_store():
    """Outside a job run on an otf store (here: no job at all) a job without a location cannot guess one."""
    with pytest.raises(StoreError, match=r"store: .*not an otf store"):
        base.open_store(None)
