"""The encoder-format table: the one place that knows formats, files and runtime+precision pairs."""

import pytest
from pydantic import ValidationError

from edge_agent.contract.bundle import EncoderFile
from edge_agent.contract.formats import ENCODER_FORMATS, check_format_name, encoder_format

VALID = "valid: fp32.onnx, int8.onnx, int8.tflite"
PAIRS = "valid backend+precision: onnx+fp32, onnx+int8, tflite+int8"


def test_rows_name_their_runtime_precision_file_and_batch():
    rows = {(f.name, f.runtime, f.precision, f.file, f.batch) for f in ENCODER_FORMATS.values()}
    assert rows == {
        ("fp32.onnx", "onnx", "fp32", "encoder.fp32.onnx", None),
        ("int8.onnx", "onnx", "int8", "encoder.int8.onnx", None),
        ("int8.tflite", "tflite", "int8", "encoder.int8.tflite", 1),
    }
    assert [f.manifest_batch for f in ENCODER_FORMATS.values()] == ["dynamic", "dynamic", "1"]


@pytest.mark.parametrize("fmt", list(ENCODER_FORMATS.values()))
def test_runtime_and_precision_find_their_row(fmt):
    assert encoder_format(fmt.runtime, fmt.precision) is fmt


def test_tflite_fp32_is_refused_naming_the_valid_pairs():
    with pytest.raises(ValueError) as err:
        encoder_format("tflite", "fp32")
    assert str(err.value) == (
        f"backend 'tflite' only runs int8 encoders, not precision 'fp32'; {PAIRS}"
    )


def test_unknown_runtime_is_refused_naming_the_valid_pairs():
    with pytest.raises(ValueError) as err:
        encoder_format("tensorrt", "int8")
    assert str(err.value) == f"no encoder format for backend 'tensorrt'; {PAIRS}"


def test_unknown_format_in_a_manifest_names_the_valid_ones():
    assert check_format_name("int8.tflite") == "int8.tflite"
    with pytest.raises(ValidationError) as err:
        EncoderFile(format="int8.trt", file="encoder.int8.trt", batch="1")
    assert f"unknown encoder format 'int8.trt'; {VALID}" in str(err.value)
