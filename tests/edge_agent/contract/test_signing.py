"""Bundle signatures: sign the manifest, verify against trusted keys, refuse everything else."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.contract import bundle
from edge_agent.contract.bundle import pack, verify, write_manifest
from edge_agent.contract.bundle_store import BundleStore
from edge_agent.contract.signing import (
    MANIFEST,
    SIGNATURE,
    SignatureError,
    key_id,
    load_public_key,
    signature_text,
    verify_signature,
)

ROOT = Path(__file__).resolve().parents[3]


def sign(folder: Path, key: Ed25519PrivateKey) -> None:
    (folder / SIGNATURE).write_bytes(signature_text((folder / MANIFEST).read_bytes(), key))


@pytest.fixture
def signed(tmp_path, agent_bundle) -> tuple[Path, Ed25519PrivateKey]:
    folder = tmp_path / "tiny-1"
    shutil.copytree(agent_bundle, folder)
    key = Ed25519PrivateKey.generate()
    sign(folder, key)
    return folder, key


def test_a_signed_bundle_verifies_with_its_key_and_still_passes_verify(signed):
    folder, key = signed
    assert verify_signature(folder, [key.public_key()]) == key_id(key.public_key())
    other = Ed25519PrivateKey.generate().public_key()
    assert verify_signature(folder, [other, key.public_key()]) == key_id(key.public_key())
    assert verify(folder).model_name == "tiny"  # the unlisted manifest.sig does not disturb it
    assert SIGNATURE not in verify(folder).files


def test_another_key_is_refused(signed):
    folder, _ = signed
    with pytest.raises(SignatureError, match="signed with another key, or its manifest changed"):
        verify_signature(folder, [Ed25519PrivateKey.generate().public_key()])


def test_a_manifest_changed_after_signing_is_refused(signed):
    folder, key = signed
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["thresholds"]["uncertain_below"] = 0.01  # still a valid, checksummed bundle
    (folder / MANIFEST).write_text(json.dumps(manifest))
    verify(folder)
    with pytest.raises(SignatureError, match="manifest changed after signing"):
        verify_signature(folder, [key.public_key()])


def test_a_file_changed_after_signing_fails_the_checksums_the_signature_covers(signed):
    folder, key = signed
    head = folder / "head.npz"
    data = bytearray(head.read_bytes())
    data[len(data) // 2] ^= 0xFF
    head.write_bytes(bytes(data))
    verify_signature(folder, [key.public_key()])  # the manifest itself is intact...
    with pytest.raises(bundle.BundleError, match=r"checksum mismatch for head\.npz"):
        verify(folder)  # ...and names the checksum head.npz no longer has


def test_missing_garbled_or_extra_files_are_refused(signed):
    folder, key = signed
    keys = [key.public_key()]
    (folder / "extra.bin").write_bytes(b"rides along unsigned")
    with pytest.raises(SignatureError, match=r"does not list: \['extra.bin'\]"):
        verify_signature(folder, keys)
    (folder / "extra.bin").unlink()
    (folder / SIGNATURE).write_text("not base64 !!\n")
    with pytest.raises(SignatureError, match="not base64"):
        verify_signature(folder, keys)
    (folder / SIGNATURE).write_text("AAAA\n")
    with pytest.raises(SignatureError, match="holds 3 bytes, an Ed25519 signature has 64"):
        verify_signature(folder, keys)
    (folder / SIGNATURE).unlink()
    with pytest.raises(SignatureError, match=r"not signed \(no manifest\.sig\); sign it with"):
        verify_signature(folder, keys)
    with pytest.raises(SignatureError, match="no trusted keys"):
        verify_signature(folder, [])


def test_public_keys_load_from_pem_and_other_files_are_refused(tmp_path):
    key = Ed25519PrivateKey.generate()
    pem = tmp_path / "k.pub.pem"
    pem.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    assert key_id(load_public_key(pem)) == key_id(key.public_key())
    (tmp_path / "junk.pem").write_text("hello")
    with pytest.raises(SignatureError, match=r"junk\.pem: not a PEM public key"):
        load_public_key(tmp_path / "junk.pem")
    with pytest.raises(SignatureError, match=r"nope\.pem: cannot read the update key"):
        load_public_key(tmp_path / "nope.pem")


def test_the_signature_travels_through_pack_and_the_store(signed, tmp_path):
    folder, key = signed
    store = BundleStore(tmp_path / "store")
    archive = pack(folder, tmp_path / "tiny-1.tar.gz")
    from_archive = store.install(archive)
    assert (from_archive / SIGNATURE).read_bytes() == (folder / SIGNATURE).read_bytes()
    verify_signature(from_archive, [key.public_key()])
    from_folder = BundleStore(tmp_path / "store2").install(folder)
    verify_signature(from_folder, [key.public_key()])


def test_a_signed_copy_replaces_an_unsigned_copy_of_the_same_bundle(signed, tmp_path):
    folder, _ = signed
    unsigned = tmp_path / "unsigned" / "tiny-1"
    shutil.copytree(folder, unsigned)
    (unsigned / SIGNATURE).unlink()
    store = BundleStore(tmp_path / "store")
    first = store.install(unsigned)
    assert not (first / SIGNATURE).exists()
    second = store.install(folder)
    assert second == first and (second / SIGNATURE).is_file()  # same content, now signed
    assert store.install(unsigned) == first and (first / SIGNATURE).is_file()  # kept signed


def test_a_failing_install_check_leaves_nothing_in_the_store(signed, tmp_path):
    folder, _ = signed
    store = BundleStore(tmp_path / "store")

    def refuse(staged: Path) -> None:
        assert (staged / SIGNATURE).is_file()
        raise SignatureError("no")

    with pytest.raises(SignatureError):
        store.install(folder, check=refuse)
    assert list(store.root.iterdir()) == []


def test_write_manifest_does_not_checksum_an_old_signature(tmp_path):
    (tmp_path / "head.npz").write_bytes(b"x")
    (tmp_path / SIGNATURE).write_text("old")
    fields = {"model_name": "m", "model_version": "1", "class_names": ["normal", "b"],
              "preprocessing": {"sample_rate_hz": 1, "window": 16, "hop": 1,
                                "normalization": "zscore"},
              "embedding_dim": 1, "encoders": [{"format": "fp32.onnx", "file": "head.npz",
                                                "batch": "dynamic"}]}  # fmt: skip
    assert set(write_manifest(tmp_path, fields).files) == {"head.npz"}


def test_signing_constants_match_the_bundle_module_and_stay_numpy_free():
    assert (MANIFEST, SIGNATURE) == (bundle.MANIFEST, bundle.SIGNATURE)
    code = (
        "import sys; import edge_agent.contract.signing; "
        "print('numpy' in sys.modules, 'torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.stdout.split() == ["False", "False"], done.stderr
