"""Adaptive and fixed checking intervals (hybrid-md's rule)."""

import pytest

from otf_flows.schedule import AdaptiveSchedule, FixedSchedule, next_interval


def replay(schedule, outcomes):
    return [schedule.update(p) for p in outcomes]


def test_adaptive_replay_matches_hybrid_md():
    # factor 1.5: int truncation at every step, clamped to [5, 60]
    s = AdaptiveSchedule(n_min=5, n_max=60, factor=1.5, initial=10)
    outcomes = [True, True, True, True, True, True, False, False, False, False, True, False]
    # 10*1.5=15, 22.5->22, 33, 49.5->49, 73.5->60 (clamp), 60 (clamp), 60/1.5=40, 26.6->26, 17.3->17,
    # 11.3->11, 16.5->16, 10.6->10
    assert replay(s, outcomes) == [15, 22, 33, 49, 60, 60, 40, 26, 17, 11, 16, 10]


def test_adaptive_clamps_at_n_min():
    s = AdaptiveSchedule(n_min=3, n_max=100, factor=2, initial=10)
    assert replay(s, [False, False, False, False, True]) == [5, 3, 3, 3, 6]
    assert s.interval == 6


def test_adaptive_truncates_not_rounds():
    s = AdaptiveSchedule(n_min=1, n_max=1000, factor=1.3, initial=10)
    # 10*1.3 = 13.000000000000002 -> 13; 13*1.3 = 16.9 -> 16 (rounding would give 17)
    assert replay(s, [True, True]) == [13, 16]
    s = AdaptiveSchedule(n_min=1, n_max=1000, factor=1.3, initial=16)
    assert replay(s, [False]) == [12]  # 12.3 -> 12


def test_fixed_schedule_ignores_outcome():
    s = FixedSchedule(7)
    assert replay(s, [True, False, True]) == [7, 7, 7]
    assert s.interval == 7


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(n_min=0, n_max=10, factor=2, initial=5),
        dict(n_min=5, n_max=4, factor=2, initial=5),
        dict(n_min=1, n_max=10, factor=1.0, initial=5),
        dict(n_min=1, n_max=10, factor=2, initial=0),
    ],
)
def test_adaptive_rejects_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        AdaptiveSchedule(**kwargs)


def test_next_interval_is_the_schedules_rule():
    assert next_interval(10, True, 1, 15, 2.0) == 15
    assert next_interval(10, False, 1, 15, 2.0) == 5
    assert next_interval(10, False, None, None, None) == 10
