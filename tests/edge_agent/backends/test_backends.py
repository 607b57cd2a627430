"""Inference backends: tiny real models through onnxruntime and LiteRT, and the error paths."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_agent.backends import BACKENDS, BackendError, OnnxBackend, load_backend, self_test
from edge_agent.contract.bundle import BundleError, Quantization, write_manifest
from edge_agent.contract.bundle_store import BundleStore
from edge_agent.contract.formats import ENCODER_FORMATS, encoder_format
from edge_agent.pipeline.head import Head

W, D = 64, 8  # window samples, embedding size


def conv_encoder(path: Path, weight_scale: float = 1.0, batch: int | str = "batch") -> np.ndarray:
    """Write Conv1d(1->D, k=5, pad 2) -> ReLU -> global average pool as ONNX; return weights."""
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((D, 1, 5)) * weight_scale).astype(np.float32)
    bias = rng.standard_normal(D).astype(np.float32) * 0.1
    nodes = [
        helper.make_node("Conv", ["windows", "w", "b"], ["c"], pads=[2, 2]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["embedding"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("windows", TensorProto.FLOAT, [batch, 1, W])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [batch, D])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return np.concatenate([weight.reshape(D, 5), bias[:, None]], axis=1)


def reference(windows: np.ndarray, params: np.ndarray) -> np.ndarray:
    """The same encoder in numpy: (N, 1, W) -> (N, D)."""
    weight, bias = params[:, :5], params[:, 5]
    padded = np.pad(windows[:, 0], ((0, 0), (2, 2)))
    taps = np.lib.stride_tricks.sliding_window_view(padded, 5, axis=1)  # (N, W, 5)
    conv = np.einsum("nwk,dk->ndw", taps, weight) + bias[None, :, None]
    return np.maximum(conv, 0).mean(axis=2)


def windows(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 1, W)).astype(np.float32)


@pytest.fixture
def bundle(tmp_path: Path):
    """A bundle folder with int8.onnx and fp32.onnx (different weights) and its manifest."""
    int8 = conv_encoder(tmp_path / "encoder.int8.onnx", weight_scale=1.0)
    fp32 = conv_encoder(tmp_path / "encoder.fp32.onnx", weight_scale=2.0)
    rng = np.random.default_rng(2)
    Head(rng.standard_normal((D, 4)).astype(np.float32), np.zeros(4, np.float32),
         rng.standard_normal((4, 2)).astype(np.float32), np.zeros(2, np.float32)
         ).save(tmp_path / "head.npz")  # fmt: skip
    manifest = write_manifest(
        tmp_path,
        {
            "model_name": "tiny",
            "model_version": "1",
            "class_names": ["normal", "ball"],
            "preprocessing": {
                "sample_rate_hz": 12000,
                "window": W,
                "hop": 32,
                "normalization": "zscore",
            },
            "embedding_dim": D,
            "encoders": [
                {"format": "int8.onnx", "file": "encoder.int8.onnx", "batch": "dynamic"},
                {"format": "fp32.onnx", "file": "encoder.fp32.onnx", "batch": "dynamic"},
            ],
        },
    )
    return tmp_path, manifest, {"int8": int8, "fp32": fp32}


def test_registry_lists_both_backends():
    assert set(BACKENDS) == {"onnx", "tflite"}
    assert all(cls.name == key for key, cls in BACKENDS.items())
    assert {f.runtime for f in ENCODER_FORMATS.values()} == set(BACKENDS)


@pytest.mark.parametrize("n", [1, 5])
def test_onnx_embed_matches_the_numpy_reference(tmp_path: Path, n: int):
    params = conv_encoder(tmp_path / "m.onnx")
    backend = OnnxBackend(tmp_path / "m.onnx")
    x = windows(n)
    out = backend.embed(x)
    assert out.shape == (n, D) and out.dtype == np.float32
    np.testing.assert_allclose(out, reference(x, params), rtol=1e-4, atol=1e-5)


def test_onnx_fixed_batch_one_model_runs_window_by_window(tmp_path: Path):
    params = conv_encoder(tmp_path / "b1.onnx", batch=1)
    backend = OnnxBackend(tmp_path / "b1.onnx")
    assert backend.fixed_batch == 1
    x = windows(4)
    np.testing.assert_allclose(backend.embed(x), reference(x, params), rtol=1e-4, atol=1e-5)


def test_onnx_threads_are_honored(tmp_path: Path):
    conv_encoder(tmp_path / "m.onnx")
    options = OnnxBackend(tmp_path / "m.onnx", threads=3).session.get_session_options()
    assert options.intra_op_num_threads == 3
    assert options.inter_op_num_threads == 1


def test_onnx_int8_io_is_quantized_with_the_manifest_parameters(tmp_path: Path):
    """A model taking int8 windows and giving int8 output (the window mean)."""
    q = Quantization(input_scale=0.05, input_zero_point=3, output_scale=0.01, output_zero_point=-2)
    consts = [
        numpy_helper.from_array(np.array(q.input_scale, np.float32), "s_in"),
        numpy_helper.from_array(np.array(q.input_zero_point, np.int8), "z_in"),
        numpy_helper.from_array(np.array(q.output_scale, np.float32), "s_out"),
        numpy_helper.from_array(np.array(q.output_zero_point, np.int8), "z_out"),
        numpy_helper.from_array(np.array([2], np.int64), "axes"),
    ]
    nodes = [
        helper.make_node("DequantizeLinear", ["windows", "s_in", "z_in"], ["x"]),
        helper.make_node("ReduceMean", ["x", "axes"], ["m"], keepdims=0),
        helper.make_node("QuantizeLinear", ["m", "s_out", "z_out"], ["embedding"]),
    ]
    graph = helper.make_graph(
        nodes,
        "int8io",
        [helper.make_tensor_value_info("windows", TensorProto.INT8, ["n", 1, W])],
        [helper.make_tensor_value_info("embedding", TensorProto.INT8, ["n", 1])],
        consts,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "q.onnx")
    with pytest.raises(BackendError, match="no quantization parameters"):
        OnnxBackend(tmp_path / "q.onnx")
    backend = OnnxBackend(tmp_path / "q.onnx", quantization=q)
    x = windows(3) + 0.5
    out = backend.embed(x)
    assert out.shape == (3, 1) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0], x.mean(axis=(1, 2)), atol=q.input_scale + q.output_scale)


def test_load_backend_prefers_int8_and_warms_up(bundle):
    folder, manifest, params = bundle
    backend = load_backend(folder, manifest, "onnx", threads=2)
    assert backend.path.name == "encoder.int8.onnx"
    assert backend.warmup_ms > 0
    x = windows(3)
    np.testing.assert_allclose(backend.embed(x), reference(x, params["int8"]), rtol=1e-4, atol=1e-5)


def test_load_backend_fp32_on_request(bundle):
    folder, manifest, params = bundle
    backend = load_backend(folder, manifest, "onnx", precision="fp32")
    x = windows(2)
    np.testing.assert_allclose(backend.embed(x), reference(x, params["fp32"]), rtol=1e-4, atol=1e-5)


def test_load_backend_checks_the_embedding_size_at_warm_up(bundle):
    folder, manifest, _ = bundle
    wrong = manifest.model_copy(update={"embedding_dim": D + 1})
    with pytest.raises(BackendError, match=r"embedding_dim 9"):
        load_backend(folder, wrong, "onnx")


def test_unknown_backend_lists_the_valid_ones(bundle):
    folder, manifest, _ = bundle
    with pytest.raises(BackendError, match="unknown backend 'tensorrt'; valid: onnx, tflite"):
        load_backend(folder, manifest, "tensorrt")


def test_missing_encoder_format_names_what_the_bundle_has(bundle):
    folder, manifest, _ = bundle
    with pytest.raises(
        BackendError, match=r"no 'int8.tflite' encoder; it has \['int8.onnx', 'fp32.onnx'\]"
    ):
        load_backend(folder, manifest, "tflite")


def test_unavailable_provider_lists_the_available_ones(bundle):
    folder, manifest, _ = bundle
    with pytest.raises(
        BackendError, match=r"TensorrtExecutionProvider.*available: \[.*CPUExecutionProvider"
    ):
        load_backend(folder, manifest, "onnx", providers=["TensorrtExecutionProvider"])


def test_corrupt_or_missing_model_file(tmp_path: Path):
    (tmp_path / "bad.onnx").write_bytes(b"\x00garbage")
    with pytest.raises(BackendError, match="cannot load this model"):
        OnnxBackend(tmp_path / "bad.onnx")
    with pytest.raises(BackendError, match="not found"):
        OnnxBackend(tmp_path / "missing.onnx")


def test_wrong_input_shape_is_a_clear_value_error(tmp_path: Path):
    conv_encoder(tmp_path / "m.onnx")
    backend = OnnxBackend(tmp_path / "m.onnx")
    with pytest.raises(ValueError, match=r"\(N, 1, W\)"):
        backend.embed(np.zeros((2, W), np.float32))
    with pytest.raises(ValueError, match=f"windows of {W} samples, got 32"):
        backend.embed(np.zeros((2, 1, 32), np.float32))


def test_missing_onnxruntime_gives_an_install_hint(tmp_path: Path, monkeypatch):
    conv_encoder(tmp_path / "m.onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(
        BackendError, match="onnx backend needs onnxruntime: pip install onnxruntime"
    ):
        OnnxBackend(tmp_path / "m.onnx")


def test_missing_litert_gives_an_install_hint(tmp_path: Path, monkeypatch):
    for name in (
        "ai_edge_litert",
        "ai_edge_litert.interpreter",
        "tflite_runtime",
        "tflite_runtime.interpreter",
    ):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(BackendError) as info:
        BACKENDS["tflite"](tmp_path / "encoder.int8.tflite")
    assert "tflite backend needs ai-edge-litert: pip install ai-edge-litert" in str(info.value)
    assert "tflite-runtime on numpy<2" in str(info.value)


def test_tflite_rejects_fp32_with_the_format_table_message(bundle):
    folder, manifest, _ = bundle
    with pytest.raises(ValueError) as table:
        encoder_format("tflite", "fp32")
    with pytest.raises(BackendError) as err:
        load_backend(folder, manifest, "tflite", precision="fp32")
    assert str(err.value) == str(table.value)
    assert "backend 'tflite' only runs int8 encoders" in str(err.value)


# -- the self-test a bundle passes before it goes live ---------------------------------------


class Broken:
    """A backend double giving fixed output, to break the self-test on purpose."""

    name = "broken"

    def __init__(self, out: np.ndarray) -> None:
        self.out, self.seen = out, []

    def embed(self, windows: np.ndarray) -> np.ndarray:
        self.seen.append(windows)
        return self.out[: len(windows)]


def test_self_test_passes_a_working_bundle_and_uses_fixed_windows(bundle):
    folder, manifest, _ = bundle
    self_test(folder, manifest, load_backend(folder, manifest, "onnx"))
    spy = Broken(np.ones((4, D), np.float32))
    self_test(folder, manifest, spy)
    self_test(folder, manifest, spy)
    first, second = spy.seen
    assert first.shape == (4, 1, W) and first.dtype == np.float32
    np.testing.assert_array_equal(first, second)  # the same windows every time


@pytest.mark.parametrize(
    ("out", "message"),
    [
        (np.full((4, D), np.nan, np.float32), "4 of 4 test windows give NaN/inf embeddings"),
        (np.ones((4, D + 1), np.float32), rf"have shape \(4, {D + 1}\), expected \(4, {D}\)"),
    ],
)
def test_self_test_refuses_broken_embeddings(bundle, out, message):
    folder, manifest, _ = bundle
    with pytest.raises(BackendError, match=rf"{folder.name} self-test: .*{message}"):
        self_test(folder, manifest, Broken(out))


def test_self_test_refuses_a_head_giving_non_finite_probabilities(bundle):
    folder, manifest, _ = bundle
    head = Head.load(folder / "head.npz")
    head.w2[0, 0] = np.inf
    head.save(folder / "head.npz")
    with pytest.raises(BackendError, match="non-finite or mis-shaped probabilities"):
        self_test(folder, manifest, Broken(np.ones((4, D), np.float32)))


def test_store_activates_a_bundle_only_when_its_self_test_passes(bundle, tmp_path):
    folder, manifest, _ = bundle
    store = BundleStore(tmp_path / "state" / "bundles")
    installed = store.install(folder)
    nan = Broken(np.full((4, D), np.nan, np.float32))
    with pytest.raises(BundleError, match=r"failed its self-test \(.*NaN/inf embeddings"):
        store.activate(installed, lambda f: self_test(f, manifest, nan))
    assert store.current() is None
    backend = load_backend(installed, manifest, "onnx")
    store.activate(installed, lambda f: self_test(f, manifest, backend))
    assert store.current() == installed


# -- a real full-integer .tflite, made by the project's exporter (needs torch + litert-torch) --


@pytest.fixture(scope="module")
def tflite_model(tmp_path_factory):
    torch = pytest.importorskip("torch")
    export_tflite = pytest.importorskip("export.tflite")
    from export.formats import MissingDependency

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv1d(1, 8, 5, padding=2)
            self.pool = torch.nn.AdaptiveAvgPool1d(1)
            self.proj = torch.nn.Linear(8, D)

        def forward(self, x):
            return self.proj(self.pool(torch.relu(self.conv(x))).flatten(1))

    torch.manual_seed(0)
    model = Tiny().eval()
    path = tmp_path_factory.mktemp("tflite") / "encoder.int8.tflite"
    calibration = windows(16, seed=3)
    try:
        quantization = export_tflite.export_tflite_int8(model, path, calibration)
    except MissingDependency as exc:
        pytest.skip(f"cannot build a .tflite here: {exc}")
    with torch.no_grad():
        expected = model(torch.from_numpy(windows(4))).numpy()
    return path, quantization, expected


@pytest.mark.slow
def test_tflite_int8_embeddings_track_the_float_model(tflite_model):
    path, quantization, expected = tflite_model
    backend = BACKENDS["tflite"](path, threads=2, quantization=quantization)
    assert (backend.in_scale, backend.in_zp) == pytest.approx(
        (quantization.input_scale, quantization.input_zero_point)
    )
    out = backend.embed(windows(4))
    assert out.shape == (4, D) and out.dtype == np.float32
    spread = float(np.abs(expected).max())
    assert np.abs(out - expected).max() < 0.1 * spread + 4 * quantization.output_scale
    with pytest.raises(ValueError, match="model expects windows of shape"):
        backend.embed(np.zeros((1, 1, W // 2), np.float32))


def test_self_test_requires_the_exported_outputs_of_the_running_format(bundle):
    """A bundle carries each format's embeddings of the fixed windows (as exported): a runtime
    that computes something else (the fp32 encoder has other weights here) is refused."""
    from edge_agent.backends import self_test_windows
    from edge_agent.contract.bundle import read_manifest

    folder, manifest, _ = bundle
    int8 = load_backend(folder, manifest, "onnx", precision="int8")
    fp32 = load_backend(folder, manifest, "onnx", precision="fp32")
    probe = self_test_windows(W)
    np.savez(folder / "selftest.npz", **{"int8.onnx": int8.embed(probe)})
    fields = manifest.model_dump(exclude={"files", "schema_version", "created_utc"})
    manifest = write_manifest(folder, {**fields, "self_test": "selftest.npz"})
    assert read_manifest(folder).self_test == "selftest.npz"
    self_test(folder, manifest, int8, "int8.onnx")  # reproduces its recording
    with pytest.raises(BackendError, match=r"int8.onnx encoder does not reproduce the exported"):
        self_test(folder, manifest, fp32, "int8.onnx")
    self_test(folder, manifest, fp32, "fp32.onnx")  # not recorded: the shape checks only
