"""Open set: a score that ranks a class the model never saw above the known ones, and the agent
reporting `unknown` instead of forcing the nearest class."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.agent.agent import Agent
from edge_agent.config import load_config
from edge_agent.contract.bundle import ClassStats
from edge_agent.mqtt.memory import MemoryLink
from edge_agent.pipeline.openset import OpenSetScorer, auroc, threshold_for
from tests.edge_agent.agent.test_agent import NO_DRIFT
from tests.edge_agent.bundle_fixture import (
    HOP,
    SAMPLE_RATE_HZ,
    SEVERITY,
    simulator_source,
    write_config,
)

D = 32


def blobs(means: np.ndarray, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(len(means)), per_class)
    mix = np.random.default_rng(99).normal(size=(D, D)) / np.sqrt(D)  # correlated dimensions
    return means[y] + rng.normal(size=(len(y), D)) @ mix, y


def stats_of(x: np.ndarray, y: np.ndarray) -> dict[str, ClassStats]:
    return {
        f"c{c}": ClassStats(
            count=int((y == c).sum()),
            mean=x[y == c].mean(0).tolist(),
            cov=np.cov(x[y == c].T).tolist(),
        )
        for c in np.unique(y)
    }


@pytest.mark.parametrize("held_out", range(4))
def test_a_held_out_class_scores_above_the_known_ones(held_out):
    means = np.random.default_rng(7).normal(0.0, 2.0, (4, D))
    x, y = blobs(means, 60, seed=1)
    known = y != held_out
    scorer = OpenSetScorer(stats_of(x[known], y[known]))
    x_test, y_test = blobs(means, 100, seed=2)
    scores = scorer.score(x_test)
    assert auroc(scores[y_test != held_out], scores[y_test == held_out]) >= 0.9
    x_val, y_val = blobs(means, 60, seed=3)  # as training does: validation windows, not the fit
    threshold = threshold_for(scorer.score(x_val[y_val != held_out]), 0.99)
    assert (scores[y_test != held_out] > threshold).mean() < 0.05
    assert (scores[y_test == held_out] > threshold).mean() > 0.5


def test_auroc_matches_a_hand_count():
    known, novel = np.array([0.1, 0.4, 0.35]), np.array([0.8, 0.4])
    # pairs with novel above known: 0.8 beats all 3; 0.4 beats 0.1 and 0.35, ties 0.4 (1/2)
    assert auroc(known, novel) == pytest.approx(5.5 / 6)
    assert auroc(known, np.array([])) != auroc(known, np.array([]))  # nan


def test_bad_statistics_and_inputs_name_the_problem():
    one = {"c0": ClassStats(count=5, mean=[0.0] * D, cov=np.eye(D).tolist())}
    with pytest.raises(ValueError, match="at least 2 classes"):
        OpenSetScorer(one)
    two = {**one, "c1": ClassStats(count=5, mean=[1.0] * D, cov=np.eye(D).tolist())}
    with pytest.raises(ValueError, match=r"\(N, 32\)"):
        OpenSetScorer(two).score(np.zeros((3, 5)))
    with pytest.raises(ValueError, match=">= 10 finite scores"):
        threshold_for(np.array([1.0, np.nan]))


def test_the_agent_reports_unknown_for_a_condition_it_was_never_trained_on(tmp_path, agent_bundle):
    """The fixture bundle was trained at 1797 rpm; after commissioning, the machine runs at
    3600 rpm, unlike anything the model saw: `unknown`, not the nearest class."""
    schedule = [
        {"at_s": 0.0, "fault": "normal", "severity": SEVERITY},
        {"at_s": 14.0, "rpm": 3600.0},
    ]
    decisions = NO_DRIFT | {"uncertain_after_s": 2.0, "min_dwell_s": 2.0}
    path = write_config(tmp_path / "dev", agent_bundle, 1, simulator_source(schedule),
                        decisions=decisions,
                        commissioning={"period_s": 10.0, "min_windows": 20})  # fmt: skip
    with Agent(load_config(path)) as agent:
        assert agent.channels[0].openset is not None and agent.channels[0].unknown_above > 0
        assert agent.channels[0].unknown_threshold() is None  # not before commissioning
        agent.link = MemoryLink()
        agent.source.start()
        while agent.windows_total < int(22.0 * SAMPLE_RATE_HZ / HOP):
            agent.channels[0].buffer.push(agent.source.read(1.0))
            agent._drain(None)
        threshold = agent.channels[0].unknown_threshold()
    assert threshold is not None and threshold >= agent.channels[0].unknown_above
    changes = [e for e in agent.link.events if e.kind == "state_change"]
    assert [e.state for e in changes] == ["normal", "unknown"]
    novel = changes[-1]
    assert novel.severity == "warning" and "unlike every trained class" in novel.message
    assert novel.unknown_score > threshold > changes[0].unknown_score
