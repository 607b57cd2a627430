"""Fine-tuned run -> verified model bundle: load, export every format, parity gate, assemble.

A run folder holds `finetuned.pt` (written by `train.loop.finetune`), `calibration.npz` (`x`:
(N, 1, W) normalized training-pool windows) and `heldout.npz` (`x`: (N, 1, W), `y`: (N,) class
indices). The bundle is `<out>/<model_name>-<version>/` with the encoder files, `head.npz` and
`manifest.json` (see `contract.bundle`), plus the same folder packed as `<folder>.tar.gz`.
"""

from __future__ import annotations

import importlib.metadata
import logging
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from edge_agent.backends import self_test_windows
from edge_agent.contract.bundle import (
    Manifest,
    Preprocessing,
    Thresholds,
    pack,
    sha256_file,
    verify,
)
from edge_agent.contract.bundle import write_manifest as write_bundle_manifest
from edge_agent.contract.wire import error_lines
from edge_agent.physics.spectral import SpectralHead
from edge_agent.physics.view import PhysicsHead, line_view
from edge_agent.pipeline.head import HEAD_KEYS, Head
from export.formats import (
    ExportError,
    ExportFormat,
    ExportJob,
    FormatOutcome,
    build_order,
    run_format,
)
from export.parity import Fusion, ParityReport, compare, embed_torch, gate
from export.quantize import DEFAULT_CALIBRATION_CAP, CalibrationMethod, select_calibration
from train.encoder import build_encoder

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "finetuned.pt"
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class EncoderSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    kwargs: dict[str, Any] = {}


class Checkpoint(BaseModel):
    """The fields of a fine-tuned checkpoint that export reads (other keys are ignored)."""

    model_config = ConfigDict(extra="ignore", arbitrary_types_allowed=True)
    kind: str
    encoder: EncoderSpec
    encoder_state: dict[str, Any]
    head: dict[str, Any]
    class_names: list[str]
    normal_class: str = "normal"
    preprocess: dict[str, Any]
    config: dict[str, Any] = {}
    provenance: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    reference_stats: dict[str, Any] = {}
    open_set: dict[str, Any] = {}
    physics: dict[str, Any] | None = None
    spectral: dict[str, Any] | None = None


@dataclass
class RunInputs:
    """A loaded run. windows: (N, 1, W) float32; heldout_y: (N,) int64 class indices."""

    checkpoint_path: Path
    checkpoint: Checkpoint
    encoder: torch.nn.Module
    head: Head
    preprocessing: Preprocessing
    embedding_dim: int
    heldout_x: np.ndarray
    heldout_y: np.ndarray
    calibration: np.ndarray | None
    physics: PhysicsHead | None = None
    heldout_shaft_hz: np.ndarray | None = None  # (N,) speed of each held-out window, NaN unknown
    spectral: SpectralHead | None = None


SELF_TEST_FILE = "selftest.npz"  # what the device's self-test must reproduce


def _field_errors(exc: ValidationError) -> str:
    return "; ".join(error_lines(exc))


def _load_windows(
    path: Path, window: int, with_labels: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        with np.load(path, allow_pickle=False) as data:
            x = np.asarray(data["x"], dtype=np.float32)
            y = np.asarray(data["y"], dtype=np.int64) if with_labels else None
    except KeyError as exc:
        raise ExportError(
            f"{path}: missing array {exc}; the training stage writes x (and y)"
        ) from exc
    except (OSError, ValueError) as exc:
        raise ExportError(f"{path}: not a readable .npz ({exc})") from exc
    if x.ndim != 3 or x.shape[1:] != (1, window) or len(x) == 0:
        raise ExportError(
            f"{path}: x has shape {x.shape}, expected (N>0, 1, {window}) per preprocess"
        )
    if y is not None and y.shape != (len(x),):
        raise ExportError(f"{path}: y has shape {y.shape}, expected ({len(x)},)")
    return x, y


def load_run(path: Path) -> RunInputs:
    """Load a checkpoint (.pt) or a run folder holding `finetuned.pt`, and the windows beside it."""
    path = Path(path)
    ckpt_path = path / CHECKPOINT_FILE if path.is_dir() else path
    if not ckpt_path.is_file():
        where = f"no {CHECKPOINT_FILE} in {path}" if path.is_dir() else f"{path} does not exist"
        raise ExportError(f"{where}; pass a fine-tuned .pt file or the run folder holding it")
    try:
        raw = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ExportError(f"{ckpt_path}: not a readable torch checkpoint ({exc})") from exc
    if not isinstance(raw, dict):
        raise ExportError(f"{ckpt_path}: expected a checkpoint dict, got {type(raw).__name__}")
    try:
        ckpt = Checkpoint.model_validate(raw)
    except ValidationError as exc:
        raise ExportError(f"{ckpt_path}: invalid checkpoint: {_field_errors(exc)}") from exc
    if ckpt.kind != "finetuned":
        raise ExportError(
            f"{ckpt_path}: checkpoint kind is {ckpt.kind!r}; export needs a fine-tuned one "
            "(run `faultwatch train finetune` first)"
        )
    try:
        encoder = build_encoder(ckpt.encoder.name, **ckpt.encoder.kwargs)
        encoder.load_state_dict(ckpt.encoder_state)
    except (ValueError, TypeError, RuntimeError) as exc:
        raise ExportError(
            f"{ckpt_path}: cannot rebuild encoder {ckpt.encoder.name!r}: {exc}"
        ) from exc
    encoder.eval()
    try:
        arrays = {
            k: np.asarray(v, dtype=np.float32) for k, v in ckpt.head.items() if k in HEAD_KEYS
        }
        head = Head(**{**arrays, "temperature": float(arrays.get("temperature", 1.0))})
        preprocessing = Preprocessing.model_validate(ckpt.preprocess)
    except (TypeError, ValueError) as exc:
        detail = _field_errors(exc) if isinstance(exc, ValidationError) else str(exc)
        raise ExportError(f"{ckpt_path}: invalid head or preprocess: {detail}") from exc
    window = preprocessing.window
    with torch.no_grad():
        dim = int(encoder(torch.zeros(1, 1, window)).shape[1])
    if head.embedding_dim != dim or head.num_classes != len(ckpt.class_names):
        raise ExportError(
            f"{ckpt_path}: head is ({head.embedding_dim} -> {head.num_classes}) but the encoder "
            f"gives {dim}-d embeddings for {len(ckpt.class_names)} classes"
        )
    folder = ckpt_path.parent
    if not (folder / "heldout.npz").is_file():
        raise ExportError(
            f"no heldout.npz beside {ckpt_path}; the parity gate needs held-out windows"
        )
    heldout_x, heldout_y = _load_windows(folder / "heldout.npz", window, with_labels=True)
    if heldout_y.min(initial=0) < 0 or heldout_y.max(initial=0) >= len(ckpt.class_names):
        raise ExportError(
            f"{folder / 'heldout.npz'}: y holds labels outside 0..{len(ckpt.class_names) - 1}"
        )
    calibration = None
    if (folder / "calibration.npz").is_file():
        calibration, _ = _load_windows(folder / "calibration.npz", window, with_labels=False)
    physics = _view_head(PhysicsHead, ckpt.physics, "physics head", ckpt_path, ckpt.class_names)
    speeds = _load_speeds(folder / "heldout.npz", len(heldout_x)) if physics else None
    spectral = _view_head(
        SpectralHead, ckpt.spectral, "spectral template", ckpt_path, ckpt.class_names
    )
    return RunInputs(
        ckpt_path,
        ckpt,
        encoder,
        head,
        preprocessing,
        dim,
        heldout_x,
        heldout_y,
        calibration,
        physics,
        speeds,
        spectral,
    )


def _view_head(kind: Any, data: dict | None, what: str, path: Path, class_names: list[str]) -> Any:
    """`kind.from_dict(data)` (a fused view's head from the checkpoint), None without data."""
    if not data:
        return None
    try:
        head = kind.from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise ExportError(f"{path}: invalid {what}: {exc}") from exc
    if head.num_classes != len(class_names):
        raise ExportError(
            f"{path}: {what} has {head.num_classes} classes, the model {len(class_names)}"
        )
    return head


def _load_speeds(path: Path, n: int) -> np.ndarray | None:
    """The held-out windows' shaft speeds (Hz), or None when the run did not record them."""
    with np.load(path, allow_pickle=False) as data:
        if "shaft_hz" not in data:
            return None
        speeds = np.asarray(data["shaft_hz"], dtype=np.float64)
    if speeds.shape != (n,):
        raise ExportError(f"{path}: shaft_hz has shape {speeds.shape}, expected ({n},)")
    return speeds


def heldout_fusion(run: RunInputs) -> Fusion | None:
    """What the device does to the head's probabilities of the held-out windows: fuse the
    physics view (where the speed is known) and then the spectral template, as the bundle
    carries them; None without either. The views are computed once: they do not depend on
    the encoder, so every format gets the same."""
    physics_view = None
    if run.physics is not None and run.heldout_shaft_hz is not None:
        physics_view = line_view(
            run.heldout_x,
            run.preprocessing.sample_rate_hz,
            run.heldout_shaft_hz,
            str(run.checkpoint.config.get("bearing", "6205")),
            run.physics.band_hz,
        )
    spectral = None  # the template's logits of the held-out windows, and where the model votes
    if run.spectral is not None:
        level = run.spectral.spectra(run.heldout_x)
        spectral = (run.spectral.spectra_logits(level), run.spectral.near_pool(level))
    if physics_view is None and spectral is None:
        return None

    def fuse(probs: np.ndarray) -> np.ndarray:
        if run.physics is not None and physics_view is not None:
            probs = run.physics.fuse(probs, physics_view)
        if run.spectral is not None and spectral is not None:
            probs = run.spectral.fuse_logits(probs, *spectral)
        return probs

    return fuse


@dataclass
class ExportOptions:
    formats: list[ExportFormat]
    out: Path = Path("bundles")
    calibration_method: CalibrationMethod = CalibrationMethod.minmax
    calibration_cap: int = DEFAULT_CALIBRATION_CAP
    min_agreement: float = 0.99
    max_accuracy_drop_points: float = 1.0
    name: str | None = None
    version: str | None = None
    uncertain_below: float = 0.7


@dataclass
class ExportResult:
    """What happened. `folder`/`archive` are None when a format failed or the gate failed."""

    outcomes: list[FormatOutcome] = field(default_factory=list)
    report: ParityReport | None = None
    failures: list[str] = field(default_factory=list)
    folder: Path | None = None
    archive: Path | None = None
    manifest: Manifest | None = None

    @property
    def ok(self) -> bool:
        return self.folder is not None


def default_version() -> str:
    """A sortable UTC timestamp, e.g. 20251123-030512."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime())


def _check_name(flag: str, value: str) -> str:
    if not SAFE_NAME.match(value):
        raise ExportError(
            f"{flag} {value!r}: use letters, digits, '.', '_' or '-' (it names the bundle folder)"
        )
    return value


def export_bundle(
    run: RunInputs,
    options: ExportOptions,
    on_outcome: Callable[[FormatOutcome], None] | None = None,
) -> ExportResult:
    """Export `options.formats`, run the parity gate and, if everything passes, write the bundle."""
    name = _check_name("--name", options.name or f"faultwatch-{run.checkpoint.encoder.name}")
    version = _check_name("--version", options.version or default_version())
    try:
        thresholds = Thresholds(
            uncertain_below=options.uncertain_below,
            unknown_above=run.checkpoint.open_set.get("unknown_above"),
        )
    except ValidationError as exc:
        raise ExportError(
            f"--uncertain-below {options.uncertain_below}: {_field_errors(exc)}"
        ) from exc
    folder = Path(options.out) / f"{name}-{version}"
    if folder.exists():
        raise ExportError(f"{folder} already exists; pass another --version or remove it")
    calibration = None
    if any(f.needs_calibration for f in options.formats):
        if run.calibration is None:
            raise ExportError(
                f"no calibration.npz beside {run.checkpoint_path}; INT8 formats need it "
                "(or export only --formats onnx)"
            )
        calibration = select_calibration(run.calibration, options.calibration_cap)
        _warn_if_not_normalized(calibration, run.preprocessing.normalization)

    result = ExportResult()
    with tempfile.TemporaryDirectory(prefix="faultwatch-export-") as tmp:
        job = ExportJob(
            encoder=run.encoder,
            window=run.preprocessing.window,
            workdir=Path(tmp),
            calibration=calibration,
            check_windows=run.heldout_x,
            calibration_method=CalibrationMethod(options.calibration_method).value,
        )
        done = _export_formats(job, options.formats, on_outcome)
        result.outcomes = [done[f.name] for f in options.formats]
        result.failures = [o.line() for o in result.outcomes if o.status == "failed"]
        if result.failures:
            return result
        exported = [f for f in options.formats if done[f.name].status == "ok"]
        if not exported:
            reasons = "; ".join(o.message for o in result.outcomes)
            raise ExportError(f"no encoder was exported: {reasons}")

        reference = embed_torch(run.encoder, run.heldout_x)
        candidates = {f.name: f.embed(done[f.name].exported.path, run.heldout_x) for f in exported}
        result.report = compare(reference, candidates, run.head, run.heldout_y, heldout_fusion(run))
        result.failures = gate(
            result.report, options.min_agreement, options.max_accuracy_drop_points
        )
        if result.failures:
            return result
        fields = _manifest_fields(
            run, options, result.report, exported, done, name, version, thresholds
        )
        probe = self_test_windows(run.preprocessing.window)
        recorded = {f.encoder.name: f.embed(done[f.name].exported.path, probe) for f in exported}
        fields["self_test"] = SELF_TEST_FILE
        result.folder, result.manifest = _assemble(
            folder, run.head, exported, done, fields, recorded
        )
    result.archive = pack(result.folder, result.folder.with_name(result.folder.name + ".tar.gz"))
    return result


def _export_formats(
    job: ExportJob,
    formats: list[ExportFormat],
    on_outcome: Callable[[FormatOutcome], None] | None,
) -> dict[str, FormatOutcome]:
    """Run every exporter, prerequisites first; report chosen formats and failed prerequisites."""
    wanted = {f.name for f in formats}
    done: dict[str, FormatOutcome] = {}
    for fmt in build_order(formats):
        missing = [r for r in fmt.requires if done.get(r) is None or done[r].status != "ok"]
        if missing:
            reason = f"needs {', '.join(missing)}, which did not export"
            outcome = FormatOutcome(fmt.name, "failed", 0.0, message=reason)
        else:
            outcome = run_format(fmt, job)
        done[fmt.name] = outcome
        if on_outcome is not None and (fmt.name in wanted or outcome.status != "ok"):
            on_outcome(outcome)
    return done


def _warn_if_not_normalized(windows: np.ndarray, normalization: str) -> None:
    std = float(np.median(windows.std(axis=-1)))
    if normalization == "zscore" and not 0.5 <= std <= 2.0:
        logger.warning(
            "calibration windows have median std %.3g, but zscore-normalized windows have ~1; "
            "were they normalized with edge_agent.contract.preprocess.normalize?",
            std,
        )


def _jsonable(value: Any) -> Any:
    """numpy/Path/tensor values -> plain JSON types, recursively."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return value


def _versions() -> dict[str, str]:
    found = {}
    for dist in ("faultwatch", "torch", "onnx", "onnxruntime", "litert-torch", "ai-edge-litert"):
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def _manifest_fields(
    run: RunInputs,
    options: ExportOptions,
    report: ParityReport,
    exported: list[ExportFormat],
    done: dict[str, FormatOutcome],
    name: str,
    version: str,
    thresholds: Thresholds,
) -> dict[str, Any]:
    ckpt = run.checkpoint
    encoders = []
    for fmt in exported:
        quant = done[fmt.name].exported.quantization
        encoders.append(
            {
                "format": fmt.manifest_format,
                "file": fmt.file,
                "batch": fmt.batch,
                "quantization": quant.model_dump() if quant else None,
            }
        )
    heldout = {"windows": report.windows, "fp32": report.reference_accuracy}
    heldout.update({m.format: m.accuracy for m in report.models})
    calibrated = any(f.needs_calibration for f in exported)
    provenance = {
        **_jsonable(ckpt.provenance),
        "checkpoint": str(run.checkpoint_path),
        "checkpoint_sha256": sha256_file(run.checkpoint_path),
        "encoder": _jsonable(ckpt.encoder.model_dump()),
        "train_config": _jsonable(ckpt.config),
        "exported_with": _versions(),
    }
    if calibrated:
        provenance["calibration"] = {
            "source": "calibration.npz",
            "windows": int(min(len(run.calibration), options.calibration_cap)),
            "onnx_method": CalibrationMethod(options.calibration_method).value,
        }
    parity = {
        **report.model_dump(),
        "min_agreement": options.min_agreement,
        "max_accuracy_drop_points": options.max_accuracy_drop_points,
        "passed": True,
    }
    return {
        "model_name": name,
        "model_version": version,
        "class_names": list(ckpt.class_names),
        "normal_class": ckpt.normal_class,
        "preprocessing": run.preprocessing.model_dump(),
        "thresholds": thresholds.model_dump(),
        "embedding_dim": run.embedding_dim,
        "encoders": encoders,
        "reference_stats": _jsonable(ckpt.reference_stats),
        "provenance": provenance,
        "metrics": {**_jsonable(ckpt.metrics), "heldout_accuracy": heldout},
        "parity": parity,
        "physics": run.physics.to_dict() if run.physics else None,
        "spectral": run.spectral.to_dict() if run.spectral else None,
    }


def _assemble(
    folder: Path,
    head: Head,
    exported: list[ExportFormat],
    done: dict[str, FormatOutcome],
    fields: dict[str, Any],
    recorded: dict[str, np.ndarray],
) -> tuple[Path, Manifest]:
    """Write the bundle in a staging folder, verify it, then move it into place. `recorded`:
    each format's embeddings of the self-test windows, which a device must reproduce."""
    staging = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        for fmt in exported:
            shutil.copyfile(done[fmt.name].exported.path, staging / fmt.file)
        head.save(staging / "head.npz")
        np.savez(
            staging / SELF_TEST_FILE, **{k: np.asarray(v, np.float32) for k, v in recorded.items()}
        )
        try:
            write_bundle_manifest(staging, fields)
        except ValidationError as exc:
            raise ExportError(f"the manifest does not validate: {_field_errors(exc)}") from exc
        verify(staging)
        staging.rename(folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder, verify(folder)
