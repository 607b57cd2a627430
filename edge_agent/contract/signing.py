"""Bundle signatures: an Ed25519 signature over the bytes of `manifest.json`.

The manifest holds the sha256 of every other file of the bundle, so signing the manifest signs
the bundle: `bundle.verify()` checks the files against the manifest, `verify_signature()` checks
the manifest against the keys a device trusts. The signature lives beside the manifest as
`manifest.sig` (in the folder and inside the `.tar.gz`), base64 text of the 64 signature bytes;
the manifest does not list it. The workstation signs (`faultwatch export sign`, export/signing.py),
the device only verifies. No numpy here: `cryptography` and the standard library only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

SIGNATURE = "manifest.sig"
MANIFEST = "manifest.json"  # the same as bundle.MANIFEST (that module pulls in numpy)
MAX_SIGNATURE_BYTES = 1024  # a signature file is ~90 bytes; anything much larger is not one


class SignatureError(Exception):
    """A bundle whose signature is missing, malformed or not made by a trusted key."""


def key_id(key: Ed25519PublicKey) -> str:
    """A short fingerprint of a public key: the first 16 hex digits of sha256(raw key bytes)."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_public_key(path: Path) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file; SignatureError naming the file when it is not one."""
    path = Path(path)
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise SignatureError(f"{path}: cannot read the update key ({exc})") from exc
    except ValueError as exc:
        raise SignatureError(
            f"{path}: not a PEM public key ({exc}); use the ed25519.pub.pem written by "
            "`faultwatch export keygen`"
        ) from exc
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(
            f"{path}: a {type(key).__name__}, not an Ed25519 public key; use the ed25519.pub.pem "
            "written by `faultwatch export keygen`"
        )
    return key


def load_public_keys(paths: Sequence[Path]) -> list[Ed25519PublicKey]:
    return [load_public_key(p) for p in paths]


def signature_text(manifest_bytes: bytes, key: Ed25519PrivateKey) -> bytes:
    """The content of `manifest.sig` for these manifest bytes (workstation side)."""
    return base64.b64encode(key.sign(manifest_bytes)) + b"\n"


def read_signature(folder: Path) -> bytes:
    """The 64 signature bytes of the bundle in `folder`; SignatureError when absent or malformed."""
    path = Path(folder) / SIGNATURE
    if not path.is_file():
        raise SignatureError(
            f"the bundle is not signed (no {SIGNATURE}); sign it with `faultwatch export sign "
            "BUNDLE --key ed25519.pem`"
        )
    text = path.read_bytes()[: MAX_SIGNATURE_BYTES + 1]
    if len(text) > MAX_SIGNATURE_BYTES:
        raise SignatureError(
            f"{SIGNATURE} is larger than {MAX_SIGNATURE_BYTES} bytes: not a signature"
        )
    try:
        signature = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureError(f"{SIGNATURE} is not base64 ({exc}); sign the bundle again") from exc
    if len(signature) != 64:
        raise SignatureError(
            f"{SIGNATURE} holds {len(signature)} bytes, an Ed25519 signature has 64; sign the "
            "bundle again"
        )
    return signature


def verify_signature(folder: Path, keys: Sequence[Ed25519PublicKey]) -> str:
    """Check that `manifest.json` in `folder` was signed by one of `keys`; return that key's id.

    Also refuses a file in the folder that the manifest does not list (it would ride along
    unsigned). The listed files' checksums are `bundle.verify()`'s job. SignatureError when the
    signature is missing, malformed, by another key, or the manifest changed after signing.
    """
    folder = Path(folder)
    if not keys:
        raise SignatureError("no trusted keys to verify the signature against")
    signature = read_signature(folder)
    try:
        manifest = (folder / MANIFEST).read_bytes()
    except OSError as exc:
        raise SignatureError(f"cannot read {MANIFEST} ({exc})") from exc
    for key in keys:
        try:
            key.verify(signature, manifest)
        except InvalidSignature:
            continue
        _check_only_listed(folder, manifest)
        return key_id(key)
    trusted = ", ".join(key_id(k) for k in keys)
    raise SignatureError(
        f"the signature does not match {MANIFEST} under any trusted key ({trusted}): the bundle "
        "was signed with another key, or its manifest changed after signing"
    )


def _check_only_listed(folder: Path, manifest: bytes) -> None:
    try:
        listed = set(json.loads(manifest).get("files", {}))
    except (ValueError, AttributeError) as exc:
        raise SignatureError(f"{MANIFEST} is signed but not a JSON object ({exc})") from exc
    extra = sorted(
        rel
        for p in folder.rglob("*")
        if not p.is_dir()
        and (rel := p.relative_to(folder).as_posix()) not in listed | {MANIFEST, SIGNATURE}
    )
    if extra:
        raise SignatureError(
            f"the bundle holds files its signed manifest does not list: {extra[:5]}; re-export "
            "and sign it again"
        )
