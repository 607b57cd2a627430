"""The device's own spectral template: its fit, when calibration keeps it, how it is stored.

Synthetic devices: embeddings that tell the classes apart weakly (the bundle's encoder on a
machine it never saw) and spectral views that tell them apart clearly (a resonance per class).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.calibration import refit
from edge_agent.calibration.device_template import fit_device_template
from edge_agent.calibration.embedding_log import CalibrationSet, calibrate_with_set
from edge_agent.calibration.headstore import CommitMeta, HeadStore
from edge_agent.calibration.refit import balanced_accuracy, calibrate
from edge_agent.physics.spectral import BANDS, TEMPLATE_C
from edge_agent.pipeline.head import Head, softmax
from tests.edge_agent.calibration.conftest import C, D

WORLD = np.random.default_rng(0)
EMB_MEANS = WORLD.normal(0.0, 0.35, (C, D))  # weak: the classes overlap in embedding space
PEAKS = (60, 200, 380)  # each class's resonance band


def device(per_class: int, seed: int, bands: int = BANDS) -> tuple[np.ndarray, ...]:
    """Embeddings (N, D), views (N, bands), labels and times of `per_class` windows a class."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(C), per_class)
    emb = (EMB_MEANS[y] + rng.normal(0.0, 1.0, (len(y), D))).astype(np.float32)
    band = np.arange(bands)
    peaks = np.array(PEAKS) * bands // BANDS
    views = np.exp(-(((band - peaks[y][:, None]) / (bands / 50)) ** 2))
    views = views + rng.normal(0.0, 0.3, views.shape)
    return emb, views.astype(np.float32), y, np.arange(len(y), dtype=np.float64)


def fused(head: Head, emb: np.ndarray, views: np.ndarray) -> np.ndarray:
    """The channel's probabilities: the head's, fused with its device template."""
    probs = head.probabilities(emb)
    t = head.template
    if t is None:
        return probs
    return t.fuse_logits(probs, t.view_logits(views), np.ones(len(views), bool))  # no pool gate


def test_the_fit_is_scikit_learns_balanced_l2_logistic_regression() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(5)
    y = np.repeat(np.arange(C), [6, 14, 25])  # unbalanced: class weights matter
    x = rng.normal(0.0, 1.0, (len(y), 20)) + y[:, None] * rng.normal(0.0, 0.5, 20)
    ours = softmax(fit_device_template(x, y, C).view_logits(x))
    scaled = StandardScaler().fit_transform(x)
    reference = LogisticRegression(C=TEMPLATE_C, class_weight="balanced", max_iter=10_000)
    theirs = reference.fit(scaled, y).predict_proba(scaled)
    np.testing.assert_allclose(ours, theirs, atol=2e-3)


def test_a_class_without_labels_gets_no_probability_and_one_class_is_refused() -> None:
    _, views, y, _ = device(5, seed=1, bands=64)
    two = y < 2
    probs = softmax(fit_device_template(views[two], y[two], C).view_logits(views))
    assert probs[:, 2].max() < 1e-9
    assert (probs[two].argmax(axis=1) == y[two]).all()
    with pytest.raises(ValueError, match="two classes"):
        fit_device_template(views[y == 0], y[y == 0], C)


def test_calibration_keeps_a_template_where_the_views_tell_the_classes_apart(factory) -> None:
    emb, views, y, t = device(8, seed=2)
    alone = calibrate(factory, factory, emb, y, order=t)
    assert not alone.accepted  # the embeddings alone do not tell the classes apart
    result = calibrate(factory, factory, emb, y, views=views, order=t)
    assert result.accepted and result.head.template is not None, result.reason
    assert "device template kept" in result.reason and result.accuracy_after > 0.97
    emb_new, views_new, y_new, _ = device(100, seed=3)
    with_template = balanced_accuracy(y_new, fused(result.head, emb_new, views_new).argmax(1))
    head_alone = balanced_accuracy(y_new, result.head.probabilities(emb_new).argmax(axis=1))
    assert head_alone < 0.8 and with_template > 0.97


def test_a_template_that_predicts_held_out_blocks_worse_is_dropped(factory, monkeypatch) -> None:
    emb, views, y, t = device(8, seed=2)
    emb = emb + 4 * EMB_MEANS[y]  # the head alone is right on every held-out block

    def misleading(views, labels, blocks, n_classes):  # sure of the next class, every block
        return 50.0 * np.eye(n_classes)[(np.asarray(labels) + 1) % n_classes]

    monkeypatch.setattr(refit, "cross_validated_logits", misleading)
    result = calibrate(factory, factory, emb, y, views=views, order=t)
    assert result.accepted and result.head.template is None
    assert "device template dropped: cross-validated 100.0% by the head alone" in result.reason


def test_one_window_per_class_fits_a_template_without_a_check(factory) -> None:
    emb, views, y, t = device(1, seed=4)
    result = calibrate(factory, factory, emb, y, views=views, order=t)
    assert result.accepted and result.head.template is not None
    assert "not cross-validated" in result.reason


def test_windows_without_views_get_no_template_and_say_so(factory) -> None:
    emb, views, y, t = device(8, seed=2)
    views[3] = np.nan  # labeled before views were kept
    result = calibrate(factory, factory, emb, y, views=views, order=t)
    assert result.head.template is None
    assert "1 labeled windows have no spectral view" in result.reason
    with pytest.raises(ValueError, match="one row per window"):
        calibrate(factory, factory, emb, y, views=views[:5], order=t)


def test_a_refit_never_inherits_the_template_of_the_head_it_replaces(factory) -> None:
    emb, views, y, t = device(8, seed=2)
    first = calibrate(factory, factory, emb, y, views=views, order=t)
    assert first.head.template is not None
    clear = emb + 4 * EMB_MEANS[y]  # new windows the refit tells apart, without views
    again = calibrate(first.head, factory, clear, y, order=t)
    assert again.accepted and again.head.template is None


def test_the_template_is_saved_verified_and_rolled_back_with_its_head(factory, tmp_path) -> None:
    emb, views, y, t = device(8, seed=2)
    head = calibrate(factory, factory, emb, y, views=views, order=t).head
    head.save(tmp_path / "head.npz")
    loaded = Head.load(tmp_path / "head.npz")
    np.testing.assert_allclose(fused(loaded, emb, views), fused(head, emb, views), rtol=1e-6)
    store = HeadStore(tmp_path / "heads")
    store.init_from_factory(factory, "1")
    store.commit(head, CommitMeta(n_samples=len(y)))
    stored = HeadStore(tmp_path / "heads").current()[1].template
    assert stored is not None and stored.to_dict() == head.template.to_dict()
    store.rollback()
    assert store.current()[1].template is None


def test_a_saved_template_of_other_features_is_refused_by_name(factory, tmp_path) -> None:
    emb, views, y, t = device(8, seed=2)
    head = calibrate(factory, factory, emb, y, views=views, order=t).head
    arrays = {**head.to_arrays(), "template_features": np.array("mel-v1")}
    np.savez(tmp_path / "head.npz", **arrays)
    with pytest.raises(ValueError, match="mel-v1"):
        Head.load(tmp_path / "head.npz")


def test_the_calibration_set_keeps_views_and_reads_older_sets_without_them(tmp_path) -> None:
    emb, views, y, t = device(4, seed=6)
    path = tmp_path / "calibration_set.npz"
    CalibrationSet(path, "1", ["a", "b", "c"], D).add(emb, t, y, views)
    again = CalibrationSet(path, "1", ["a", "b", "c"], D)
    np.testing.assert_allclose(again.views, views, atol=2e-3)  # float16
    np.savez(
        path, emb=emb, t=t, labels=y, model_version=np.array("1"),
        class_names=np.array(["a", "b", "c"]),
    )  # fmt: skip
    older = CalibrationSet(path, "1", ["a", "b", "c"], D)
    assert len(older) == len(y) and np.isnan(older.views).all()
    older.add(emb[:1], np.array([99.0]), y[:1], views[:1])  # new rows carry theirs
    assert np.isfinite(older.views[-1]).all() and np.isnan(older.views[:-1]).all()


def test_calibrating_with_a_set_commits_the_head_with_its_template(factory, tmp_path) -> None:
    emb, views, y, t = device(8, seed=2)
    store = HeadStore(tmp_path / "heads")
    store.init_from_factory(factory, "1")
    cal_set = CalibrationSet(tmp_path / "set.npz", "1", ["a", "b", "c"], D)
    outcome = calibrate_with_set(store, factory, cal_set, emb, t, y, views)
    assert outcome.result.accepted and "device template kept" in outcome.result.reason
    version, head = store.current()
    assert version == outcome.head_version and head.template is not None


@settings(max_examples=25, deadline=None)
@given(
    per_class=st.lists(st.integers(1, 6), min_size=2, max_size=3),
    bands=st.sampled_from([4, 32]),
    broken=st.sampled_from(["none", "nan", "inf", "flat"]),
    seed=st.integers(0, 100),
)
def test_any_labeled_views_give_a_result_that_says_what_happened_to_the_template(
    factory, per_class, bands, broken, seed
) -> None:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(len(per_class)), per_class)
    emb = rng.normal(0.0, 1.0, (len(y), D)).astype(np.float32)
    views = rng.normal(0.0, 1.0, (len(y), bands))
    if broken == "flat":  # every window alike: nothing to learn, nothing to crash on
        views[:] = 0.0
    elif broken != "none":
        views[rng.integers(len(y)), rng.integers(bands)] = np.nan if broken == "nan" else np.inf
    result = calibrate(factory, factory, emb, y, views=views, order=np.arange(len(y)))
    template = result.head.template
    if broken in ("nan", "inf"):
        assert template is None and "no spectral view" in result.reason
    elif result.accepted:
        assert (template is not None) == bool(
            re.search(r"device template (kept|fitted)", result.reason)
        )
    if template is not None:
        assert np.isfinite(template.view_logits(views)).all()
