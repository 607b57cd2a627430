"""A plant's own recordings, listed in a manifest (CSV or TOML), loaded as `Record`s in g.

CSV manifest, header row first (row numbers below count the header as row 1):

    path,sample_rate_hz,label,scale_g,column,line
    pump3/2024-05-01.wav,12000,,0.5,0,north
    pump3/2024-05-02.npy,12000,inner_race,,,north

TOML manifest, one table per recording:

    [[recording]]
    path = "pump3/2024-05-01.csv"
    sample_rate_hz = 12000
    column = "accel_x"

path (relative to the manifest's folder) and sample_rate_hz are required. label: a class name,
empty or absent = unlabeled. scale_g: multiplies the samples to get g (default 1.0). column:
the WAV channel / NPY column index, or the CSV column name or index. start_s, end_s (both or
neither): only that stretch of the file, in seconds from its first sample (an excerpt: how a
window `faultwatch train suggest` proposed is labeled). Other keys go to `meta`.
Files: .wav (integer PCM as a fraction of full scale), .npy (1-D, or 2-D with `column`), .csv.

An excerpt is read with EXCERPT_MARGIN_S of the file on each side; `at_rate` resamples it on
the sample grid of its whole file resampled, with no edge transient inside its stretch, and cuts
it to that stretch: a window `suggest` proposed comes back to the sample.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.contract.preprocess import adc_to_g
from train.records import UNLABELED, Record, resampled

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

logger = logging.getLogger(__name__)

FIELDS = ("path", "sample_rate_hz", "label", "scale_g", "column", "start_s", "end_s")
EXCERPT_MARGIN_S = 1.1  # <= 1 s to align any two integer rates' grids (1 / gcd s), 0.1 s filter
SUFFIXES = (".wav", ".npy", ".csv")
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")


def load_manifest(path: Path) -> list[Record]:
    """Every recording listed in a .csv or .toml manifest, as float32 Records in g.

    Raises FileNotFoundError for a missing manifest or recording, ValueError (naming the row or
    entry and the field) for anything malformed.
    """
    records = list(iter_manifest(path))
    labeled = sum(r.label != UNLABELED for r in records)
    logger.info("loaded %d recordings (%d labeled) from %s", len(records), labeled, path)
    return records


def iter_manifest(path: Path) -> Iterator[Record]:
    """The manifest's recordings one at a time (for pools larger than memory); same checks."""
    path = Path(path)
    if path.suffix.lower() not in (".csv", ".toml"):
        raise ValueError(f"manifest {path}: must end in .csv or .toml, got {path.suffix!r}")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"manifest {path} not found") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"manifest {path}: not UTF-8 text ({err})") from None
    except OSError as err:
        raise FileNotFoundError(f"manifest {path}: cannot read ({err})") from None
    entries = (
        _csv_entries(text, path.name)
        if path.suffix.lower() == ".csv"
        else _toml_entries(text, path.name)
    )
    if not entries:
        raise ValueError(f"manifest {path}: lists no recordings")
    seen: dict[str, str] = {}
    for where, entry in entries:
        record = _load_entry(where, entry, path.parent)
        if record.record_id in seen:
            raise ValueError(
                f"{where}: path: {entry['path']!r} (column {entry.get('column')}) is already "
                f"listed in {seen[record.record_id]}"
            )
        seen[record.record_id] = where
        record.meta["manifest"] = path.name
        yield record


def _csv_entries(text: str, name: str) -> list[tuple[str, dict[str, Any]]]:
    try:
        reader = csv.reader(io.StringIO(text, newline=""))
        rows = [(reader.line_num, row) for row in reader]
    except csv.Error as err:
        raise ValueError(f"{name}: not valid CSV ({err})") from None
    if not rows:
        raise ValueError(
            f"{name}: empty manifest; the first row must be a header with path,sample_rate_hz"
        )
    header = [cell.strip() for cell in rows[0][1]]
    for required in ("path", "sample_rate_hz"):
        if required not in header:
            raise ValueError(f"{name} row 1: header must name {required!r}, got {header}")
    duplicated = sorted({h for h in header if header.count(h) > 1})
    if duplicated or "" in header:
        raise ValueError(f"{name} row 1: header has empty or repeated column names {duplicated}")
    entries = []
    for line, row in rows[1:]:
        if not any(cell.strip() for cell in row):
            continue  # blank line
        where = f"{name} row {line}"
        if len(row) > len(header):
            raise ValueError(f"{where}: has {len(row)} cells, the header has {len(header)}")
        row = row + [""] * (len(header) - len(row))  # omitted trailing cells are empty
        entry = {key: cell.strip() for key, cell in zip(header, row, strict=True)}
        entries.append((where, {key: value for key, value in entry.items() if value != ""}))
    return entries


def _toml_entries(text: str, name: str) -> list[tuple[str, dict[str, Any]]]:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{name}: not valid TOML ({err})") from None
    unknown = sorted(set(doc) - {"recording"})
    if unknown:
        raise ValueError(f"{name}: unknown top-level keys {unknown}; use [[recording]] tables")
    tables = doc.get("recording", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ValueError(f"{name}: 'recording' must be an array of tables ([[recording]])")
    return [(f"{name} recording {i}", dict(table)) for i, table in enumerate(tables, start=1)]


def _load_entry(where: str, entry: dict[str, Any], folder: Path) -> Record:
    rel = entry.get("path")
    if not isinstance(rel, str) or not rel.strip() or "\x00" in rel:
        raise ValueError(f"{where}: path: must be a non-empty file path, got {rel!r}")
    rate = _positive_int(where, "sample_rate_hz", entry.get("sample_rate_hz"))
    label = _label(where, entry.get("label", UNLABELED))
    scale = _scale(where, entry.get("scale_g", 1.0))
    column = entry.get("column")
    if column is not None and (isinstance(column, bool) or not isinstance(column, (str, int))):
        raise ValueError(f"{where}: column: must be a name or an index, got {column!r}")
    file = folder / rel
    suffix = file.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"{where}: path: unsupported file type {rel!r}; supported: {SUFFIXES}")
    try:
        is_file = file.is_file()
    except (OSError, ValueError) as err:
        raise ValueError(f"{where}: path: unusable file name {rel!r} ({err})") from None
    if not is_file:
        raise FileNotFoundError(f"{where}: path: recording {file} not found")
    try:
        signal, file_rate = _READERS[suffix](file, column)
    except ValueError as err:
        raise ValueError(f"{where}: {file.name}: {err}") from None
    except Exception as err:  # readers raise assorted types (struct.error, EOFError) on bad files
        raise ValueError(f"{where}: cannot read {file} ({type(err).__name__}: {err})") from None
    if file_rate is not None and file_rate != rate:
        raise ValueError(
            f"{where}: sample_rate_hz: the manifest says {rate} but {file.name} says {file_rate}"
        )
    if signal.size == 0:
        raise ValueError(f"{where}: {file.name}: the recording is empty")
    excerpt = _excerpt(where, entry, signal.size, rate)
    first_s = 0.0
    if excerpt is not None:
        lo = max(0, math.floor((excerpt[0] - EXCERPT_MARGIN_S) * rate))
        hi = min(signal.size, math.ceil((excerpt[1] + EXCERPT_MARGIN_S) * rate))
        signal, first_s = signal[lo:hi], lo / rate
    n_nan = int(np.count_nonzero(np.isnan(signal)))
    n_inf = int(np.count_nonzero(np.isinf(signal)))
    if n_nan or n_inf:
        raise ValueError(
            f"{where}: {file.name}: {n_nan} NaN and {n_inf} infinite samples of {signal.size}; "
            "clean or cut the recording first"
        )
    meta = {key: value for key, value in entry.items() if key not in FIELDS}
    name = rel if column is None else f"{rel}#{column}"
    source_id = str(file.resolve()) + ("" if column is None else f"#{column}")  # across manifests
    meta.update(file=str(file), scale_g=scale, source="manifest", where=where, source_id=source_id)
    meta.update(file_rate_hz=rate, first_s=first_s)  # first_s: the first sample's time in the file
    if column is not None:
        meta["column"] = column
    record_id = name
    if excerpt is not None:
        meta["excerpt_s"] = list(excerpt)
        record_id = f"{name}@{excerpt[0]:g}-{excerpt[1]:g}s"
    return Record(record_id, (signal * scale).astype(np.float32), rate, label, meta)


def is_excerpt(record: Record) -> bool:
    """Whether a manifest row read only a stretch of its file (start_s, end_s)."""
    return "excerpt_s" in record.meta


def manifest_row(record: Record) -> dict[str, Any]:
    """A manifest row that reads `record` again: its file (the path as opened), rate, scale and
    column, its stretch if an excerpt, its label."""
    meta = record.meta
    row = {"path": meta["file"], "sample_rate_hz": meta["file_rate_hz"], "scale_g": meta["scale_g"]}
    if "column" in meta:
        row["column"] = meta["column"]
    if is_excerpt(record):
        row.update(zip(("start_s", "end_s"), (f"{t:.6f}" for t in meta["excerpt_s"]), strict=True))
    return row | ({"label": record.label} if record.label else {})


def at_rate(record: Record, rate: int) -> Record:
    """A manifest record resampled to `rate`; an excerpt on the sample grid of its whole file
    resampled, cut to its exact stretch. ValueError naming the row if the stretch holds no
    sample at that rate."""
    if not is_excerpt(record):
        return resampled(record, rate)
    span = record.meta["excerpt_s"]
    file_rate = record.sample_rate_hz
    first = round(record.meta["first_s"] * file_rate)  # the cut's first sample in the file
    step = file_rate // math.gcd(file_rate, rate)  # file samples per grid point of both rates
    skip = -first % step
    first_s = (first + skip) / file_rate
    aligned = Record(record.record_id, record.signal[skip:], file_rate, record.label, record.meta)
    signal = resampled(aligned, rate).signal
    lo = round((span[0] - first_s) * rate)
    hi = min(signal.shape[0], lo + round((span[1] - span[0]) * rate))
    if hi <= lo:
        raise ValueError(
            f"{record.meta['where']}: start_s, end_s: the excerpt holds no sample at {rate} Hz"
        )
    meta = {**record.meta, "first_s": span[0]}
    return Record(record.record_id, signal[lo:hi], rate, record.label, meta)


def _excerpt(
    where: str, entry: dict[str, Any], n_samples: int, rate: int
) -> tuple[float, float] | None:
    """(start_s, end_s) of an excerpt row, None for a whole file; ValueError naming the field."""
    duration_s = n_samples / rate
    given = [key for key in ("start_s", "end_s") if key in entry]
    if not given:
        return None
    if len(given) == 1:
        missing = "end_s" if given == ["start_s"] else "start_s"
        raise ValueError(f"{where}: {missing}: an excerpt needs both start_s and end_s")
    start, end = (_seconds(where, key, entry[key]) for key in ("start_s", "end_s"))
    if (end - start) * rate < 1:
        raise ValueError(
            f"{where}: end_s: must be at least one sample after start_s ({start:g}), got {end:g}"
        )
    if end > duration_s * (1 + 1e-9):
        raise ValueError(
            f"{where}: end_s: {end:g} s is past the end of the file ({duration_s:g} s)"
        )
    return start, end


def _seconds(where: str, field: str, value: Any) -> float:
    try:
        seconds = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{where}: {field}: must be a number of seconds >= 0, got {value!r}")
    return seconds


def _positive_int(where: str, field: str, value: Any) -> int:
    number = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif (isinstance(value, float) and value.is_integer() and abs(value) < 1e9) or (
        isinstance(value, str) and re.fullmatch(r"\+?\d{1,9}", value.strip())
    ):
        number = int(value)
    if number is None or number <= 0:
        raise ValueError(f"{where}: {field}: must be a positive integer, got {value!r}")
    return number


def _label(where: str, value: Any) -> str:
    if not isinstance(value, str) or (value and not _LABEL.fullmatch(value.strip())):
        raise ValueError(
            f"{where}: label: must be a class name (letters, digits, _ . -) or empty for "
            f"unlabeled, got {value!r}"
        )
    return value.strip()


def _scale(where: str, value: Any) -> float:
    try:
        scale = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        scale = math.nan
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"{where}: scale_g: must be a finite number > 0, got {value!r}")
    return scale


def _index(column: str | int | None, n_columns: int, what: str) -> int:
    if column is None:
        if n_columns == 1:
            return 0
        raise ValueError(f"has {n_columns} {what}s; set `column` to pick one")
    try:
        index = int(column)
    except ValueError:
        raise ValueError(f"column: {what} index must be an integer, got {column!r}") from None
    if not 0 <= index < n_columns:
        raise ValueError(f"column: {what} {index} does not exist (the file has {n_columns})")
    return index


def _read_wav(file: Path, column: str | int | None) -> tuple[np.ndarray, int]:
    """(samples as a fraction of full scale, the file's sample rate)."""
    from scipy.io import wavfile

    file_rate, data = wavfile.read(file)
    data = data if data.ndim == 2 else data[:, None]
    x = data[:, _index(column if column is not None else 0, data.shape[1], "channel")]
    if x.dtype == np.uint8:  # 8-bit WAV is unsigned, centred on 128
        return (x.astype(np.float32) - 128.0) / 128.0, file_rate
    fraction = adc_to_g(x, sensitivity_mv_per_g=1000.0, full_scale_volts=1.0)  # 1 V/g, 1 V FS
    return fraction, file_rate


def _read_npy(file: Path, column: str | int | None) -> tuple[np.ndarray, None]:
    data = np.load(file, allow_pickle=False)
    if not isinstance(data, np.ndarray) or data.dtype.kind not in "iuf":
        raise ValueError(f"must hold a numeric array, got {getattr(data, 'dtype', type(data))}")
    if data.ndim == 1 and column is None:
        return data.astype(np.float32), None
    if data.ndim != 2:
        raise ValueError(f"must be 1-D, or 2-D (samples, columns) with `column`, got {data.shape}")
    return data[:, _index(column, data.shape[1], "column")].astype(np.float32), None


def _read_csv(file: Path, column: str | int | None) -> tuple[np.ndarray, None]:
    with file.open(newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.reader(handle) if any(cell.strip() for cell in row)]
    if not rows:
        return np.zeros(0, dtype=np.float32), None
    has_header = not all(_is_number(cell) for cell in rows[0])
    header = [cell.strip() for cell in rows[0]] if has_header else []
    body = rows[1:] if has_header else rows
    if isinstance(column, str) and column in header:
        index = header.index(column)
    else:
        index = _index(column, len(rows[0]), "column")
    cells = [row[index] if index < len(row) else "" for row in body]
    try:
        return np.array(cells, dtype=np.float64).astype(np.float32), None
    except ValueError:
        bad = next(i for i, cell in enumerate(cells) if not _is_number(cell))
        line = bad + 1 + has_header
        raise ValueError(f"line {line}, column {index}: not a number: {cells[bad]!r}") from None


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


_READERS = {".wav": _read_wav, ".npy": _read_npy, ".csv": _read_csv}
