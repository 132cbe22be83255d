"""Failpoints: kill the process at a named point, to test that campaigns survive any kill.

``OTF_FAILPOINT=NAME:N`` makes the N-th pass through ``failpoint(NAME)`` send SIGKILL to the
process itself (counted per process). A failpoint of one walker (``failpoint(NAME, walker)``)
is also named ``NAME@WALKER``: ``OTF_FAILPOINT=check.labelled@hot:2`` kills at walker hot's
second pass only. ``OTF_HOLD=NAME[@WALKER]=PATH`` holds the process at the point until the file
PATH exists (tests of walkers running side by side).
"""

from __future__ import annotations

import os
import signal
import time

from otf_flows.settings import otf_settings

_hits: dict[str, int] = {}


def failpoint(name: str, walker: str | None = None) -> None:
    """Die here if ``OTF_FAILPOINT`` names this point and its count is reached; wait if ``OTF_HOLD`` names it."""
    settings = otf_settings()
    spec, hold = settings.failpoint, settings.hold
    if not spec and not hold:
        return
    names = {name} if walker is None else {name, f"{name}@{walker}"}
    if hold:
        target, _, path = hold.partition("=")
        while target in names and not os.path.exists(path):
            time.sleep(0.05)
    if not spec:
        return
    target, _, count = spec.partition(":")
    if target not in names:
        return
    _hits[target] = _hits.get(target, 0) + 1
    if _hits[target] >= int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
