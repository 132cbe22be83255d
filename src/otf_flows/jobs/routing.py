"""Route each job kind (dft, md, fit, light) to its FireWorks category, worker and queue settings.

Routing is set explicitly on every job when it is created, and jobs do not pass their own
manager configuration on to the jobs they emit, so a DFT check emitted by a light
compare + decide job still lands on a DFT worker.
"""

from __future__ import annotations

from jobflow import Flow, Job

KINDS = ("dft", "md", "fit", "light")


def manager_config(kind: str, execution) -> dict:
    """FireWorks spec entries for a job of ``kind`` under the campaign's ``execution`` settings."""
    if kind not in KINDS:
        raise ValueError(f"job kind {kind!r} is not one of {', '.join(KINDS)}")
    res = getattr(execution, kind)
    config = {"_category": res.category or kind}
    if res.fworker:
        config["_fworker"] = res.fworker
    if res.queue:
        config["_queueadapter"] = dict(res.queue)
    return config


def route(job: Job | Flow, kind: str, execution) -> Job | Flow:
    """Set the routing of ``job`` (every job of a flow) and stop it leaking into emitted jobs."""
    jobs = job.jobs if isinstance(job, Flow) else [job]
    for j in jobs:
        j.config.manager_config = manager_config(kind, execution)
        j.config.pass_manager_config = False
        j.config.expose_store = True  # a job without a store location uses the one it runs in (jobs/base.py)
        j.metadata["otf_kind"] = kind
    return job


def omp_threads(kind: str, execution) -> int | None:
    """OMP_NUM_THREADS requested for ``kind`` (None: leave the environment alone)."""
    return getattr(execution, kind).omp_threads
