"""Failpoints: kill the process at a named point, to test that campaigns survive any kill.

``OTF_FAILPOINT=NAME:N`` makes the N-th pass through ``failpoint(NAME)`` send SIGKILL to the
process itself (counted per process). Unset, a failpoint costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

from otf_flows.settings import otf_settings

_hits: dict[str, int] = {}


def failpoint(name: str) -> None:
    """Die here if ``OTF_FAILPOINT`` names this point and its count is reached."""
    spec = otf_settings().failpoint
    if not spec:
        return
    target, _, count = spec.partition(":")
    if target != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] >= int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
