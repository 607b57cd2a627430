"""The table of export formats and the one wrapper that runs an exporter and logs the outcome.

Each format points at its row of the device's table (`edge_agent.contract.formats`: bundle file,
manifest `EncoderFile.format`, batch) and adds what only export needs: whether it needs
calibration windows, the CLI options it accepts, an exporter and an embedding runner. Exporters
live in `onnx.py`, `quantize.py` and `tflite.py` and are imported only when a format runs, so
looking names up (the CLI's `--help`, typo messages) stays fast.
"""

from __future__ import annotations

import difflib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edge_agent.contract.bundle import Quantization
from edge_agent.contract.formats import ENCODER_FORMATS, EncoderFormat
from export.errors import ExportError, MissingDependency

logger = logging.getLogger(__name__)


@dataclass
class ExportJob:
    """Everything an exporter may need.

    encoder: the torch encoder in eval mode, (N, 1, window) -> (N, D).
    calibration: (N, 1, window) float32 normalized windows, or None when no format needs them.
    check_windows: (N, 1, window) float32 windows each exporter runs to check its output.
    outputs: format name -> file already written (onnx-int8 reuses the fp32 ONNX).
    """

    encoder: Any
    window: int
    workdir: Path
    calibration: np.ndarray | None = None
    check_windows: np.ndarray | None = None
    calibration_method: str = "minmax"
    outputs: dict[str, Path] = field(default_factory=dict)


@dataclass(frozen=True)
class Exported:
    path: Path
    quantization: Quantization | None = None
    detail: str = ""


@dataclass(frozen=True)
class ExportFormat:
    name: str
    encoder: EncoderFormat  # the device's row: file, manifest format, batch
    needs_calibration: bool
    options: tuple[str, ...]
    requires: tuple[str, ...]
    exporter: Callable[[ExportJob], Exported]
    embed: Callable[[Path, np.ndarray], np.ndarray]
    description: str

    @property
    def file(self) -> str:
        return self.encoder.file

    @property
    def manifest_format(self) -> str:
        return self.encoder.name

    @property
    def batch(self) -> Literal["dynamic", "1"]:
        return self.encoder.manifest_batch


def _export_onnx(job: ExportJob) -> Exported:
    from export.onnx import export_onnx

    path = job.workdir / FORMATS["onnx"].file
    diff = export_onnx(job.encoder, path, job.window, job.check_windows)
    return Exported(path, detail="" if diff is None else f"max |diff| vs torch {diff:.1e}")


def _export_onnx_int8(job: ExportJob) -> Exported:
    from export.quantize import quantize_onnx

    if job.calibration is None:
        raise ExportError("onnx-int8 needs calibration windows (calibration.npz)")
    path = job.workdir / FORMATS["onnx-int8"].file
    quantize_onnx(job.outputs["onnx"], path, job.calibration, job.calibration_method)
    return Exported(
        path, detail=f"{job.calibration_method} calibration, {len(job.calibration)} windows"
    )


def _export_tflite_int8(job: ExportJob) -> Exported:
    from export.tflite import export_tflite_int8

    if job.calibration is None:
        raise ExportError("tflite-int8 needs calibration windows (calibration.npz)")
    path = job.workdir / FORMATS["tflite-int8"].file
    quant = export_tflite_int8(job.encoder, path, job.calibration)
    return Exported(path, quantization=quant, detail=f"{len(job.calibration)} windows, batch 1")


def _embed_onnx(path: Path, windows: np.ndarray) -> np.ndarray:
    from export.onnx import embed_onnx, onnx_session

    return embed_onnx(onnx_session(path), windows)


def _embed_tflite(path: Path, windows: np.ndarray) -> np.ndarray:
    from export.tflite import TfliteInt8Runner

    return TfliteInt8Runner(path).embed(windows)


FORMATS: dict[str, ExportFormat] = {
    "onnx": ExportFormat(
        name="onnx",
        encoder=ENCODER_FORMATS["fp32.onnx"],
        needs_calibration=False,
        options=(),
        requires=(),
        exporter=_export_onnx,
        embed=_embed_onnx,
        description="float32 ONNX, dynamic batch (onnxruntime)",
    ),
    "onnx-int8": ExportFormat(
        name="onnx-int8",
        encoder=ENCODER_FORMATS["int8.onnx"],
        needs_calibration=True,
        options=("calibration_method", "calibration_windows"),
        requires=("onnx",),
        exporter=_export_onnx_int8,
        embed=_embed_onnx,
        description="static INT8 QDQ ONNX, per-channel weights, float input/output",
    ),
    "tflite-int8": ExportFormat(
        name="tflite-int8",
        encoder=ENCODER_FORMATS["int8.tflite"],
        needs_calibration=True,
        options=("calibration_windows",),
        requires=(),
        exporter=_export_tflite_int8,
        embed=_embed_tflite,
        description="full-integer TFLite (litert-torch PT2E), batch 1, int8 input/output",
    ),
}


def get_format(name: str) -> ExportFormat:
    """Look a format up by name; an unknown name gets a did-you-mean and the valid names."""
    key = name.strip().lower()
    if key in FORMATS:
        return FORMATS[key]
    valid = ", ".join(FORMATS)
    close = difflib.get_close_matches(key, list(FORMATS), n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ExportError(f"unknown format {name.strip()!r}{hint} valid: {valid}")


def parse_formats(text: str) -> list[ExportFormat]:
    """'onnx, tflite-int8' -> formats in table order, duplicates dropped; empty -> error."""
    names = [part for part in (p.strip() for p in text.split(",")) if part]
    if not names:
        raise ExportError(f"no formats given in {text!r}; valid: {', '.join(FORMATS)}")
    wanted = {get_format(n).name for n in names}
    return [fmt for name, fmt in FORMATS.items() if name in wanted]


def check_options(formats: list[ExportFormat], given: dict[str, object]) -> None:
    """Refuse an option (set to non-None) that none of the chosen formats accepts."""
    for option, value in given.items():
        if value is None:
            continue
        if not any(option in fmt.options for fmt in formats):
            takers = [f.name for f in FORMATS.values() if option in f.options]
            chosen = ", ".join(f.name for f in formats)
            flag = "--" + option.replace("_", "-")
            raise ExportError(
                f"{flag} applies to {', '.join(takers)}, not to the chosen formats ({chosen}); "
                f"drop {flag} or add one of those formats"
            )


def build_order(formats: list[ExportFormat]) -> list[ExportFormat]:
    """Formats to build, prerequisites first (onnx-int8 quantizes the fp32 ONNX)."""
    names = {f.name for f in formats}
    for fmt in formats:
        names.update(fmt.requires)
    return [fmt for name, fmt in FORMATS.items() if name in names]


@dataclass(frozen=True)
class FormatOutcome:
    format: str
    status: Literal["ok", "skipped", "failed"]
    seconds: float
    exported: Exported | None = None
    message: str = ""

    def line(self) -> str:
        """`onnx-int8: ok in 3.1 s, encoder.int8.onnx (212 kB)` or the failure."""
        if self.status == "ok" and self.exported is not None:
            size_kb = self.exported.path.stat().st_size / 1000
            extra = f", {self.exported.detail}" if self.exported.detail else ""
            return (
                f"{self.format}: ok in {self.seconds:.1f} s, {self.exported.path.name} "
                f"({size_kb:.0f} kB){extra}"
            )
        if self.status == "skipped":
            prefix = "" if self.message.startswith(self.format) else f"{self.format}: skipped: "
            return prefix + self.message
        return f"{self.format}: failed after {self.seconds:.1f} s: {self.message}"


def run_format(fmt: ExportFormat, job: ExportJob) -> FormatOutcome:
    """Run one exporter; log and return its outcome (never raises for exporter failures)."""
    start = time.perf_counter()
    try:
        exported = fmt.exporter(job)
    except MissingDependency as exc:
        outcome = FormatOutcome(fmt.name, "skipped", time.perf_counter() - start, message=str(exc))
        logger.warning(outcome.line())
        return outcome
    except Exception as exc:  # an exporter failure is reported, not a traceback
        logger.debug("%s exporter failed", fmt.name, exc_info=True)
        message = str(exc) if isinstance(exc, ExportError) else f"{type(exc).__name__}: {exc}"
        outcome = FormatOutcome(fmt.name, "failed", time.perf_counter() - start, message=message)
        logger.error(outcome.line())
        return outcome
    job.outputs[fmt.name] = exported.path
    outcome = FormatOutcome(fmt.name, "ok", time.perf_counter() - start, exported)
    logger.info(outcome.line())
    return outcome
