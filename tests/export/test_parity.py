from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from edge_agent.pipeline.head import Head, softmax
from export.parity import ModelParity, ParityReport, compare, gate, parity_table


def _identity_head(classes: int = 3) -> Head:
    """A head whose decision is the argmax of the (non-negative) embedding."""
    eye = np.eye(classes, dtype=np.float32)
    return Head(w1=eye, b1=np.zeros(classes, np.float32), w2=eye, b2=np.zeros(classes, np.float32))


def test_compare_counts_agreement_accuracy_drop_and_cosine():
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    reference = np.eye(3, dtype=np.float32)[labels] + 0.1  # FP32: all 10 right
    candidate = reference.copy()
    candidate[:2] = np.eye(3, dtype=np.float32)[[2, 2]] + 0.1  # two decisions flipped
    report = compare(reference, {"same": reference, "int8": candidate}, _identity_head(), labels)
    same, int8 = report.models
    assert report.windows == 10 and report.reference_accuracy == 1.0
    assert (same.agreement, same.accuracy, same.accuracy_drop_points) == (1.0, 1.0, 0.0)
    assert same.cosine_mean == pytest.approx(1.0)
    assert int8.agreement == pytest.approx(0.8)
    assert int8.accuracy == pytest.approx(0.8)
    assert int8.accuracy_drop_points == pytest.approx(20.0)
    assert int8.cosine_mean < 1.0
    assert same.relative_error == 0.0 and int8.relative_error > 0.5


def test_compare_decides_as_the_device_does_with_fused_views():
    """Decisions are the fused ones (here log p + physics logits): a near tie that INT8 flips is
    settled by a clear defect line, and a window of unknown speed (0 logits) keeps the head's."""
    labels = np.array([1, 1, 0])
    reference = np.array([[1.0, 0.9, 0.0], [1.0, 0.9, 0.0], [1.0, 0.0, 0.0]], np.float32)
    candidate = reference.copy()
    candidate[0] = [0.9, 1.0, 0.0]  # INT8 noise flips the first near tie
    physics = np.array([[0.0, 8.0, 0.0], [0.0, 8.0, 0.0], [0.0, 0.0, 0.0]])
    plain = compare(reference, {"int8": candidate}, _identity_head(), labels)

    def fuse(probs: np.ndarray) -> np.ndarray:
        return softmax(np.log(probs) + physics)

    fused = compare(reference, {"int8": candidate}, _identity_head(), labels, fuse)
    assert plain.reference_accuracy == pytest.approx(1 / 3)
    assert plain.models[0].agreement == pytest.approx(2 / 3)
    assert fused.reference_accuracy == 1.0 and fused.models[0].agreement == 1.0


def test_compare_refuses_mismatched_shapes():
    ref = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match="embeddings"):
        compare(ref, {"x": np.ones((4, 2), np.float32)}, _identity_head(), np.zeros(4, int))


def _report(agreement: float, drop: float) -> ParityReport:
    model = ModelParity(
        format="onnx-int8",
        accuracy=0.9,
        agreement=agreement,
        accuracy_drop_points=drop,
        cosine_mean=0.99,
        relative_error=0.1,
    )
    return ParityReport(windows=100, reference_accuracy=0.95, models=[model])


@given(
    agreement=st.floats(0, 1),
    drop=st.floats(-10, 50),
    min_agreement=st.floats(0, 1),
    max_drop=st.floats(0, 10),
)
def test_gate_fails_exactly_when_a_threshold_is_crossed(agreement, drop, min_agreement, max_drop):
    failures = gate(_report(agreement, drop), min_agreement, max_drop)
    assert any("agreement" in f for f in failures) == (agreement < min_agreement)
    assert any("accuracy drop" in f for f in failures) == (drop > max_drop)


def test_gate_message_names_model_value_threshold_and_option():
    assert gate(_report(0.95, 3.0)) == [
        "onnx-int8: agreement with fp32 95.0% < 99.0% (--min-agreement)",
        "onnx-int8: accuracy drop 3.00 points > 1.00 (--max-accuracy-drop)",
    ]


def test_table_marks_the_failing_model():
    console = Console(width=120, record=True)
    console.print(parity_table(_report(0.5, 0.0)))
    text = console.export_text()
    assert "onnx-int8" in text and "FAIL" in text and "50.0%" in text
