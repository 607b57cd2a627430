"""Case Western Reserve University bearing data: the shared .npz copy and the original .mat files.

`load_cwru()` reads `<root>/cwru/12k_DE/*.npz` and `<root>/cwru/normal/*.npz` (layout in
shared/datasets/README.md) into `Record`s at one sample rate. `load_cwru_mat()` and
`load_cwru_folder()` read the data center's own `.mat` downloads. Labels are the fault
location ("normal", "inner_race", "outer_race", "ball"); `size_label()` adds the fault size.
"""

from __future__ import annotations

import logging
import math
import os
import re
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_agent.contract.preprocess import resample
from train.records import Record

logger = logging.getLogger(__name__)

LOCATION_LABELS: dict[str, str] = {
    "normal": "normal",
    "IR": "inner_race",
    "OR": "outer_race",
    "B": "ball",
}
_LABEL_CODES = {label: code for code, label in LOCATION_LABELS.items()}
NOMINAL_RPM_BY_LOAD_HP: dict[int, float] = {0: 1797.0, 1: 1772.0, 2: 1750.0, 3: 1730.0}
CHANNELS = ("DE", "FE")
_NPZ_KEYS = ("fs", "rpm", "fault_location", "fault_size_in", "load_hp", "file_number")
_NAME = re.compile(
    r"(?:(?P<normal>normal)|(?P<loc>IR|OR|B)(?P<size>\d{3})(?:(?:@|at)(?P<pos>\d{1,2}))?)"
    r"_(?P<load>\d)_(?P<num>\d{1,4})",
    re.IGNORECASE,
)


def default_data_root() -> Path:
    """$FAULTWATCH_DATA if set, else `<repo root>/../shared/datasets`."""
    env = os.environ.get("FAULTWATCH_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


@dataclass(frozen=True)
class CwruName:
    """What a conventional CWRU file name says, e.g. `OR021@6_3_237.mat`."""

    location: str  # "normal", "IR", "OR" or "B"
    fault_size_in: float
    load_hp: int
    file_number: int
    or_position: str = ""  # "@6", "@3", "@12" for outer race faults

    @property
    def label(self) -> str:
        return LOCATION_LABELS[self.location]


def parse_cwru_name(name: str) -> CwruName:
    """Parse `IR007_1_106.mat`, `B014_0_185`, `OR021@6_3_237.npz`, `Normal_0_97.mat`, ...

    Raises ValueError naming the file when it does not follow that convention.
    """
    stem = Path(str(name)).name
    for suffix in (".mat", ".npz"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    match = _NAME.fullmatch(stem)
    if match is None:
        raise ValueError(
            f"cannot read label/size/load from file name {name!r}: expected the CWRU convention "
            "like 'IR007_1_106.mat', 'B014_0_185.mat', 'OR021@6_3_237.mat' or "
            "'Normal_0_97.mat'; pass label=, fault_size_in= and load_hp= explicitly instead"
        )
    if match["normal"]:
        location, size = "normal", 0.0
    else:
        location, size = match["loc"].upper(), int(match["size"]) / 1000
    position = f"@{int(match['pos'])}" if match["pos"] else ""
    return CwruName(location, size, int(match["load"]), int(match["num"]), position)


def size_label(record: Record) -> str:
    """10-class name: "normal" or f"{location}_{thousandths:03d}", e.g. "inner_race_007"."""
    if record.label == "normal":
        return "normal"
    size = record.meta.get("fault_size_in")
    if record.label not in _LABEL_CODES or not isinstance(size, (int, float)):
        raise ValueError(
            f"record {record.record_id}: size_label needs a CWRU fault label and "
            f"meta['fault_size_in'], got label={record.label!r}, fault_size_in={size!r}"
        )
    return f"{record.label}_{round(size * 1000):03d}"


def load_cwru(
    root: Path | None = None, *, sample_rate_hz: int = 12_000, channel: str = "DE"
) -> list[Record]:
    """All CWRU records (the normal one first, then fault files by name) at `sample_rate_hz`.

    root: the datasets folder holding `cwru/` (default `default_data_root()`).
    """
    _check_channel(channel)
    root = Path(root) if root is not None else default_data_root()
    folders = [root / "cwru" / "normal", root / "cwru" / "12k_DE"]
    for folder in folders:
        if not folder.is_dir():
            raise FileNotFoundError(
                f"CWRU folder {folder} not found: expected cwru/normal/*.npz and "
                "cwru/12k_DE/*.npz under the datasets root; set FAULTWATCH_DATA or pass root="
            )
    files = [path for folder in folders for path in sorted(folder.glob("*.npz"))]
    if not files:
        raise FileNotFoundError(f"no .npz files in {folders[0]} or {folders[1]}")
    records = [_load_npz(path, sample_rate_hz, channel) for path in files]
    logger.info("loaded %d CWRU records from %s", len(records), root / "cwru")
    return records


def _load_npz(path: Path, sample_rate_hz: int, channel: str) -> Record:
    try:
        with np.load(path, allow_pickle=False) as data:
            names = set(data.files)
            scalars = {
                key: data[key] for key in (*_NPZ_KEYS, "or_position", "fs_12k") if key in names
            }
            copy_12k = f"{channel}_12k"  # the provided 12 kHz copy of the 48 kHz normal record
            use_copy = copy_12k in names and int(scalars.get("fs_12k", 0)) == sample_rate_hz
            key = copy_12k if use_copy else channel
            signal = data[key] if key in names else None
    except (
        OSError,
        EOFError,
        ValueError,
        TypeError,
        KeyError,
        zipfile.BadZipFile,
        zlib.error,
    ) as err:
        raise ValueError(f"{path}: not a readable CWRU .npz ({err}); re-copy the file") from err
    missing = [key for key in (channel, *_NPZ_KEYS) if key not in names]
    if missing:
        raise ValueError(
            f"{path}: missing keys {missing}; found {sorted(names)} "
            "(see shared/datasets/README.md for the expected keys)"
        )
    location = str(scalars["fault_location"])
    if location not in LOCATION_LABELS:
        raise ValueError(
            f"{path}: unknown fault_location {location!r}; valid: {list(LOCATION_LABELS)}"
        )
    try:
        meta = {
            "fault_location": location,
            "fault_size_in": round(float(scalars["fault_size_in"]), 4),
            "load_hp": int(scalars["load_hp"]),
            "rpm": float(scalars["rpm"]),
            "file_number": int(scalars["file_number"]),
            "or_position": str(scalars.get("or_position", "")),
            "file": path.name,
            "channel": channel,
            "source": "cwru",
            "condition": "cwru",
        }
        fs = sample_rate_hz if use_copy else int(scalars["fs"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: malformed metadata ({err}); re-copy the file") from err
    return _record(signal, fs, sample_rate_hz, location, meta, path)


def load_cwru_mat(
    path: Path,
    *,
    sample_rate_hz_of_file: int,
    sample_rate_hz: int = 12_000,
    channel: str = "DE",
    label: str | None = None,
    fault_size_in: float | None = None,
    load_hp: int | None = None,
) -> Record:
    """One original data-center `.mat` file (keys like `X097_DE_time`, `X097RPM`) as a Record.

    label/fault_size_in/load_hp default to what the file name says (`IR007_1_106.mat`);
    label may be a class name ("inner_race") or a CWRU code ("IR").
    """
    _check_channel(channel)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CWRU .mat file {path} not found")
    if sample_rate_hz_of_file <= 0:
        raise ValueError(f"sample_rate_hz_of_file must be > 0, got {sample_rate_hz_of_file!r}")
    try:
        parsed: CwruName | None = parse_cwru_name(path.name)
        name_error = None
    except ValueError as err:
        parsed, name_error = None, err
    if label is not None:
        location = _location(label, path)
    elif parsed is not None:
        location = parsed.location
    else:
        raise ValueError(f"{path}: no label= given and {name_error}")
    if fault_size_in is None:
        if location != "normal" and parsed is None:
            raise ValueError(f"{path}: no fault_size_in= given and {name_error}")
        fault_size_in = parsed.fault_size_in if parsed is not None else 0.0
    if load_hp is None and parsed is not None:
        load_hp = parsed.load_hp

    data = _read_mat(path)
    signal_key = _pick_key(data, f"_{channel}_time", path, parsed)
    rpm_keys = sorted(key for key in data if key.endswith("RPM"))
    try:
        signal = np.asarray(data[signal_key], dtype=np.float64).ravel()
        rpm_values = np.asarray(data[rpm_keys[0]], dtype=np.float64).ravel() if rpm_keys else []
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: {signal_key} or RPM is not numeric ({err})") from err
    if len(rpm_values):
        rpm = float(rpm_values[0])
    else:
        rpm = NOMINAL_RPM_BY_LOAD_HP.get(load_hp, math.nan) if load_hp is not None else math.nan
        logger.warning("%s: no RPM key; using nominal %.0f rpm for load %s", path, rpm, load_hp)
    key_number = re.match(r"X(\d+)", signal_key)
    meta = {
        "fault_location": location,
        "fault_size_in": round(float(fault_size_in), 4),
        "load_hp": load_hp,
        "rpm": rpm,
        "file_number": parsed.file_number if parsed else int(key_number[1]) if key_number else None,
        "or_position": parsed.or_position if parsed else "",
        "file": path.name,
        "channel": channel,
        "source": "cwru-mat",
        "condition": "cwru",
    }
    return _record(signal, sample_rate_hz_of_file, sample_rate_hz, location, meta, path)


def load_cwru_folder(
    folder: Path,
    sample_rate_hz_of_file: int,
    *,
    sample_rate_hz: int = 12_000,
    channel: str = "DE",
) -> list[Record]:
    """Every `*.mat` in `folder` (sorted by name), labels parsed from the file names."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"CWRU .mat folder {folder} not found")
    files = sorted(folder.glob("*.mat"))
    if not files:
        raise FileNotFoundError(f"no .mat files in {folder}")
    return [
        load_cwru_mat(
            path,
            sample_rate_hz_of_file=sample_rate_hz_of_file,
            sample_rate_hz=sample_rate_hz,
            channel=channel,
        )
        for path in files
    ]


def _check_channel(channel: str) -> None:
    if channel not in CHANNELS:
        raise ValueError(f"channel must be one of {CHANNELS}, got {channel!r}")


def _location(label: str, path: Path) -> str:
    if label in _LABEL_CODES:
        return _LABEL_CODES[label]
    code = label.upper() if label.lower() != "normal" else "normal"
    if code in LOCATION_LABELS:
        return code
    raise ValueError(
        f"{path.name}: label must be one of {list(_LABEL_CODES)} or a CWRU code "
        f"{list(LOCATION_LABELS)}, got {label!r}"
    )


def _read_mat(path: Path) -> dict:
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    try:
        return loadmat(path)
    except (MatReadError, OSError, ValueError, TypeError, EOFError, KeyError) as err:
        raise ValueError(f"{path}: not a readable MATLAB file ({err}); re-download it") from err


def _pick_key(data: dict, suffix: str, path: Path, parsed: CwruName | None) -> str:
    keys = sorted(key for key in data if key.endswith(suffix))
    if not keys:
        found = sorted(key for key in data if not key.startswith("__"))
        raise ValueError(f"{path}: no variable ending in {suffix!r}; found {found}")
    if len(keys) > 1 and parsed is not None:
        wanted = [key for key in keys if key.startswith(f"X{parsed.file_number:03d}_")]
        if wanted:
            return wanted[0]
    if len(keys) > 1:
        logger.warning("%s: several %s variables %s; using %s", path, suffix, keys, keys[0])
    return keys[0]


def _record(
    signal: np.ndarray, fs: int, sample_rate_hz: int, location: str, meta: dict, path: Path
) -> Record:
    if signal is None or fs <= 0:
        raise ValueError(f"{path}: no signal or a bad sample rate ({fs} Hz)")
    try:
        signal = np.asarray(signal, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: the signal is not numeric ({err})") from err
    if signal.ndim != 1 or signal.size == 0:
        raise ValueError(f"{path}: signal must be 1-D and non-empty, got shape {signal.shape}")
    bad = int(np.count_nonzero(~np.isfinite(signal)))
    if bad:
        raise ValueError(f"{path}: signal has {bad} NaN/inf samples of {signal.size}")
    signal = resample(signal, int(fs), sample_rate_hz)
    if meta["load_hp"] is None or meta["file_number"] is None:
        record_id = f"cwru-{path.stem}"
    else:
        size = round(meta["fault_size_in"] * 1000)
        name = "Normal" if location == "normal" else f"{location}{size:03d}"
        record_id = f"cwru-{name}-{meta['load_hp']}-{meta['file_number']}"
    return Record(record_id, signal, sample_rate_hz, LOCATION_LABELS[location], meta)
