"""Run a campaign on a cluster with FireWorks (SLURM, PBS, ...).

:func:`submit_campaign` registers the campaign in the store, converts its flow with jobflow's
``flow_to_workflow`` and adds it to a LaunchPad. Workers (``rlaunch``, usually started by
``qlaunch`` inside a queue job) then run the jobs; every compare + decide job appends the next
iteration to the same workflow through ``Response.addition``.

Each firework carries everything it needs: its job (with the store location as an argument),
the routing set by :mod:`otf_flows.jobs.routing` (``_category``, ``_fworker``,
``_queueadapter``) and the jobflow JobStore as an :class:`OtfJobStore`, which serialises as the
store *location* only. A worker rebuilds the JobStore from it, so jobs never depend on the
worker's ``jobflow.yaml`` or on the shell that submitted the campaign, and MongoDB credentials
are never written into the LaunchPad (workers read them from their own environment, see
:mod:`otf_flows.mongo`).

With ``execution.light.inline`` the light jobs (compare + decide, validate, finish) get no
firework of their own: :func:`inline_workflow` appends each one to the firework of the job
before it (a decide job to its DFT check's), so it runs in that launch, on that worker, right
after it. The decide job's ``Response`` stays the control flow: its additions become the next
fireworks as usual, converted the same way by :class:`InlineJobFiretask`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fireworks import FWAction, LaunchPad, Workflow, explicit_serialize
from jobflow import Flow, JobStore, initialize_logger
from jobflow.core.flow import get_flow
from jobflow.managers.fireworks import JobFiretask, flow_to_workflow, job_to_firework

from otf_flows.campaign import CampaignConfig
from otf_flows.errors import InputError, StoreError
from otf_flows.flows.lifecycle import prepare_campaign
from otf_flows.jobs.routing import manager_config
from otf_flows.mongo import redact
from otf_flows.store import OtfStore

logger = logging.getLogger(__name__)

#: workflow states in which a campaign's workflow may still run jobs
LIVE_STATES = ("READY", "RESERVED", "RUNNING", "WAITING", "PAUSED")

#: firework spec keys that route a firework to workers (set by :mod:`otf_flows.jobs.routing`)
ROUTING_KEYS = ("_category", "_fworker", "_queueadapter")


def store_location(store: OtfStore) -> str:
    """The location jobs receive: an absolute directory or a URI without credentials."""
    if store.kind == "memory":
        raise InputError(
            f"--store: {store.location!r} lives in one process only; FireWorks workers need a directory "
            "on a shared file system or a mongodb:// URI"
        )
    return str(store.path) if store.kind == "embedded" else store.location


class OtfJobStore(JobStore):
    """jobflow's JobStore of an otf store, serialised as the store location only.

    Nothing is opened until :meth:`connect` (FireWorks deserialises job stores whenever it
    reads a launch, e.g. in ``lpad`` commands and in a worker's ping thread).

    Parameters
    ----------
    location
        An absolute store directory or a MongoDB URI without credentials.
    """

    def __init__(self, location: str):
        self.location = self.otf_location = location  # otf_location: the store its jobs use (jobs/base.py)
        otf = OtfStore(location)
        # the same backends as OtfStore.jobstore, not yet connected
        super().__init__(otf.make_store("jobs"), additional_stores={"data": otf.make_store("jobs_data")})

    def as_dict(self) -> dict:
        return {"@module": type(self).__module__, "@class": type(self).__name__, "location": self.location}

    @classmethod
    def from_dict(cls, d: dict) -> OtfJobStore:
        return cls(d["location"])


def campaign_workflow(flow: Flow, location: str, campaign: str, inline_light: bool = False,
                      root_routing: dict | None = None) -> Workflow:
    """The FireWorks workflow of a campaign flow; every firework writes to the store at ``location``.

    With ``inline_light`` light jobs run in the firework of the job before them
    (:func:`inline_workflow`); one with no job before it takes ``root_routing``.
    """
    store = OtfJobStore(location)
    metadata = {"otf_campaign": campaign, "otf_store": redact(location)}
    if inline_light:
        return inline_workflow(flow, store, root_routing, metadata=metadata)
    return flow_to_workflow(flow, store=store, metadata=metadata)


def inline_workflow(flow: Flow, store: JobStore, emitter: dict | None = None, **kwargs) -> Workflow:
    """``flow`` as a workflow in which every light job runs in the firework of the job before it.

    A light job (``metadata["otf_kind"] == "light"``) joins the firework of its *host*: the parent
    that all its other parents precede (a decide job's DFT check, a validate job's refit,
    finish's validate), as one more task after the host's. Its children then depend on that
    firework. A light job without such a parent keeps a firework of its own, routed by
    ``emitter`` when given (the routing of the firework whose job emitted ``flow``: the same
    worker runs it next). Every task is an :class:`InlineJobFiretask`.

    Parameters
    ----------
    flow
        The jobs to convert (a campaign flow, or a ``Response.addition``).
    store
        The JobStore every task writes to.
    emitter
        Spec entries (``_category``, ``_fworker``, ``_queueadapter``) for light jobs without a host.
    **kwargs
        Passed to :class:`fireworks.Workflow` (``metadata``).
    """
    flow = get_flow(flow)
    graph = flow.graph
    fws: list = []
    runs_in: dict = {}  # job uuid -> the firework that runs the job
    for job, parents in flow.iterflow():
        task = InlineJobFiretask(job=job, store=store)
        light = job.metadata.get("otf_kind") == "light"
        host = _host(graph, parents) if light else None
        if host is not None:
            fw = runs_in[host]
            fw.tasks.append(task)
            fw.name = f"{fw.name} + {job.name}"
            fw.spec["otf_inline"] = [*fw.spec.get("otf_inline", []), job.name]
            runs_in[job.uuid] = fw
            continue
        fw = job_to_firework(job, store)
        fw.tasks = [task]
        fw.parents = list({id(runs_in[p]): runs_in[p] for p in parents}.values())
        if light and emitter:
            for key in ROUTING_KEYS:
                fw.spec.pop(key, None)
            fw.spec.update(emitter)
        runs_in[job.uuid] = fw
        fws.append(fw)
    return Workflow(fws, name=kwargs.pop("name", flow.name), **kwargs)


def _host(graph, parents: list[str]) -> str | None:
    """The one of ``parents`` that every other one precedes in ``graph`` (None when there is none)."""
    import networkx as nx  # only when a workflow is built, not on `otf --help`

    for candidate in parents:
        before = nx.ancestors(graph, candidate)
        if all(p == candidate or p in before for p in parents):
            return candidate
    return None


@explicit_serialize
class InlineJobFiretask(JobFiretask):
    """jobflow's ``JobFiretask`` whose ``Response`` additions, detours and replacements become fireworks
    with light jobs inline (:func:`inline_workflow`); light jobs without a host there go to this firework's
    worker.

    Only the last task of a firework may return such a ``Response`` (FireWorks keeps the last task's
    action); among otf jobs only the decide job, which is always a firework's last task, does.
    """

    def run_task(self, fw_spec):
        """Run the job; convert what its ``Response`` adds."""
        job, store = self["job"], self["store"]
        store.connect()
        if hasattr(self, "fw_id"):
            job.metadata.update({"fw_id": self.fw_id})
        initialize_logger()
        response = job.run(store=store)
        dynamic = (response.replace, response.addition, response.detour)
        last = (fw_spec.get("_tasks") or [{}])[-1].get("job", {})
        if (any(d is not None for d in dynamic) or response.stop_children) and last.get("uuid", job.uuid) != job.uuid:
            raise RuntimeError(f"job {job.name!r} changes the workflow but is not the last task of its firework")
        emitter = {key: fw_spec[key] for key in ROUTING_KEYS if key in fw_spec}
        replace, addition, detour = (None if d is None else inline_workflow(d, self["store"], emitter)
                                     for d in dynamic)
        detours = [d for d in (replace, detour) if d is not None] or None
        return FWAction(
            stored_data=response.stored_data, detours=detours, additions=[addition] if addition else None,
            defuse_workflow=response.stop_jobflow, defuse_children=response.stop_children,
        )


def load_launchpad(path: str | Path) -> LaunchPad:
    """A connected, initialised LaunchPad from its YAML file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"--launchpad: {str(path)!r} does not exist (see launchers/my_launchpad.yaml)")
    try:
        launchpad = LaunchPad.from_file(str(path))
    except Exception as err:  # noqa: BLE001 - YAML and driver errors alike
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"--launchpad: cannot read {str(path)!r}: {first}") from None
    try:
        initialised = launchpad.fw_id_assigner.find_one({}) is not None
    except Exception as err:  # noqa: BLE001 - any driver failure
        raise StoreError(
            f"LaunchPad {launchpad.name!r} at {redact(str(launchpad.host))} is unreachable: {type(err).__name__}"
        ) from None
    if not initialised:
        raise InputError(
            f"--launchpad: the LaunchPad database {launchpad.name!r} is not initialised; "
            f"run `lpad -l {path} reset` once"
        )
    return launchpad


def live_workflows(launchpad: LaunchPad, campaign: str, location: str) -> list[int]:
    """Ids of this campaign's workflows that may still run jobs."""
    query = {
        "metadata.otf_campaign": campaign,
        "metadata.otf_store": redact(location),
        "state": {"$in": list(LIVE_STATES)},
    }
    return launchpad.get_wf_ids(query)


def submit_campaign(config: CampaignConfig, store: OtfStore, launchpad: LaunchPad, resume: bool = False) -> dict:
    """Register the campaign and add its workflow to ``launchpad``.

    With ``resume``, a campaign already in the store continues from its progress pointer
    (as ``otf run --resume``), unless a workflow of it is still live in the LaunchPad.

    Returns
    -------
    dict
        ``campaign``, ``store``, ``n_fireworks`` and ``fireworks``: one row per firework with
        ``fw_id``, ``name``, ``kind``, ``category``, ``fworker``, ``queueadapter`` and ``inline`` (the
        light jobs it runs after its own).
    """
    location = store_location(store)
    if resume:
        live = live_workflows(launchpad, config.name, location)
        if live:
            raise InputError(
                f"--resume: campaign {config.name!r} still has a live workflow in the LaunchPad "
                f"(`lpad get_wflows -i {live[0]}`); rerun its lost fireworks with `lpad detect_lostruns --rerun` "
                "or defuse it first"
            )
    flow = prepare_campaign(config, store, resume=resume)
    # with inline light jobs, one that has no job before it (the final validation of a resumed
    # campaign) goes to the md workers: no light worker is needed
    workflow = campaign_workflow(flow, location, config.name, inline_light=config.execution.light.inline,
                                 root_routing=manager_config("md", config.execution))
    rows = [
        {
            "fw_id": fw.fw_id,
            "name": fw.name,
            "kind": fw.spec.get("otf_kind"),
            "category": fw.spec.get("_category"),
            "fworker": fw.spec.get("_fworker"),
            "queueadapter": fw.spec.get("_queueadapter"),
            "inline": fw.spec.get("otf_inline", []),
        }
        for fw in workflow.fws
    ]
    try:
        id_map = launchpad.add_wf(workflow)
    except Exception as err:
        store.update_campaign(config.name, status="failed", message=f"otf submit: {type(err).__name__}")
        raise StoreError(
            f"cannot add the workflow to the LaunchPad ({type(err).__name__}); "
            "retry with `otf submit CONFIG --resume`"
        ) from err
    for row in rows:
        row["fw_id"] = id_map.get(row["fw_id"], row["fw_id"])
    logger.info("campaign %s: %d fireworks added", config.name, len(rows))
    return {"campaign": config.name, "store": store.describe(), "n_fireworks": len(rows), "fireworks": rows}

