"""Excerpts: a stretch of a recording in a manifest (start_s, end_s), how a suggested window is
labeled without cutting files by hand, and the label sheet `faultwatch train suggest` writes."""

from __future__ import annotations

import csv
import shlex
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from edge_agent.contract.preprocess import normalize, resample
from train.config import load_config
from train.data import build_split
from train.recordings import at_rate, load_manifest
from train.splits import TRAIN_END

W, FS = 512, 12_000
FAST = 48_828  # MFPT's rate: 4069 of its samples per grid point shared with FS
SETTINGS = ["data=recordings", f"window={W}", f"hop={W // 2}", "labels_per_class=1"]


def signal_at(t: np.ndarray, offset: float) -> np.ndarray:
    """A recording's value at times t: offset + t (where a sample lies) and a chirp (so no two
    windows normalize alike)."""
    return (offset + t + np.sin(2 * np.pi * (50 * t + 200 * t**2))).astype(np.float32)


def recording(i: int, rate: int = FS) -> np.ndarray:
    """Recording i: 2 s at `rate`."""
    return signal_at(np.arange(2 * rate) / rate, 2 * i)


@pytest.fixture
def plant(tmp_path: Path) -> Path:
    """Four 2-s recordings (the first two labeled whole), one at FAST, and a manifest."""
    data = tmp_path / "data"
    data.mkdir()
    for i in range(4):
        np.save(data / f"r{i}.npy", recording(i))
    np.save(data / "fast.npy", recording(4, FAST))
    (tmp_path / "plant.csv").write_text(
        "path,sample_rate_hz,label\n"
        "data/r0.npy,12000,normal\ndata/r1.npy,12000,inner_race\n"
        "data/r2.npy,12000,\ndata/r3.npy,12000,\ndata/fast.npy,48828,\n"
    )
    return tmp_path


def config(folder: Path, *more: str):
    return load_config(None, [*SETTINGS, f"manifest={folder / 'plant.csv'}", *more])


def test_an_excerpt_is_its_stretch_of_the_file_at_either_rate(plant: Path) -> None:
    sheet = plant / "sheet.csv"
    sheet.write_text("path,sample_rate_hz,start_s,end_s\ndata/r2.npy,12000,0.5,0.75\n"
                     "data/fast.npy,48828,1.25,1.5\n")  # fmt: skip
    slow, fast = load_manifest(sheet)
    assert slow.record_id == "data/r2.npy@0.5-0.75s" and slow.meta["excerpt_s"] == [0.5, 0.75]
    assert slow.signal.shape[0] > 0.25 * FS  # read with a margin for resampling ...
    cut = at_rate(slow, FS)  # ... and cut to its stretch
    np.testing.assert_array_equal(cut.signal, recording(2)[6000:9000])
    assert cut.meta["first_s"] == 0.5
    at_training_rate = at_rate(fast, FS)
    assert at_training_rate.signal.shape[0] == 0.25 * FS
    expected = signal_at(1.25 + np.arange(3000) / FS, 8)  # no edge transient at either end
    np.testing.assert_allclose(at_training_rate.signal, expected, atol=2e-3)
    whole = resample(recording(4, FAST), FAST, FS)  # the same samples as the whole file's
    np.testing.assert_allclose(at_training_rate.signal, whole[15000:18000], atol=1e-5)


@pytest.mark.parametrize(
    ("cells", "message"),
    [
        ("0.5,", r"sheet.csv row 2: end_s: an excerpt needs both start_s and end_s"),
        (",0.5", r"sheet.csv row 2: start_s: an excerpt needs both"),
        ("0.5,0.5", r"row 2: end_s: must be at least one sample after start_s \(0.5\), got 0.5"),
        ("-1,0.5", r"row 2: start_s: must be a number of seconds >= 0, got '-1'"),
        ("0,abc", r"row 2: end_s: must be a number of seconds >= 0, got 'abc'"),
        ("0,nan", r"row 2: end_s"),
        ("1.5,2.5", r"row 2: end_s: 2.5 s is past the end of the file \(2 s\)"),
    ],
)
def test_bad_excerpts_name_the_row_and_field(plant: Path, cells: str, message: str) -> None:
    sheet = plant / "sheet.csv"
    sheet.write_text(f"path,sample_rate_hz,start_s,end_s\ndata/r2.npy,12000,{cells}\n")
    with pytest.raises(ValueError, match=message):
        load_manifest(sheet)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    start=st.one_of(st.floats(allow_nan=True), st.text(max_size=6)),
    end=st.one_of(st.floats(allow_nan=True), st.text(max_size=6)),
)
def test_any_excerpt_times_load_or_raise_a_clear_error(plant: Path, start, end) -> None:
    sheet = plant / "fuzz.toml"
    sheet.write_text(
        f'[[recording]]\npath = "data/r2.npy"\nsample_rate_hz = 12000\nstart_s = {start!r}\n'
        f"end_s = {end!r}\n".replace("nan", "nan").replace("inf", "inf")
    )
    try:
        (record,) = load_manifest(sheet)
    except ValueError as err:
        assert str(err)
    else:
        lo, hi = record.meta["excerpt_s"]
        assert 0 <= lo < hi <= 2.0 and at_rate(record, FS).signal.size > 0


def test_labeled_excerpts_train_and_never_test(plant: Path) -> None:
    (plant / "sheet.csv").write_text(
        "path,sample_rate_hz,start_s,end_s,label\n"
        "data/r2.npy,12000,0.5,0.55,outer_race\n"  # 600 samples: one window
        "data/r3.npy,12000,0.0,0.2,outer_race\n"  # 2400 samples: four windows, all of them
        "data/r0.npy,12000,0.1,0.2,normal\n"  # in the train block of a labeled recording
    )
    split = build_split(config(plant, f"labels_manifest={plant / 'sheet.csv'}"))
    assert split.class_names == ["normal", "inner_race", "outer_race"]
    outer = split.labeled.x[split.labeled.y == 2]
    assert len(outer) == 5  # every window the operator labeled, labels_per_class aside
    first = recording(2)[6000 : 6000 + W]
    np.testing.assert_allclose(outer[0, 0], normalize(first[None])[0, 0], atol=1e-5)
    assert (split.labeled.y == 0).sum() == 3  # r0's one pick and the excerpt's two windows
    assert sorted(set(split.test.record_ids)) == ["data/r0.npy", "data/r1.npy"]
    assert not (split.test.y == 2).any() and not (split.val.y == 2).any()
    assert set(split.labeled.record_ids) == {f"data/r{i}.npy" for i in range(4)}  # id: file


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (  # the test block of r1 (labeled whole) from 1.2 s on
            f"../data/r1.npy,12000,1.0,{TRAIN_END * 2.0 + 0.05},",
            r"sheet.csv row 2: end_s: 1.25 s reaches past the train block \(0-1.2 s\)",
        ),
        ("../data/r0.npy,12000,0,0.1,ball", r"row 2: label: 'ball', but the whole recording is "),
        ("../data/r2.npy,12000,,,ball", r"sheet.csv row 2: path: '../data/r2.npy' is already"),
    ],
)
def test_a_sheet_that_would_leak_or_contradict_the_manifest_is_refused(
    plant: Path, row: str, message: str
) -> None:
    sheet = plant / "sheets" / "sheet.csv"  # another folder: another relative path, same file
    sheet.parent.mkdir()
    sheet.write_text(f"path,sample_rate_hz,start_s,end_s,label\n{row}\n")
    with pytest.raises(ValueError, match=message):
        build_split(config(plant, f"labels_manifest={sheet}"))


def test_short_excerpts_and_excerpt_only_labels_are_refused_by_name(plant: Path) -> None:
    sheet = plant / "sheet.csv"
    sheet.write_text("path,sample_rate_hz,start_s,end_s,label\ndata/r2.npy,12000,0,0.01,ball\n")
    with pytest.raises(ValueError, match=r"row 2: start_s, end_s: the excerpt holds 120 samples"):
        build_split(config(plant, f"labels_manifest={sheet}"))
    (plant / "plant.csv").write_text("path,sample_rate_hz\ndata/r0.npy,12000\n")
    sheet.write_text("path,sample_rate_hz,start_s,end_s,label\ndata/r2.npy,12000,0,0.1,ball\n")
    with pytest.raises(ValueError, match=r"no whole recording has a label \(1 labeled excerpts"):
        build_split(config(plant, f"labels_manifest={sheet}"))
    with pytest.raises(ValueError, match="labels_manifest is read with data = 'recordings'"):
        load_config(None, [f"labels_manifest={sheet}"])


def test_suggest_writes_a_sheet_that_trains_on_exactly_the_suggested_windows(plant: Path) -> None:
    from train.cli import app

    sheet = plant / "sheets" / "label-these.csv"
    sheet.parent.mkdir()
    args = ["suggest", "--budget", "4", "--out", str(sheet)]
    for item in [*SETTINGS, f"manifest={plant / 'plant.csv'}"]:
        args += ["--set", item]
    result = CliRunner().invoke(app, args, terminal_width=200)
    assert result.exit_code == 0, result.output
    with sheet.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 and all(row["label"] == "" for row in rows)
    assert {row["path"] for row in rows} <= {"../data/r2.npy", "../data/r3.npy", "../data/fast.npy"}
    for i, row in enumerate(rows):  # the operator fills in the labels
        row["label"] = ["ball", "outer_race"][i % 2]
    with sheet.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, rows[0].keys())
        writer.writeheader()
        writer.writerows(rows)

    command = shlex.split(result.output.strip().splitlines()[-1])
    assert command[:3] == ["faultwatch", "train", "run"]
    overrides = [command[i + 1] for i, arg in enumerate(command) if arg == "--set"]
    split = build_split(load_config(None, overrides))  # the printed next step's configuration

    named = [split.class_names.index(name) for name in ("ball", "outer_race")]
    suggested = split.labeled.x[np.isin(split.labeled.y, named)]
    whole = {f"../data/r{i}.npy": recording(i) for i in (2, 3)}
    whole["../data/fast.npy"] = resample(recording(4, FAST), FAST, FS)
    expected = [  # the window of the whole file at the training rate, to the sample
        whole[row["path"]][round(float(row["start_s"]) * FS) :][:W] for row in rows
    ]
    np.testing.assert_allclose(suggested[:, 0], normalize(np.stack(expected))[:, 0], atol=1e-5)


def test_pretraining_shards_hold_an_excerpts_stretch_only(plant: Path) -> None:
    from edge_agent.contract.preprocess import PreprocessSpec
    from train.shards import ShardedWindows, write_manifest_shards

    sheet = plant / "sheet.csv"
    sheet.write_text("path,sample_rate_hz,start_s,end_s\ndata/r2.npy,12000,0.5,0.7\n")
    spec = PreprocessSpec(sample_rate_hz=FS, window=W, hop=W // 2)
    folder = write_manifest_shards(sheet, plant / "shards", spec, shard_size=4)
    shards = ShardedWindows(folder)
    assert len(shards) == 1 + (int(0.2 * FS) - W) // (W // 2)  # not the 1.1-s margins
    first = recording(2)[6000 : 6000 + W]
    np.testing.assert_allclose(shards[0][0], normalize(first[None])[0, 0], atol=1e-5)


def test_suggest_refuses_by_name_when_nothing_is_left_to_label(plant: Path) -> None:
    from train.cli import app

    (plant / "plant.csv").write_text("path,sample_rate_hz,label\ndata/r0.npy,12000,normal\n")
    args = ["suggest", "--budget", "2"]
    for item in [*SETTINGS, f"manifest={plant / 'plant.csv'}"]:
        args += ["--set", item]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and "every recording is labeled" in result.output
    unwritable = CliRunner().invoke(app, [*args, "--out", "/proc/no/label-these.csv"])
    assert unwritable.exit_code == 1 and "--out /proc/no/label-these.csv: cannot write" in (
        unwritable.output
    )


def test_labeled_stretches_leave_the_pool_so_a_second_round_suggests_new_windows(
    plant: Path,
) -> None:
    from train.cli import app

    sheet = plant / "label-these.csv"  # beside the manifest: the same relative paths
    args = ["suggest", "--budget", "6"]
    for item in [*SETTINGS, f"manifest={plant / 'plant.csv'}"]:
        args += ["--set", item]
    first = CliRunner().invoke(app, [*args, "--out", str(sheet)])
    assert first.exit_code == 0, first.output
    sheet.write_text(sheet.read_text().replace(",\n", ",ball\n"))  # every window labeled
    rate_of = {"data/fast.npy": FAST}
    labeled = {
        (row["path"], round(float(row["start_s"]) * FS))
        for row in csv.DictReader(sheet.open(newline=""))
    }
    assert len(labeled) == 6 and all(path in rate_of or "/r" in path for path, _ in labeled)
    split = build_split(config(plant, f"labels_manifest={sheet}"))
    for record, first_sample in split.pool.positions():  # no pool window overlaps a labeled one
        assert all(abs(first_sample - start) >= W for path, start in labeled if path == record), (
            record,
            first_sample,
        )
    again = plant / "more.csv"
    second = CliRunner().invoke(
        app, [*args, "--out", str(again), "--set", f"labels_manifest={sheet}"]
    )
    assert second.exit_code == 0, second.output
    rows = list(csv.DictReader(again.open(newline="")))
    assert "after the 6 rows of" in second.output
    carried = {(r["path"], round(float(r["start_s"]) * FS)) for r in rows if r["label"]}
    proposed = {(r["path"], round(float(r["start_s"]) * FS)) for r in rows if not r["label"]}
    assert carried == labeled and len(proposed) == 6 and not proposed & labeled
    again.write_text(again.read_text().replace(",\n", ",outer_race\n"))
    both = build_split(config(plant, f"labels_manifest={again}"))  # one file, every label
    assert len(both.description["labeled_excerpts"]) == 12
