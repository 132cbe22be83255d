"""Stopping a local run resumably: on SIGTERM (a batch system's walltime warning) or after a set time.

A stop is taken between two jobs, so ``otf run --resume`` continues with the next one. The job
running when the stop is requested has ``grace_s`` seconds to finish; after that, or on a second
SIGTERM, it is abandoned (:class:`Abandoned` is raised in it). Abandoning loses only that job's
unfinished work: every job looks up what it already stored under deterministic ids before it
computes, so its rerun on ``--resume`` neither loses nor duplicates data (the SIGKILL tests of
``tests/test_reliability.py`` check this at every kind of job).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Self

from otf_flows.faults import release_holds

logger = logging.getLogger(__name__)

EXIT_STOPPED = 3
"""Exit code of ``otf run`` stopped before the campaign's end (SIGTERM, ``--stop-after``): resumable;
the ``otf submit --batch`` script resubmits itself on it."""


class Abandoned(KeyboardInterrupt):
    """The running job was abandoned by a stop request (it reruns on ``--resume``)."""


class GracefulStop:
    """Requests a stop on SIGTERM or ``after_s`` seconds after entering; call it for the reason.

    Parameters
    ----------
    after_s
        Stop after this many seconds (None: only on SIGTERM).
    grace_s
        Seconds the job running at the request may take to finish before it is abandoned.

    Use as a context manager in the main thread: it installs its SIGTERM handler and restores the
    previous one on exit. ``stop()`` is the reason of a requested stop, or None.
    """

    def __init__(self, after_s: float | None = None, grace_s: float = 60.0):
        self.after_s, self.grace_s = after_s, grace_s
        self.reason: str | None = None
        self.requested_at: float | None = None
        self._previous = None
        self._timers: list[threading.Timer] = []
        self._main = threading.main_thread().ident
        self._abandon_pending = False
        self._disarmed = False

    def __call__(self) -> str | None:
        return self.reason

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_term)
        if self.after_s is not None:
            self._start_timer(self.after_s, self._time_is_up)
        return self

    def __exit__(self, *exc) -> None:
        self.disarm()
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def disarm(self) -> None:
        """No more abandoning: the flow has returned (the stop, if any, was taken)."""
        for timer in self._timers:
            timer.cancel()
        self._disarmed = True

    def request(self, reason: str) -> None:
        """Stop at the next job boundary; the running job is abandoned after ``grace_s``."""
        if self.reason is not None or self._disarmed:
            return
        self.reason, self.requested_at = reason, time.monotonic()
        release_holds()  # a job held by a failpoint (tests) goes on, as a slow job would
        logger.warning("stop requested (%s): finishing the running job (at most %.0f s)", reason, self.grace_s)
        self._start_timer(self.grace_s, self._grace_is_up)

    def _start_timer(self, seconds: float, action) -> None:
        timer = threading.Timer(max(seconds, 0.0), action)
        timer.daemon = True
        self._timers.append(timer)
        timer.start()

    def _time_is_up(self) -> None:
        self.request(f"--stop-after {self.after_s:g} s")

    def _grace_is_up(self) -> None:
        # a real signal, not _thread.interrupt_main: it also interrupts a blocking wait (gap_fit, CP2K)
        self._abandon_pending = True
        signal.pthread_kill(self._main, signal.SIGTERM)

    def _on_term(self, signum, frame) -> None:
        if self._disarmed:
            logger.warning("SIGTERM while recording the end of the run: ignored")
            return
        if self.reason is None and not self._abandon_pending:
            self.request("SIGTERM")
            return
        if self._abandon_pending:
            reason = f"the running job did not finish within {self.grace_s:g} s"
        else:
            reason = "a second SIGTERM"
        raise Abandoned(f"{self.reason}; {reason} and was abandoned")
