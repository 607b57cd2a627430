"""CWRU loaders: the shared .npz copy (real data, skipped without it) and original .mat files."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from hypothesis import given, settings
from hypothesis import strategies as st

from train.cwru import (
    default_data_root,
    load_cwru,
    load_cwru_folder,
    load_cwru_mat,
    parse_cwru_name,
    size_label,
)
from train.records import Record

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "datasets"
needs_data = pytest.mark.skipif(
    not (DATA / "cwru").is_dir(), reason=f"CWRU data not found at {DATA / 'cwru'}"
)


@pytest.fixture(scope="module")
def cwru() -> list[Record]:
    return load_cwru(DATA)


@needs_data
@pytest.mark.realdata
def test_real_cwru_has_37_balanced_records(cwru: list[Record]) -> None:
    assert len(cwru) == 37
    assert Counter(r.label for r in cwru) == {
        "normal": 1,
        "inner_race": 12,
        "outer_race": 12,
        "ball": 12,
    }
    sizes = Counter(size_label(r) for r in cwru)
    assert sizes.pop("normal") == 1
    assert len(sizes) == 9 and set(sizes.values()) == {4}
    assert len({r.record_id for r in cwru}) == 37
    assert "cwru-IR007-1-106" in {r.record_id for r in cwru}


@needs_data
@pytest.mark.realdata
def test_real_cwru_metadata(cwru: list[Record]) -> None:
    nominal = {0: 1797, 1: 1772, 2: 1750, 3: 1730}
    for r in cwru:
        assert r.sample_rate_hz == 12_000 and r.signal.dtype == np.float32
        assert r.meta["rpm"] == pytest.approx(nominal[r.meta["load_hp"]], abs=30)
        assert r.meta["channel"] == "DE" and r.meta["file"].endswith(".npz")
        if r.label != "normal":
            assert 121_000 <= r.signal.size <= 123_000  # about 10 s at 12 kHz
    by_id = {r.record_id: r for r in cwru}
    ir = by_id["cwru-IR007-1-106"]
    assert (ir.meta["load_hp"], ir.meta["fault_size_in"], ir.meta["file_number"]) == (1, 0.007, 106)
    assert Counter(r.meta["load_hp"] for r in cwru if r.label != "normal") == {
        load: 9 for load in range(4)
    }


@needs_data
@pytest.mark.realdata
def test_real_normal_is_resampled_to_a_quarter(cwru: list[Record]) -> None:
    normal = next(r for r in cwru if r.label == "normal")
    with np.load(DATA / "cwru" / "normal" / "Normal_0_97.npz") as data:
        original = data["DE"].size
    assert normal.signal.size == pytest.approx(original / 4, abs=2)
    assert normal.meta["load_hp"] == 0 and normal.meta["fault_size_in"] == 0.0


def _write_npz(path: Path, location: str, size: float, load: int, number: int, fs: int) -> None:
    rng = np.random.default_rng(number)
    de = rng.standard_normal(fs // 10).astype(np.float32)
    np.savez_compressed(
        path,
        DE=de,
        FE=de * 0.5,
        fs=np.int32(fs),
        rpm=np.float32(1772.0),
        fault_location=np.str_(location),
        or_position=np.str_("@6" if location == "OR" else ""),
        fault_size_in=np.float32(size),
        load_hp=np.int32(load),
        file_number=np.int32(number),
    )


@pytest.fixture
def tiny_root(tmp_path: Path) -> Path:
    (tmp_path / "cwru" / "normal").mkdir(parents=True)
    (tmp_path / "cwru" / "12k_DE").mkdir()
    _write_npz(tmp_path / "cwru" / "normal" / "Normal_0_97.npz", "normal", 0.0, 0, 97, 48_000)
    _write_npz(tmp_path / "cwru" / "12k_DE" / "OR014at6_1_198.npz", "OR", 0.014, 1, 198, 12_000)
    return tmp_path


def test_npz_layout_is_read_and_resampled(tiny_root: Path) -> None:
    records = load_cwru(tiny_root, sample_rate_hz=12_000, channel="FE")
    normal, outer = records
    assert normal.label == "normal" and normal.signal.size == 4800 // 4  # 48 kHz -> 12 kHz
    assert outer.record_id == "cwru-OR014-1-198" and size_label(outer) == "outer_race_014"
    assert outer.meta["or_position"] == "@6" and outer.meta["channel"] == "FE"
    half = load_cwru(tiny_root, sample_rate_hz=6000)
    assert [r.signal.size for r in half] == [600, 600]


def test_env_var_sets_default_root(monkeypatch: pytest.MonkeyPatch, tiny_root: Path) -> None:
    monkeypatch.setenv("FAULTWATCH_DATA", str(tiny_root))
    assert default_data_root() == tiny_root
    assert len(load_cwru()) == 2
    monkeypatch.delenv("FAULTWATCH_DATA")
    assert default_data_root().parts[-2:] == ("shared", "datasets")


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="FAULTWATCH_DATA"):
        load_cwru(tmp_path)


def test_corrupt_npz_names_the_file(tiny_root: Path) -> None:
    path = tiny_root / "cwru" / "12k_DE" / "OR014at6_1_198.npz"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"OR014at6_1_198\.npz"):
        load_cwru(tiny_root)


def test_npz_missing_key_is_named(tiny_root: Path) -> None:
    path = tiny_root / "cwru" / "12k_DE" / "IR007_0_105.npz"
    np.savez(path, DE=np.zeros(10, np.float32), fs=np.int32(12_000))
    with pytest.raises(ValueError, match=r"IR007_0_105.npz: missing keys.*fault_location"):
        load_cwru(tiny_root)


def _write_mat(path: Path, x_number: int, n: int = 4800, rpm: float | None = 1772.0) -> np.ndarray:
    de = np.random.default_rng(x_number).standard_normal((n, 1))
    content = {f"X{x_number:03d}_DE_time": de, f"X{x_number:03d}_FE_time": 0.5 * de}
    if rpm is not None:
        content[f"X{x_number:03d}RPM"] = np.array([[rpm]])
    scipy.io.savemat(path, content)
    return de.ravel()


def test_original_mat_layout(tmp_path: Path) -> None:
    de = _write_mat(tmp_path / "IR007_1_106.mat", 106)
    record = load_cwru_mat(tmp_path / "IR007_1_106.mat", sample_rate_hz_of_file=12_000)
    assert record.record_id == "cwru-IR007-1-106" and record.label == "inner_race"
    assert record.meta["rpm"] == 1772.0 and record.meta["load_hp"] == 1
    assert size_label(record) == "inner_race_007"
    np.testing.assert_allclose(record.signal, de.astype(np.float32))


def test_mat_x_number_may_differ_and_48k_is_resampled(tmp_path: Path) -> None:
    path = tmp_path / "OR021@6_3_237.mat"
    _write_mat(path, 9, n=4800, rpm=None)  # other X number, no RPM variable
    record = load_cwru_mat(path, sample_rate_hz_of_file=48_000)
    assert record.signal.size == 1200
    assert record.label == "outer_race" and record.meta["or_position"] == "@6"
    assert record.meta["rpm"] == 1730.0  # nominal for 3 hp


def test_explicit_labels_for_unconventional_names(tmp_path: Path) -> None:
    path = tmp_path / "pump_a.mat"
    _write_mat(path, 7)
    with pytest.raises(ValueError, match=r"pump_a\.mat"):
        load_cwru_mat(path, sample_rate_hz_of_file=12_000)
    with pytest.raises(ValueError, match="fault_size_in"):
        load_cwru_mat(path, sample_rate_hz_of_file=12_000, label="ball")
    record = load_cwru_mat(
        path, sample_rate_hz_of_file=12_000, label="B", fault_size_in=0.014, load_hp=2
    )
    assert record.label == "ball" and size_label(record) == "ball_014"
    normal = load_cwru_mat(path, sample_rate_hz_of_file=12_000, label="normal")
    assert size_label(normal) == "normal"


def test_mat_folder_and_bad_files(tmp_path: Path) -> None:
    _write_mat(tmp_path / "B014_0_185.mat", 185)
    _write_mat(tmp_path / "Normal_0_97.mat", 97)
    records = load_cwru_folder(tmp_path, 12_000)
    assert [r.label for r in records] == ["ball", "normal"]
    broken = tmp_path / "IR021_2_211.mat"
    broken.write_bytes((tmp_path / "B014_0_185.mat").read_bytes()[:300])
    with pytest.raises(ValueError, match=r"IR021_2_211\.mat"):
        load_cwru_mat(broken, sample_rate_hz_of_file=12_000)
    scipy.io.savemat(tmp_path / "IR007_0_105.mat", {"X105_BA_time": np.zeros((10, 1))})
    with pytest.raises(ValueError, match="_DE_time"):
        load_cwru_mat(tmp_path / "IR007_0_105.mat", sample_rate_hz_of_file=12_000)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no \.mat files"):
        load_cwru_folder(tmp_path / "empty", 12_000)
    with pytest.raises(FileNotFoundError):
        load_cwru_mat(tmp_path / "missing.mat", sample_rate_hz_of_file=12_000)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("IR007_1_106.mat", ("IR", 0.007, 1, 106, "")),
        ("B014_0_185.mat", ("B", 0.014, 0, 185, "")),
        ("OR021@6_3_237.mat", ("OR", 0.021, 3, 237, "@6")),
        ("OR007at6_0_130.npz", ("OR", 0.007, 0, 130, "@6")),
        ("Normal_0_97.mat", ("normal", 0.0, 0, 97, "")),
    ],
)
def test_parse_conventional_names(name: str, expected: tuple) -> None:
    parsed = parse_cwru_name(name)
    assert (
        parsed.location,
        parsed.fault_size_in,
        parsed.load_hp,
        parsed.file_number,
        parsed.or_position,
    ) == expected


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(max_size=40),
        st.from_regex(
            r"(IR|OR|B|Normal|x)\d{0,4}(@\d{1,3})?_\d{0,2}_\d{0,5}(\.mat)?", fullmatch=True
        ),
    )
)
def test_parser_parses_or_raises_value_error(name: str) -> None:
    try:
        parsed = parse_cwru_name(name)
    except ValueError as err:
        assert repr(name) in str(err)
    else:
        assert parsed.label in ("normal", "inner_race", "outer_race", "ball")
        assert 0 <= parsed.fault_size_in < 1 and 0 <= parsed.load_hp <= 9


@needs_data
@pytest.mark.realdata
def test_the_config_picks_the_fan_end_accelerometer() -> None:
    from train.config import load_config
    from train.data import build_split

    def split(channel: str):
        overrides = ["data=cwru-4class", f"data_root={DATA}", f"cwru_channel={channel}"]
        return build_split(load_config(None, [*overrides, "labels_per_class=2"]))

    de, fe = split("DE").test, split("FE").test
    assert de.record_ids == fe.record_ids and np.array_equal(de.y, fe.y)  # the same stretches
    assert not np.allclose(de.x, fe.x)  # seen by the other sensor


def test_an_unknown_cwru_channel_is_refused_by_name() -> None:
    from train.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="cwru_channel"):
        load_config(None, ["cwru_channel=XE"])
