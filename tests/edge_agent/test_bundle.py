"""The bundle contract: verify() refuses anything it cannot check, with a clear message."""

import json
import tarfile

import numpy as np
import pytest

from edge_agent.bundle import (
    BundleError,
    load_bundle,
    pack,
    read_manifest,
    unpack,
    verify,
    write_manifest,
)
from edge_agent.head import Head

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
