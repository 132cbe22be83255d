"""Run jobflow flows on this machine: in this process, and walkers' chains in worker processes.

:func:`run_flow` executes a jobflow ``Flow`` like ``jobflow.managers.local.run_locally``
(``Job.run`` against the JobStore, one folder per job, ``Response`` additions, detours and
replacements honoured), but iteratively: jobflow's local manager recurses into every
``Response.addition`` and keeps every response in memory, which a campaign of thousands of
iterations would exhaust. Here memory stays flat however long the campaign runs.

With a :class:`ChainPool` (``execution.local.workers`` > 1), the independent chains a job adds
(the walkers' chains of :class:`~otf_flows.flows.walkers.StartWalkersMaker`) run side by side,
each in a worker process of a ``multiprocessing`` pool that runs it with :func:`run_flow` against
the same store. A stop request reaches the workers between two of their jobs; their progress
events reach this process's listeners (:mod:`otf_flows.progress`); a worker dies with the run.
Each worker's ``{ntasks}`` (the run command of CP2K or VASP) is its share of the allocation's
tasks, ``ntasks // workers`` (``OTF_NTASKS`` in the worker), so concurrent DFT jobs do not
oversubscribe the allocation.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import logging
import multiprocessing
import os
import queue
import signal
import time
import warnings
from collections import deque
from collections.abc import Callable
from contextlib import chdir
from datetime import UTC, datetime
from pathlib import Path
from random import randint

from jobflow import Flow, Job
from monty.json import MontyDecoder, jsanitize

from otf_flows import progress
from otf_flows.faults import failpoint
from otf_flows.jobs.base import forget_stores
from otf_flows.reference.base import allocation_tasks
from otf_flows.store import OtfStore

logger = logging.getLogger(__name__)

KEPT_HOSTS = 2
"""Innermost hosts :func:`trim_hosts` keeps, besides the outermost (the campaign's flow)."""
MD_EVENT_EVERY_S = 0.5
"""A worker forwards a walker's ``md_step`` progress event at most this often."""


def run_flow(flow: Flow | Job, jobstore, root_dir: Path, stop: Callable[[], str | None] | None = None,
             chains: ChainPool | None = None) -> int:
    """Run ``flow`` and every job it emits; exceptions propagate. Returns the number of jobs run here.

    ``stop`` is asked before each job: a reason (not None) ends the run there, resumably. With
    ``chains``, the flows added by a job whose Maker has ``independent_chains`` go to the pool, and
    the run returns once they have ended too.
    """
    root_dir = Path(root_dir)
    root_dir.mkdir(parents=True, exist_ok=True)
    jobstore.connect()
    queue_: deque = deque([flow if isinstance(flow, Flow) else Flow([flow])])
    n_jobs = 0
    while queue_:
        current = queue_.popleft()
        with warnings.catch_warnings():  # the walkers' chains (and their initial jobs) are unconnected by design
            warnings.filterwarnings("ignore", "Some jobs are not connected", UserWarning)
            order = list(current.iterflow())
        for job, _parents in order:
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
                if diversion is None:
                    continue
                diversion = diversion if isinstance(diversion, Flow) else Flow(diversion)
                trim_hosts(diversion)
                if chains is not None and getattr(job.maker, "independent_chains", False) \
                        and diversion.jobs and all(isinstance(j, Flow) for j in diversion.jobs):
                    for chain in diversion.jobs:
                        chains.submit(chain)
                else:
                    queue_.append(diversion)
    if chains is not None:
        n_jobs += chains.wait(stop)
    return n_jobs


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


class ChainPool:
    """Up to ``workers`` independent chains at once, each run by :func:`run_flow` in a worker process.

    Parameters
    ----------
    workers
        Worker processes (``execution.local.workers``).
    location
        The store's location (each worker opens it).
    root_dir
        Root of the job directories.
    """

    def __init__(self, workers: int, location: str, root_dir: Path):
        ctx = multiprocessing.get_context("spawn")  # no inherited store connections, locks or threads
        self.location, self.root_dir = location, str(root_dir)
        self._stop = ctx.Event()
        self._events = ctx.Queue()
        self.ntasks = max(allocation_tasks() // workers, 1)  # each concurrent DFT job's share
        self._pool = concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=ctx, initializer=_init_worker,
            initargs=(self._stop, self._events, os.getpid(), self.ntasks))
        self._results: list[concurrent.futures.Future] = []

    def submit(self, chain: Flow) -> None:
        """Run ``chain`` in a worker as soon as one is free."""
        document = jsanitize(chain.as_dict(), strict=True, enum_values=True)
        self._results.append(self._pool.submit(_run_chain, document, self.location, self.root_dir))

    def wait(self, stop: Callable[[], str | None] | None = None) -> int:
        """Wait for every chain, forwarding progress events and a stop request; the jobs run, summed.

        Raises the first chain's exception (the others finish their running job and stop).
        """
        try:
            while not all(r.done() for r in self._results):
                self._forward(timeout=0.2)
                if stop is not None and stop():
                    self._stop.set()
                failed = next((r for r in self._results if r.done() and r.exception() is not None), None)
                if failed is not None:  # the others stop after their running job
                    self._stop.set()
                    concurrent.futures.wait(self._results)
                    failed.result()
            self._forward(timeout=0)
            n_jobs = sum(r.result() for r in self._results)
        except BaseException:
            self.terminate()
            raise
        self._pool.shutdown()
        return n_jobs

    def terminate(self) -> None:
        """Stop the workers at once (their running jobs rerun on ``--resume``)."""
        self._stop.set()
        processes = list((getattr(self._pool, "_processes", None) or {}).values())
        self._pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.kill()

    def _forward(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                event, data = self._events.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                return
            progress.emit(event, **data)


_worker: dict = {}


def _init_worker(stop_event, events, parent_pid: int, ntasks: int) -> None:
    """In each worker: die with the parent, leave SIGTERM/SIGINT to it, send progress events to it, and
    fill the run commands' ``{ntasks}`` with this worker's share of the allocation."""
    try:  # Linux: SIGKILL when the parent dies (a killed `otf run` leaves no worker writing to the store)
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ["OTF_NTASKS"] = str(ntasks)  # this process only: read by reference.base.allocation_tasks
    _worker.update(stop=stop_event, events=events, parent=parent_pid, last_md={})
    progress.subscribe(_send)


def _send(event: str, data: dict) -> None:
    if event == "md_step":
        now, key = time.monotonic(), data.get("walker")
        if now - _worker["last_md"].get(key, 0.0) < MD_EVENT_EVERY_S:
            return
        _worker["last_md"][key] = now
    _worker["events"].put((event, jsanitize(data)))


def _worker_stop() -> str | None:
    if _worker["stop"].is_set():
        return "stop requested"
    if os.getppid() != _worker["parent"]:
        return "the run that started this worker has ended"
    return None


def _run_chain(document: dict, location: str, root_dir: str) -> int:
    """Run one chain (a serialised flow) against the store at ``location``; the number of jobs run."""
    chain = MontyDecoder().process_decoded(document)
    store = OtfStore(location)
    try:
        return run_flow(chain, store.jobstore, Path(root_dir), stop=_worker_stop)
    finally:
        forget_stores()
        store.close()
