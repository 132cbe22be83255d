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
"""

from __future__ import annotations

import logging
from pathlib import Path

from fireworks import LaunchPad, Workflow
from jobflow import Flow, JobStore
from jobflow.managers.fireworks import flow_to_workflow

from otf_flows.campaign import CampaignConfig
from otf_flows.errors import InputError, StoreError
from otf_flows.managers.local import prepare_campaign
from otf_flows.mongo import redact
from otf_flows.store import OtfStore

logger = logging.getLogger(__name__)

#: workflow states in which a campaign's workflow may still run jobs
LIVE_STATES = ("READY", "RESERVED", "RUNNING", "WAITING", "PAUSED")


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
        self.location = location
        otf = OtfStore(location)
        # the same backends as OtfStore.jobstore, not yet connected
        super().__init__(otf.make_store("jobs"), additional_stores={"data": otf.make_store("jobs_data")})

    def as_dict(self) -> dict:
        return {"@module": type(self).__module__, "@class": type(self).__name__, "location": self.location}

    @classmethod
    def from_dict(cls, d: dict) -> OtfJobStore:
        return cls(d["location"])


def campaign_workflow(flow: Flow, location: str, campaign: str) -> Workflow:
    """The FireWorks workflow of a campaign flow; every firework writes to the store at ``location``."""
    return flow_to_workflow(
        flow, store=OtfJobStore(location), metadata={"otf_campaign": campaign, "otf_store": redact(location)}
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
        ``fw_id``, ``name``, ``kind``, ``category``, ``fworker``, ``queueadapter``.
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
    workflow = campaign_workflow(flow, location, config.name)
    rows = [
        {
            "fw_id": fw.fw_id,
            "name": fw.name,
            "kind": fw.spec.get("otf_kind"),
            "category": fw.spec.get("_category"),
            "fworker": fw.spec.get("_fworker"),
            "queueadapter": fw.spec.get("_queueadapter"),
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

