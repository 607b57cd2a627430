"""`faultwatch export keygen` and `sign`: the key pair, manifest.sig, the re-packed archive."""

from __future__ import annotations

import shutil
import stat
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge_agent.contract.bundle import pack, sha256_file, unpack, verify
from edge_agent.contract.signing import SIGNATURE, load_public_key, verify_signature
from export.cli import app

runner = CliRunner()


@pytest.fixture
def keys(tmp_path) -> Path:
    result = runner.invoke(app, ["keygen", "--out", str(tmp_path / "keys")])
    assert result.exit_code == 0, result.output
    return tmp_path / "keys"


def test_help_lists_keygen_and_sign_beside_the_export_options():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "--checkpoint" in result.output and "keygen" in result.output
    assert "sign" in result.output
    sign_help = runner.invoke(app, ["sign", "--help"])
    assert sign_help.exit_code == 0 and "--key" in sign_help.output


def test_keygen_writes_a_private_key_only_its_owner_reads_and_a_public_key(keys):
    private, public = keys / "ed25519.pem", keys / "ed25519.pub.pem"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in private.read_bytes()
    load_public_key(public)  # a usable Ed25519 public key
    kept = private.read_bytes()
    again = runner.invoke(app, ["keygen", "--out", str(keys)])
    assert again.exit_code == 1
    assert "ed25519.pem exists already" in again.output
    assert private.read_bytes() == kept  # not replaced


def test_sign_a_folder_writes_a_signature_the_public_key_verifies(keys, tmp_path, agent_bundle):
    folder = tmp_path / "tiny-1"
    shutil.copytree(agent_bundle, folder)
    result = runner.invoke(app, ["sign", str(folder), "--key", str(keys / "ed25519.pem")])
    assert result.exit_code == 0, result.output
    assert f"signed {folder} with key" in result.output
    verify_signature(folder, [load_public_key(keys / "ed25519.pub.pem")])
    verify(folder)


def test_sign_an_archive_repacks_it_with_the_signature_and_prints_its_sha256(
    keys, tmp_path, agent_bundle
):
    archive = pack(agent_bundle, tmp_path / "tiny-1.tar.gz")
    before = sha256_file(archive)
    result = runner.invoke(app, ["sign", str(archive), "--key", str(keys / "ed25519.pem")])
    assert result.exit_code == 0, result.output
    after = sha256_file(archive)
    assert after != before and f"sha256: {after}" in result.output
    assert f'"sha256": "{after}"' in result.output  # the update command, ready to fill in
    with tarfile.open(archive) as tar:
        assert f"tiny-1/{SIGNATURE}" in tar.getnames()
    folder = unpack(archive, tmp_path / "out")
    verify(folder)
    verify_signature(folder, [load_public_key(keys / "ed25519.pub.pem")])
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("faultwatch-sign-")] == []


def test_sign_refuses_a_corrupt_bundle_a_bad_key_and_a_missing_bundle(keys, tmp_path, agent_bundle):
    folder = tmp_path / "tiny-1"
    shutil.copytree(agent_bundle, folder)
    (folder / "head.npz").write_bytes(b"not the trained head")
    key = str(keys / "ed25519.pem")
    corrupt = runner.invoke(app, ["sign", str(folder), "--key", key])
    assert corrupt.exit_code == 1
    assert "refusing to sign" in corrupt.output
    assert "checksum mismatch for head.npz" in corrupt.output
    assert not (folder / SIGNATURE).exists()
    wrong = runner.invoke(app, ["sign", str(agent_bundle), "--key", str(keys / "ed25519.pub.pem")])
    assert wrong.exit_code == 1 and "not an unencrypted PEM private key" in wrong.output
    missing = runner.invoke(app, ["sign", str(tmp_path / "nope.tar.gz"), "--key", key])
    assert missing.exit_code == 1 and "no such bundle" in missing.output


def test_export_without_a_checkpoint_still_says_so_in_one_line():
    result = runner.invoke(app, ["--formats", "onnx"])
    assert result.exit_code == 1
    assert result.output.strip() == (
        "export: --checkpoint is required: a fine-tuned .pt file or the run folder holding it"
    )
