"""EventLimiter: a storm of state changes becomes a bounded number of events and one summary."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.pipeline.decisions import DecisionMachine
from edge_agent.pipeline.event_limit import EventLimiter

STATES = ["normal", "inner_race", "outer_race", "ball", "uncertain", "sensor_fault"]


def publish_like_the_agent(
    limiter: EventLimiter, changes: list[tuple[float, str]]
) -> list[tuple[float, str]]:
    """What reaches the operator: ("event", state) or ("summary", text), with their times."""
    out: list[tuple[float, str]] = []
    for t, state in changes:
        text = limiter.summary(t)
        if text:
            out.append((t, text))
        if limiter.allow(state, t):
            out.append((t, state))
    return out


def test_a_storm_of_100_alternating_changes_gives_at_most_the_budget_and_a_summary() -> None:
    limiter = EventLimiter("normal", max_events_per_hour=12)
    storm = [(36.0 * i, "inner_race" if i % 2 == 0 else "normal") for i in range(100)]
    out = publish_like_the_agent(limiter, storm)
    assert out[0] == (0.0, "inner_race")  # the first alarm went out at once
    assert len(out) == 11  # the 12th slot is kept for an escalation
    assert limiter.suppressed == 89
    assert limiter.summary(3599.0) is None  # no room yet: the hour is still full
    assert limiter.summary(3600.0) == (  # the first event left the hour
        "89 state changes suppressed in the last 54 min: normal x45, inner_race x44; "
        "current state normal"
    )
    assert limiter.suppressed == 0 and limiter.summary(3600.0) is None
    assert limiter.published == "normal"


def test_escalation_from_normal_always_passes() -> None:
    limiter = EventLimiter("normal", max_events_per_hour=3)
    assert limiter.allow("normal", 0.0)  # first state
    assert limiter.allow("uncertain", 1.0)  # ordinary changes use max - 1 = 2 slots
    assert not limiter.allow("normal", 2.0)  # suppressed: the operator still sees uncertain
    assert limiter.allow("inner_race", 3.0)  # into an alarm from a non-alarm: always
    assert not limiter.allow("normal", 4.0)
    assert not limiter.allow("outer_race", 5.0)  # last told: inner_race, an alarm already
    assert limiter.published == "inner_race" and limiter.suppressed == 3
    assert limiter.summary(3601.0) == (
        "3 state changes suppressed in the last 60 min: normal x2, outer_race x1; "
        "current state outer_race"
    )
    assert limiter.published == "outer_race"


def test_after_a_summary_naming_normal_an_alarm_passes_even_in_a_full_hour() -> None:
    limiter = EventLimiter("normal", max_events_per_hour=3)
    assert limiter.allow("normal", 0.0) and limiter.allow("uncertain", 10.0)
    assert not limiter.allow("normal", 20.0)
    assert limiter.summary(3600.0) == (
        "1 state change suppressed in the last 60 min: normal x1; current state normal"
    )
    assert limiter.allow("ball", 3601.0)  # the hour now holds 3 events: the budget
    assert not limiter.allow("normal", 3602.0)


def test_the_machine_s_worst_stationary_stream_reaches_the_operator_within_budget() -> None:
    """20 % false fault windows flap even the default machine (~70 changes an hour, one per
    minimum dwell); behind the limiter: at most 12 events an hour, and summaries."""
    classes = ["normal", "inner_race", "outer_race", "ball"]
    machine, limiter = DecisionMachine(classes, "normal"), EventLimiter("normal")
    rng = np.random.default_rng(0)
    probs = {name: np.where(np.arange(4) == i, 0.91, 0.03) for i, name in enumerate(classes)}
    changes = []
    for i, fault in enumerate(rng.random(2 * 7200) < 0.2):  # two hours, 2 windows per s
        d = machine.update(probs["inner_race" if fault else "normal"], sanity_ok=True, t=i / 2)
        if d.changed:
            changes.append((d.t, d.state))
    assert len(changes) > 60
    out = publish_like_the_agent(limiter, changes)
    assert sum(t < 3600 for t, _ in out) <= 12 and sum(t >= 3600 for t, _ in out) <= 12
    assert any("suppressed" in what for _, what in out)


def test_invalid_budget_is_named() -> None:
    with pytest.raises(ValueError, match="max_events_per_hour must be >= 3, got 2"):
        EventLimiter("normal", max_events_per_hour=2)


changes = st.lists(st.tuples(st.floats(0, 900), st.sampled_from(STATES)), max_size=200)


@settings(max_examples=200, deadline=None)
@given(st.integers(3, 20), changes)
def test_no_hour_holds_more_than_the_budget_and_alarms_are_never_hidden(
    budget: int, steps: list[tuple[float, str]]
) -> None:
    limiter = EventLimiter("normal", max_events_per_hour=budget)
    t, timed = 0.0, []
    for dt, state in steps:
        t += dt
        timed.append((t, state))
    told = "unknown"
    for t, state in timed:
        text = limiter.summary(t)
        if text:
            told = text.rsplit("current state ", 1)[1]
        alarm = state not in ("normal", "unknown", "uncertain", "sensor_fault")
        escalation = alarm and told in ("normal", "unknown", "uncertain", "sensor_fault")
        allowed = limiter.allow(state, t)
        assert allowed or not escalation
        told = state if allowed else told
        assert limiter.published == told
    out = publish_like_the_agent(EventLimiter("normal", max_events_per_hour=budget), timed)
    times = [t for t, _ in out]
    for i, start in enumerate(times):
        assert sum(start <= x < start + 3600 for x in times[i:]) <= budget
