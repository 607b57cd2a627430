"""Multi-head fine-tuning: task targets from class names, the masked loss, and a fine-tune that
learns detection / location / size on separable synthetic classes."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from train.config import load_config
from train.encoder import build_encoder
from train.heads import MultiTaskHead
from train.loop import finetune
from train.multitask import (
    UNKNOWN,
    TaskTargets,
    marginal_probabilities,
    parse_class,
    task_loss,
)
from train.runs import evaluate, task_heads
from train.splits import Segment, SegmentPool, Split, WindowSet

CWRU_10 = ["normal"] + [
    f"{loc}_{s:03d}" for loc in ("inner_race", "outer_race", "ball") for s in (7, 14, 21)
]


def test_parse_class_reads_location_and_size():
    assert parse_class("normal") == {"detection": "normal", "location": "normal", "size": "none"}
    assert parse_class("outer_race_014") == {
        "detection": "fault",
        "location": "outer_race",
        "size": "014",
    }
    assert parse_class("ball")["size"] is None


def test_ten_classes_give_three_tasks_and_four_classes_only_detection():
    ten = TaskTargets.from_class_names(CWRU_10)
    assert ten.names == {
        "detection": ["normal", "fault"],
        "location": ["normal", "ball", "inner_race", "outer_race"],
        "size": ["none", "007", "014", "021"],
    }
    assert ten.maps["size"].tolist() == [0, 1, 2, 3, 1, 2, 3, 1, 2, 3]
    four = TaskTargets.from_class_names(["normal", "inner_race", "outer_race", "ball"])
    assert list(four.names) == ["detection"]  # location repeats the flat labels; no sizes
    assert not TaskTargets.from_class_names(["a", "b"]).names.get("location")


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["inner_race", "outer_race", "ball"]), st.none() | st.integers(1, 40)
        ),
        min_size=1,
        max_size=8,
        unique=True,
    )
)
def test_task_maps_are_in_range_and_unknown_only_where_size_is_missing(faults):
    names = ["normal"] + [loc if s is None else f"{loc}_{s:03d}" for loc, s in faults]
    targets = TaskTargets.from_class_names(names)
    for task, table in targets.maps.items():
        assert len(table) == len(names)
        assert table.max() < len(targets.names[task]) and table.min() >= UNKNOWN
        if task != "size":
            assert (table != UNKNOWN).all()
    if "size" in targets.maps:
        unknown = targets.maps["size"] == UNKNOWN
        assert unknown.tolist() == [False] + [s is None for _, s in faults]


def test_task_loss_ignores_unknown_sizes():
    targets = TaskTargets.from_class_names(["normal", "ball", "ball_007", "ball_021"])
    assert targets.maps["size"].tolist() == [0, UNKNOWN, 1, 2]
    head = MultiTaskHead(8, 4, {t: len(n) for t, n in targets.names.items()}, dropout=0.0)
    features = torch.randn(2, 8, requires_grad=True)
    task_loss(head, targets, features, torch.tensor([1, 1])).backward()  # sizes unknown
    assert (
        head.heads["size"].fc2.weight.grad is None or not head.heads["size"].fc2.weight.grad.any()
    )
    assert head.heads["detection"].fc2.weight.grad.abs().sum() > 0


def test_marginal_probabilities_sum_the_flat_classes():
    targets = TaskTargets.from_class_names(CWRU_10)
    flat = np.random.default_rng(0).dirichlet(np.ones(10), size=5)
    detection = marginal_probabilities(flat, targets, "detection")
    np.testing.assert_allclose(detection[:, 0], flat[:, 0])
    np.testing.assert_allclose(detection.sum(1), 1.0)


def _tone_windows(n_per_class: int, n_classes: int, window: int, seed: int) -> WindowSet:
    """Class c is a tone at bin 4 + 6c plus noise: separable for a tiny CNN."""
    rng = np.random.default_rng(seed)
    t = np.arange(window) / window
    x, y = [], []
    for c in range(n_classes):
        for _ in range(n_per_class):
            phase = rng.uniform(0, 2 * np.pi)
            sig = np.sin(2 * np.pi * (4 + 6 * c) * t + phase) + 0.3 * rng.standard_normal(window)
            x.append(((sig - sig.mean()) / sig.std()).astype(np.float32)[None])
            y.append(c)
    return WindowSet(np.stack(x), np.array(y, np.int64), ["synthetic"] * len(y))


@pytest.fixture(scope="module")
def multi_head_model():
    torch.manual_seed(0)
    window, classes = 256, CWRU_10
    labeled = _tone_windows(8, len(classes), window, 1)
    pool = SegmentPool(
        [Segment("pool", _tone_windows(6, len(classes), window, 2).x.reshape(-1), -1, 0)],
        window,
        window,
        "zscore",
    )
    split = Split(
        classes, labeled, _tone_windows(4, 10, window, 3), _tone_windows(6, 10, window, 4), pool, {}
    )
    cfg = load_config(
        None,
        [
            "window=256",
            "hop=128",
            "embedding_dim=16",
            "width=0.5",
            "multi_head=true",
            "propagate_labels=false",
            "probe_epochs=25",
            "finetune_epochs=5",
            "dropout=0.0",
        ],
    )
    encoder = build_encoder("cnn", embedding_dim=16, width=0.5)
    return finetune(cfg, split, encoder, show_progress=False), split


def test_finetune_trains_task_heads_and_reports_each_task(multi_head_model):
    model, split = multi_head_model
    metrics = evaluate(model, split, 0.7)
    assert set(metrics["tasks"]) == {"detection", "location", "size"}
    for task in ("detection", "location", "size"):
        assert metrics["tasks"][task]["head"]["accuracy"] > 0.8, task
        assert metrics["tasks"][task]["from_flat_head"]["n"] == len(split.test)


def test_saved_task_heads_reproduce_torch_probabilities(multi_head_model):
    from edge_agent.pipeline.head import Head

    model, split = multi_head_model
    saved = task_heads(model)
    emb = model.embed(split.test.x)
    torch_probs = model.task_probabilities(split.test.x)
    for task, entry in saved.items():
        head = Head(**{k: np.asarray(v) for k, v in entry["head"].items()})
        np.testing.assert_allclose(head.probabilities(emb), torch_probs[task], atol=1e-5)
        assert entry["classes"] == model.task_targets.names[task]
