"""The pretraining monitor: it rewards an embedding that recognizes a class across recordings,
not one that recognizes the recording, and pretraining keeps the epoch it scored best."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import train.monitor as monitor
from train.config import load_config
from train.data import build_split
from train.loop import embed, pretrain
from train.monitor import EpochSelector, record_knn_score
from train.splits import WindowSet

CLASSES, RECORDS_PER_CLASS, WINDOWS = 4, 3, 6


def labeled_windows(by: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Windows of 4 classes x 3 recordings, each embedded near its class's centre (`by` class)
    or near its own recording's random centre (`by` record: the embedding memorized recordings)."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(CLASSES), RECORDS_PER_CLASS * WINDOWS)
    records = [f"c{c}-r{r}" for c in range(CLASSES) for r in range(RECORDS_PER_CLASS)]
    records = [name for name in records for _ in range(WINDOWS)]
    centres = {key: rng.normal(size=32) for key in [*range(CLASSES), *sorted(set(records))]}
    z = np.stack([centres[c if by == "class" else rec] for c, rec in zip(y, records, strict=True)])
    return z + 0.05 * rng.normal(size=z.shape), y, records


def test_an_embedding_of_the_class_scores_full_marks() -> None:
    assert record_knn_score(*labeled_windows("class")) == 1.0


def test_an_embedding_of_the_recording_scores_low() -> None:
    # every window's nearest neighbours are its own recording, which the score leaves out
    scores = [record_knn_score(*labeled_windows("record", seed)) for seed in range(5)]
    assert max(scores) < 0.6


def test_classes_from_one_recording_vote_but_are_not_scored() -> None:
    z, y, records = labeled_windows("class")
    single = ["c0-only" if label == 0 else rec for label, rec in zip(y, records, strict=True)]
    z[y == 0] = z[y == 1][: int((y == 0).sum())]  # class 0 now sits on class 1's windows
    # class 1's windows find class 0 (from another recording) among their neighbours; class 0
    # itself is not scored
    score = record_knn_score(z, y, single)
    assert score is not None and score < 1.0
    assert record_knn_score(z, y, [f"c{label}" for label in y]) is None


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 30),
    dims=st.integers(1, 8),
    n_classes=st.integers(1, 4),
    n_records=st.integers(1, 6),
    seed=st.integers(0, 2**16),
)
def test_the_score_is_a_rate_or_none_for_any_labeled_set(n, dims, n_classes, n_records, seed):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, dims))
    y = rng.integers(0, n_classes, n)
    records = [f"r{i}" for i in rng.integers(0, n_records, n)]
    score = record_knn_score(z, y, records)
    assert score is None or 0.0 <= score <= 1.0


def test_rows_labels_and_records_must_match() -> None:
    with pytest.raises(ValueError, match="one label and record per row"):
        record_knn_score(np.zeros((3, 2)), np.zeros(3, int), ["a", "b"])


def test_the_selector_keeps_the_best_epoch_and_stops_after_patience() -> None:
    good, y, records = labeled_windows("class")
    bad, _, _ = labeled_windows("record")
    encoder = nn.Linear(2, 2)
    selector = EpochSelector(y, records, patience=2)
    states = []
    for epoch, z in enumerate([bad, good, bad, bad], start=1):
        with torch.no_grad():
            encoder.weight.fill_(epoch)
        states.append(encoder.weight.clone())
        stop = selector.update(epoch, z, encoder)
        assert stop == (epoch == 4)
    assert selector.best_epoch == 2 and selector.best_score == 1.0
    assert torch.equal(selector.best_state["weight"], states[1])
    assert len(selector.scores) == 4


TINY = {
    "data": "sim-reference",
    "labels_per_class": 4,
    "unlabeled_windows": 60,
    "sim_seconds_per_record": 1.0,
    "window": 512,
    "hop": 256,
    "width": 0.25,
    "embedding_dim": 16,
    "projection_dims": [32, 16],
    "batch_size": 16,
    "steps_per_epoch": 2,
    "epochs": 10,
    "monitor_patience": 2,
}


def test_pretraining_returns_the_kept_epoch_and_stops_early(tmp_path, monkeypatch) -> None:
    cfg = load_config(None, None, **TINY)
    split = build_split(cfg)
    seen: list[np.ndarray] = []
    scripted = iter([0.2, 0.9, 0.3, 0.3, 0.3, 0.3])

    def score(z, y, records):
        seen.append(z.copy())
        return next(scripted)

    monkeypatch.setattr(monitor, "record_knn_score", score)
    checkpoint = tmp_path / "pretrained.pt"
    result = pretrain(cfg, split, checkpoint=checkpoint, show_progress=False)
    assert len(seen) == 4 and len(result.history) == 4 * cfg.steps_per_epoch  # 2 + patience
    assert result.selection["best_epoch"] == 2 and result.selection["scores"][1] == 0.9
    watched = WindowSet.concat([split.labeled, split.val], cfg.window)
    kept = embed(result.encoder, watched.x)
    assert np.allclose(kept, seen[1], atol=1e-5) and not np.allclose(kept, seen[3], atol=1e-5)
    saved = torch.load(checkpoint, weights_only=False)
    assert saved["stopped_early"] and saved["selection"]["best_epoch"] == 2
    for name, tensor in saved["encoder_state"].items():
        assert torch.equal(tensor, result.encoder.state_dict()[name])
    last = saved["last_encoder_state"]  # what a resumed run would continue from
    assert any(not torch.equal(last[k], v) for k, v in saved["encoder_state"].items())
    resumed = pretrain(cfg, split, checkpoint=checkpoint, resume=True, show_progress=False)
    assert len(resumed.history) == len(result.history)  # the monitor had stopped it: no more
    assert np.allclose(embed(resumed.encoder, watched.x), seen[1], atol=1e-5)


def test_without_the_monitor_pretraining_runs_every_epoch() -> None:
    cfg = load_config(None, None, **{**TINY, "epochs": 3, "pretrain_monitor": False})
    result = pretrain(cfg, build_split(cfg), show_progress=False)
    assert len(result.history) == 3 * cfg.steps_per_epoch and result.selection == {}
