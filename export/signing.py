"""Workstation side of bundle signing: an Ed25519 key pair, and `manifest.sig` for a bundle.

    faultwatch export keygen --out keys/           -> keys/ed25519.pem (0600), ed25519.pub.pem
    faultwatch export sign bundles/m-1.tar.gz --key keys/ed25519.pem

The private key signs the bytes of `manifest.json` (which checksums every other file); devices
trust the public key (`[updates] public_keys`) and verify with edge_agent.contract.signing.
Signing an archive re-packs it with the signature inside; the archive is replaced atomically.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.contract.bundle import MANIFEST, BundleError, pack, sha256_file, unpack, verify
from edge_agent.contract.signing import (
    SIGNATURE,
    SignatureError,
    key_id,
    signature_text,
    verify_signature,
)

PRIVATE_KEY = "ed25519.pem"
PUBLIC_KEY = "ed25519.pub.pem"


class SigningError(Exception):
    """A key or bundle that cannot be used for signing; the message says what to do."""


@dataclass
class Signed:
    bundle: Path
    key_id: str
    archive_sha256: str | None  # for a .tar.gz: what `update_bundle` needs as `sha256`


def keygen(out: Path) -> tuple[Path, Path]:
    """Write a new key pair into `out` (created if missing); refuses to overwrite one."""
    out = Path(out)
    private, public = out / PRIVATE_KEY, out / PUBLIC_KEY
    for path in (private, public):
        if path.exists():
            raise SigningError(
                f"{path} exists already; move it away or choose another --out (devices trusting "
                "the old public key would refuse bundles signed with a new one)"
            )
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never world-readable
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


def load_private_key(path: Path) -> Ed25519PrivateKey:
    path = Path(path)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise SigningError(f"{path}: cannot read the key ({exc})") from exc
    except (ValueError, TypeError) as exc:
        raise SigningError(
            f"{path}: not an unencrypted PEM private key ({exc}); use the ed25519.pem written by "
            "`faultwatch export keygen`"
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningError(f"{path}: a {type(key).__name__}, not an Ed25519 private key")
    return key


def sign_bundle(bundle: Path, key_path: Path) -> Signed:
    """Verify the bundle (folder or .tar.gz), write its `manifest.sig`, check it; see module."""
    bundle = Path(bundle)
    key = load_private_key(key_path)
    if bundle.is_dir():
        _sign_folder(bundle, key)
        return Signed(bundle, key_id(key.public_key()), None)
    if not bundle.is_file():
        raise SigningError(f"{bundle}: no such bundle (folder or .tar.gz)")
    with tempfile.TemporaryDirectory(prefix="faultwatch-sign-", dir=bundle.parent) as tmp:
        try:
            folder = unpack(bundle, Path(tmp) / "unpacked")
        except BundleError as exc:
            raise SigningError(str(exc)) from exc
        _sign_folder(folder, key)
        repacked = pack(folder, Path(tmp) / bundle.name)
        os.replace(repacked, bundle)  # same folder: atomic; a reader sees old or new
    return Signed(bundle, key_id(key.public_key()), sha256_file(bundle))


def _sign_folder(folder: Path, key: Ed25519PrivateKey) -> None:
    try:
        verify(folder)  # never sign a bundle whose files do not match its manifest
    except BundleError as exc:
        raise SigningError(f"refusing to sign: {exc}") from exc
    (folder / SIGNATURE).write_bytes(signature_text((folder / MANIFEST).read_bytes(), key))
    try:
        verify_signature(folder, [key.public_key()])
    except SignatureError as exc:  # e.g. a stray file the manifest does not list
        (folder / SIGNATURE).unlink()
        raise SigningError(f"{folder}: {exc}") from exc
