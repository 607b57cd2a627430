"""The reference scenario, simulated: a few labeled lab records and a large drifting plant pool.

The lab is one test rig at 1500 rpm with seeded faults at clear severities and a clean sensor.
Production is a fleet of machines at 1200-1800 rpm, mostly healthy, with milder faults and
sensors that drift over months (gain, noise floor, DC offset, occasional clipping). Every
record is a `Record` whose `label` holds the true class; training treats the production pool
as unlabeled, and a labeled production test set is drawn the same way with another seed.
"""

from __future__ import annotations

import numpy as np

from edge_agent.physics.bearing_sim import BearingSimulator, Conditions
from train.records import Record

CLASS_NAMES: tuple[str, ...] = ("normal", "inner_race", "outer_race", "ball")
LAB_RPM = 1500.0
PRODUCTION_RPM = (1200.0, 1800.0)
N_PRODUCTION_MACHINES = 1  # one gearbox, as in the reference
SAMPLE_RATE_HZ = 12_000

_LAB, _PRODUCTION = 1, 2  # seed-stream tags so lab and production never share randomness


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(list(key)))


def _seed(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**31 - 1))


def _check(name: str, value: float, ok: bool, rule: str) -> None:
    if not ok:
        raise ValueError(f"{name} must be {rule}, got {value!r}")


def _simulate(conditions: Conditions, duration_s: float, seed: int, machine: int) -> np.ndarray:
    sim = BearingSimulator(
        conditions, sample_rate_hz=SAMPLE_RATE_HZ, seed=seed, machine_seed=machine
    )
    return sim.read(round(duration_s * SAMPLE_RATE_HZ))


def machine_seed(plant_seed: int, machine: int = 0) -> int:
    """Structure (resonances, gear) of machine `machine` of a plant; machine 0 is the lab's."""
    return _seed(_rng(plant_seed, 3, machine))


def lab_records(
    records_per_class: int, duration_s: float, seed: int, plant_seed: int | None = None
) -> list[Record]:
    """Labeled lab records: one rig at 1500 rpm, load 0..1, severity 0.3..0.9, clean sensor.

    Returns records_per_class * 4 records, grouped by class in CLASS_NAMES order, with ids like
    "lab-s0-ball-003" and meta rpm, load, severity, month (0), machine, condition = "lab".
    """
    _check("records_per_class", records_per_class, records_per_class >= 1, ">= 1")
    _check("duration_s", duration_s, 0 < duration_s <= 3600, "in (0, 3600]")
    lab_machine = machine_seed(seed if plant_seed is None else plant_seed, 0)
    records = []
    for class_index, label in enumerate(CLASS_NAMES):
        for i in range(records_per_class):
            rng = _rng(seed, _LAB, class_index, i)
            conditions = Conditions(
                rpm=LAB_RPM,
                load=float(rng.uniform(0.0, 1.0)),
                fault=label,
                severity=float(rng.uniform(0.3, 0.9)) if label != "normal" else 0.0,
                speed_jitter=0.002,
                slip=float(rng.uniform(0.01, 0.02)),
                noise_floor_g=0.002,
            )
            signal = _simulate(conditions, duration_s, _seed(rng), lab_machine)
            records.append(
                Record(
                    record_id=f"lab-s{seed}-{label}-{i:03d}",
                    signal=signal,
                    sample_rate_hz=SAMPLE_RATE_HZ,
                    label=label,
                    meta=_meta(conditions, month=0.0, machine="lab-rig", condition="lab"),
                )
            )
    return records


def production_records(
    n_records: int,
    duration_s: float,
    seed: int,
    normal_fraction: float = 0.9,
    months: float = 6,
    plant_seed: int | None = None,
    machines: int = N_PRODUCTION_MACHINES,
) -> list[Record]:
    """A plant's pool: rpm 1200-1800, milder faults, sensors drifting over `months`.

    round(n_records * normal_fraction) records are normal, the rest split evenly over the three
    faults, in shuffled order. Each machine of the fleet has its own structure and its own
    drift: gain moves linearly from 1.0 to 0.7..1.3 at `months`, the noise floor rises, a DC
    offset grows, and about 5% of records clip. ids like "prod-s0-00042"; meta rpm, load,
    month, severity, machine, gain, noise_floor_g, dc_offset_g, clip_g, condition="production".
    """
    _check("n_records", n_records, n_records >= 1, ">= 1")
    _check("duration_s", duration_s, 0 < duration_s <= 3600, "in (0, 3600]")
    _check("normal_fraction", normal_fraction, 0 <= normal_fraction <= 1, "in [0, 1]")
    _check("months", months, months >= 0, ">= 0")
    plant = seed if plant_seed is None else plant_seed
    fleet_rng = _rng(plant, _PRODUCTION)
    fleet = [
        {
            "machine_seed": machine_seed(plant, index),
            "final_gain": float(fleet_rng.uniform(0.7, 1.3)),
            "final_dc_g": float(fleet_rng.uniform(-0.05, 0.05)),
            "final_floor_g": float(fleet_rng.uniform(0.005, 0.012)),
        }
        for index in range(machines)
    ]
    order_rng = _rng(seed, _PRODUCTION)
    n_normal = round(n_records * normal_fraction)
    faults = [CLASS_NAMES[1 + i % 3] for i in range(n_records - n_normal)]
    labels = np.array(["normal"] * n_normal + faults)
    order_rng.shuffle(labels)

    records = []
    for i, label in enumerate(labels.tolist()):
        rng = _rng(seed, _PRODUCTION, 1, i)
        machine = int(rng.integers(0, machines))
        drift = fleet[machine]
        month = float(rng.uniform(0, months))
        age = month / months if months > 0 else 0.0
        conditions = Conditions(
            rpm=float(rng.uniform(*PRODUCTION_RPM)),
            load=float(rng.uniform(0.2, 1.0)),
            fault=label,
            severity=float(rng.uniform(0.2, 0.7)) if label != "normal" else 0.0,
            speed_jitter=float(rng.uniform(0.002, 0.01)),
            slip=float(rng.uniform(0.01, 0.02)),
            gain=1.0 + (drift["final_gain"] - 1.0) * age,
            noise_floor_g=0.003 + (drift["final_floor_g"] - 0.003) * age,
            dc_offset_g=drift["final_dc_g"] * age,
            clip_g=float(rng.uniform(0.1, 0.4)) if rng.random() < 0.05 else None,
        )
        signal = _simulate(conditions, duration_s, _seed(rng), drift["machine_seed"])
        records.append(
            Record(
                record_id=f"prod-s{seed}-{i:05d}",
                signal=signal,
                sample_rate_hz=SAMPLE_RATE_HZ,
                label=label,
                meta=_meta(
                    conditions, month=month, machine=f"machine-{machine}", condition="production"
                ),
            )
        )
    return records


def _meta(conditions: Conditions, *, month: float, machine: str, condition: str) -> dict:
    return {
        "rpm": conditions.rpm,
        "load": conditions.load,
        "severity": conditions.severity,
        "month": month,
        "machine": machine,
        "gain": conditions.gain,
        "noise_floor_g": conditions.noise_floor_g,
        "dc_offset_g": conditions.dc_offset_g,
        "clip_g": conditions.clip_g,
        "condition": condition,
    }
