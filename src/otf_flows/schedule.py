"""Checking-interval schedules, identical to hybrid-md's.

Examples
--------
>>> s = AdaptiveSchedule(n_min=1, n_max=100, factor=2, initial=10)
>>> [s.update(p) for p in (True, True, False)]
[20, 40, 20]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from otf_flows.checks import within_margin


def per_1000_steps(n_dft_calls: int, steps: int) -> float | None:
    """DFT calls per 1000 MD steps: ``1000 * n_dft_calls / steps`` (None before the first step).

    ``n_dft_calls`` counts every reference label the campaign made (initial MD, checks, guard checks,
    checks of rolled-back segments); ``steps`` is the MD step reached, the reference-driven initial steps
    included, so plain ab initio MD would show 1000.
    """
    return 1000.0 * n_dft_calls / steps if steps > 0 else None


@dataclass
class AdaptiveSchedule:
    """Adaptive checking interval.

    A passed check multiplies the interval by ``factor`` (truncated to an int, capped at
    ``n_max``); a failed check divides it (truncated, floored at ``n_min``).

    Parameters
    ----------
    n_min
        Smallest interval in MD steps.
    n_max
        Largest interval in MD steps.
    factor
        Growth/shrink factor, larger than 1.
    initial
        The first interval (the campaign's ``check_interval``).
    """

    n_min: int
    n_max: int
    factor: float
    initial: int

    def __post_init__(self):
        if self.n_min < 1:
            raise ValueError(f"n_min must be >= 1, got {self.n_min}")
        if self.n_max < self.n_min:
            raise ValueError(f"n_max ({self.n_max}) must be >= n_min ({self.n_min})")
        if not self.factor > 1:
            raise ValueError(f"factor must be > 1, got {self.factor}")
        if self.initial < 1:
            raise ValueError(f"initial interval must be >= 1, got {self.initial}")
        self.interval = int(self.initial)

    def update(self, passed: bool) -> int:
        """Apply the outcome of a check and return the new interval."""
        if passed:
            self.interval = min(int(self.interval * self.factor), self.n_max)
        else:
            self.interval = max(int(self.interval / self.factor), self.n_min)
        return self.interval


@dataclass
class FixedSchedule:
    """Fixed checking interval: every check is ``check_interval`` steps after the last."""

    check_interval: int

    def __post_init__(self):
        if self.check_interval < 1:
            raise ValueError(f"check_interval must be >= 1, got {self.check_interval}")
        self.interval = int(self.check_interval)

    def update(self, passed: bool) -> int:
        """Return the (unchanged) interval; the outcome does not matter."""
        return self.interval


def next_interval(
    interval: int, passed: bool, n_min: int | None, n_max: int | None, factor: float | None
) -> int:
    """Stateless form of the schedules, used by the campaign jobs.

    With ``factor`` None the schedule is fixed and ``interval`` is returned unchanged.
    """
    if factor is None:
        return FixedSchedule(interval).update(passed)
    schedule = AdaptiveSchedule(n_min=n_min, n_max=n_max, factor=factor, initial=interval)
    return schedule.update(passed)


def adapted_interval(interval: int, passed: bool, errors: Mapping[str, float | None],
                     tolerances: Mapping[str, float | None], params) -> int:
    """The next checking interval after a check, with the margins of ``adaptive_method_parameters``.

    ``params`` None is the fixed schedule. Otherwise a failed check shrinks the interval; a passed
    check grows it when every error is below ``grow_below`` × its tolerance, shrinks it when some
    error reaches ``shrink_above`` × its tolerance (a near miss), and keeps it in between (clamped
    to ``n_min``…``n_max``). With both fractions 1.0 this is hybrid-md's schedule.

    Examples
    --------
    >>> from types import SimpleNamespace as P
    >>> p = P(n_min=5, n_max=400, factor=2.0, grow_below=0.7, shrink_above=0.9)
    >>> tol = {"frmse": 0.3}
    >>> [adapted_interval(40, True, {"frmse": e}, tol, p) for e in (0.1, 0.25, 0.28)]
    [80, 40, 20]
    >>> adapted_interval(40, False, {"frmse": 0.5}, tol, p)
    20
    """
    if params is None:
        return next_interval(interval, passed, None, None, None)
    if passed and within_margin(errors, tolerances, getattr(params, "shrink_above", 1.0)):
        if not within_margin(errors, tolerances, params.grow_below):
            return min(max(interval, params.n_min), params.n_max)  # passed without margin: hold
        return next_interval(interval, True, params.n_min, params.n_max, params.factor)
    return next_interval(interval, False, params.n_min, params.n_max, params.factor)
