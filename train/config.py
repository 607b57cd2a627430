"""One flat, frozen training config. TOML files and CLI overrides set fields by name.

Defaults are the reference recipe (SimCLR, NT-Xent at temperature 0.5, batch 128, 100 epochs;
head 128->64->C with dropout 0.3; probe at 1e-3 then end-to-end at 1e-4).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edge_agent.contract.wire import error_lines

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PHYSICAL_AUGMENTATIONS = ("time_mask", "gain", "noise", "shift", "frequency_mask", "speed_change")
DataName = Literal[
    "sim-reference",
    "cwru-4class",
    "cwru-10class",
    "cwru-crossload",
    "cwru-crossload-3to0",
    "cwru-lolo-0",
    "cwru-lolo-1",
    "cwru-lolo-2",
    "cwru-lolo-3",
    "cwru-unseen-bearing",
    "mfpt-2class",
    "mfpt-low-to-high",
    "mfpt-high-to-low",
    "recordings",
]
# What each `data` value builds. CWRU splits are by record and by time block inside a record,
# never by random windows. CWRU has ONE normal record (load 0 hp); unless said otherwise its
# train / val / test time blocks serve as the normal class on the labeled and the test side.
DATA_DESCRIPTIONS: dict[str, str] = {
    "sim-reference": "Simulator reference scenario: labels from lab records (1500 rpm), "
    "unlabeled production pool (1200-1800 rpm, drifting sensors), test on other production "
    "records.",
    "cwru-4class": "CWRU 12k drive end, fault location (normal / inner / outer / ball): every "
    "record's time blocks on every side (in-distribution: the same bearings are tested).",
    "cwru-10class": "As cwru-4class, with location x fault size (0.007 / 0.014 / 0.021 in) "
    "as classes.",
    "cwru-crossload": "Cross-load 0 -> 3: labels from load-0 records, unlabeled pool from the "
    "train blocks of every load, test on load-3 records. The normal record (load 0) is "
    "labeled only; load 3 has no normal record, so the test holds faults only.",
    "cwru-crossload-3to0": "Cross-load 3 -> 0: labels from load-3 records, unlabeled pool "
    "from every load, test on load-0 records. The normal record has no load-3 copy: its "
    "train block gives the normal labels and its test block the normal test windows.",
    **{
        f"cwru-lolo-{k}": f"Leave load {k} hp out: labels from the other loads' records, "
        f"unlabeled pool from every load, test on load-{k} records. The one normal record "
        "(load 0) is on both sides, by time block."
        for k in range(4)
    },
    "cwru-unseen-bearing": "Fault location on bearings never seen: labels AND the unlabeled "
    "pool from the 0.007 and 0.021 in records of every load, test on the 0.014 in records "
    "only (physically different bearings, absent from the pool too). The normal record is "
    "split by time block, as in cwru-4class.",
    "mfpt-2class": "MFPT test rig (train.mfpt, <data_root>/mfpt), inner vs outer race: every "
    "record's time blocks on every side (in-distribution).",
    "mfpt-low-to-high": "MFPT cross-load: labels from the records at 0-100 lbs, unlabeled pool "
    "from every record, test on the records at 200-300 lbs.",
    "mfpt-high-to-low": "MFPT cross-load: labels from the records at 200-300 lbs, unlabeled "
    "pool from every record, test on the records at 0-100 lbs.",
    "recordings": "A plant's own recordings (manifest): labeled ones split by time block, "
    "unlabeled ones join the pool.",
}


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # data and split
    data: DataName = Field(
        "sim-reference", description="Which data set and split to build (DATA_DESCRIPTIONS)."
    )
    data_root: Path | None = Field(
        None, description="Folder holding cwru/ and mfpt/ (default ../shared/datasets)."
    )
    cwru_channel: Literal["DE", "FE"] = Field(
        "DE",
        description="CWRU accelerometer: DE at the drive end (the faulty bearing's housing) or "
        "FE at the fan end, the far side of the motor.",
    )
    manifest: Path | None = Field(None, description="Recordings manifest (data = 'recordings').")
    labels_manifest: Path | None = Field(
        None,
        description="A second manifest read with `manifest`: usually the file `faultwatch train "
        "suggest --out` wrote, its label column filled in (data = 'recordings').",
    )
    pool_shards: Path | None = Field(
        None,
        description="Folder from `faultwatch train shards`: the unlabeled pretraining pool is "
        "read from these memory-mapped shards instead of the data set's train blocks.",
    )
    labels_per_class: int = Field(50, ge=1, description="Labeled training windows per class.")
    unlabeled_windows: int = Field(8000, ge=0, description="Size of the simulated unlabeled pool.")
    sim_seconds_per_record: float = Field(5.0, gt=0, description="Simulated record length.")
    sample_rate_hz: int = Field(12_000, gt=0)
    window: int = Field(2048, ge=64)
    hop: int = Field(1024, ge=1)
    normalization: Literal["zscore", "center"] = "zscore"
    # model
    encoder: Literal["cnn", "resnet1d"] = "cnn"
    embedding_dim: int = Field(128, ge=2)
    width: float = Field(1.0, gt=0, description="Channel multiplier of the reference CNN.")
    norm: Literal["batch", "none"] = "batch"
    projection_dims: tuple[int, ...] = Field(
        (256, 128), description="Projection MLP after the encoder."
    )
    # pretraining
    loss: Literal["ntxent", "supcon", "vicreg"] = "ntxent"
    temperature: float = Field(0.5, gt=0)
    batch_size: int = Field(128, ge=2)
    epochs: int = Field(100, ge=0)
    steps_per_epoch: int | None = Field(None, ge=1, description="Default: pool size / batch size.")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-6, ge=0)
    augmentations: tuple[str, ...] | None = Field(
        PHYSICAL_AUGMENTATIONS,
        description="Names from train.augment.AUGMENTATIONS; None = all of them. The default is "
        "the reference recipe's five plus speed change: on CWRU they beat the twelve "
        "time-series ones (whose smoothing and warps blur the resonance bands faults live in). "
        "gain, noise, shift, speed_change, transfer_function, resonance_shift carry the fault "
        "from one load to another better, but not on every task (README, Benchmarks).",
    )
    aug_k_min: int = Field(2, ge=1)
    aug_k_max: int = Field(3, ge=1)
    fail_on_collapse: bool = Field(False, description="Stop pretraining when embeddings collapse.")
    pretrain_monitor: bool = Field(
        True,
        description="Keep the epoch whose embedding best recognizes each labeled window's class "
        "in the other recordings (leave-one-record-out kNN, train.monitor) and stop after "
        "monitor_patience epochs without a gain; False keeps the last epoch.",
    )
    monitor_patience: int = Field(10, ge=1, description="Epochs without a monitor gain to stop.")
    # fine-tuning
    head_hidden: int = Field(64, ge=1)
    dropout: float = Field(0.3, ge=0, lt=1)
    probe_epochs: int = Field(60, ge=0, description="Frozen-encoder epochs at probe_lr.")
    probe_lr: float = Field(1e-3, gt=0)
    finetune_epochs: int = Field(40, ge=0, description="End-to-end epochs at finetune_lr.")
    finetune_lr: float = Field(1e-4, gt=0)
    finetune_freeze_bn: bool = Field(
        True, description="Keep the encoder's BatchNorm statistics fixed end-to-end."
    )
    finetune_batch: int = Field(32, ge=2)
    finetune_steps_per_epoch: int = Field(8, ge=1)
    propagate_labels: bool = Field(
        True,
        description="Label pool windows by label spreading and a unanimous kNN vote on the "
        "frozen embeddings (conflicts dropped), and fine-tune on them too (covers operating "
        "conditions the few labels miss).",
    )
    multi_head: bool = Field(
        False,
        description="Also train detection / location / size heads (from the class names) "
        "jointly with the flat classifier, and report each task.",
    )
    multi_head_weight: float = Field(0.5, ge=0, description="Weight of the task heads' loss.")
    propagate_cap_per_class: int = Field(200, ge=0, description="Most propagated labels per class.")
    finetune_envelope_labels: int = Field(
        100,
        ge=0,
        description="Pool windows with a clear defect line of `bearing`, from records most of "
        "whose windows show it (train.line_labels.record_line_labels), join the fine-tune's "
        "labeled windows with that line's class: at most this many per class (0: off).",
    )
    physics: bool = Field(
        True,
        description="Fuse the physics view (edge_agent.physics.view: defect-line levels of the "
        "envelope spectrum at the record's shaft speed) with the model, where it proves "
        "reliable on the labeled data (train.physics).",
    )
    physics_min_accuracy: float = Field(
        0.95,
        gt=0,
        le=1,
        description="The physics head's cross-validated and validation accuracy must reach this.",
    )
    spectral: bool = Field(
        True,
        description="Fuse the spectral template (edge_agent.physics.spectral: a linear model of "
        "the ranked shape of the labeled windows' log spectra) with the model, where the "
        "unlabeled pool looks like the labeled machine (train.spectral).",
    )
    spectral_max_domain_gap: float = Field(
        0.90,
        ge=0.5,
        le=1,
        description="The template is fused only while a linear classifier tells labeled from "
        "pool windows by their spectra with a cross-validated ROC AUC at most this.",
    )
    spectral_pool_labels: int = Field(
        100,
        ge=0,
        description="Where the template is fused, it labels pool windows it is sure of (p >= "
        "0.9), at most this many per class, and is refitted on them too (0: labels only).",
    )
    spectral_envelope_labels: int = Field(
        100,
        ge=0,
        description="Where the template is fused, the pool windows whose envelope spectrum shows "
        "a clear defect line of `bearing` (train.line_labels) join its labeled windows with "
        "that line's class, at most this many per class, clearest first (0: off).",
    )
    spectral_model_weight: float = Field(
        0.25,
        ge=0,
        le=1,
        description="Weight of the model's log-probabilities beside the template's logits on "
        "windows like the unlabeled pool, where the template is fused (0: the template decides).",
    )
    spectral_model_floor: float = Field(
        1e-3,
        gt=0,
        lt=1,
        description="The model probability the fusion reads at least: a model sure and wrong "
        "cannot outvote a sure template, and still tips a hesitant one.",
    )
    spectral_vouched_model_weight: float = Field(
        0.5,
        ge=0,
        le=1,
        description="The model's weight where the defect-line referee vouches for it (the "
        "pool's defect lines side with it beyond chance); spectral_model_weight elsewhere.",
    )
    spectral_vouched_labels: bool = Field(
        True,
        description="Where the referee vouches for the model, the template also learns the "
        "model's class on the pool windows it names otherwise whose strongest defect line "
        "names the model's class, in records where the model and the lines each name that "
        "class in most windows (train.spectral.vouched_windows).",
    )
    spectral_line_evidence: bool = Field(
        True,
        description="A line naming class m vouches a window of the template's class t over to m "
        "only above the highest level at which it names m in the labeled and validation "
        "windows of class t (train.spectral.line_thresholds).",
    )
    spectral_line_referee: bool = Field(
        True,
        description="Where the model and the template name different classes on unlabeled "
        "pool windows, the model votes only if those windows' strongest defect lines name its "
        "class more often than the template's beyond chance (one-sided sign test, p < 0.05; "
        "false: the model always votes).",
    )
    spectral_pool_gate: bool = Field(
        True,
        description="The model votes only on windows like the unlabeled pool it learned from "
        "(edge_agent.physics.pool); elsewhere the template decides alone (false: everywhere; "
        "on CWRU that let a model sure and wrong on bearings in neither labels nor pool "
        "outvote the template).",
    )
    bearing: str = Field(
        "6205", description="Catalogue designation of the bearing the records come from."
    )
    # baselines
    supervised_epochs: int = Field(100, ge=1)
    pseudo_threshold: float = Field(0.9, gt=0, lt=1)
    pseudo_rounds: int = Field(2, ge=1)
    # decisions and run
    uncertain_below: float = Field(0.7, gt=0, lt=1)
    seed: int = 0
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    amp: bool = Field(True, description="Mixed precision on CUDA.")
    compile: bool = Field(
        False, description="torch.compile the encoder + projection (pretraining)."
    )
    out_dir: Path = Path("runs")
    run_name: str | None = None
    log_every: int = Field(20, ge=1)

    @field_validator("bearing")
    @classmethod
    def _known_bearing(cls, value: str) -> str:
        from edge_agent.physics.evidence import bearing_geometry

        bearing_geometry(value)  # ValueError listing the known designations
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.aug_k_min > self.aug_k_max:
            raise ValueError(
                f"aug_k_min ({self.aug_k_min}) must be <= aug_k_max ({self.aug_k_max})"
            )
        if self.hop > self.window:
            raise ValueError(f"hop ({self.hop}) must be <= window ({self.window})")
        if self.data == "recordings" and self.manifest is None:
            raise ValueError("data = 'recordings' needs manifest = <path to CSV or TOML manifest>")
        if self.labels_manifest is not None and self.data != "recordings":
            raise ValueError(
                f"labels_manifest is read with data = 'recordings' only (data is {self.data!r})"
            )
        return self

    def run_dir(self) -> Path:
        return self.out_dir / (self.run_name or f"{self.data}-s{self.seed}")


class ConfigError(ValueError):
    """A config that does not validate; the message lists `field: problem` lines."""


def format_errors(exc: ValidationError) -> str:
    return "\n".join(error_lines(exc))


def parse_override(text: str) -> tuple[str, Any]:
    """`field=value` -> (field, value); the value is read as TOML when it parses, else a string."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like field=value")
    key, raw = (part.strip() for part in text.split("=", 1))
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def load_config(
    path: Path | None = None, overrides: list[str] | None = None, **fields: Any
) -> TrainConfig:
    """Defaults <- TOML file <- keyword fields <- `field=value` overrides; unknown fields fail."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            values.update(tomllib.loads(Path(path).read_text(encoding="utf-8")))
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} not found") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    values.update({k: v for k, v in fields.items() if v is not None})
    for text in overrides or []:
        key, value = parse_override(text)
        values[key] = value
    try:
        return TrainConfig.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(format_errors(exc)) from exc
