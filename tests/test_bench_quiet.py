"""Benchmarks print results, not alarms: no collapse warnings on their noise data, no library
load failures from optional kernels."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_throughput_bench_output_is_clean(tmp_path: Path) -> None:
    out = tmp_path / "throughput.json"
    args = ["--batch", "8", "--steps", "2", "--norm", "batch", "--threads", "1", "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "throughput", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "120"},
        timeout=120,
    )
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text
    for alarm in ("COLLAPSE", "Traceback", "Failed to load", "failed to load"):
        assert alarm not in text, text
    assert "views/s" in text and "speed only" in text
    assert out.exists()


def test_torchao_kernel_load_failures_are_filtered_but_other_records_pass() -> None:
    import export.tflite  # noqa: F401  (installs the filters)

    torchao = logging.getLogger("torchao")

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("torchao", logging.WARNING, __file__, 1, message, None, None)

    assert not torchao.filter(record("Failed to load /x/_C_mxfp8.so: Could not load this library"))
    assert torchao.filter(record("a real torchao problem"))
