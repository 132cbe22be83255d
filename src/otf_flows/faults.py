"""Failpoints: kill or hold the process at a named point, to test that campaigns survive any kill and that
stops and chains happen however fast the machine is.

``OTF_FAILPOINT=NAME:N[:ACTION]`` acts at the N-th pass through ``failpoint(NAME)`` (N defaults to 1):

- ``kill`` (the default): send SIGKILL to the process itself;
- ``hold=SECONDS``: wait there, then go on. The wait ends after SECONDS, when this process is asked to stop
  (:func:`release_holds`: SIGTERM, ``--stop-after``, a walltime warning), when the file named by
  ``OTF_FAILPOINT_RELEASE`` exists, or when a signal handler raises. A test of a stop holds a job so that
  the stop finds work left on any machine, instead of giving the campaign "enough" work.

Passes are counted per process, or, with ``OTF_FAILPOINT_COUNTS=FILE``, in FILE across every process that
names it (the allocations of a chain, a pilot's workers, FireWorks' queue jobs): the N-th pass of all of
them acts, once. Unset, a failpoint costs one settings read.

A failpoint of one walker (``failpoint(NAME, walker)``) is also named ``NAME@WALKER``:
``OTF_FAILPOINT=check.labelled@hot:2`` kills at walker hot's second pass only.
``OTF_HOLD=NAME[@WALKER]=PATH`` holds the process at the point until the file PATH exists (tests of
walkers running side by side).
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import time
from pathlib import Path

from otf_flows.settings import otf_settings

logger = logging.getLogger(__name__)

_hits: dict[str, int] = {}
_released = False
POLL_S = 0.05
"""How often a hold looks whether it is released."""


def release_holds() -> None:
    """End every hold of this process now (called when the run is asked to stop)."""
    global _released
    _released = True


def failpoint(name: str, walker: str | None = None) -> None:
    """Act here if ``OTF_FAILPOINT`` names this point and its pass has come; wait if ``OTF_HOLD`` names it
    (see the module docstring)."""
    settings = otf_settings()
    spec, hold = settings.failpoint, settings.hold
    if not spec and not hold:
        return
    names = {name} if walker is None else {name, f"{name}@{walker}"}
    if hold:
        target, _, path = hold.partition("=")
        while target in names and not os.path.exists(path):
            time.sleep(POLL_S)
    if not spec:
        return
    target, _, rest = spec.partition(":")
    if target not in names:
        return
    count, _, action = rest.partition(":")
    if _count(target, settings.failpoint_counts) != int(count or 1):
        return
    if action in ("", "kill"):
        os.kill(os.getpid(), signal.SIGKILL)
    elif action.startswith("hold"):
        _hold(target, float(action.partition("=")[2] or 600), settings.failpoint_release)
    else:
        raise ValueError(f"OTF_FAILPOINT: {spec!r}: the action {action!r} is not 'kill' or 'hold=SECONDS'")


def _count(name: str, path: str | None) -> int:
    """This pass's number: per process, or in the file ``path`` (``OTF_FAILPOINT_COUNTS``) across processes."""
    if not path:
        _hits[name] = _hits.get(name, 0) + 1
        return _hits[name]
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        text = fh.read().strip()
        n = int(text or 0) + 1
        fh.seek(0)
        fh.truncate()
        fh.write(f"{n}\n")
        fh.flush()
        return n


def _hold(name: str, seconds: float, release: str | None) -> None:
    logger.warning("failpoint %s: holding (at most %g s)", name, seconds)
    end = time.monotonic() + seconds
    while not _released and time.monotonic() < end and not (release and Path(release).exists()):
        time.sleep(POLL_S)
    logger.warning("failpoint %s: released", name)
