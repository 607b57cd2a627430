"""A recording: one continuous signal in g with its label and metadata.

Every data source (simulator, CWRU, a plant's own files) yields `Record`s; splits and windows
are made from records by `train.splits`, so no source can leak windows across a split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

UNLABELED = ""


@dataclass
class Record:
    """signal: float32 (T,) acceleration in g at `sample_rate_hz`.

    label: class name ("normal", "inner_race", ...) or "" when unlabeled.
    meta: free-form provenance (rpm, load_hp, fault_size_in, location, file, condition, ...).
    """

    record_id: str
    signal: np.ndarray
    sample_rate_hz: int
    label: str = UNLABELED
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.signal = np.asarray(self.signal, dtype=np.float32)
        if self.signal.ndim != 1:
            raise ValueError(
                f"record {self.record_id}: signal must be 1-D, got {self.signal.shape}"
            )
        if self.sample_rate_hz <= 0:
            raise ValueError(f"record {self.record_id}: sample_rate_hz must be > 0")

    @property
    def duration_s(self) -> float:
        return self.signal.shape[0] / self.sample_rate_hz

    @property
    def shaft_hz(self) -> float:
        """The measured shaft speed (meta rpm / 60), NaN when the record does not carry one."""
        rpm = self.meta.get("rpm")
        if isinstance(rpm, (int, float)) and not isinstance(rpm, bool) and 0 < rpm < float("inf"):
            return float(rpm) / 60.0
        return float("nan")


def resampled(record: Record, rate: int) -> Record:
    """`record` at `rate` (polyphase, edge_agent's `resample`); itself when already there."""
    from edge_agent.contract.preprocess import resample

    if record.sample_rate_hz == rate:
        return record
    signal = resample(record.signal, record.sample_rate_hz, rate)
    return Record(record.record_id, signal, rate, record.label, record.meta)
