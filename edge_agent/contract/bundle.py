"""The model bundle: the contract between the workstation and every device.

A bundle is a folder (or a `.tar.gz` of one) holding the encoder files, the head weights and
`manifest.json` (and, once signed, `manifest.sig`: see contract.signing; the manifest does not
list it). `verify()` checks the schema version and every listed checksum; `load_bundle()` refuses
a bundle it cannot verify with a `BundleError` whose message says what is wrong and what to do.
`unpack()` extracts an archive safely (size and member caps, plain files only); installing it
in a state folder is `bundle_store.BundleStore`'s job. `opened_bundle()` gives a throwaway copy
to inspect. numpy + pydantic only.
"""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, ValidationError, model_validator

from edge_agent.contract.formats import ENCODER_FORMATS, check_format_name
from edge_agent.contract.preprocess import NORMALIZATIONS, PreprocessSpec
from edge_agent.contract.wire import StrictModel, error_lines, utc_iso
from edge_agent.physics.spectral import UNBOUNDED_MODEL_FLOOR, SpectralHead
from edge_agent.physics.view import PhysicsHead
from edge_agent.pipeline.head import Head

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"  # = signing.SIGNATURE (that module needs `cryptography`; this does not)
MAX_UNPACKED_BYTES = 512 * 1024**2  # an archive unpacking to more is refused (bomb guard)
MAX_MEMBERS = 1_000  # files and folders in an archive

# PEP 706 checks (Python 3.11.4+, 3.10.12+); older Pythons rely on the checks in unpack().
_data_filter = getattr(tarfile, "data_filter", None)


class BundleError(Exception):
    """A bundle that must not be used; the message says why and what to do."""


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
    unknown_above: float | None = Field(
        None,
        gt=0,
        description="Open-set score above this -> `unknown` (unlike every trained class); "
        "None: no open-set decision (bundles from before it existed).",
    )


class Quantization(StrictModel):
    """Scale/zero point of a full-integer model's int8 input and output (real = scale*(q-zp))."""

    input_scale: float
    input_zero_point: int
    output_scale: float
    output_zero_point: int


class EncoderFile(StrictModel):
    format: Annotated[str, AfterValidator(check_format_name)] = Field(
        description=f"One of {list(ENCODER_FORMATS)} (contract.formats)."
    )
    file: str
    batch: Literal["dynamic", "1"]
    quantization: Quantization | None = None


class ClassStats(StrictModel):
    """Reference statistics of training embeddings of one class (for drift detection)."""

    count: int = Field(ge=1)
    mean: list[float]
    cov: list[list[float]]


class PhysicsView(StrictModel):
    """The physics head fused with the model's (edge_agent.physics.view); absent: model only."""

    features: Literal["envelope-lines-v1"]
    band_hz: tuple[float, float]
    weights: list[list[float]] = Field(description="(classes, features) of the linear head.")
    bias: list[float]
    temperature: float = Field(gt=0)

    def head(self) -> PhysicsHead:
        return PhysicsHead.from_dict(self.model_dump())


class PoolGateView(StrictModel):
    """The unlabeled pool's reference the spectral fusion gates on (edge_agent.physics.pool)."""

    center: list[float]
    scale: list[float]
    components: list[list[float]] = Field(description="(components, bands) principal axes.")
    points: list[list[float]] = Field(description="(pool windows, components) projected pool.")
    radius: float = Field(ge=0)
    neighbours: int = Field(ge=1)


class SpectralView(StrictModel):
    """The spectral template fused with the factory head (edge_agent.physics.spectral); absent:
    model only."""

    features: Literal["ranked-log-spectrum-v1", "log-spectrum-and-ranks-v1"]
    mean: list[float]
    scale: list[float]
    weights: list[list[float]] = Field(
        description="(classes, values) of the linear template: bands values for the ranked "
        "view, 2 x bands for the log spectrum and its ranks side by side."
    )
    bias: list[float]
    model_weight: float = Field(ge=0, le=1)
    temperature: float = Field(gt=0)
    model_floor: float = Field(
        UNBOUNDED_MODEL_FLOOR,
        gt=0,
        lt=1,
        description="The model probability the fusion reads at least (absent in bundles written "
        "before it: the model unbounded).",
    )
    template_temperature: float | None = Field(
        None, gt=0, description="The template's temperature where it decides alone (absent: same)."
    )
    pool: PoolGateView | None = Field(
        None, description="Where the model votes (absent in older bundles: on every window)."
    )

    def head(self) -> SpectralHead:
        return SpectralHead.from_dict(self.model_dump())


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
    physics: PhysicsView | None = None
    spectral: SpectralView | None = None
    self_test: str | None = Field(
        None,
        description="NPZ of each encoder format's embeddings of the fixed self-test windows, as "
        "exported; a device's backend must reproduce them before the bundle goes live.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if self.normal_class not in self.class_names:
            raise ValueError(f"normal_class {self.normal_class!r} is not in class_names")
        bins = self.preprocessing.window // 2
        for name, view in (("physics", self.physics), ("spectral", self.spectral)):
            if view is None:
                continue
            try:
                head = view.head()
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from exc
            if head.num_classes != len(self.class_names):
                raise ValueError(
                    f"{name}: the head has {head.num_classes} classes, class_names "
                    f"{len(self.class_names)}"
                )
            if isinstance(head, SpectralHead) and head.bands > bins:
                raise ValueError(
                    f"spectral: {head.bands} bands, a {self.preprocessing.window}-sample "
                    f"window has {bins}"
                )
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
        fields = "; ".join(error_lines(exc))
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
    """Checksum every file in `folder` (except the manifest and its signature), validate and
    write manifest.json."""
    folder = Path(folder)
    files = {
        p.name: sha256_file(p)
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name not in (MANIFEST, SIGNATURE)
    }
    fields = {"schema_version": SCHEMA_VERSION, "created_utc": utc_iso(), **manifest_fields}
    manifest = Manifest.model_validate({**fields, "files": files})
    (folder / MANIFEST).write_text(manifest_text(manifest), encoding="utf-8")
    return manifest


_NUMBER = r"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?"
_NUMBER_LIST = re.compile(rf"\[\s*({_NUMBER}(?:,\s*{_NUMBER})*)\s*\]")


def manifest_text(manifest: Manifest) -> str:
    """The manifest as indented JSON with each list of numbers on one line (the spectral
    template and its pool gate hold tens of thousands)."""
    text = manifest.model_dump_json(indent=2)
    return _NUMBER_LIST.sub(lambda m: "[" + ", ".join(re.split(r",\s*", m.group(1))) + "]", text)


def pack(folder: Path, archive: Path) -> Path:
    """Write the bundle folder as one `.tar.gz` for shipping."""
    folder = Path(folder)
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(folder.iterdir()):
            tar.add(path, arcname=f"{folder.name}/{path.name}")
    return Path(archive)


def unpack(archive: Path, dest: Path) -> Path:
    """Extract a bundle archive into the folder `dest` safely; return the bundle folder in it.

    Only plain files and folders under one top folder; no absolute paths, '..', links or
    devices; at most MAX_MEMBERS members and MAX_UNPACKED_BYTES bytes, checked from the headers
    before anything is written and again while writing. Files get default permissions (no
    setuid, no exec bits). On BundleError `dest` may hold a partial extraction: remove it.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = _checked_members(archive, tar, dest)
            written = 0
            for member in members:
                target = dest / member.name
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None  # a regular file always has a reader
                with source, open(target, "xb") as out:
                    while block := source.read(1 << 20):
                        written += len(block)
                        if written > MAX_UNPACKED_BYTES:
                            raise BundleError(_too_big(archive, member.name))
                        out.write(block)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise BundleError(f"{archive}: not a readable bundle archive ({exc}); re-copy it") from exc
    roots = {PurePosixPath(m.name).parts[0] for m in members if PurePosixPath(m.name).parts}
    if len(roots) != 1:
        raise BundleError(f"{archive}: expected one bundle folder inside, found {sorted(roots)}")
    return dest / roots.pop()


def _checked_members(archive: Path, tar: tarfile.TarFile, dest: Path) -> list[tarfile.TarInfo]:
    """Read every header and refuse the archive before extraction if any member is unsafe."""
    members: list[tarfile.TarInfo] = []
    files: set[PurePosixPath] = set()
    total = 0
    for member in tar:  # headers only: sizes are checked before the data is decompressed
        if len(members) >= MAX_MEMBERS:
            raise BundleError(
                f"{archive}: more than {MAX_MEMBERS} members (limit MAX_MEMBERS); a bundle holds "
                "a handful of files: is this the right archive?"
            )
        name = PurePosixPath(member.name)
        if name.is_absolute() or ".." in name.parts:
            raise BundleError(f"{archive}: unsafe member path {member.name!r}")
        if not member.isfile() and not member.isdir():
            kind = "a link" if member.issym() or member.islnk() else "a device or fifo"
            raise BundleError(
                f"{archive}: member {member.name!r} is {kind}, not a regular file; a bundle "
                "archive holds only files and folders"
            )
        if _data_filter is not None:
            try:
                _data_filter(member, str(dest))
            except tarfile.FilterError as exc:
                raise BundleError(f"{archive}: unsafe member {member.name!r}: {exc}") from exc
        if member.isfile():
            if name in files:
                raise BundleError(f"{archive}: member {member.name!r} appears twice")
            files.add(name)
            total += _declared_size(member)
            if total > MAX_UNPACKED_BYTES:
                raise BundleError(_too_big(archive, member.name))
        members.append(member)
    return members


def _declared_size(member: tarfile.TarInfo) -> int:
    """Bytes the header says a member unpacks to."""
    return member.size


def _too_big(archive: Path, name: str) -> str:
    return (
        f"{archive}: unpacks to more than {MAX_UNPACKED_BYTES:,} bytes (limit MAX_UNPACKED_BYTES, "
        f"reached at member {name!r}); refusing a possible decompression bomb: is this the "
        "right archive?"
    )


def check_bundle(folder: Path) -> tuple[Manifest, Head]:
    """Verify a bundle folder and load its factory head; BundleError when anything is off."""
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
    return manifest, head
