"""The encoder formats a bundle may hold: one table, read by the manifest, the backends and export.

A row says which runtime runs the file, at which precision, its default file name in a bundle
and its fixed batch size. `encoder_format(runtime, precision)` is the one place that knows which
combinations exist (TFLite runs only int8). Standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class EncoderFormat:
    name: str  # the manifest's EncoderFile.format: "fp32.onnx", "int8.onnx", "int8.tflite"
    runtime: str  # backend name: "onnx" | "tflite"
    precision: str  # "fp32" | "int8"
    file: str  # default file name in a bundle
    batch: int | None  # fixed batch size; None: any

    @property
    def manifest_batch(self) -> Literal["dynamic", "1"]:
        """The manifest's EncoderFile.batch for this format."""
        return "dynamic" if self.batch is None else "1"


ENCODER_FORMATS: dict[str, EncoderFormat] = {
    f.name: f
    for f in (
        EncoderFormat("fp32.onnx", "onnx", "fp32", "encoder.fp32.onnx", batch=None),
        EncoderFormat("int8.onnx", "onnx", "int8", "encoder.int8.onnx", batch=None),
        EncoderFormat("int8.tflite", "tflite", "int8", "encoder.int8.tflite", batch=1),
    )
}


def check_format_name(name: str) -> str:
    """Return `name` if it is a known encoder format, else ValueError listing the valid ones."""
    if name not in ENCODER_FORMATS:
        raise ValueError(f"unknown encoder format {name!r}; valid: {', '.join(ENCODER_FORMATS)}")
    return name


def encoder_format(runtime: str, precision: str) -> EncoderFormat:
    """The format a runtime runs at a precision: ("onnx", "int8") -> the int8.onnx row.

    ValueError naming the valid runtime+precision pairs for any other combination.
    """
    for fmt in ENCODER_FORMATS.values():
        if (fmt.runtime, fmt.precision) == (runtime, precision):
            return fmt
    pairs = ", ".join(f"{f.runtime}+{f.precision}" for f in ENCODER_FORMATS.values())
    supported = [f.precision for f in ENCODER_FORMATS.values() if f.runtime == runtime]
    if supported:
        raise ValueError(
            f"backend {runtime!r} only runs {'/'.join(supported)} encoders, not precision "
            f"{precision!r}; valid backend+precision: {pairs}"
        )
    raise ValueError(f"no encoder format for backend {runtime!r}; valid backend+precision: {pairs}")
