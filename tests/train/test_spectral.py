"""The spectral template (a linear model of the ranked shape of the labeled windows' log spectra):
as a baseline it names a resonance at gains it never saw; in the recipe it is fused only where
the unlabeled pool looks like the labeled machine, and the fused model decides as the template
and model together."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.signal import butter, sosfilt

from edge_agent.physics.pool import kth_neighbour_distance
from edge_agent.physics.spectral import BOTH, ranked_bands
from edge_agent.pipeline.head import softmax
from train.config import load_config
from train.spectral import domain_gap, fit_spectral, spectral_template
from train.splits import Segment, SegmentPool, Split, WindowSet

FS, W = 12_000, 2048
MACHINES = {  # one structural resonance per class on each machine
    "lab": (900.0, 2300.0, 4100.0),
    "other": (3200.0, 700.0, 5200.0),
}


def resonance_signal(
    machine: str, label: int, samples: int, rng: np.random.Generator
) -> np.ndarray:
    """Noise ringing in the class's resonance band (600 Hz wide) over a white floor."""
    centre = MACHINES[machine][label]
    sos = butter(2, [centre - 300, centre + 300], "bandpass", fs=FS, output="sos")
    ringing = sosfilt(sos, rng.standard_normal(samples + 512))[512:]
    return (ringing / ringing.std() + 0.3 * rng.standard_normal(samples)).astype(np.float32)


def resonance_windows(label: int, n: int, rng: np.random.Generator, machine="lab") -> np.ndarray:
    """n windows of class `label` with random gain and offset."""
    x = np.stack([resonance_signal(machine, label, W, rng) for _ in range(n)])
    return (rng.uniform(0.2, 5.0, (n, 1)) * x + rng.normal(0, 1, (n, 1))).astype(np.float32)


def toy_split(per_class: int, seed: int, classes: int = 3, pool_machine: str = "lab") -> Split:
    """Labeled windows of the first `classes` classes of the lab machine; validation and test of
    all three; an unlabeled pool of every class on `pool_machine`."""
    rng = np.random.default_rng(seed)

    def windows(n: int, which: range) -> WindowSet:
        x = np.concatenate([resonance_windows(c, n, rng) for c in which])
        y = np.repeat(np.array(list(which)), n)
        return WindowSet(x[:, None, :], y.astype(np.int64))

    segments = [
        Segment(f"pool-{c}", resonance_signal(pool_machine, c, 40 * W, rng), -1, 0)
        for c in range(3)
    ]
    return Split(
        ["normal", "inner_race", "outer_race"],
        windows(per_class, range(classes)),
        windows(4, range(3)),
        windows(30, range(3)),
        pool=SegmentPool(segments, W, W, "zscore"),
        description={},
    )


def test_the_template_names_the_resonance_at_gains_it_never_saw() -> None:
    split = toy_split(per_class=5, seed=1)
    probs = spectral_template(load_config(None, ["seed=1"]), split).alone(split.test.x)
    assert probs.shape == (90, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    assert (probs.argmax(axis=1) == split.test.y).mean() == 1.0


def test_a_class_without_labels_gets_no_probability() -> None:
    split = toy_split(per_class=5, seed=2, classes=2)  # no labeled window of class 2
    probs = spectral_template(load_config(None, []), split).alone(split.test.x)
    assert probs.shape == (90, 3) and probs[:, 2].max() < 1e-6
    known = split.test.y < 2
    assert probs[known].argmax(axis=1).tolist() == split.test.y[known].tolist()
    with pytest.raises(ValueError, match="two classes"):
        spectral_template(load_config(None, []), toy_split(per_class=5, seed=3, classes=1))


def test_the_domain_gap_tells_another_machine_from_more_of_the_same() -> None:
    rng = np.random.default_rng(4)
    from edge_agent.physics.spectral import log_spectrum

    lab = log_spectrum(np.concatenate([resonance_windows(c, 20, rng) for c in range(3)]))
    same = log_spectrum(np.concatenate([resonance_windows(c, 40, rng) for c in range(3)]))
    other = log_spectrum(
        np.concatenate([resonance_windows(c, 40, rng, machine="other") for c in range(3)])
    )
    assert domain_gap(lab, same, seed=0) < 0.75
    assert domain_gap(lab, other, seed=0) > 0.95
    assert domain_gap(lab[:3], other, seed=0) is None  # too few to cross-validate


def wrong_and_sure(split: Split) -> tuple[np.ndarray, np.ndarray]:
    """Model probabilities that call every class the next one, at 0.9: a model that learned
    its training records and not the fault."""

    def probs(ws: WindowSet) -> np.ndarray:
        p = np.full((len(ws), 3), 0.05)
        p[np.arange(len(ws)), (ws.y + 1) % 3] = 0.9
        return p

    return probs(split.val), probs(split.test)


@pytest.mark.parametrize("model_weight", [0.0, 0.25])
def test_on_the_labeled_machine_the_template_is_fused_and_outvotes_a_wrong_model(
    model_weight,
) -> None:
    split = toy_split(per_class=8, seed=5)
    cfg = load_config(None, ["seed=5", f"spectral_model_weight={model_weight}"])
    val_probs, test_probs = wrong_and_sure(split)
    head, report = fit_spectral(cfg, split, val_probs, floor=0.5)
    assert head is not None and report["used"], report
    assert report["domain_gap"] < cfg.spectral_max_domain_gap
    assert head.model_weight == model_weight
    assert head.features == BOTH and set(report["pool_labels"]) == {"plain", "ranked"}
    for gained in report["pool_labels"].values():  # each view labels pool windows for itself
        assert 0 < sum(gained.values()) <= 3 * cfg.spectral_pool_labels
    fused = head.fuse(test_probs, split.test.x)
    assert (fused.argmax(axis=1) == split.test.y).mean() == 1.0
    uniform = np.full_like(test_probs, 1 / 3)  # and with an undecided model it is the template
    np.testing.assert_allclose(head.fuse(uniform, split.test.x), head.alone(split.test.x))


def sure_and_wrong(ws: WindowSet) -> np.ndarray:
    """A model that gives the true class 1e-9 on every window and the next class the rest."""
    p = np.full((len(ws), 3), 1e-9)
    p[np.arange(len(ws)), (ws.y + 1) % 3] = 1 - 2e-9
    return p


def test_the_default_fusion_bounds_a_model_sure_and_wrong_on_every_window() -> None:
    """At the default weight and floor the model moves the template's logits by at most
    0.25 * ln 1e3 = 1.7 nats and the template's call stands; unbounded at full weight, its
    ln 1e-9 = -20.7 nats outvote it."""
    split = toy_split(per_class=8, seed=5)
    cfg = load_config(None, ["seed=5"])
    assert (cfg.spectral_model_weight, cfg.spectral_model_floor) == (0.25, 1e-3)
    head, report = fit_spectral(cfg, split, sure_and_wrong(split.val), floor=0.5)
    assert head is not None and (head.model_weight, head.model_floor) == (0.25, 1e-3), report
    assert report["model_floor"] == 1e-3 and report["val_near_pool"] > 0.9
    test_probs = sure_and_wrong(split.test)
    assert head.near_pool(head.spectra(split.test.x)).mean() > 0.9  # the model votes here
    assert (head.fuse(test_probs, split.test.x).argmax(axis=1) == split.test.y).mean() == 1.0
    unbounded = replace(head, model_floor=1e-12, model_weight=1.0)
    assert (unbounded.fuse(test_probs, split.test.x).argmax(axis=1) == split.test.y).mean() == 0.0


def test_the_pool_gate_admits_the_pools_machine_and_not_another() -> None:
    from edge_agent.physics.spectral import log_spectrum
    from train.spectral import GATE_NEIGHBOURS, GATE_QUANTILE, fit_pool_gate

    rng = np.random.default_rng(10)
    pool = log_spectrum(np.concatenate([resonance_windows(c, 150, rng) for c in range(3)]))
    gate = fit_pool_gate(pool)
    assert gate is not None and gate.components.shape == (20, 512)
    assert gate.points.shape == (450, 20) and gate.neighbours == GATE_NEIGHBOURS
    own = kth_neighbour_distance(gate.points, gate.points, gate.neighbours, leave_self_out=True)
    assert (own <= gate.radius).mean() == pytest.approx(GATE_QUANTILE, abs=0.005)
    more = log_spectrum(np.concatenate([resonance_windows(c, 30, rng) for c in range(3)]))
    assert gate.near(more).mean() > 0.9
    between = resonance_windows(0, 30, rng, machine="other")  # 3.2 kHz: 0.9 kHz from any
    assert not gate.near(log_spectrum(between)).any()
    small = fit_pool_gate(pool[:4])  # fewer windows than components and neighbours
    assert small is not None and small.components.shape == (3, 512) and small.neighbours == 3
    assert fit_pool_gate(pool[:2]) is None


def test_off_the_pool_the_template_decides_alone_whatever_the_model() -> None:
    split = toy_split(per_class=8, seed=11)
    head, report = fit_spectral(
        load_config(None, ["seed=11"]), split, wrong_and_sure(split)[0], 0.5
    )
    assert head is not None and head.pool is not None, report
    rng = np.random.default_rng(11)
    other = resonance_windows(0, 30, rng, machine="other")  # 3.2 kHz: none of the lab's
    assert not head.near_pool(head.spectra(other)).any()
    alone = softmax(head.logits(other) / head.alone_temperature)
    for model in (
        sure_and_wrong(WindowSet(other, np.zeros(30, np.int64))),
        np.eye(3)[[0] * 30],
    ):
        np.testing.assert_allclose(head.fuse(model, other), alone)
    ungated = load_config(None, ["seed=11", "spectral_pool_gate=false"])
    everywhere, _ = fit_spectral(ungated, split, wrong_and_sure(split)[0], 0.5)
    assert everywhere is not None and everywhere.pool is None
    assert not np.allclose(everywhere.fuse(np.eye(3)[[0] * 30], other), alone)


def test_a_pool_of_other_machines_keeps_the_template_out() -> None:
    split = toy_split(per_class=8, seed=6, pool_machine="other")
    cfg = load_config(None, ["seed=6"])
    head, report = fit_spectral(cfg, split, wrong_and_sure(split)[0], floor=0.5)
    assert head is None and not report["used"]
    assert report["domain_gap"] > cfg.spectral_max_domain_gap
    assert "other machines" in report["reason"]


def test_the_template_stays_out_when_switched_off_or_a_class_has_no_labels() -> None:
    split = toy_split(per_class=8, seed=7)
    off = load_config(None, ["spectral=false"])
    val_probs = wrong_and_sure(split)[0]
    assert "spectral = false" in fit_spectral(off, split, val_probs, 0.5)[1]["reason"]
    empty = toy_split(per_class=8, seed=7)
    empty.pool = []  # no unlabeled windows at all: no gap to measure, no crash
    assert "fewer than" in fit_spectral(load_config(None, []), empty, val_probs, 0.5)[1]["reason"]
    partial = toy_split(per_class=8, seed=7, classes=2)
    reason = fit_spectral(load_config(None, []), partial, val_probs, 0.5)[1]["reason"]
    assert "not every class" in reason


def test_the_template_labels_the_pool_windows_it_is_sure_of_and_refits_on_them() -> None:
    from edge_agent.physics.spectral import spectral_view
    from train.spectral import POOL_LABEL_CONFIDENCE, fit_template, self_trained_template

    rng = np.random.default_rng(8)
    labeled = spectral_view(np.concatenate([resonance_windows(c, 4, rng) for c in range(3)]))
    y = np.repeat(np.arange(3), 4)
    truth = np.repeat(np.arange(3), 30)
    pool = spectral_view(np.concatenate([resonance_windows(c, 30, rng) for c in range(3)]))
    plain = fit_template(labeled, y, 3, seed=0)
    refit, added = self_trained_template(labeled, y, pool, 3, seed=0, per_class=10)
    assert added == {0: 10, 1: 10, 2: 10}  # capped per class; every pool window here is clear
    assert not np.array_equal(refit.weights, plain.weights)
    assert (refit.view_logits(pool).argmax(axis=1) == truth).all()
    same, none = self_trained_template(labeled, y, pool, 3, seed=0, per_class=0)
    np.testing.assert_array_equal(same.weights, plain.weights)
    assert none == {}
    # a pool of noise: nothing reaches the confidence, nothing is added
    noise = spectral_view(rng.standard_normal((40, W)))
    probs = np.exp(plain.view_logits(noise))
    probs /= probs.sum(axis=1, keepdims=True)
    unsure = self_trained_template(
        labeled, y, noise[probs.max(1) < POOL_LABEL_CONFIDENCE], 3, 0, 10
    )
    assert unsure[1] == {}


def test_the_paired_template_is_the_geometric_mean_of_its_two_templates() -> None:
    from edge_agent.pipeline.head import softmax
    from train.spectral import fit_template, paired_template

    rng = np.random.default_rng(4)
    level = rng.standard_normal((30, 64)).astype(np.float32)
    y = np.arange(30) % 3
    for i, c in enumerate(y):  # each class lifts its own stretch of bands
        level[i, 20 * c : 20 * c + 12] += 3.0
    head, added = paired_template(level, y, level[:0], 3, seed=0, per_class=0)
    assert head.features == BOTH and head.bands == 64 and added == {"plain": {}, "ranked": {}}
    p1 = softmax(fit_template(level, y, 3, 0).view_logits(level))
    ranked = ranked_bands(level)
    p2 = softmax(fit_template(ranked, y, 3, 0).view_logits(ranked))
    expected = np.sqrt(p1 * p2)
    got = softmax(head.view_logits(np.hstack([level, ranked])))
    np.testing.assert_allclose(got, expected / expected.sum(1, keepdims=True), atol=1e-9)
    assert (got.argmax(1) == y).all()


def line_split() -> Split:
    """A healthy, an inner-race and an outer-race simulated bearing (severity 0.6, one record
    each): the first windows labeled, then validation, test and the pool (the rest)."""
    from edge_agent.physics.bearing_sim import Conditions, simulate

    faults, speed = ["normal", "inner_race", "outer_race"], 1797.0 / 60
    records = [simulate(Conditions(fault=f, severity=0.6), 40 * W / FS, FS, seed=9) for f in faults]

    def windows(first: int, n: int) -> WindowSet:
        x = np.concatenate([r[first * W : (first + n) * W].reshape(n, 1, W) for r in records])
        return WindowSet(x, np.repeat(np.arange(3), n), [], np.full(3 * n, speed))

    pool = [
        Segment(f, r[10 * W :], c, 10 * W, speed)
        for c, (f, r) in enumerate(zip(faults, records, strict=True))
    ]
    return Split(
        faults, windows(0, 4), windows(4, 3), windows(7, 3), SegmentPool(pool, W, W, "zscore"), {}
    )


def test_pool_windows_with_a_clear_defect_line_join_the_labels() -> None:
    split = line_split()
    val_probs = np.full((len(split.val), 3), 1 / 3)
    cfg = load_config(None, ["seed=9", "spectral_envelope_labels=12"])
    head, report = fit_spectral(cfg, split, val_probs, floor=0.5)
    assert head is not None and report["used"], report
    assert report["envelope_labels"] == {"inner_race": 12, "outer_race": 12}
    off = load_config(None, ["seed=9", "spectral_envelope_labels=0"])
    assert fit_spectral(off, split, val_probs, floor=0.5)[1]["envelope_labels"] == {}


def named_by_record(split: Split, names: dict[str, str]) -> np.ndarray:
    """A sure model's probabilities of the pool windows (`pool_windows`) that names each
    record's windows `names[record]` (the record's own class where not given)."""
    from train.spectral import pool_windows

    named = [split.class_names.index(names.get(r, r)) for r in pool_windows(split).record_ids]
    return np.eye(3)[named] * 0.97 + 0.01


SWAPPED = {"inner_race": "outer_race", "outer_race": "inner_race"}
MISNAMED = ["normal", "outer_race", "inner_race"]  # labels that call each race the other


@pytest.mark.parametrize(
    ("class_names", "names", "referee", "weight"),
    [
        (None, SWAPPED, True, 0.0),  # the model wrong: the lines side with the template
        (None, SWAPPED, False, 0.25),  # no referee: the model always votes, bounded
        (MISNAMED, {}, True, 0.5),  # the template wrong: the lines vouch for the model
        (None, {}, True, 0.0),  # both right: the lines never side with the model beyond chance
    ],
)
def test_the_model_votes_only_where_the_pools_defect_lines_side_with_it(
    class_names, names, referee, weight
) -> None:
    """The model names each pool record's windows `names[record]` (its own class where not
    given); where it and the template disagree, the windows' defect lines name the true race."""
    split = line_split()
    if class_names:
        split = replace(split, class_names=class_names)
    cfg = load_config(
        None, ["seed=9", "spectral_envelope_labels=0", f"spectral_line_referee={referee}"]
    )
    val_probs = np.full((len(split.val), 3), 1 / 3)
    pool_probs = named_by_record(split, names)
    head, report = fit_spectral(cfg, split, val_probs, 0.5, model_pool_probs=pool_probs)
    assert head is not None and report["used"], report
    assert head.model_weight == report["model_weight"] == weight
    votes = weight > 0
    vote = report["vote"]
    if names or class_names:  # 60 of the 90 pool windows named differently by the two
        assert vote["agreement"] == pytest.approx(1 / 3, abs=0.05)
    if not referee:
        assert "disagree" not in vote
    elif names or class_names:
        assert vote["disagree"] == round((1 - vote["agreement"]) * len(pool_probs))
        right, wrong = ("model", "template") if class_names else ("template", "model")
        assert vote[f"lines_name_{right}"] >= 0.9 * vote["disagree"]
        assert vote[f"lines_name_{wrong}"] == 0
        assert (vote["p_value"] < 0.05) == votes
    windows = split.test.x
    model = pool_probs[: len(windows)]  # any sure model: moves the fusion only where it votes
    assert np.allclose(head.fuse(model, windows), head.alone(windows)) == (not votes)
    with pytest.raises(ValueError, match="model probabilities for"):
        fit_spectral(cfg, split, val_probs, 0.5, model_pool_probs=pool_probs[1:])


def test_with_classes_by_size_the_referee_has_nothing_to_say_and_the_model_votes() -> None:
    """A line names a location, not a size: the referee stands aside (a model that swaps the
    races still votes, as it would without the referee)."""
    split = replace(line_split(), class_names=["normal", "inner_race_007", "outer_race_007"])
    cfg = load_config(None, ["seed=9", "spectral_envelope_labels=0"])
    sized = {"normal": "normal", "inner_race": "outer_race_007", "outer_race": "inner_race_007"}
    pool_probs = named_by_record(split, sized)
    val_probs = np.full((len(split.val), 3), 1 / 3)
    head, report = fit_spectral(cfg, split, val_probs, 0.5, model_pool_probs=pool_probs)
    assert head is not None and report["line_referee"]
    assert head.model_weight == 0.25
    assert set(report["vote"]) == {"agreement"}


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 400), st.integers(0, 400))
def test_the_sign_test_favours_the_model_only_beyond_chance(model: int, template: int) -> None:
    from train.spectral import lines_favour_model

    p = lines_favour_model(model, template)
    assert 0 < p <= 1
    assert lines_favour_model(model + 1, template) <= p  # more lines for the model: surer
    assert lines_favour_model(model, template + 1) >= p
    if model <= template:  # a tie, or the lines on the template's side: never significant
        assert p >= 0.5
    if model >= 10 and template == 0:
        assert p < 0.001


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(*[st.integers(-1, 2)] * 3), min_size=0, max_size=40))
def test_the_referee_counts_only_windows_the_two_name_differently(rows) -> None:
    from train.spectral import line_referee

    model, template, line = (np.array([r[k] for r in rows], np.int64) for k in range(3))
    votes = line_referee(model, template, line)
    assert votes["disagree"] == int(np.sum(model != template))
    assert votes["lines_name_model"] + votes["lines_name_template"] <= votes["disagree"]
    assert line_referee(template, model, line) == {
        "disagree": votes["disagree"],
        "lines_name_model": votes["lines_name_template"],
        "lines_name_template": votes["lines_name_model"],
    }


def test_the_fine_tune_learns_from_the_pool_records_that_show_a_line() -> None:
    from train.loop import envelope_labeled
    from train.spectral import pool_windows

    split = line_split()
    cfg = load_config(None, ["finetune_envelope_labels=12"])
    found = envelope_labeled(cfg, split, pool_windows(split))
    assert np.bincount(found.y, minlength=3).tolist() == [0, 12, 12]
    assert found.record_ids == [split.class_names[c] for c in found.y]  # each its own record
    assert found.x.shape[1:] == (1, W)


@pytest.mark.parametrize("budget", [0, 12])
def test_the_fine_tune_trains_on_the_labels_and_the_envelope_labels(monkeypatch, budget) -> None:
    import train.loop
    from train.encoder import build_encoder
    from train.runs import evaluate

    trained_on = {}

    def record(cfg, model, data, *, stage, **kwargs) -> None:
        trained_on[stage] = np.bincount(data.y, minlength=3).tolist()

    monkeypatch.setattr(train.loop, "train_classifier", record)
    small = ["embedding_dim=16", "width=0.5", "propagate_labels=false"]
    cfg = load_config(None, [*small, f"finetune_envelope_labels={budget}"])
    encoder = build_encoder("cnn", embedding_dim=16, width=0.5)
    split = line_split()
    model = train.loop.finetune(cfg, split, encoder, show_progress=False)
    assert trained_on["finetune"] == [4, 4 + budget, 4 + budget]
    assert ("probe (pool labels)" in trained_on) == (budget > 0)
    assert 0 <= model.spectral_report["vote"]["agreement"] <= 1  # pool probabilities passed
    reported = evaluate(model, split, 0.7).get("finetune_envelope_labels")
    assert reported == ({"inner_race": budget, "outer_race": budget} if budget else None)


@pytest.mark.parametrize("vouched_labels", [True, False])
def test_where_the_lines_vouch_for_the_model_its_calls_teach_the_template(vouched_labels) -> None:
    """The labels call each race the other, the model names every pool record's windows right
    and their defect lines agree with it: the template learns the model's calls on them. (Every
    line is trusted here: the misnamed labels' own windows show the lines at these levels.)"""
    split = replace(line_split(), class_names=MISNAMED)
    cfg = load_config(
        None,
        [
            "seed=9",
            "spectral_envelope_labels=0",
            f"spectral_vouched_labels={vouched_labels}",
            "spectral_line_evidence=false",
        ],
    )
    val_probs = np.full((len(split.val), 3), 1 / 3)
    pool_probs = named_by_record(split, {})
    head, report = fit_spectral(cfg, split, val_probs, 0.5, model_pool_probs=pool_probs)
    assert head is not None and report["model_weight"] == 0.5, report
    races = split.test.y > 0
    truth = 3 - split.test.y[races]  # the index of each race window's own name in MISNAMED
    named = head.alone(split.test.x[races]).argmax(axis=1)
    if vouched_labels:
        taught = report["vouched_labels"]
        assert set(taught) == {"inner_race", "outer_race"} and min(taught.values()) >= 25
        assert np.mean(named == truth) >= 0.9
    else:
        assert "vouched_labels" not in report
        assert np.mean(named == truth) <= 0.1


def test_a_line_vouches_only_above_the_level_the_other_class_shows_it_at():
    from train.data import machine_geometry
    from train.line_labels import strongest_lines
    from train.spectral import line_thresholds, vouched_windows

    split = line_split()
    geometry = machine_geometry(load_config(None, []))
    known = WindowSet.concat([split.labeled, split.val], W)
    names = split.class_names  # normal, inner_race, outer_race
    assert np.isneginf(np.diag(line_thresholds(known, names, geometry, FS))).all()
    # the inner race's windows also labeled outer race: its line, at their levels, is no evidence
    inner = known.x[known.y == 1]
    mixed = WindowSet(
        np.concatenate([known.x, inner]),
        np.r_[known.y, np.full(len(inner), 2)],
        [],
        np.r_[known.shaft_hz, np.full(len(inner), known.shaft_hz[0])],
    )
    thresholds = line_thresholds(mixed, names, geometry, FS)
    named, level = strongest_lines(mixed, names, geometry, FS)
    shown = (mixed.y == 1) & (named == 1)
    assert shown.any() and thresholds[2, 1] == level[shown].max()
    # one record: the template says outer race, the model and the inner race's line inner race
    model, template, line = np.ones(4, int), np.full(4, 2), np.ones(4, int)
    levels = thresholds[2, 1] + np.array([-1.0, 0.0, 0.5, 3.0])
    chosen = vouched_windows(model, template, line, ["r"] * 4, levels, thresholds)
    np.testing.assert_array_equal(chosen, [2, 3])
    np.testing.assert_array_equal(vouched_windows(model, template, line, ["r"] * 4), range(4))


def test_lines_no_stronger_than_the_labels_show_them_teach_little() -> None:
    """The misnamed labels above with the default rule: their own windows show the other race's
    line, so only pool windows whose line stands above all of theirs teach the template."""
    split = replace(line_split(), class_names=MISNAMED)
    val_probs = np.full((len(split.val), 3), 1 / 3)
    pool_probs = named_by_record(split, {})
    taught = {}
    for evidence in (True, False):
        cfg = load_config(None, ["seed=9", "spectral_envelope_labels=0"])
        cfg = cfg.model_copy(update={"spectral_line_evidence": evidence})
        head, report = fit_spectral(cfg, split, val_probs, 0.5, model_pool_probs=pool_probs)
        assert head is not None and report["model_weight"] == 0.5, report  # the vote stands
        taught[evidence] = sum(report["vouched_labels"].values())
    assert taught[True] <= taught[False] / 4


def test_a_record_whose_lines_name_the_model_in_few_windows_does_not_vouch() -> None:
    """Record "a": the model and the lines name class 1 in 12 of its 16 windows; record "b": the
    lines in 6 of 12; record "c" (a ball record): the lines name the race in 30 of 40 windows,
    the model in 5."""
    from train.spectral import vouched_windows

    model = np.array([1] * 12 + [1] * 12 + [2] * 4 + [1] * 5 + [3] * 35)
    template = np.array([2] * 12 + [3] * 12 + [2] * 4 + [3] * 40)
    line = np.array([1] * 12 + [1, 3] * 6 + [2] * 4 + [1] * 30 + [-1] * 10)
    records = ["a"] * 12 + ["b"] * 12 + ["a"] * 4 + ["c"] * 40
    np.testing.assert_array_equal(vouched_windows(model, template, line, records), np.arange(12))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(*[st.integers(-1, 2)] * 3, st.sampled_from("abc")), max_size=60))
def test_vouched_windows_are_those_of_records_the_model_and_the_lines_name_alike(rows) -> None:
    from train.spectral import vouched_windows

    model, template, line = (np.array([r[k] for r in rows], np.int64) for k in range(3))
    records = np.array([r[3] for r in rows])
    chosen = vouched_windows(model, template, line, list(records))
    for i in range(len(rows)):
        sided = model[i] != template[i] and line[i] == model[i]
        own = records == records[i]
        shown = np.mean(line[own] == model[i]) > 0.5 and np.mean(model[own] == model[i]) > 0.5
        assert (i in chosen) == (sided and shown)
