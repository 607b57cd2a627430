"""A plant's recordings: WAV/NPY/CSV files listed in a CSV or TOML manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io.wavfile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from train.recordings import load_manifest

FS = 12_000


@pytest.fixture
def files(tmp_path: Path) -> dict[str, np.ndarray]:
    """Three recordings of known content in g: a 2-channel int16 WAV, a 2-D NPY, a CSV."""
    data = tmp_path / "data"
    data.mkdir()
    t = np.arange(1200) / FS
    wav = np.stack([0.5 * np.sin(2 * np.pi * 100 * t), 0.25 * np.cos(2 * np.pi * 50 * t)], axis=1)
    scipy.io.wavfile.write(data / "pump.wav", FS, (wav * 32767).astype(np.int16))
    npy = np.stack([np.linspace(-1, 1, 600), np.linspace(0, 2, 600)], axis=1).astype(np.float32)
    np.save(data / "fan.npy", npy)
    csv_values = np.round(np.sin(np.arange(500) / 10), 6)
    lines = ["time_s,accel_x"] + [f"{i / FS:.6f},{v}" for i, v in enumerate(csv_values)]
    (data / "motor.csv").write_text("\n".join(lines) + "\n")
    return {"wav": wav, "npy": npy, "csv": csv_values}


def _check_records(records, expected: dict[str, np.ndarray]) -> None:
    wav, npy, csv = records
    np.testing.assert_allclose(wav.signal, 2.0 * expected["wav"][:, 1], atol=2e-4)
    assert wav.label == "" and wav.meta["site"] == "north" and wav.sample_rate_hz == FS
    np.testing.assert_allclose(npy.signal, expected["npy"][:, 0])
    assert npy.label == "inner_race" and npy.sample_rate_hz == 6000
    np.testing.assert_allclose(csv.signal, expected["csv"], rtol=1e-6)
    assert csv.label == "normal"
    assert len({r.record_id for r in records}) == 3
    assert all(r.signal.dtype == np.float32 for r in records)


def test_csv_manifest_loads_all_file_kinds(tmp_path: Path, files) -> None:
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        "path,sample_rate_hz,label,scale_g,column,site\n"
        "data/pump.wav,12000,,2.0,1,north\n"
        "data/fan.npy,6000,inner_race,,0,south\n"
        "data/motor.csv,12000,normal,,accel_x,east\n"
    )
    _check_records(load_manifest(manifest), files)


def test_toml_manifest_loads_all_file_kinds(tmp_path: Path, files) -> None:
    manifest = tmp_path / "manifest.toml"
    manifest.write_text(
        '[[recording]]\npath = "data/pump.wav"\nsample_rate_hz = 12000\nscale_g = 2.0\n'
        'column = 1\nsite = "north"\n\n'
        '[[recording]]\npath = "data/fan.npy"\nsample_rate_hz = 6000\nlabel = "inner_race"\n'
        "column = 0\n\n"
        '[[recording]]\npath = "data/motor.csv"\nsample_rate_hz = 12000\nlabel = "normal"\n'
        "column = 1\n"
    )
    _check_records(load_manifest(manifest), files)


def test_wav_defaults_to_first_channel_as_fraction_of_full_scale(tmp_path: Path, files) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,sample_rate_hz\ndata/pump.wav,12000\n")
    (record,) = load_manifest(manifest)
    np.testing.assert_allclose(record.signal, files["wav"][:, 0], atol=1e-4)
    assert np.abs(record.signal).max() <= 1.0


def test_absolute_paths_and_float_wav(tmp_path: Path) -> None:
    x = np.linspace(-0.3, 0.3, 100).astype(np.float32)
    scipy.io.wavfile.write(tmp_path / "f.wav", 8000, x)
    manifest = tmp_path / "sub" / "m.csv"
    manifest.parent.mkdir()
    manifest.write_text(f"path,sample_rate_hz\n{tmp_path / 'f.wav'},8000\n")
    np.testing.assert_array_equal(load_manifest(manifest)[0].signal, x)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (
            "data/pump.wav,abc",
            r"manifest.csv row 3: sample_rate_hz: must be a positive integer, got 'abc'",
        ),
        ("data/pump.wav,-5", r"row 3: sample_rate_hz"),
        (
            "data/pump.wav,8000",
            r"row 3: sample_rate_hz: the manifest says 8000 but pump.wav says 12000",
        ),
        ("data/fan.npy,12000", r"row 3: fan.npy: has 2 columns; set `column`"),
        ("data/pump.wav,12000,bad label", r"row 3: label"),
        ("data/pump.wav,12000,,-1", r"row 3: scale_g: must be a finite number > 0, got '-1'"),
        ("data/pump.wav,12000,,nan", r"row 3: scale_g"),
        ("data/pump.wav,12000,,,7", r"row 3: pump.wav: column: channel 7 does not exist"),
        ("data/motor.csv,12000,,,speed", r"row 3: motor.csv: column: column index must be"),
        ("data/pump.flac,12000", r"row 3: path: unsupported file type 'data/pump.flac'"),
        (",12000", r"row 3: path: must be a non-empty file path"),
        ("data/pump.wav,12000,,,,extra", r"row 3: has 6 cells, the header has 5"),
        (
            "data/fan.npy,6000,,,0",
            r"row 3: path: 'data/fan.npy' \(column 0\) is already listed in manifest.csv row 2",
        ),
    ],
)
def test_bad_rows_name_row_and_field(tmp_path: Path, files, row: str, message: str) -> None:
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"path,sample_rate_hz,label,scale_g,column\ndata/fan.npy,6000,,,0\n{row}\n")
    with pytest.raises(ValueError, match=message):
        load_manifest(manifest)


def test_missing_recording_and_manifest(tmp_path: Path) -> None:
    manifest = tmp_path / "m.toml"
    manifest.write_text('[[recording]]\npath = "nowhere.npy"\nsample_rate_hz = 12000\n')
    with pytest.raises(FileNotFoundError, match=r"m.toml recording 1: path: .*nowhere.npy"):
        load_manifest(manifest)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_manifest(tmp_path / "absent.csv")


def test_nan_signal_is_rejected_with_count(tmp_path: Path) -> None:
    x = np.ones(50)
    x[[3, 7, 9]] = np.nan
    np.save(tmp_path / "gappy.npy", x)
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,sample_rate_hz\ngappy.npy,12000\n")
    with pytest.raises(ValueError, match=r"row 2: gappy.npy: 3 NaN"):
        load_manifest(manifest)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.csv", "accel\n", "empty"),
        ("text.csv", "accel\n1.0\noops\n", r"line 3, column 0: not a number: 'oops'"),
        ("trunc.npy", None, "trunc.npy"),
        ("obj.npy", "object", "numeric"),
        ("noise.wav", "RIFF....garbage", "noise.wav"),
    ],
)
def test_bad_files_are_value_errors(tmp_path: Path, name: str, content, message: str) -> None:
    path = tmp_path / name
    if name == "trunc.npy":
        np.save(path, np.arange(1000.0))
        path.write_bytes(path.read_bytes()[:300])
    elif name == "obj.npy":
        np.save(path, np.array(["a", "b"]))
    else:
        path.write_text(content)
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,sample_rate_hz\n{name},12000\n")
    with pytest.raises(ValueError, match=message):
        load_manifest(manifest)


def test_manifest_structure_errors(tmp_path: Path) -> None:
    bad_header = tmp_path / "h.csv"
    bad_header.write_text("file,rate\nx.npy,1\n")
    with pytest.raises(ValueError, match=r"h.csv row 1: header must name 'path'"):
        load_manifest(bad_header)
    bad_toml = tmp_path / "t.toml"
    bad_toml.write_text('[recordings]\npath = "x.npy"\n')
    with pytest.raises(ValueError, match=r"unknown top-level keys \['recordings'\]"):
        load_manifest(bad_toml)
    with pytest.raises(ValueError, match=r"\.csv or \.toml"):
        load_manifest(tmp_path / "m.json")
    empty = tmp_path / "e.toml"
    empty.write_text("")
    with pytest.raises(ValueError, match="lists no recordings"):
        load_manifest(empty)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    kind=st.sampled_from(["csv", "toml"]),
    text=st.one_of(
        st.text(max_size=200),
        st.lists(
            st.sampled_from(
                [
                    "path,sample_rate_hz,label,scale_g,column",
                    "data/pump.wav,12000,,,1",
                    "data/fan.npy,x,,,",
                    "data/motor.csv,12000,normal,0.5,accel_x",
                    '[[recording]]\npath = "data/fan.npy"\nsample_rate_hz = 6000',
                    "column = 5",
                    'label = ""',
                    "scale_g = -2",
                    "[[recording]]",
                    'path = "data/motor.csv"',
                    ",,,,",
                    "\x00",
                ]
            ),
            max_size=8,
        ).map("\n".join),
    ),
)
def test_arbitrary_manifest_text_raises_only_clear_errors(
    tmp_path: Path, files, kind: str, text: str
) -> None:
    manifest = tmp_path / f"fuzz.{kind}"
    manifest.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        records = load_manifest(manifest)
    except (ValueError, FileNotFoundError) as err:
        assert str(err)
    else:
        assert records and all(r.signal.size > 0 for r in records)
