"""DecisionMachine: k-of-n debouncing keeps one bad window from raising or clearing an alarm."""

from __future__ import annotations

from collections import Counter, deque

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.decisions import DecisionMachine

CLASSES = ["normal", "inner_race", "outer_race", "ball"]


def confident(name: str, p: float = 0.9) -> np.ndarray:
    probs = np.full(len(CLASSES), (1 - p) / (len(CLASSES) - 1))
    probs[CLASSES.index(name)] = p
    return probs


def feed(machine: DecisionMachine, names: list[str]) -> list[str]:
    """Feed confident windows ("sensor" = failed sanity check); return the states."""
    states = []
    for i, name in enumerate(names):
        if name == "sensor":
            d = machine.update(np.full(4, np.nan), sanity_ok=False, sanity_reason="clipped", t=i)
        else:
            d = machine.update(confident(name), sanity_ok=True, t=float(i))
        states.append(d.state)
    return states


def test_state_is_unknown_until_k_of_n_agree() -> None:
    machine = DecisionMachine(CLASSES, "normal", k=3, n=5)
    assert feed(machine, ["normal"] * 3) == ["unknown", "unknown", "normal"]
    assert machine.since == 2.0


def test_one_outlier_window_never_changes_state() -> None:
    machine = DecisionMachine(CLASSES, "normal", k=3, n=5)
    states = feed(machine, ["normal"] * 5 + ["outer_race"] + ["normal"] * 5 + ["sensor"])
    assert states[4:] == ["normal"] * 8


def test_k_consecutive_fault_windows_raise_the_fault_and_then_clear() -> None:
    machine = DecisionMachine(CLASSES, "normal", k=3, n=5)
    feed(machine, ["normal"] * 5)
    decisions = [
        machine.update(confident("inner_race"), sanity_ok=True, t=10 + i) for i in range(3)
    ]
    assert [d.changed for d in decisions] == [False, False, True]
    last = decisions[-1]
    assert (last.previous, last.state, last.class_name, last.label) == (
        "normal",
        "inner_race",
        "inner_race",
        "inner_race",
    )
    assert last.confidence == pytest.approx(0.9)
    assert feed(machine, ["normal"] * 3)[-1] == "normal"


def test_alternating_noise_does_not_flap() -> None:
    for noise in (["normal", "normal", "ball"], ["ball", "outer_race", "sensor", "inner_race"]):
        machine = DecisionMachine(CLASSES, "normal", k=3, n=5)
        feed(machine, ["normal"] * 5)
        assert set(feed(machine, noise * 10)) == {"normal"}


def test_every_other_window_needs_k_above_half_of_n_to_stay_put() -> None:
    """A label in every other window reaches ceil(n/2) of n: with 3 of 5 it takes over, with
    4 of 5 it does not (documented in the module)."""
    strict = DecisionMachine(CLASSES, "normal", k=4, n=5)
    feed(strict, ["normal"] * 5)
    assert set(feed(strict, ["ball", "normal"] * 10)) == {"normal"}
    lenient = DecisionMachine(CLASSES, "normal", k=3, n=5)
    feed(lenient, ["normal"] * 5)
    assert "ball" in feed(lenient, ["ball", "normal"] * 10)


def test_sensor_fault_needs_k_of_n_and_keeps_the_reason() -> None:
    machine = DecisionMachine(CLASSES, "normal", k=2, n=3)
    feed(machine, ["normal"] * 3)
    first = machine.update(None, sanity_ok=False, sanity_reason="flat line", t=5.0)  # type: ignore[arg-type]
    assert (first.state, first.label, first.sanity_reason, first.class_name) == (
        "normal",
        "sensor_fault",
        "flat line",
        None,
    )
    second = machine.update(np.full(4, np.nan), sanity_ok=False, sanity_reason="flat line", t=6.0)
    assert second.changed and second.state == "sensor_fault"


def test_low_confidence_windows_become_uncertain() -> None:
    machine = DecisionMachine(CLASSES, "normal", k=2, n=3, uncertain_below=0.7)
    d = machine.update(confident("ball", p=0.5), sanity_ok=True, t=0.0)
    assert (d.label, d.class_name) == ("uncertain", "ball")
    d = machine.update(confident("outer_race", p=0.6), sanity_ok=True, t=1.0)
    assert d.state == "uncertain" and d.changed


def test_invalid_arguments_name_the_values() -> None:
    with pytest.raises(ValueError, match="k=6, n=5"):
        DecisionMachine(CLASSES, "normal", k=6, n=5)
    with pytest.raises(ValueError, match="normal_class 'healthy'"):
        DecisionMachine(CLASSES, "healthy")
    with pytest.raises(ValueError, match="reserved"):
        DecisionMachine([*CLASSES, "uncertain"], "normal")
    machine = DecisionMachine(CLASSES, "normal")
    with pytest.raises(ValueError, match=r"sum to 1.*not logits"):
        machine.update(np.array([3.0, -1.0, 0.5, 2.0]), sanity_ok=True, t=0.0)
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        machine.update(np.ones(3) / 3, sanity_ok=True, t=0.0)


window = st.one_of(
    st.sampled_from([*CLASSES, "sensor"]).map(lambda name: (name, 0.9)),
    st.tuples(st.sampled_from(CLASSES), st.floats(0.3, 1.0)),
)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 6).flatmap(lambda n: st.tuples(st.integers(1, n), st.just(n))),
    st.lists(window, max_size=40),
)
def test_state_is_previous_or_a_label_seen_k_times_in_last_n(
    kn: tuple[int, int], windows: list[tuple[str, float]]
) -> None:
    k, n = kn
    machine = DecisionMachine(CLASSES, "normal", k=k, n=n, uncertain_below=0.7)
    recent: deque[str] = deque(maxlen=n)
    previous = "unknown"
    for i, (name, p) in enumerate(windows):
        if name == "sensor":
            d = machine.update(np.zeros(4), sanity_ok=False, t=float(i))
        else:
            d = machine.update(confident(name, p), sanity_ok=True, t=float(i))
        recent.append(d.label)
        counts = Counter(recent)
        assert d.previous == previous
        assert d.changed == (d.state != previous)
        if d.changed:
            assert counts[d.state] >= k
        else:
            assert d.state == previous
        assert d.state == "unknown" or counts[d.state] >= k or d.state == previous
        if counts[previous] < k and any(c >= k for c in counts.values()):
            assert d.changed  # a qualifying label always takes over from a stale state
        previous = d.state
