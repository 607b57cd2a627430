"""Single-window encoder latency in every runtime, one thread each, in one table from one run.

    python -m bench.latency                         # fresh reference CNN, 2048-sample window
    python -m bench.latency --bundle bundles/x.tar.gz --runs 2000
    python -m bench.latency --checkpoint runs/finetune-01

Each runtime is measured in a fresh subprocess (so peak RSS is that runtime's own) at batch 1
with ONE thread (torch.set_num_threads(1); onnxruntime intra/inter-op 1; LiteRT num_threads=1):
median and p99 over `--runs` timed calls after a warm-up. The TFLite timing includes quantizing
the float window to int8 and dequantizing the embedding, as a device does. Latency does not
depend on weights, so without --checkpoint/--bundle an untrained reference CNN is used.
Writes bench/results/latency.json.

Module top imports only stdlib, numpy and typer, so a worker loads little but its own runtime.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench" / "results" / "latency.json"
TARGET_MS = 0.1  # onnxruntime INT8 per window
TARGET_SPEEDUP = 10.0  # over torch eager FP32
RUNTIMES = ("torch-fp32", "ort-fp32", "ort-int8", "litert-int8", "tflite-runtime-int8")


# ---------------------------------------------------------------- worker (fresh process) ----
def _runner(spec: dict[str, Any], x: np.ndarray):
    """A zero-argument callable running one window through the runtime in `spec`."""
    runtime, model = spec["runtime"], spec["model"]
    if runtime == "torch-fp32":
        import torch

        torch.set_num_threads(1)
        torch.set_num_interop_threads(1)
        from train.encoder import build_encoder

        encoder = build_encoder(spec["encoder"]["name"], **spec["encoder"]["kwargs"]).eval()
        encoder.load_state_dict(torch.load(model, map_location="cpu", weights_only=True))
        tensor = torch.from_numpy(x)

        def run() -> None:
            with torch.inference_mode():
                encoder(tensor)

        return run
    if runtime.startswith("ort-"):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x}
        return lambda: session.run(None, feed)
    if runtime == "litert-int8":
        from ai_edge_litert.interpreter import Interpreter
    else:
        from tflite_runtime.interpreter import Interpreter
    interpreter = Interpreter(model_path=model, num_threads=1)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    (in_scale, in_zp), (out_scale, out_zp) = inp["quantization"], out["quantization"]

    def run_tflite() -> None:
        q = np.clip(np.round(x / in_scale) + in_zp, -128, 127).astype(np.int8)
        interpreter.set_tensor(inp["index"], q)
        interpreter.invoke()
        (interpreter.get_tensor(out["index"]).astype(np.float32) - out_zp) * out_scale

    return run_tflite


def peak_rss_kb() -> int:
    """This process's peak resident set size in KiB.

    On Linux ru_maxrss survives execve, so a child started from a large parent would report the
    parent's peak; VmHWM in /proc/self/status belongs to the new address space and does not.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS


def worker_main(argv: list[str]) -> int:
    """Time one runtime; print a JSON line {median_ms, p99_ms, peak_rss_mb, ...}."""
    spec = json.loads(argv[0])
    x = np.random.default_rng(0).standard_normal((1, 1, spec["window"])).astype(np.float32)
    run = _runner(spec, x)
    for _ in range(spec["warmup"]):
        run()
    times = np.empty(spec["runs"], dtype=np.float64)
    for i in range(spec["runs"]):
        start = time.perf_counter_ns()
        run()
        times[i] = time.perf_counter_ns() - start
    ms = times / 1e6
    peak_kb = peak_rss_kb()
    print(
        json.dumps(
            {
                "median_ms": float(np.median(ms)),
                "p99_ms": float(np.percentile(ms, 99)),
                "mean_ms": float(ms.mean()),
                "runs": int(spec["runs"]),
                "peak_rss_mb": peak_kb / 1024,
            }
        )
    )
    return 0


def measure(spec: dict[str, Any], timeout_s: float = 600) -> dict[str, Any]:
    """Run `worker_main(spec)` in a fresh single-threaded Python process."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    code = "import sys, bench.latency as b; sys.exit(b.worker_main(sys.argv[1:]))"
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(spec)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=timeout_s,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"worker exited {proc.returncode}: {tail}"}
    return json.loads(lines[-1])


# ---------------------------------------------------------------- models to measure ---------
def count_macs(encoder: Any, window: int) -> int:
    """Multiply-accumulates of one (1, 1, window) forward pass (Conv1d and Linear layers)."""
    import torch

    total = 0

    def hook(module: Any, _inputs: Any, output: Any) -> None:
        nonlocal total
        if isinstance(module, torch.nn.Conv1d):
            per_out = module.in_channels // module.groups * module.kernel_size[0]
            total += output.numel() * per_out
        elif isinstance(module, torch.nn.Linear):
            total += output.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in encoder.modules()]
    with torch.no_grad():
        encoder(torch.zeros(1, 1, window))
    for handle in handles:
        handle.remove()
    return total


def prepare_models(
    workdir: Path, checkpoint: Path | None, bundle: Path | None, window: int
) -> dict[str, Any]:
    """Write every model file into `workdir`; return paths, encoder spec, window and notes."""
    import torch

    from edge_agent.contract.bundle_store import load_bundle
    from export.formats import MissingDependency
    from export.onnx import export_onnx
    from export.quantize import quantize_onnx, select_calibration
    from export.tflite import export_tflite_int8
    from train.encoder import build_encoder

    notes: list[str] = []
    files: dict[str, Path] = {}
    parity: dict[str, Any] = {}
    calibration = None
    if bundle is not None:
        folder, manifest, _ = load_bundle(bundle, workdir / "bundle")  # gone with workdir
        spec = manifest.provenance.get("encoder") or {"name": "cnn", "kwargs": {}}
        window = manifest.preprocessing.window
        encoder = build_encoder(spec["name"], **spec["kwargs"]).eval()
        notes.append("torch-fp32 uses untrained weights of the bundle's architecture")
        by_format = {e.format: folder / e.file for e in manifest.encoders}
        for runtime, fmt in (("ort-fp32", "fp32.onnx"), ("ort-int8", "int8.onnx")):
            if fmt in by_format:
                files[runtime] = by_format[fmt]
        if "int8.tflite" in by_format:
            files["litert-int8"] = files["tflite-runtime-int8"] = by_format["int8.tflite"]
        parity = manifest.parity
    else:
        if checkpoint is not None:
            from export.bundle import load_run

            run = load_run(checkpoint)
            encoder, window = run.encoder, run.preprocessing.window
            spec = run.checkpoint.encoder.model_dump()
            calibration = run.calibration
        else:
            spec = {"name": "cnn", "kwargs": {"embedding_dim": 128, "norm": "batch", "width": 1.0}}
            encoder = build_encoder(spec["name"], **spec["kwargs"]).eval()
            notes.append("fresh untrained reference CNN (latency does not depend on weights)")
        if calibration is None:
            rng = np.random.default_rng(0)
            calibration = rng.standard_normal((64, 1, window)).astype(np.float32)
        calibration = select_calibration(calibration, 256)
        files["ort-fp32"] = workdir / "encoder.fp32.onnx"
        export_onnx(encoder, files["ort-fp32"], window)
        files["ort-int8"] = quantize_onnx(
            files["ort-fp32"], workdir / "encoder.int8.onnx", calibration
        )
        try:
            export_tflite_int8(encoder, workdir / "encoder.int8.tflite", calibration)
            files["litert-int8"] = files["tflite-runtime-int8"] = workdir / "encoder.int8.tflite"
        except MissingDependency as exc:
            notes.append(str(exc))
    files["torch-fp32"] = workdir / "encoder.pt"
    torch.save(encoder.state_dict(), files["torch-fp32"])
    return {
        "files": files,
        "encoder": spec,
        "window": window,
        "macs": count_macs(encoder, window),
        "notes": notes,
        "parity": parity,
    }


def _available(runtime: str) -> bool:
    module = {"litert-int8": "ai_edge_litert", "tflite-runtime-int8": "tflite_runtime"}.get(runtime)
    return module is None or importlib.util.find_spec(module) is not None


def _machine() -> dict[str, Any]:
    model, flags = platform.processor(), []
    try:
        info = Path("/proc/cpuinfo").read_text()
        model = next(ln.split(":", 1)[1].strip() for ln in info.splitlines() if "model name" in ln)
        cpu_flags = next(ln for ln in info.splitlines() if ln.startswith("flags")).split()
        wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")
        flags = [f for f in wanted if f in cpu_flags]
    except (OSError, StopIteration):
        pass
    versions = {}
    for dist in ("torch", "onnxruntime", "ai-edge-litert", "tflite-runtime", "numpy"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return {
        "cpu": model,
        "int8_isa": flags,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "versions": versions,
    }


# ---------------------------------------------------------------- CLI -----------------------
def benchmark(
    checkpoint: Path | None, bundle: Path | None, runs: int, warmup: int, window: int
) -> dict[str, Any]:
    """Prepare models, time every runtime in its own process; return the JSON-ready result."""
    with tempfile.TemporaryDirectory(prefix="faultwatch-bench-") as tmp:
        models = prepare_models(Path(tmp), checkpoint, bundle, window)
        rows = []
        for runtime in RUNTIMES:
            path = models["files"].get(runtime)
            row: dict[str, Any] = {"runtime": runtime, "file": path.name if path else None}
            if path is None or not _available(runtime):
                row["error"] = "not installed" if path else "no model file"
            else:
                row["size_kb"] = path.stat().st_size / 1000
                spec = {"runtime": runtime, "model": str(path), "window": models["window"]}
                spec |= {"runs": runs, "warmup": warmup, "encoder": models["encoder"]}
                row |= measure(spec)
            if "median_ms" in row:
                row["windows_per_s"] = 1000.0 / row["median_ms"]
            rows.append(row)
    by = {r["runtime"]: r for r in rows}
    ratio = None
    if "median_ms" in by["torch-fp32"] and "median_ms" in by["ort-int8"]:
        ratio = by["torch-fp32"]["median_ms"] / by["ort-int8"]["median_ms"]
    int8_ms = by["ort-int8"].get("median_ms")
    return {
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": _machine(),
        "window": models["window"],
        "encoder": models["encoder"],
        "macs_per_window": models["macs"],
        "threads": 1,
        "batch": 1,
        "runs": runs,
        "warmup": warmup,
        "rows": rows,
        "torch_over_ort_int8": ratio,
        "target": {
            "ort_int8_max_ms": TARGET_MS,
            "min_speedup_vs_torch": TARGET_SPEEDUP,
            "ort_int8_ms_met": int8_ms is not None and int8_ms <= TARGET_MS,
            "speedup_met": ratio is not None and ratio >= TARGET_SPEEDUP,
        },
        "parity": models["parity"],
        "notes": models["notes"],
    }


def print_result(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
    title = (
        f"Encoder latency, batch 1, 1 thread, window {result['window']}, "
        f"{result['macs_per_window'] / 1e6:.1f} M MACs ({result['runs']} runs)"
    )
    table = Table(title=title)
    for col in ("runtime", "file", "size kB", "median ms", "p99 ms", "windows/s", "peak RSS MB"):
        table.add_column(col, justify="left" if col in ("runtime", "file") else "right")
    for r in result["rows"]:
        if "median_ms" not in r:
            table.add_row(r["runtime"], r["file"] or "-", "-", r.get("error", "-"), "-", "-", "-")
            continue
        table.add_row(
            r["runtime"],
            r["file"],
            f"{r['size_kb']:.0f}",
            f"{r['median_ms']:.3f}",
            f"{r['p99_ms']:.3f}",
            f"{r['windows_per_s']:.0f}",
            f"{r['peak_rss_mb']:.0f}",
        )
    console.print(table)
    machine = result["machine"]
    console.print(f"machine: {machine['cpu']} ({', '.join(machine['int8_isa']) or 'no int8 ISA'})")
    ratio = result["torch_over_ort_int8"]
    target = result["target"]
    int8 = next(r for r in result["rows"] if r["runtime"] == "ort-int8")
    if ratio is not None:
        console.print(f"torch-fp32 / ort-int8 median: {ratio:.1f}x")
        verdict = {True: "met", False: "NOT met"}
        console.print(
            f"target ort-int8 <= {TARGET_MS} ms: {verdict[target['ort_int8_ms_met']]} "
            f"({int8['median_ms']:.3f} ms); >= {TARGET_SPEEDUP:.0f}x torch: "
            f"{verdict[target['speedup_met']]} ({ratio:.1f}x)"
        )
        gmacs = result["macs_per_window"] / (int8["median_ms"] * 1e6)
        console.print(f"ort-int8 sustains {gmacs:.0f} GMAC/s on one thread")
    for m in result["parity"].get("models", []):
        console.print(
            f"{m['format']}: agreement with fp32 {m['agreement']:.1%}, "
            f"accuracy drop {m['accuracy_drop_points']:+.2f} points"
        )
    for note in result["notes"]:
        console.print(f"note: {note}")


app = typer.Typer(add_completion=False)


@app.command()
def latency(
    checkpoint: Annotated[
        Path | None, typer.Option(help="Fine-tuned .pt or run folder to export and time.")
    ] = None,
    bundle: Annotated[
        Path | None, typer.Option(help="Bundle folder or .tar.gz to time (its files).")
    ] = None,
    runs: Annotated[int, typer.Option(min=100, help="Timed calls per runtime.")] = 2000,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed calls first.")] = 200,
    window: Annotated[
        int, typer.Option(min=16, help="Samples per window (fresh model only).")
    ] = 2048,
    out: Annotated[Path, typer.Option(help="JSON result file.")] = DEFAULT_OUT,
) -> None:
    """Time the encoder at batch 1 on one thread in every installed runtime."""
    if checkpoint is not None and bundle is not None:
        raise typer.BadParameter("give --checkpoint or --bundle, not both")
    from edge_agent.contract.bundle import BundleError
    from export.formats import ExportError

    try:
        result = benchmark(checkpoint, bundle, runs, warmup, window)
    except (ExportError, BundleError) as exc:
        typer.echo(f"bench.latency: {exc}", err=True)
        raise typer.Exit(1) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print_result(result)
    typer.echo(f"wrote {out}")


def main(argv: list[str] | None = None) -> int:
    """CLI entry point for the bench runner; returns the exit code."""
    try:
        app(args=argv, prog_name="bench.latency")
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
