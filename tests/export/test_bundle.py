from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from edge_agent.contract.bundle import BundleError, sha256_file, verify
from edge_agent.contract.bundle_store import load_bundle
from edge_agent.pipeline.head import Head
from export.bundle import ExportOptions, export_bundle, load_run
from export.formats import FORMATS, ExportError

CLASS_NAMES = ["normal", "inner_race", "outer_race", "ball"]
WINDOW = 512  # the fixture checkpoint's preprocess window


def test_bundle_verifies_and_describes_the_model(exported, run_dir):
    folder = exported["folder"]
    manifest = verify(folder)
    assert (manifest.model_name, manifest.model_version) == ("fixture", "1")
    assert manifest.class_names == CLASS_NAMES and manifest.normal_class == "normal"
    assert manifest.preprocessing.window == WINDOW
    assert manifest.preprocessing.normalization == "zscore"
    assert manifest.embedding_dim == 32
    assert manifest.thresholds.uncertain_below == 0.7
    assert manifest.thresholds.unknown_above == 2.5  # the run's open-set threshold, carried
    assert [(e.format, e.file) for e in manifest.encoders] == [
        ("fp32.onnx", "encoder.fp32.onnx"),
        ("int8.onnx", "encoder.int8.onnx"),
        ("int8.tflite", "encoder.int8.tflite"),
    ]
    assert set(manifest.reference_stats) == set(CLASS_NAMES)
    assert manifest.provenance["checkpoint_sha256"] == sha256_file(run_dir / "finetuned.pt")
    assert manifest.provenance["encoder"]["name"] == "cnn"
    assert manifest.provenance["calibration"]["windows"] == 128
    assert manifest.metrics["test_accuracy"] > 0.9  # carried over from the checkpoint
    assert set(manifest.metrics["heldout_accuracy"]) >= {"fp32", "onnx-int8", "tflite-int8"}
    assert manifest.parity["passed"] is True
    assert [m["format"] for m in manifest.parity["models"]] == list(FORMATS)


def test_bundle_head_gives_the_checkpoint_decisions(exported, run_dir):
    run = load_run(run_dir)
    bundle_head = Head.load(exported["folder"] / "head.npz")
    emb = np.random.default_rng(0).standard_normal((20, 32)).astype(np.float32)
    np.testing.assert_allclose(bundle_head.logits(emb), run.head.logits(emb), rtol=1e-6)


def test_archive_unpacks_to_a_verified_bundle(exported, tmp_path):
    archive = exported["folder"].with_name("fixture-1.tar.gz")
    folder, manifest, head = load_bundle(archive)
    assert folder.name.startswith("fixture-1-")  # installed as <name>-<version>-<sha12>
    assert verify(folder) == manifest
    assert head.num_classes == len(manifest.class_names) == 4


def test_tampered_bundle_file_is_refused(exported, tmp_path):
    copy = Path(shutil.copytree(exported["folder"], tmp_path / "copy"))
    blob = bytearray((copy / "encoder.int8.onnx").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (copy / "encoder.int8.onnx").write_bytes(bytes(blob))
    with pytest.raises(BundleError, match=r"checksum mismatch for encoder\.int8\.onnx"):
        verify(copy)


def test_existing_bundle_is_not_overwritten(exported, run_dir):
    options = ExportOptions(
        formats=[FORMATS["onnx"]], out=exported["out"], name="fixture", version="1"
    )
    with pytest.raises(ExportError, match="already exists; pass another --version"):
        export_bundle(load_run(run_dir), options)


@pytest.mark.parametrize(
    ("flag", "value"), [("name", "my model"), ("version", "../1"), ("uncertain_below", 1.5)]
)
def test_bad_name_version_or_threshold_is_refused(flag, value, run_dir, tmp_path):
    options = ExportOptions(formats=[FORMATS["onnx"]], out=tmp_path, **{flag: value})
    with pytest.raises(ExportError, match=f"--{flag.replace('_', '-')}"):
        export_bundle(load_run(run_dir), options)
    assert list(tmp_path.iterdir()) == []


def test_load_run_explains_what_is_missing_or_wrong(trained, make_run, tmp_path):
    with pytest.raises(ExportError, match=r"no finetuned\.pt in"):
        load_run(tmp_path)
    with pytest.raises(ExportError, match="does not exist"):
        load_run(tmp_path / "nope.pt")

    pretrained = {**trained, "checkpoint": {**trained["checkpoint"], "kind": "pretrained"}}
    with pytest.raises(ExportError, match="kind is 'pretrained'; export needs a fine-tuned"):
        load_run(make_run(tmp_path / "pre", pretrained))

    no_head = {
        **trained,
        "checkpoint": {k: v for k, v in trained["checkpoint"].items() if k != "head"},
    }
    with pytest.raises(ExportError, match="invalid checkpoint: head: Field required"):
        load_run(make_run(tmp_path / "nohead", no_head))

    folder = make_run(tmp_path / "short", trained)
    x, y = trained["heldout"]
    np.savez(folder / "heldout.npz", x=x[:, :, : WINDOW // 2], y=y)
    with pytest.raises(ExportError, match=f"expected \\(N>0, 1, {WINDOW}\\)"):
        load_run(folder)
    (folder / "heldout.npz").unlink()
    with pytest.raises(ExportError, match=r"no heldout\.npz"):
        load_run(folder)


def test_encoder_state_that_does_not_fit_is_reported(trained, make_run, tmp_path):
    ckpt = dict(trained["checkpoint"])
    ckpt["encoder"] = {"name": "cnn", "kwargs": {"embedding_dim": 32, "width": 0.5}}
    folder = make_run(tmp_path / "wide", {**trained, "checkpoint": ckpt})
    with pytest.raises(ExportError, match="cannot rebuild encoder 'cnn'"):
        load_run(folder)
    assert torch.load(folder / "finetuned.pt", weights_only=False)["kind"] == "finetuned"


@pytest.mark.parametrize(("backend", "precision"), [("onnx", "fp32"), ("onnx", "int8"),
                                                    ("tflite", "int8")])  # fmt: skip
def test_every_format_reproduces_its_recorded_self_test_outputs(exported, backend, precision):
    """The export records each format's embeddings of the fixed self-test windows; each device
    runtime reproduces them (the self-test a bundle passes before it goes live)."""
    from edge_agent.backends import load_backend, self_test
    from edge_agent.contract.formats import encoder_format

    folder = exported["folder"]
    manifest = verify(folder)
    assert manifest.self_test == "selftest.npz" and "selftest.npz" in manifest.files
    name = encoder_format(backend, precision).name
    with np.load(folder / "selftest.npz") as recorded:
        assert set(recorded.files) == {"fp32.onnx", "int8.onnx", "int8.tflite"}
        assert recorded[name].shape == (4, 32)
    runtime = load_backend(folder, manifest, backend, precision=precision)
    self_test(folder, manifest, runtime, name)


def test_a_spectral_template_travels_in_the_bundle_and_parity_decides_fused(
    trained, make_run, tmp_path
):
    """A run whose recipe kept the spectral template: the manifest carries it as the agent loads
    it, and the parity gate scores the fused decisions (here the template alone decides)."""
    from edge_agent.physics.spectral import SpectralHead, log_spectrum, spectral_view
    from train.spectral import fit_pool_gate, fit_template

    x, y = trained["heldout"]
    template = fit_template(spectral_view(x), y, len(CLASS_NAMES), seed=0)
    gate = fit_pool_gate(log_spectrum(x))
    template = SpectralHead(
        template.mean,
        template.scale,
        template.weights,
        template.bias,
        0.0,
        1.0,
        model_floor=1e-3,
        template_temperature=0.7,
        pool=gate,
    )
    ckpt = {**trained["checkpoint"], "spectral": template.to_dict()}
    run = load_run(make_run(tmp_path / "run", {**trained, "checkpoint": ckpt}))
    options = ExportOptions(formats=[FORMATS["onnx"]], out=tmp_path / "out", name="s", version="1")
    result = export_bundle(run, options)
    assert result.folder is not None, result.failures
    manifest = verify(result.folder)
    carried = manifest.spectral.head()
    np.testing.assert_allclose(carried.weights, template.weights)
    assert (carried.model_floor, carried.template_temperature) == (1e-3, 0.7)
    assert carried.pool is not None and gate is not None
    np.testing.assert_array_equal(carried.pool.points, gate.points)
    assert (carried.pool.radius, carried.pool.neighbours) == (gate.radius, gate.neighbours)
    fused_accuracy = float((template.alone(x).argmax(1) == y).mean())
    assert result.report.reference_accuracy == pytest.approx(fused_accuracy)

    ckpt["spectral"] = {**template.to_dict(), "bias": [0.0, 0.0]}
    with pytest.raises(ExportError, match="invalid spectral template"):
        load_run(make_run(tmp_path / "bad", {**trained, "checkpoint": ckpt}))
