"""The synthetic device head the calibration tests refit (test_device_template, test_reach)."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.pipeline.head import Head

D, H, C = 16, 32, 3  # embedding, hidden, classes


@pytest.fixture(scope="module")
def factory() -> Head:
    rng = np.random.default_rng(1)
    w1 = (rng.normal(0.0, 1.0, (D, H)) / np.sqrt(D)).astype(np.float32)
    w2 = rng.normal(0.0, 0.1, (H, C)).astype(np.float32)
    return Head(w1, np.zeros(H, np.float32), w2, np.zeros(C, np.float32))
