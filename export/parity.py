"""Parity of exported encoders with the FP32 torch encoder, on held-out windows, and its gate.

Every model's embeddings go through the checkpoint's numpy head (the same head the device runs)
to class decisions, fused with the physics view and the spectral template when the bundle carries
them, as on the device. Per model: top-1 agreement with the FP32 decisions, accuracy, accuracy drop
in percentage points, the mean cosine similarity of embeddings and the embedding error relative
to the spread of the FP32 embeddings (cosine stays near 1 when embeddings share a large common
offset; the relative error does not).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from rich.table import Table

from edge_agent.pipeline.head import Head

if TYPE_CHECKING:
    import torch

DEFAULT_MIN_AGREEMENT = 0.99
DEFAULT_MAX_ACCURACY_DROP_POINTS = 1.0


class ModelParity(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    format: str
    accuracy: float = Field(ge=0, le=1)
    agreement: float = Field(ge=0, le=1, description="Top-1 decisions equal to FP32's.")
    accuracy_drop_points: float = Field(description="(FP32 - this) accuracy x 100; > 0 is worse.")
    cosine_mean: float = Field(description="Mean cosine similarity with FP32 embeddings.")
    relative_error: float = Field(
        ge=0, description="||emb - fp32|| / ||fp32 - mean(fp32)||: error vs the embeddings' spread."
    )


class ParityReport(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    windows: int = Field(ge=1)
    reference: str = "torch fp32"
    reference_accuracy: float = Field(ge=0, le=1)
    models: list[ModelParity] = []


def embed_torch(encoder: torch.nn.Module, windows: np.ndarray, batch: int = 256) -> np.ndarray:
    """(N, 1, W) float32 -> (N, D) float32 with the encoder in eval mode, on CPU."""
    import torch  # here, so the CLI can show --help and parse options without torch

    encoder = encoder.eval()
    x = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32))
    with torch.no_grad():
        chunks = [encoder(x[i : i + batch]).cpu().numpy() for i in range(0, len(x), batch)]
    return np.concatenate(chunks).astype(np.float32, copy=False)


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of (N, D) arrays -> (N,); a zero row has similarity 0."""
    num = (a * b).sum(axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)


Fusion = Callable[[np.ndarray], np.ndarray]  # the head's probabilities -> the fused ones


def decisions(head: Head, emb: np.ndarray, fuse: Fusion | None) -> np.ndarray:
    """Class index per window: the head's, or with the bundle's views (physics, spectral
    template) the fused one, as the device decides."""
    probs = head.probabilities(emb)
    return (probs if fuse is None else fuse(probs)).argmax(axis=1)


def compare(
    reference: np.ndarray,
    candidates: dict[str, np.ndarray],
    head: Head,
    labels: np.ndarray,
    fuse: Fusion | None = None,
) -> ParityReport:
    """Compare candidate embeddings (format -> (N, D)) with the FP32 reference (N, D).

    labels: (N,) int class indices into the head's outputs. fuse: what the device does to the
    head's probabilities of these windows when the bundle carries views to fuse (they do not
    depend on the encoder, so every format gets the same); decisions are then the fused ones.
    """
    labels = np.asarray(labels)
    if reference.shape[0] != labels.shape[0]:
        raise ValueError(f"{reference.shape[0]} embeddings but {labels.shape[0]} labels")
    spread = float(np.linalg.norm(reference - reference.mean(axis=0)))
    ref_pred = decisions(head, reference, fuse)
    ref_acc = float((ref_pred == labels).mean())
    models = []
    for name, emb in candidates.items():
        if emb.shape != reference.shape:
            raise ValueError(f"{name}: embeddings {emb.shape}, reference {reference.shape}")
        pred = decisions(head, emb, fuse)
        acc = float((pred == labels).mean())
        models.append(
            ModelParity(
                format=name,
                accuracy=acc,
                agreement=float((pred == ref_pred).mean()),
                accuracy_drop_points=round((ref_acc - acc) * 100, 6),
                cosine_mean=float(cosine_similarity(emb, reference).mean()),
                relative_error=float(np.linalg.norm(emb - reference)) / max(spread, 1e-12),
            )
        )
    return ParityReport(windows=len(labels), reference_accuracy=ref_acc, models=models)


def gate(
    report: ParityReport,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    max_accuracy_drop_points: float = DEFAULT_MAX_ACCURACY_DROP_POINTS,
) -> list[str]:
    """One line per model x threshold that fails; an empty list means the gate passes."""
    failures = []
    for m in report.models:
        if m.agreement < min_agreement:
            failures.append(
                f"{m.format}: agreement with fp32 {m.agreement:.1%} < {min_agreement:.1%} "
                "(--min-agreement)"
            )
        if m.accuracy_drop_points > max_accuracy_drop_points:
            failures.append(
                f"{m.format}: accuracy drop {m.accuracy_drop_points:.2f} points > "
                f"{max_accuracy_drop_points:.2f} (--max-accuracy-drop)"
            )
    return failures


def parity_table(
    report: ParityReport,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    max_accuracy_drop_points: float = DEFAULT_MAX_ACCURACY_DROP_POINTS,
) -> Table:
    """The report as a rich table, one row per model, failing cells in red."""
    table = Table(title=f"Parity with {report.reference} on {report.windows} held-out windows")
    columns = ("model", "accuracy", "agreement", "acc. drop (pts)", "cosine", "rel. err", "gate")
    for column in columns:
        table.add_column(column, justify="left" if column == "model" else "right")
    table.add_row(report.reference, f"{report.reference_accuracy:.1%}", "-", "-", "-", "-", "-")
    for m in report.models:
        agree_ok = m.agreement >= min_agreement
        drop_ok = m.accuracy_drop_points <= max_accuracy_drop_points
        table.add_row(
            m.format,
            f"{m.accuracy:.1%}",
            f"{m.agreement:.1%}" if agree_ok else f"[red]{m.agreement:.1%}[/red]",
            f"{m.accuracy_drop_points:+.2f}"
            if drop_ok
            else f"[red]{m.accuracy_drop_points:+.2f}[/red]",
            f"{m.cosine_mean:.4f}",
            f"{m.relative_error:.3f}",
            "[green]pass[/green]" if agree_ok and drop_ok else "[red]FAIL[/red]",
        )
    return table
