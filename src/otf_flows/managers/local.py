"""Run a campaign on this machine (the flow runner is :mod:`otf_flows.managers.runner`)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from jobflow import Flow

from otf_flows.campaign import CampaignConfig
from otf_flows.dirs import runs_dir, scratch_dir
from otf_flows.flows.lifecycle import prepare_campaign
from otf_flows.jobs.base import forget_stores
from otf_flows.managers.runner import KEPT_HOSTS, ChainPool, run_flow, trim_hosts  # noqa: F401 - their old home
from otf_flows.managers.stopping import Abandoned, GracefulStop
from otf_flows.schemas.documents import CampaignDoc
from otf_flows.store import OtfStore

logger = logging.getLogger(__name__)


def run_campaign(config: CampaignConfig, store: OtfStore, flow: Flow | None = None, resume: bool = False,
                 stop: GracefulStop | None = None) -> CampaignDoc:
    """Run a campaign to completion on this machine; failures leave it resumable.

    ``flow`` is what :func:`prepare_campaign` returned (prepared here when None). With ``stop``
    (entered by the caller) the run ends between two jobs once a stop is requested: the campaign
    is then "stopped", with the reason in its message, and resumable.
    """
    if flow is None:
        flow = prepare_campaign(config, store, resume)
    root = scratch_dir(config.name, store, config.execution.scratch_dir)
    start = time.perf_counter()
    workers = config.execution.local.workers
    chains = None
    if workers > 1 and config.walkers is not None:  # the walkers' chains side by side
        chains = ChainPool(workers, store.location if store.kind != "embedded" else str(store.path), root)
    try:
        run_flow(flow, store.jobstore, root, stop=stop, chains=chains)
    except BaseException as err:
        status = "stopped" if isinstance(err, KeyboardInterrupt) else "failed"
        message = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
        if isinstance(err, Abandoned):
            message = f"stopped: {message}"
        _add_wall(store, config.name, time.perf_counter() - start, status=status, message=message)
        raise
    finally:
        if stop is not None:
            stop.disarm()
        forget_stores()
    doc = _add_wall(store, config.name, time.perf_counter() - start)
    if stop is not None and stop() and doc.status != "completed":
        doc = store.update_campaign(config.name, status="stopped", message=f"stopped: {stop()}")
    return doc


def _add_wall(store: OtfStore, name: str, seconds: float, **fields) -> CampaignDoc:
    doc = store.require_campaign(name)
    return store.update_campaign(name, wall_seconds=doc.wall_seconds + seconds, **fields)


def _runs_dir(store: OtfStore, name: str) -> Path:
    return runs_dir(store, name)
