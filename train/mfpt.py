"""MFPT bearing data: a third real machine beside CWRU's two accelerometers, for benchmarks.

The Society for Machinery Failure Prevention Technology's bearing set, as MathWorks republished
it (https://github.com/mathworks/RollingElementBearingFaultDiagnosis-Data, CC BY-NC-SA 4.0, so
never copied into this repository): seven inner-race and seven outer-race fault records at
radial loads of 0-300 lbs, 3 s each at 48,828 Hz, shaft at 25 Hz, acceleration in g. Clone it to
`<data_root>/mfpt`. `load_mfpt()` reads every `*Fault_vload_*.mat` below the folder
(train_data/ and test_data/ alike: the tasks make their own splits); the baselines and the
270 lbs outer-race records are not read.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from edge_agent.contract.preprocess import resample
from edge_agent.physics.bearing_sim import BearingGeometry
from train.records import Record

# the MFPT test rig's bearing: 8 rollers of 0.235 in on a 1.245 in pitch, 0 deg contact
# (BPFO 3.245 and BPFI 4.755 x shaft: 81.1 and 118.9 Hz at 25 Hz, as the data set states)
MFPT_GEOMETRY = BearingGeometry(
    n_balls=8, ball_diameter_mm=0.235 * 25.4, pitch_diameter_mm=1.245 * 25.4
)
MFPT_SOURCE = "https://github.com/mathworks/RollingElementBearingFaultDiagnosis-Data"
_NAME = re.compile(r"(?P<kind>Inner|Outer)RaceFault_vload_(?P<n>\d+)\.mat$")
_LABELS = {"Inner": "inner_race", "Outer": "outer_race"}


def mfpt_root(data_root: Path) -> Path:
    return data_root / "mfpt"


def load_mfpt(root: Path, sample_rate_hz: int | None = None) -> list[Record]:
    """Every MFPT varying-load fault record below `root` as a Record in g (resampled to
    `sample_rate_hz` when given), meta: rpm, load_lbs, file. Raises FileNotFoundError when
    `root` holds none, ValueError naming the file for one that cannot be read."""
    files = sorted(p for p in Path(root).rglob("*.mat") if _NAME.search(p.name))
    if not files:
        raise FileNotFoundError(
            f"no MFPT records (*RaceFault_vload_*.mat) under {root}; clone {MFPT_SOURCE} there"
        )
    return [_record(p, sample_rate_hz) for p in files]


def _record(path: Path, rate: int | None) -> Record:
    import scipy.io

    kind = _NAME.search(path.name)["kind"]  # type: ignore[index]
    try:
        bearing = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)["bearing"]
        signal = np.asarray(bearing.gs, np.float32).ravel()
        fs, shaft_hz, load = float(bearing.sr), float(bearing.rate), float(bearing.load)
    except Exception as exc:  # a pointer file, a truncated download, another layout
        raise ValueError(f"{path}: not an MFPT record (bearing.gs/sr/rate/load): {exc}") from exc
    if not (signal.size and np.isfinite(signal).all() and fs > 0 and shaft_hz > 0):
        raise ValueError(f"{path}: empty or non-finite signal, or a rate that is not > 0")
    if rate is not None and round(fs) != rate:
        signal = resample(signal, round(fs), rate)
        fs = rate
    meta = {"rpm": shaft_hz * 60, "load_lbs": int(load), "file": path.name}
    record_id = f"mfpt-{kind[0]}R-{int(load)}"
    return Record(record_id, signal, round(fs), _LABELS[kind], meta)
