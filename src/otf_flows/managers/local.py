"""Run a campaign on this machine.

:func:`run_flow` executes a jobflow ``Flow`` like ``jobflow.managers.local.run_locally``
(``Job.run`` against the JobStore, one folder per job, ``Response`` additions, detours and
replacements honoured), but iteratively: jobflow's local manager recurses into every
``Response.addition`` and keeps every response in memory, which a campaign of thousands of
iterations would exhaust. Here memory stays flat however long the campaign runs.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from contextlib import chdir
from datetime import UTC, datetime
from pathlib import Path
from random import randint

from jobflow import Flow, Job

from otf_flows.campaign import CampaignConfig
from otf_flows.dirs import runs_dir, scratch_dir
from otf_flows.faults import failpoint
from otf_flows.flows.lifecycle import prepare_campaign
from otf_flows.jobs.base import forget_stores
from otf_flows.managers.stopping import Abandoned, GracefulStop
from otf_flows.schemas.documents import CampaignDoc
from otf_flows.store import OtfStore

logger = logging.getLogger(__name__)


def run_flow(flow: Flow | Job, jobstore, root_dir: Path, stop: Callable[[], str | None] | None = None) -> int:
    """Run ``flow`` and every job it emits; exceptions propagate. Returns the number of jobs run.

    ``stop`` is asked before each job: a reason (not None) ends the run there, resumably.
    """
    root_dir = Path(root_dir)
    root_dir.mkdir(parents=True, exist_ok=True)
    jobstore.connect()
    queue: deque = deque([flow if isinstance(flow, Flow) else Flow([flow])])
    n_jobs = 0
    while queue:
        current = queue.popleft()
        for job, _parents in current.iterflow():
            if stop is not None and stop():
                return n_jobs
            stamp = datetime.now(tz=UTC).strftime("%Y-%m-%d-%H-%M-%S-%f")
            job_dir = root_dir / f"job_{stamp}-{randint(10000, 99999)}"
            job_dir.mkdir()
            with chdir(job_dir):
                response = job.run(store=jobstore, job_dir=job_dir)
            n_jobs += 1
            failpoint("between_jobs")
            if response.stop_jobflow:
                return n_jobs
            for diversion in (response.replace, response.detour, response.addition):
                if diversion is not None:
                    diversion = diversion if isinstance(diversion, Flow) else Flow(diversion)
                    trim_hosts(diversion)
                    queue.append(diversion)
    return n_jobs


KEPT_HOSTS = 2
"""Innermost hosts :func:`trim_hosts` keeps, besides the outermost (the campaign's flow)."""


def trim_hosts(item: Flow | Job) -> None:
    """Keep the innermost :data:`KEPT_HOSTS` hosts and the outermost one of ``item`` and of all it holds.

    jobflow gives the jobs a job emits its own hosts plus the new flow's, so each iteration of a
    campaign nests one level deeper: after N iterations every job carries about 2N flow ids,
    stored in its job document, and storing it costs time in proportion. The order of the kept
    hosts, innermost first, is jobflow's.
    """
    if len(item.hosts) > KEPT_HOSTS + 1:
        item.hosts = [*item.hosts[:KEPT_HOSTS], item.hosts[-1]]
    for child in getattr(item, "jobs", ()):
        trim_hosts(child)


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
    try:
        run_flow(flow, store.jobstore, root, stop=stop)
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
