"""The model bundle: the contract between the workstation and every device.

A bundle is a folder (or a `.tar.gz` of one) holding the encoder files, the head weights and
`manifest.json`. `verify()` checks the schema version and every checksum; `load_bundle()` refuses
a bundle it cannot verify with a `BundleError` whose message says what is wrong and what to do.
numpy + pydantic only.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edge_agent.head import Head
from edge_agent.preprocess import NORMALIZATIONS, PreprocessSpec

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
ENCODER_FORMATS = ("fp32.onnx", "int8.onnx", "int8.tflite")


class BundleError(Exception):
    """A bundle that must not be used; the message says why and what to do."""


class StrictModel(BaseModel):
    """Forbids unknown fields, so a typo is an error naming the field; immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Preprocessing(StrictModel):
    sample_rate_hz: int = Field(gt=0)
    window: int = Field(ge=16)
    hop: int = Field(gt=0)
    normalization: str = Field(description=f"One of {NORMALIZATIONS}.")
    input_units: Literal["g"] = "g"

    def spec(self) -> PreprocessSpec:
        return PreprocessSpec(self.sample_rate_hz, self.window, self.hop, self.normalization)  # type: ignore[arg-type]


class Thresholds(StrictModel):
    uncertain_below: float = Field(
        0.7, gt=0, lt=1, description="Max probability under this -> uncertain."
    )
    drift_score: float = Field(
        3.0, gt=0, description="Drift score above this raises a drift event."
    )


class Quantization(StrictModel):
    """Scale/zero point of a full-integer model's int8 input and output (real = scale*(q-zp))."""

    input_scale: float
    input_zero_point: int
    output_scale: float
    output_zero_point: int


class EncoderFile(StrictModel):
    format: Literal["fp32.onnx", "int8.onnx", "int8.tflite"]
    file: str
    batch: Literal["dynamic", "1"]
    quantization: Quantization | None = None


class ClassStats(StrictModel):
    """Reference statistics of training embeddings of one class (for drift detection)."""

    count: int = Field(ge=1)
    mean: list[float]
    cov: list[list[float]]


class Manifest(StrictModel):
    schema_version: int
    model_name: str
    model_version: str
    created_utc: str
    class_names: list[str] = Field(min_length=2)
    normal_class: str = "normal"
    preprocessing: Preprocessing
    thresholds: Thresholds = Thresholds()
    embedding_dim: int = Field(gt=0)
    encoders: list[EncoderFile] = Field(min_length=1)
    head_file: str = "head.npz"
    reference_stats: dict[str, ClassStats] = Field(default_factory=dict)
    files: dict[str, str] = Field(description="sha256 of every other file in the bundle.")
    provenance: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    parity: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if self.normal_class not in self.class_names:
            raise ValueError(f"normal_class {self.normal_class!r} is not in class_names")
        listed = {e.file for e in self.encoders} | {self.head_file}
        missing = sorted(listed - set(self.files))
        if missing:
            raise ValueError(f"files: no checksum for {missing}")
        return self

    def encoder(self, fmt: str) -> EncoderFile:
        for entry in self.encoders:
            if entry.format == fmt:
                return entry
        have = [e.format for e in self.encoders]
        raise BundleError(f"bundle has no {fmt!r} encoder; it has {have}")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_manifest(folder: Path) -> Manifest:
    """Parse and validate manifest.json (no checksum work); BundleError on any problem."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise BundleError(f"{folder}: no {MANIFEST}; is this a faultwatch bundle folder?")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: not valid JSON ({exc}); re-copy the bundle") from exc
    if not isinstance(raw, dict):
        raise BundleError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    version = raw.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BundleError(
            f"{path}: schema_version {version!r} is not supported (this agent reads "
            f"{SCHEMA_VERSION}); export the bundle with a matching faultwatch version"
        )
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        fields = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors()
        )
        raise BundleError(f"{path}: invalid manifest: {fields}") from exc


def verify(folder: Path) -> Manifest:
    """Check schema version and the sha256 of every listed file; return the manifest.

    Raises BundleError naming the first file that is missing, truncated or altered.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    for name, expected in sorted(manifest.files.items()):
        path = folder / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise BundleError(f"{folder}: manifest lists an unsafe path {name!r}")
        if not path.is_file():
            raise BundleError(f"{folder}: {name} is listed in the manifest but missing")
        actual = sha256_file(path)
        if actual != expected:
            raise BundleError(
                f"{folder}: checksum mismatch for {name} (expected {expected[:12]}…, got "
                f"{actual[:12]}…): the file is corrupt or was altered; re-copy the bundle"
            )
    return manifest


def write_manifest(folder: Path, manifest_fields: dict[str, Any]) -> Manifest:
    """Checksum every file in `folder` (except the manifest), validate and write manifest.json."""
    folder = Path(folder)
    files = {
        p.name: sha256_file(p)
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != MANIFEST
    }
    fields = {"schema_version": SCHEMA_VERSION, "created_utc": utc_now(), **manifest_fields}
    manifest = Manifest.model_validate({**fields, "files": files})
    (folder / MANIFEST).write_text(manifest.model_dump_json(indent=2), encoding="utf-8")
    return manifest


def pack(folder: Path, archive: Path) -> Path:
    """Write the bundle folder as one `.tar.gz` for shipping."""
    folder = Path(folder)
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(folder.iterdir()):
            tar.add(path, arcname=f"{folder.name}/{path.name}")
    return Path(archive)


def unpack(archive: Path, dest: Path | None = None) -> Path:
    """Extract a bundle archive safely (no absolute paths, links or '..'); return its folder."""
    dest = Path(dest or tempfile.mkdtemp(prefix="faultwatch-bundle-"))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            for m in members:
                if not m.isfile() and not m.isdir():
                    raise BundleError(f"{archive}: member {m.name!r} is not a regular file")
                if Path(m.name).is_absolute() or ".." in Path(m.name).parts:
                    raise BundleError(f"{archive}: unsafe member path {m.name!r}")
            tar.extractall(dest)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BundleError(f"{archive}: not a readable bundle archive ({exc}); re-copy it") from exc
    roots = {Path(m.name).parts[0] for m in members if m.name}
    if len(roots) != 1:
        raise BundleError(f"{archive}: expected one bundle folder inside, found {sorted(roots)}")
    return dest / roots.pop()


def load_bundle(path: Path) -> tuple[Path, Manifest, Head]:
    """Verify a bundle folder or archive and load its factory head.

    Returns (folder, manifest, head). Raises BundleError when anything does not verify.
    """
    path = Path(path)
    if not path.exists():
        raise BundleError(f"{path}: no such bundle (folder or .tar.gz)")
    folder = unpack(path) if path.is_file() else path
    manifest = verify(folder)
    try:
        head = Head.load(folder / manifest.head_file)
    except (ValueError, OSError) as exc:
        raise BundleError(f"{folder}: head file unreadable: {exc}") from exc
    if head.embedding_dim != manifest.embedding_dim:
        raise BundleError(
            f"{folder}: head expects {head.embedding_dim}-d embeddings, manifest says "
            f"{manifest.embedding_dim}"
        )
    if head.num_classes != len(manifest.class_names):
        raise BundleError(
            f"{folder}: head has {head.num_classes} outputs for {len(manifest.class_names)} classes"
        )
    return folder, manifest, head
