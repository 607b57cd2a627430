"""`python -m bench agent`: the gateway agent on one 12 kHz channel in real time.

1. Real time: `faultwatch agent run` (a separate process pinned to one core) on the simulator
   source paced to the wall clock for `--seconds`, with a fault toggled every 20 s so events
   flow, against a real broker. Measures CPU % of one core (from /proc utime + stime), peak RSS
   (VmHWM), windows/s, and the latency from a window's last sample to its event reaching a
   subscriber (median, p99). The subscriber's receipt comes after the broker's PUBACK to the
   agent, so this bounds the acknowledgement latency from above.
2. As fast as possible: the same agent on the same signal unpaced; windows/s on one core divided
   by one channel's window rate = the most channels one core sustains.
Writes bench/results/agent.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

console = Console()
TICKS = os.sysconf("SC_CLK_TCK")

CONFIG = """\
state_dir = "state"
log_level = "WARNING"
telemetry_interval_s = 5.0

[device]
id = "bench"
type = "dev"

[sensor]
sensitivity_mv_per_g = 100.0
full_scale_volts = 5.0
min_rms_g = 0.0001
max_rms_g = 100.0

[source]
type = "simulator"
sample_rate_hz = {rate}
seed = 3
realtime = {realtime}
chunk_samples = 1200
{schedule}
[inference]
bundle = "{bundle}"
backend = "{backend}"
precision = "int8"
threads = 1

[decisions]
k = 2
n = 3

[mqtt]
host = "127.0.0.1"
port = {port}
protocol = "{protocol}"
site = "bench"
asset = "a1"
device = "bench"
"""


def schedule(seconds: float, period: float = 20.0) -> str:
    steps = []
    for i, at in enumerate(np.arange(0.0, seconds, period / 2)):
        fault = "inner_race" if i % 2 else "normal"
        steps.append(
            f'[[source.schedule]]\nat_s = {at:.1f}\nfault = "{fault}"\n'
            "severity = 0.8\nrpm = 1500.0\n"
        )
    return "\n".join(steps)


def latest_bundle() -> Path:
    found = sorted(Path(".").glob("**/bundles/*/manifest.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise SystemExit(
            "no bundle under bundles/ or runs/*/bundles/; run `make demo` or `make export-int8`"
        )
    return found[-1].parent


def proc_stats(pid: int) -> tuple[float, int]:
    """(CPU seconds, peak RSS bytes) of a running process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / TICKS
    hwm = next(
        line
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmHWM")
    )
    return cpu, int(hwm.split()[1]) * 1024


def run_agent(
    bundle: Path,
    port: int,
    seconds: float,
    realtime: bool,
    backend: str,
    workdir: Path,
    protocol: str = "5",
) -> dict:
    from faultwatch.scada import subscribe_events

    config = workdir / f"agent-{'rt' if realtime else 'fast'}.toml"
    shutil.rmtree(workdir / "state", ignore_errors=True)
    config.write_text(
        CONFIG.format(
            rate=12_000,
            realtime=str(realtime).lower(),
            schedule=schedule(seconds),
            bundle=bundle.resolve(),
            backend=backend,
            port=port,
            protocol=protocol,
        )
    )
    run_s = seconds if realtime else max(5.0, seconds / 20)  # unpaced: short wall time, long stream
    cmd = [
        sys.executable,
        "-m",
        "faultwatch",
        "agent",
        "run",
        "--config",
        str(config),
        "--max-seconds",
        str(run_s),
    ]
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", "0", *cmd]
    received: list[tuple[float, dict]] = []
    with subscribe_events("127.0.0.1", port) as scada:
        t0 = time.time()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        cpu = rss = 0.0
        time.sleep(3.0)  # start-up (imports, bundle check, warm-up) is not steady state
        try:
            cpu0, _ = proc_stats(proc.pid)
        except (FileNotFoundError, StopIteration):
            cpu0 = 0.0
        t_steady = time.time()
        while proc.poll() is None:
            try:
                cpu, rss = proc_stats(proc.pid)
            except (FileNotFoundError, StopIteration):
                break
            for e in scada.events[len(received) :]:
                received.append((time.time(), e.model_dump(mode="json")))
            time.sleep(0.05)
        wall = time.time() - t_steady
        output = proc.stdout.read() if proc.stdout else ""
        time.sleep(0.5)
        for e in scada.events[len(received) :]:
            received.append((time.time(), e.model_dump(mode="json")))
    if proc.returncode != 0:
        raise SystemExit(f"agent failed ({proc.returncode}):\n{output[-3000:]}")
    windows = next((int(w) for w in re.findall(r"stopped after (\d+) windows", output)), 0)
    latencies = [
        1000 * (t - datetime.fromisoformat(e["window_end_utc"]).timestamp())
        for t, e in received
        if e.get("window_end_utc") and e["kind"] == "state_change"
    ]
    return {
        "realtime": realtime,
        "wall_s": time.time() - t0,
        "cpu_percent": 100 * (cpu - cpu0) / max(wall, 1e-9),
        "peak_rss_mb": rss / 2**20,
        "windows": windows,
        "windows_per_s": windows / run_s,
        "events": len(received),
        "latency_ms": latencies,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench agent", description=__doc__)
    parser.add_argument("--bundle", type=Path, default=None)
    parser.add_argument("--seconds", type=float, default=180.0, help="real-time run length")
    parser.add_argument("--backend", default="onnx", choices=["onnx", "tflite"])
    parser.add_argument("--out", type=Path, default=Path("bench/results/agent.json"))
    args = parser.parse_args(argv)
    bundle = args.bundle or latest_bundle()
    from edge_agent.contract.bundle import read_manifest
    from faultwatch.broker import start_broker

    manifest = read_manifest(bundle)
    channel_rate = manifest.preprocessing.sample_rate_hz / manifest.preprocessing.hop  # windows/s
    broker = start_broker()
    try:
        with tempfile.TemporaryDirectory(prefix="faultwatch-bench-") as tmp:
            run = functools.partial(
                run_agent, bundle, broker.port, args.seconds, protocol=broker.mqtt_protocol
            )
            rt = run(True, args.backend, Path(tmp))
            fast = run(False, args.backend, Path(tmp))
    finally:
        broker.stop()
    lat = np.array(rt["latency_ms"]) if rt["latency_ms"] else np.array([np.nan])
    channels = fast["windows_per_s"] / channel_rate
    result = {
        "bundle": str(bundle),
        "backend": args.backend,
        "seconds": args.seconds,
        "cpu_percent_one_core": rt["cpu_percent"],
        "peak_rss_mb": rt["peak_rss_mb"],
        "windows_per_s_realtime": rt["windows_per_s"],
        "events": rt["events"],
        "latency_ms_median": float(np.median(lat)),
        "latency_ms_p99": float(np.percentile(lat, 99)),
        "windows_per_s_one_core_unpaced": fast["windows_per_s"],
        "max_channels_one_core": channels,
    }
    table = Table(
        title=f"agent, one 12 kHz channel, {args.seconds:.0f} s real time ({args.backend} int8)"
    )
    table.add_column("metric")
    table.add_column("value")
    table.add_column("target")
    table.add_row("CPU (% of one core)", f"{result['cpu_percent_one_core']:.2f}", "<= 2")
    table.add_row("peak RSS (MB)", f"{result['peak_rss_mb']:.0f}", "<= 120")
    table.add_row(
        "windows/s", f"{result['windows_per_s_realtime']:.1f}", f"{channel_rate:.1f} per channel"
    )
    table.add_row("window end -> subscriber (ms), median", f"{result['latency_ms_median']:.1f}", "")
    table.add_row("window end -> subscriber (ms), p99", f"{result['latency_ms_p99']:.1f}", "")
    table.add_row("events", str(result["events"]), "")
    table.add_row("windows/s unpaced on one core", f"{fast['windows_per_s']:.0f}", "")
    table.add_row("most channels one core sustains", f"{channels:.0f}", "")
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    return 0
