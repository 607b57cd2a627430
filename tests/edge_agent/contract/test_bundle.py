"""The bundle contract: verify() refuses anything it cannot check, with a clear message.

Archives: extracted once into a state folder (a BundleStore), safely (caps, plain files only),
leaving nothing behind when refused or when only inspected.
"""

import gzip
import io
import json
import re
import shutil
import stat
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edge_agent.cli import app
from edge_agent.contract import bundle as bundle_module
from edge_agent.contract.bundle import (
    BundleError,
    pack,
    read_manifest,
    unpack,
    verify,
    write_manifest,
)
from edge_agent.contract.bundle_store import load_bundle, opened_bundle
from edge_agent.pipeline.head import Head

D, C = 8, 4


def make_head(seed: int = 0) -> Head:
    rng = np.random.default_rng(seed)
    return Head(
        rng.normal(size=(D, 6)).astype(np.float32),
        np.zeros(6, np.float32),
        rng.normal(size=(6, C)).astype(np.float32),
        np.zeros(C, np.float32),
        temperature=1.5,
    )


@pytest.fixture
def bundle(tmp_path):
    folder = tmp_path / "model-1"
    folder.mkdir()
    (folder / "encoder.fp32.onnx").write_bytes(b"not really onnx but checksummed" * 10)
    make_head().save(folder / "head.npz")
    write_manifest(
        folder,
        {
            "model_name": "model",
            "model_version": "1",
            "class_names": ["normal", "inner_race", "outer_race", "ball"],
            "preprocessing": {
                "sample_rate_hz": 12000,
                "window": 2048,
                "hop": 1024,
                "normalization": "zscore",
            },
            "embedding_dim": D,
            "encoders": [{"format": "fp32.onnx", "file": "encoder.fp32.onnx", "batch": "dynamic"}],
        },
    )
    return folder


def test_fresh_bundle_verifies_and_loads(bundle):
    manifest = verify(bundle)
    assert manifest.thresholds.uncertain_below == 0.7
    _, manifest, head = load_bundle(bundle)
    emb = np.random.default_rng(1).normal(size=(5, D)).astype(np.float32)
    np.testing.assert_allclose(head.probabilities(emb), make_head().probabilities(emb), rtol=1e-6)
    assert manifest.preprocessing.spec().window == 2048


def test_the_manifest_writes_each_list_of_numbers_on_one_line(bundle):
    """A spectral template with its pool gate: tens of thousands of numbers, a few lines."""
    from edge_agent.physics.pool import PoolGate
    from edge_agent.physics.spectral import SpectralHead

    rng = np.random.default_rng(2)
    gate = PoolGate(
        np.zeros(512), np.ones(512), rng.normal(size=(20, 512)), rng.normal(size=(2000, 20)), 3.0, 5
    )
    weights = rng.normal(size=(C, 512)) * 1e-7  # small numbers print with exponents
    head = SpectralHead(np.zeros(512), np.ones(512), weights, np.zeros(C), 0.25, pool=gate)
    fields = json.loads((bundle / "manifest.json").read_text())
    fields = {
        k: v for k, v in fields.items() if k not in ("schema_version", "created_utc", "files")
    }
    manifest = write_manifest(bundle, {**fields, "spectral": head.to_dict()})
    text = (bundle / "manifest.json").read_text()
    assert len(text.splitlines()) < 2200  # the 2,000 points, one line each, and the rest
    assert verify(bundle) == manifest
    assert not re.search(r"^\s*-?\d[\d.eE+-]*,?$", text, re.MULTILINE)  # no number alone
    np.testing.assert_array_equal(verify(bundle).spectral.head().weights, weights)


def test_tampered_file_is_refused_naming_it(bundle):
    path = bundle / "encoder.fp32.onnx"
    data = bytearray(path.read_bytes())
    data[5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"checksum mismatch for encoder\.fp32\.onnx"):
        verify(bundle)


def test_truncated_head_is_refused(bundle):
    path = bundle / "head.npz"
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(BundleError, match=r"head\.npz"):
        load_bundle(bundle)


def test_missing_file_is_refused(bundle):
    (bundle / "head.npz").unlink()
    with pytest.raises(BundleError, match="missing"):
        verify(bundle)


def test_wrong_schema_version_is_refused(bundle):
    path = bundle / "manifest.json"
    raw = json.loads(path.read_text())
    raw["schema_version"] = 99
    path.write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="schema_version 99 is not supported"):
        verify(bundle)


def test_unknown_encoder_format_names_the_valid_ones(bundle):
    path = bundle / "manifest.json"
    raw = json.loads(path.read_text())
    raw["encoders"][0]["format"] = "fp16.onnx"
    path.write_text(json.dumps(raw))
    with pytest.raises(BundleError) as err:
        read_manifest(bundle)
    assert "encoders.0.format" in str(err.value)
    assert "unknown encoder format 'fp16.onnx'; valid: fp32.onnx, int8.onnx, int8.tflite" in str(
        err.value
    )


def test_invalid_manifest_names_the_field(bundle):
    path = bundle / "manifest.json"
    raw = json.loads(path.read_text())
    raw["preprocessing"]["window"] = -3
    path.write_text(json.dumps(raw))
    with pytest.raises(BundleError, match=r"preprocessing\.window"):
        read_manifest(bundle)


def test_garbage_manifest_is_refused(bundle):
    (bundle / "manifest.json").write_bytes(b"\xff\xfe{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        verify(bundle)


def test_archive_round_trip_and_corrupt_archive(bundle, tmp_path):
    archive = pack(bundle, tmp_path / "model-1.tar.gz")
    folder, manifest, _ = load_bundle(archive)
    assert manifest.model_name == "model" and (folder / "head.npz").is_file()
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(BundleError):
        load_bundle(broken)


def test_archive_with_unsafe_path_is_refused(tmp_path):
    evil = tmp_path / "evil.tar.gz"
    payload = tmp_path / "x.txt"
    payload.write_text("x")
    with tarfile.open(evil, "w:gz") as tar:
        tar.add(payload, arcname="../escape.txt")
    with pytest.raises(BundleError, match="unsafe"):
        unpack(evil, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()


# ---- archives: extraction into a cache folder, safety caps, nothing left behind ---------------


@pytest.fixture
def tmp_root(tmp_path, monkeypatch) -> Path:
    """A fresh system temp folder (what TMPDIR points at), to count what extraction leaves."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def write_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return path


def member(name: str, kind: bytes = tarfile.REGTYPE, **fields) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    for key, value in fields.items():
        setattr(info, key, value)
    return info


def another_version(bundle: Path, version: str, dest: Path) -> Path:
    """Pack a copy of `bundle` with another model_version (so another archive checksum)."""
    copy = Path(shutil.copytree(bundle, dest / f"model-{version}"))
    fields = json.loads((copy / "manifest.json").read_text())
    del fields["files"], fields["schema_version"], fields["created_utc"]
    write_manifest(copy, {**fields, "model_version": version})
    return pack(copy, dest / f"model-{version}.tar.gz")


def entries(folder: Path) -> list[Path]:
    return sorted(folder.iterdir()) if folder.exists() else []


def test_reloading_an_archive_reuses_one_extracted_folder(bundle, tmp_path, tmp_root):
    archive = pack(bundle, tmp_path / "model-1.tar.gz")
    cache = tmp_path / "state" / "bundles"
    folders = {load_bundle(archive, cache)[0] for _ in range(20)}
    assert len(folders) == 1
    (folder,) = folders
    assert entries(cache) == [folder] and folder.name.startswith("model-1-")
    assert (folder / "head.npz").is_file()
    assert entries(tmp_root) == []


def test_cache_keeps_the_most_recently_used_bundles(bundle, tmp_path, tmp_root):
    archives = [another_version(bundle, str(v), tmp_path) for v in range(2, 6)]
    cache = tmp_path / "bundles"
    loaded = [load_bundle(a, cache)[0] for a in archives]
    assert len(entries(cache)) == 3  # BundleStore's default keep; none activated
    assert not loaded[0].exists() and all(f.exists() for f in loaded[1:])
    load_bundle(archives[1], cache)  # in use again: now the most recent
    load_bundle(archives[0], cache)
    assert loaded[1].exists() and not loaded[2].exists()
    assert entries(tmp_root) == []


def test_altered_cached_copy_is_extracted_again(bundle, tmp_path):
    archive = pack(bundle, tmp_path / "model-1.tar.gz")
    cache = tmp_path / "bundles"
    folder, _, _ = load_bundle(archive, cache)
    (folder / "encoder.fp32.onnx").write_bytes(b"altered")
    again, manifest, _ = load_bundle(archive, cache)
    assert again == folder and verify(again) == manifest
    assert len(entries(cache)) == 1


def test_header_claiming_a_huge_member_is_refused_before_writing(tmp_path, tmp_root):
    bomb = tmp_path / "bomb.tar.gz"
    header = member("model-1/encoder.fp32.onnx", size=600 * 1024**2)
    with gzip.open(bomb, "wb") as gz:  # header only: the 600 MB of zeros are never produced
        gz.write(member("model-1", tarfile.DIRTYPE).tobuf() + header.tobuf())
    cache = tmp_path / "bundles"
    with pytest.raises(BundleError, match=r"bomb\.tar\.gz: unpacks to more than 536,870,912 bytes"):
        load_bundle(bomb, cache)
    with pytest.raises(BundleError, match="decompression bomb"), opened_bundle(bomb):
        pass
    assert entries(cache) == [] and entries(tmp_root) == []


def test_member_over_a_small_cap_is_refused(tmp_path, tmp_root, monkeypatch):
    monkeypatch.setattr(bundle_module, "MAX_UNPACKED_BYTES", 64 * 1024)
    archive = write_tar(
        tmp_path / "big.tar.gz",
        [
            (member("model-1", tarfile.DIRTYPE), b""),
            (member("model-1/x.bin"), bytes(64 * 1024 + 1)),
        ],
    )
    with pytest.raises(BundleError, match=r"more than 65,536 bytes.*'model-1/x\.bin'"):
        load_bundle(archive, tmp_path / "bundles")
    assert entries(tmp_path / "bundles") == [] and entries(tmp_root) == []


def test_bytes_written_are_capped_when_a_header_lies(tmp_path, tmp_root, monkeypatch):
    monkeypatch.setattr(bundle_module, "MAX_UNPACKED_BYTES", 64 * 1024)
    monkeypatch.setattr(bundle_module, "_declared_size", lambda m: 0)  # headers under-report
    archive = write_tar(
        tmp_path / "liar.tar.gz",
        [
            (member("model-1", tarfile.DIRTYPE), b""),
            (member("model-1/x.bin"), bytes(64 * 1024 + 1)),
        ],
    )
    with pytest.raises(BundleError, match="more than 65,536 bytes"):
        load_bundle(archive, tmp_path / "bundles")
    with pytest.raises(BundleError, match="more than 65,536 bytes"), opened_bundle(archive):
        pass
    assert entries(tmp_path / "bundles") == [] and entries(tmp_root) == []


def test_too_many_members_are_refused(bundle, tmp_path, monkeypatch):
    monkeypatch.setattr(bundle_module, "MAX_MEMBERS", 2)
    archive = pack(bundle, tmp_path / "model-1.tar.gz")  # three files
    with pytest.raises(BundleError, match="more than 2 members"):
        load_bundle(archive, tmp_path / "bundles")
    assert entries(tmp_path / "bundles") == []


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (member("model-1/../../escape.txt"), "unsafe member path"),
        (member("/tmp/faultwatch-absolute.txt"), "unsafe member path"),
        (member("model-1/passwd", tarfile.SYMTYPE, linkname="/etc/passwd"), "is a link"),
        (member("model-1/up", tarfile.SYMTYPE, linkname="../../escape.txt"), "is a link"),
        (member("model-1/hard", tarfile.LNKTYPE, linkname="../../escape.txt"), "is a link"),
        (member("model-1/hard", tarfile.LNKTYPE, linkname="/etc/passwd"), "is a link"),
        (member("model-1/fifo", tarfile.FIFOTYPE), "is a device or fifo"),
        (member("model-1/dev", tarfile.CHRTYPE, devmajor=1, devminor=3), "is a device or fifo"),
    ],
)
def test_unsafe_members_are_refused_writing_nothing(bad, message, tmp_path, tmp_root):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    archive = write_tar(
        work / "evil.tar.gz",
        [(member("model-1", tarfile.DIRTYPE), b""), (member("model-1/ok.txt"), b"ok"), (bad, b"x")],
    )
    with pytest.raises(BundleError, match=rf"evil\.tar\.gz: .*{message}"):
        load_bundle(archive, work / "bundles")
    with pytest.raises(BundleError, match=message):
        unpack(archive, work / "out")
    assert entries(work / "bundles") == [] and entries(tmp_root) == []
    assert not (tmp_path / "escape.txt").exists() and not (work / "escape.txt").exists()
    assert not Path("/tmp/faultwatch-absolute.txt").exists()
    assert not (work / "out" / "model-1" / "ok.txt").exists()  # refused before writing


def setuid(info: tarfile.TarInfo) -> tarfile.TarInfo:
    if info.isfile():
        info.mode = 0o6777
    return info


def test_setuid_and_exec_bits_do_not_survive(bundle, tmp_path):
    archive = tmp_path / "setuid.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(bundle, arcname=bundle.name, filter=setuid)
    with tarfile.open(archive) as tar:
        assert all(m.mode == 0o6777 for m in tar.getmembers() if m.isfile())
    folder, _, _ = load_bundle(archive, tmp_path / "bundles")
    for path in folder.iterdir():
        mode = path.stat().st_mode
        assert not mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX), f"{path}: {mode:o}"
        assert not mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH | stat.S_IWOTH), oct(mode)


def test_corrupt_and_tampered_archives_leave_nothing_behind(bundle, tmp_path, tmp_root):
    good = pack(bundle, tmp_path / "model-1.tar.gz")
    corrupt = tmp_path / "corrupt.tar.gz"
    corrupt.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    copy = Path(shutil.copytree(bundle, tmp_path / "copy" / "model-1"))
    blob = bytearray((copy / "encoder.fp32.onnx").read_bytes())
    blob[3] ^= 0xFF
    (copy / "encoder.fp32.onnx").write_bytes(bytes(blob))
    tampered = pack(copy, tmp_path / "tampered.tar.gz")
    cache = tmp_path / "bundles"
    with pytest.raises(BundleError, match=r"corrupt\.tar\.gz: not a readable bundle archive"):
        load_bundle(corrupt, cache)
    with pytest.raises(BundleError, match=r"tampered\.tar\.gz/model-1: checksum mismatch for enc"):
        load_bundle(tampered, cache)
    for archive in (corrupt, tampered):
        with pytest.raises(BundleError), opened_bundle(archive):
            pass
    assert entries(cache) == [] and entries(tmp_root) == []


def test_inspecting_an_archive_leaves_nothing_behind(bundle, tmp_path, tmp_root):
    archive = pack(bundle, tmp_path / "model-1.tar.gz")
    with opened_bundle(archive) as (folder, manifest, _):
        assert (folder / "head.npz").is_file() and manifest.model_version == "1"
    assert not folder.exists()
    runner = CliRunner()
    result = runner.invoke(app, ["verify-bundle", str(archive)])
    assert result.exit_code == 0, result.output
    assert "encoder.fp32.onnx" in result.output
    corrupt = tmp_path / "corrupt.tar.gz"
    corrupt.write_bytes(archive.read_bytes()[:100])
    assert runner.invoke(app, ["verify-bundle", str(corrupt)]).exit_code == 1
    assert entries(tmp_root) == []
