from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.contract.formats import ENCODER_FORMATS, EncoderFormat
from export.formats import (
    FORMATS,
    ExportError,
    ExportFormat,
    ExportJob,
    MissingDependency,
    build_order,
    check_options,
    get_format,
    parse_formats,
    run_format,
)

VALID = "valid: onnx, onnx-int8, tflite-int8"


def test_table_names_files_and_manifest_formats():
    assert {f.name: f.file for f in FORMATS.values()} == {
        "onnx": "encoder.fp32.onnx",
        "onnx-int8": "encoder.int8.onnx",
        "tflite-int8": "encoder.int8.tflite",
    }
    assert [f.manifest_format for f in FORMATS.values()] == [
        "fp32.onnx",
        "int8.onnx",
        "int8.tflite",
    ]
    assert [f.needs_calibration for f in FORMATS.values()] == [False, True, True]
    assert FORMATS["tflite-int8"].batch == "1"


def test_export_and_device_read_the_same_rows():
    assert [f.encoder for f in FORMATS.values()] == list(ENCODER_FORMATS.values())
    for fmt in FORMATS.values():
        row = ENCODER_FORMATS[fmt.manifest_format]
        assert fmt.encoder is row
        assert (fmt.file, fmt.batch) == (row.file, row.manifest_batch)


def test_typo_gets_did_you_mean_and_the_valid_names():
    with pytest.raises(ExportError) as err:
        get_format("tflite8")
    assert str(err.value) == f"unknown format 'tflite8'; did you mean 'tflite-int8'? {VALID}"


def test_lookup_ignores_case_and_spaces():
    assert get_format(" ONNX-Int8 ").name == "onnx-int8"


@given(st.text(max_size=20).filter(lambda s: s.strip().lower() not in FORMATS))
def test_any_unknown_name_is_refused_with_the_valid_names(name):
    with pytest.raises(ExportError) as err:
        get_format(name)
    assert str(err.value).startswith(f"unknown format {name.strip()!r}")
    assert str(err.value).endswith(VALID)


@given(
    st.lists(st.sampled_from(list(FORMATS)), min_size=1, max_size=6),
    st.sampled_from(["", " ", "  "]),
)
def test_parse_formats_keeps_table_order_without_duplicates(names, pad):
    chosen = parse_formats(",".join(f"{pad}{n}{pad}" for n in names) + ",")
    assert [f.name for f in chosen] == [n for n in FORMATS if n in names]


@pytest.mark.parametrize("text", ["", " , ", ","])
def test_empty_format_list_is_refused(text):
    with pytest.raises(ExportError, match="no formats given"):
        parse_formats(text)


def test_option_no_chosen_format_takes_is_an_error_naming_both():
    with pytest.raises(ExportError) as err:
        check_options([FORMATS["onnx"], FORMATS["tflite-int8"]], {"calibration_method": "entropy"})
    message = str(err.value)
    assert "--calibration-method applies to onnx-int8" in message
    assert "(onnx, tflite-int8)" in message
    check_options([FORMATS["onnx"], FORMATS["onnx-int8"]], {"calibration_method": "entropy"})
    check_options([FORMATS["onnx"]], {"calibration_method": None})


def test_int8_onnx_alone_still_builds_the_fp32_onnx_first():
    assert [f.name for f in build_order([FORMATS["onnx-int8"]])] == ["onnx", "onnx-int8"]


def _fake_format(exporter) -> ExportFormat:
    return ExportFormat(
        name="fake",
        encoder=EncoderFormat("fp32.onnx", "onnx", "fp32", "fake.bin", batch=1),
        needs_calibration=False,
        options=(),
        requires=(),
        exporter=exporter,
        embed=lambda path, x: x,
        description="test double",
    )


def test_wrapper_reports_ok_with_file_name_and_size(tmp_path: Path):
    from export.formats import Exported

    def exporter(job: ExportJob) -> Exported:
        path = job.workdir / "fake.bin"
        path.write_bytes(b"\0" * 212_000)
        return Exported(path)

    job = ExportJob(encoder=None, window=16, workdir=tmp_path)
    outcome = run_format(_fake_format(exporter), job)
    assert outcome.status == "ok"
    assert job.outputs["fake"] == tmp_path / "fake.bin"
    assert outcome.line().startswith("fake: ok in ")
    assert outcome.line().endswith("s, fake.bin (212 kB)")


def test_wrapper_turns_exporter_errors_into_failed_and_missing_deps_into_skipped(tmp_path: Path):
    def broken(job):
        raise RuntimeError("converter crashed")

    def missing(job):
        raise MissingDependency("fake needs fakelib: pip install fakelib")

    job = ExportJob(encoder=None, window=16, workdir=tmp_path)
    failed = run_format(_fake_format(broken), job)
    assert failed.status == "failed"
    assert "RuntimeError: converter crashed" in failed.line()
    skipped = run_format(_fake_format(missing), job)
    assert skipped.status == "skipped"
    assert skipped.line() == "fake needs fakelib: pip install fakelib"
    assert job.outputs == {}
