"""The embeddings behind on-device calibration: recent windows, the labeled set, recordings.

- `EmbeddingLog`: a fixed-size numpy ring of the last `capacity` windows that passed the sensor
  checks: raw encoder embedding (D,), window end time (s, epoch), the label the agent gave it
  and, when kept, the window's spectral view (`view_bands`, float16) for a device template.
  Memory is capacity x (D x 4 + view_bands x 2) bytes plus 10 bytes a row: the default 20,000
  rows (about 28 min at 12 kHz with a hop of 1024 samples; 14 min with a hop of 512) cost 10 MB
  at D = 128, and 20 MB more with 512-band views. A whole shift does not fit: label a time range
  soon after it happened.
- `CalibrationSet`: the labeled embeddings (and spectral views: NaN where a window had none) an
  operator has collected on this device, kept in `state_dir/calibration_set.npz` (written
  atomically) for one bundle model version; labeling the same window again replaces its label.
- `embed_recordings()`: windows of recordings on the device (WAV/NPY/CSV, read by the replay
  source) through the sensor checks, the encoder and the spectral view.
- `calibrate_with_set()`: add rows to the set, refit the head on the whole set
  (`calibration.calibrate`, held out by time), give it a device template where one helps
  (`calibration.device_template`) and commit it to the HeadStore when accepted.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from edge_agent.backends import Backend
from edge_agent.calibration.headstore import CommitMeta, HeadStore
from edge_agent.calibration.refit import CalibrationResult, calibrate
from edge_agent.config import FileSourceConfig, SensorConfig
from edge_agent.contract.bundle import Manifest
from edge_agent.contract.durable import atomic_write
from edge_agent.contract.preprocess import PreprocessSpec, frame, normalize
from edge_agent.physics.spectral import BANDS, spectral_view
from edge_agent.pipeline.head import Head
from edge_agent.pipeline.sanity import check_window
from edge_agent.sources.base import SourceError
from edge_agent.sources.replay import ReplaySource

logger = logging.getLogger(__name__)

UNCERTAIN_CODE = -1  # label code of a window the head was not sure about
UNKNOWN_CODE = -2  # label code of a window unlike every trained class (open set)
CALIBRATION_SET_FILE = "calibration_set.npz"
MAX_CALIBRATION_ROWS = 50_000  # oldest rows go first beyond this


class EmbeddingLog:
    """Ring of (embedding (D,) float32, end time float64 s, label int16, spectral view
    (view_bands,) float16) for recent windows; view_bands 0 keeps no views.

    Label codes: a class index, or UNCERTAIN_CODE. `append` copies into preallocated arrays.
    """

    def __init__(self, capacity: int, dim: int, view_bands: int = 0) -> None:
        if capacity < 1 or dim < 1 or view_bands < 0:
            raise ValueError(
                "EmbeddingLog needs capacity >= 1, dim >= 1 and view_bands >= 0, got "
                f"{capacity=}, {dim=}, {view_bands=}"
            )
        self.capacity, self.dim, self.view_bands = int(capacity), int(dim), int(view_bands)
        self._emb = np.zeros((self.capacity, self.dim), dtype=np.float32)
        self._t = np.zeros(self.capacity, dtype=np.float64)
        self._labels = np.zeros(self.capacity, dtype=np.int16)
        self._views = np.zeros((self.capacity, self.view_bands), dtype=np.float16)
        self._next = 0  # slot of the next row
        self._count = 0

    def __len__(self) -> int:
        return self._count

    @property
    def nbytes(self) -> int:
        return self._emb.nbytes + self._t.nbytes + self._labels.nbytes + self._views.nbytes

    def append(
        self, emb: np.ndarray, t: np.ndarray, labels: np.ndarray, views: np.ndarray | None = None
    ) -> None:
        """Add rows: emb (n, D), t (n,) end times (s), labels (n,) codes, views (n, view_bands)
        (None: NaN rows where views are kept); overwrites the oldest."""
        n = len(t)
        if n == 0:
            return
        if views is None:
            views = np.full((n, self.view_bands), np.nan, np.float16)
        if emb.shape != (n, self.dim) or len(labels) != n or views.shape != (n, self.view_bands):
            raise ValueError(
                f"append needs emb ({n}, {self.dim}), {n} labels and views ({n}, "
                f"{self.view_bands}), got {emb.shape}, {len(labels)} and {views.shape}"
            )
        rows = [emb, t, labels, views]
        if n > self.capacity:
            rows = [a[-self.capacity :] for a in rows]
            n = self.capacity
        first = min(n, self.capacity - self._next)
        for dst, src in zip((self._emb, self._t, self._labels, self._views), rows, strict=True):
            dst[self._next : self._next + first] = src[:first]
            dst[: n - first] = src[first:]
        self._next = (self._next + n) % self.capacity
        self._count = min(self._count + n, self.capacity)

    def time_range(self) -> tuple[float, float] | None:
        """(first, last) window end time held, or None when empty."""
        if not self._count:
            return None
        t = self._t[: self._count]
        return float(t.min()), float(t.max())

    def select(
        self, t_from: float, t_to: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Copies of the rows whose end time is in [t_from, t_to], oldest first: emb, t, labels,
        views (n, view_bands) float32."""
        t = self._t[: self._count]
        idx = np.flatnonzero((t >= t_from) & (t <= t_to))
        idx = idx[np.argsort(t[idx], kind="stable")]
        views = self._views[idx].astype(np.float32)
        return self._emb[idx].copy(), t[idx].copy(), self._labels[idx].copy(), views


class CalibrationSet:
    """Labeled embeddings for one bundle model version, persisted in `path` (npz, no pickle).

    A file made for another model version, class list or embedding size is ignored (logged) and
    replaced at the next `add`: embeddings of another encoder mean nothing to this one.
    """

    def __init__(
        self,
        path: Path,
        model_version: str,
        class_names: Sequence[str],
        dim: int,
        max_rows: int = MAX_CALIBRATION_ROWS,
    ) -> None:
        self.path = Path(path)
        self.model_version = model_version
        self.class_names = list(class_names)
        self.dim = int(dim)
        self.max_rows = int(max_rows)
        self.emb = np.zeros((0, self.dim), dtype=np.float32)
        self.t = np.zeros(0, dtype=np.float64)
        self.labels = np.zeros(0, dtype=np.int64)
        self.views = np.zeros((0, BANDS), dtype=np.float16)  # NaN rows: no view
        self._load()

    def __len__(self) -> int:
        return len(self.t)

    def counts(self) -> dict[str, int]:
        """Rows per class name (classes with rows only)."""
        found = np.bincount(self.labels, minlength=len(self.class_names))
        return {name: int(c) for name, c in zip(self.class_names, found, strict=True) if c}

    def _load(self) -> None:
        if not self.path.is_file():
            return
        try:
            with np.load(self.path, allow_pickle=False) as data:
                version = str(data["model_version"])
                names = [str(n) for n in data["class_names"]]
                emb, t, labels = data["emb"], data["t"], data["labels"]
                views = data["views"] if "views" in data.files else None  # older sets: none
        except Exception as exc:  # truncated file, missing keys: start over, never crash
            logger.warning(
                "%s is unreadable (%s); starting an empty calibration set", self.path, exc
            )
            return
        if (
            version != self.model_version
            or names != self.class_names
            or emb.shape[1:] != (self.dim,)
        ):
            logger.info(
                "%s holds %d rows for model %s %s; starting an empty set for model %s",
                self.path, len(t), version, names, self.model_version,
            )  # fmt: skip
            return
        self.emb = emb.astype(np.float32)
        self.t = t.astype(np.float64)
        self.labels = labels.astype(np.int64)
        self.views = self._as_views(views, len(t))

    def add(
        self, emb: np.ndarray, t: np.ndarray, labels: np.ndarray, views: np.ndarray | None = None
    ) -> int:
        """Add rows (emb (n, D), t (n,), labels (n,) class indices, views (n, bands) or None)
        and save; returns n.

        A row whose time equals a stored row's replaces it (the newest label wins).
        """
        emb = np.asarray(emb, dtype=np.float32).reshape(-1, self.dim)
        t = np.asarray(t, dtype=np.float64)
        labels = np.asarray(labels, dtype=np.int64)
        views = self._as_views(views, len(t))
        keep = ~np.isin(self.t, t)
        self.emb = np.concatenate([self.emb[keep], emb])
        self.t = np.concatenate([self.t[keep], t])
        self.labels = np.concatenate([self.labels[keep], labels])
        self.views = np.concatenate([self.views[keep], views])
        if len(self.t) > self.max_rows:
            newest = np.sort(np.argsort(self.t, kind="stable")[-self.max_rows :])
            self.emb, self.t = self.emb[newest], self.t[newest]
            self.labels, self.views = self.labels[newest], self.views[newest]
        self.save()
        return len(t)

    @staticmethod
    def _as_views(views: np.ndarray | None, n: int) -> np.ndarray:
        """(n, BANDS) float16 views; NaN rows where none (or of another width) were given."""
        if views is None or np.shape(views) != (n, BANDS):
            return np.full((n, BANDS), np.nan, np.float16)
        return np.asarray(views, np.float16)

    def save(self) -> None:
        buffer = io.BytesIO()
        np.savez(
            buffer,
            emb=self.emb,
            t=self.t,
            labels=self.labels,
            views=self.views,
            model_version=np.array(self.model_version),
            class_names=np.array(self.class_names),
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, buffer.getvalue())


def embed_recordings(
    paths: Sequence[Path],
    sensor: SensorConfig,
    manifest: Manifest,
    backend: Backend,
    batch_windows: int = 8,
    *,
    rate_hz: int | None = None,
    max_windows: int | None = None,
    start_s: float | None = None,
    end_s: float | None = None,
) -> Embedded:
    """Embeddings and spectral views of the windows of the recordings that pass the sensor checks.

    Each file is read like a `file` source and resampled to the bundle's rate with the live
    source's resampler: a WAV at its header's rate (`rate_hz`, when given, must agree), NPY/CSV at
    `rate_hz`, which they cannot carry themselves (SourceError naming the file without it).
    Integer and WAV data are scaled with `sensor`. `max_windows`: at most this many windows per
    file, spread evenly over it (an operator labels a few windows). `start_s`, `end_s`: only the
    windows wholly inside that stretch of each file (seconds from its start; unset: its start,
    its end), cut after resampling the whole file. Window end times are taken from the file's
    mtime as the end of the recording. SourceError for an unreadable or too-short file, or a
    stretch past its end or shorter than one window.
    """
    spec = manifest.preprocessing.spec()
    embs, times, views, rejected = [], [], [], 0
    for path in paths:
        path = Path(path)
        if path.suffix.lower() != ".wav" and rate_hz is None:
            raise SourceError(
                f"{path}: {path.suffix} files do not carry their sample rate; give it (--rate-hz "
                f"in the CLI, rate_hz in the calibrate command); the bundle runs at "
                f"{spec.sample_rate_hz} Hz and the recording is resampled to it"
            )
        cfg = FileSourceConfig(
            type="file",
            path=path,
            sample_rate_hz=rate_hz,
            realtime=False,
            resample=True,
        )
        g = ReplaySource(cfg, sensor, spec.sample_rate_hz).samples_g
        if len(g) < spec.window:
            raise SourceError(
                f"{path}: {len(g)} samples at {spec.sample_rate_hz} Hz, shorter than one window "
                f"({spec.window}); record longer"
            )
        windows = frame(g, spec.window, spec.hop)
        positions = stretch_windows(path, len(g), spec, start_s, end_s)  # window index in the file
        windows = windows[positions]
        if max_windows is not None and len(windows) > max_windows:
            spread = np.linspace(0, len(windows) - 1, max_windows).round().astype(int)
            positions, windows = positions[spread], windows[spread]
        ok = np.array(
            [
                check_window(
                    w, clip_g=sensor.clip_g, min_rms_g=sensor.min_rms_g, max_rms_g=sensor.max_rms_g
                ).ok
                for w in windows
            ]
        )
        rejected += int((~ok).sum())
        good = np.flatnonzero(ok)
        start = path.stat().st_mtime - len(g) / spec.sample_rate_hz
        for i in range(0, len(good), batch_windows):
            idx = good[i : i + batch_windows]
            embs.append(backend.embed(normalize(windows[idx], spec.normalization)))
            views.append(spectral_view(windows[idx]))
            end = positions[idx] * spec.hop + spec.window - 1
            times.append(start + end / spec.sample_rate_hz)
    if not embs:
        empty = np.zeros((0, manifest.embedding_dim), np.float32)
        return Embedded(empty, np.zeros(0), np.zeros((0, BANDS), np.float32), rejected)
    return Embedded(np.concatenate(embs), np.concatenate(times), np.concatenate(views), rejected)


def stretch_windows(
    path: Path, samples: int, spec: PreprocessSpec, start_s: float | None, end_s: float | None
) -> np.ndarray:
    """Indices of the windows of a `samples`-long recording lying wholly in [start_s, end_s]
    (s; None: its start, its end); SourceError naming `path` for a stretch it cannot give."""
    rate = spec.sample_rate_hz
    duration = samples / rate
    start = 0.0 if start_s is None else float(start_s)
    end = duration if end_s is None else float(end_s)
    if not (0.0 <= start < end):
        raise SourceError(f"{path}: the stretch {start:g}-{end:g} s needs 0 <= start < end")
    if end > duration + 0.5 / rate:
        raise SourceError(
            f"{path}: the stretch ends at {end:g} s, past the recording's {duration:.3f} s"
        )
    first = math.ceil(start * rate / spec.hop - 1e-9)
    last = math.floor((min(end * rate, samples) - spec.window) / spec.hop + 1e-9)
    if last < first:
        raise SourceError(
            f"{path}: the stretch {start:g}-{end:g} s holds no whole window "
            f"({spec.window / rate:.3f} s); give a longer one"
        )
    return np.arange(first, last + 1)


class Embedded(NamedTuple):
    """Windows of recordings as calibration sees them."""

    emb: np.ndarray  # (N, D) encoder embeddings
    t: np.ndarray  # (N,) window end times, s
    views: np.ndarray  # (N, bands) spectral views
    rejected: int  # windows that failed the sensor checks


@dataclass(frozen=True)
class CalibrationOutcome:
    """What `calibrate_with_set` did: the refit result, the head version in use afterwards."""

    result: CalibrationResult
    head_version: int
    added: int
    set_counts: dict[str, int]

    def summary(self) -> dict[str, Any]:
        """JSON-able figures for a command result or the CLI."""
        r = self.result
        return {
            "accepted": r.accepted,
            "accuracy_before": round(r.accuracy_before, 4),
            "accuracy_after": round(r.accuracy_after, 4),
            "n_train": r.n_train,
            "n_holdout": r.n_holdout,
            "head_version": self.head_version,
            "added": self.added,
            "set_counts": self.set_counts,
            "reason": r.reason,
        }


def calibrate_with_set(
    store: HeadStore,
    factory: Head,
    calibration_set: CalibrationSet,
    emb: np.ndarray,
    t: np.ndarray,
    labels: np.ndarray,
    views: np.ndarray | None = None,
) -> CalibrationOutcome:
    """Add labeled rows (with their spectral views, if any) to the set, refit the current head
    and a device template on the whole set, commit if accepted.

    Checked by blocks in time (`calibration.calibrate`). ValueError (from calibrate) for unusable
    rows; the added rows stay in the set either way.
    """
    s = calibration_set
    added = s.add(emb, t, labels, views)
    version, current = store.current()
    result = calibrate(current, factory, s.emb, s.labels, views=s.views, order=s.t)
    if result.accepted:
        meta = CommitMeta(
            accuracy_before=result.accuracy_before,
            accuracy_after=result.accuracy_after,
            n_samples=len(calibration_set),
            note=result.reason,
        )
        version = store.commit(result.head, meta)
    return CalibrationOutcome(result, version, added, calibration_set.counts())
