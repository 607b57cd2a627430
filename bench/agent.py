"""`python -m bench agent`: the gateway agent on 12 kHz channels in real time.

1. Real time, side by side in one run: `faultwatch agent run` (a separate process pinned to one
   core) for `--seconds` against a real broker, with a fault toggled every 20 s per channel so
   events flow: one channel on the simulator source (the configuration measured before the
   multi-channel agent), then 1 and `--channels` channels on a replay source (a multi-column
   recording of the simulator, paced to the wall clock, looped). Measures CPU % of one core
   (from /proc utime + stime) in total and per channel, peak RSS (VmHWM), windows/s, and the
   latency from a window's last sample to its event reaching a subscriber (median, p99). The
   subscriber's receipt comes after the broker's PUBACK to the agent, so this bounds the
   acknowledgement latency from above.
2. The simulator's own cost: seconds of CPU to generate one second of one channel, in process.
3. As fast as possible: one channel unpaced; windows/s on one core divided by one channel's
   window rate = the most channels one core sustains.
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

{source}
[inference]
bundle = "{bundle}"
backend = "{backend}"
precision = "int8"
threads = 1

[decisions]
k = 2
n = 3

[bearing]
designation = "6205"
shaft_rpm = 1500.0

[mqtt]
host = "127.0.0.1"
port = {port}
protocol = "{protocol}"
site = "bench"
asset = "a1"
device = "bench"
{channels}"""
SIMULATOR = """[source]
type = "simulator"
sample_rate_hz = {rate}
seed = 3
realtime = {realtime}
chunk_samples = 1200
{schedule}"""
REPLAY = """[source]
type = "file"
path = "{path}"
sample_rate_hz = {rate}
realtime = {realtime}
loop = true
chunk_samples = 1200
"""
RATE_HZ = 12_000
LOOP_S = 20.0  # the replayed recording: one fault period per channel, looped


def steps(seconds: float, period: float = 20.0, phase: float = 0.0) -> list[dict]:
    """Normal, then inner-race fault and normal in turn every period/2 s, shifted by `phase`."""
    times = [0.0, *np.arange(period / 2 + phase, seconds, period / 2)]
    return [
        {"at_s": float(at), "fault": "inner_race" if i % 2 else "normal", "severity": 0.8,
         "rpm": 1500.0}
        for i, at in enumerate(times)
    ]  # fmt: skip


def schedule(seconds: float) -> str:
    return "\n".join(
        f'[[source.schedule]]\nat_s = {s["at_s"]:.1f}\nfault = "{s["fault"]}"\n'
        f"severity = {s['severity']}\nrpm = {s['rpm']}\n"
        for s in steps(seconds)
    )


def recording(path: Path, seconds: float, channels: int) -> dict:
    """A (n, channels) NPY in g from the simulator, each channel's faults at its own times;
    returns the simulator's generation cost (CPU s per signal s per channel)."""
    from edge_agent.config import SimulatorSourceConfig, SimulatorStep
    from edge_agent.sources import SourceChannel, make_source

    cfg = SimulatorSourceConfig(type="simulator", sample_rate_hz=RATE_HZ, seed=3, realtime=False,
                                chunk_samples=1200, schedule=steps(seconds))  # fmt: skip
    inputs = [
        SourceChannel(
            i,
            schedule=[SimulatorStep(**s) for s in steps(seconds, phase=i * seconds / 2 / channels)],
        )
        for i in range(channels)
    ]
    need = int(seconds * RATE_HZ)
    start = time.process_time()
    with make_source(cfg, channels=inputs) as source:
        parts, n = [], 0
        while n < need:
            chunk = source.read(1.0)
            parts.append(chunk.samples)
            n += len(chunk.samples)
    cost = (time.process_time() - start) / (n / RATE_HZ) / channels
    np.save(path, np.concatenate(parts)[:need].astype(np.float32))
    return {"sim_cpu_s_per_channel_s": cost}


def encoder_ms_per_window(bundle: Path, backend: str, n: int = 300) -> float:
    """CPU ms of the bundle's INT8 encoder per window, one window per call, in this process."""
    from edge_agent.backends import load_backend, self_test_windows
    from edge_agent.contract.bundle_store import opened_bundle

    with opened_bundle(bundle) as (folder, manifest, _):
        encoder = load_backend(folder, manifest, backend, threads=1, precision="int8")
        x = self_test_windows(manifest.preprocessing.window, 1)
        for _ in range(20):  # warm-up
            encoder.embed(x)
        start = time.process_time()
        for _ in range(n):
            encoder.embed(x)
        return 1000 * (time.process_time() - start) / n


def channels_toml(channels: int) -> str:
    if channels <= 1:
        return ""
    return "".join(
        f'\n[[channels]]\nname = "c{i}"\ninput = {i}\nasset = "a{i}"\n' for i in range(channels)
    )


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
    channels: int = 1,
    replay: Path | None = None,
) -> dict:
    from faultwatch.scada import subscribe_events

    name = f"{'replay' if replay else 'sim'}-{channels}-{'rt' if realtime else 'fast'}"
    config = workdir / f"agent-{name}.toml"
    shutil.rmtree(workdir / "state", ignore_errors=True)
    flag = str(realtime).lower()
    source = (
        REPLAY.format(path=replay, rate=RATE_HZ, realtime=flag)
        if replay
        else SIMULATOR.format(rate=RATE_HZ, realtime=flag, schedule=schedule(seconds))
    )
    config.write_text(
        CONFIG.format(
            source=source,
            bundle=bundle.resolve(),
            backend=backend,
            port=port,
            protocol=protocol,
            channels=channels_toml(channels),
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
        time.sleep(min(10.0, max(3.0, seconds / 6)))  # start-up is not steady state
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
        proc.wait(timeout=30)
        time.sleep(0.5)
        for e in scada.events[len(received) :]:
            received.append((time.time(), e.model_dump(mode="json")))
    if proc.returncode != 0:
        raise SystemExit(f"agent failed ({proc.returncode}):\n{output[-3000:]}")
    windows = next((int(w) for w in re.findall(r"stopped after (\d+) windows", output)), 0)
    latencies = [  # events of windows from steady state (the first ones wait for the connection)
        1000 * (t - end)
        for t, e in received
        if e.get("window_end_utc") and e["kind"] == "state_change"
        and (end := datetime.fromisoformat(e["window_end_utc"]).timestamp()) >= t_steady
    ]  # fmt: skip
    lat = np.array(latencies) if latencies else np.array([np.nan])
    return {
        "run": name,
        "channels": channels,
        "source": "replay" if replay else "simulator",
        "realtime": realtime,
        "wall_s": time.time() - t0,
        "cpu_percent": 100 * (cpu - cpu0) / max(wall, 1e-9),
        "cpu_percent_per_channel": 100 * (cpu - cpu0) / max(wall, 1e-9) / channels,
        "peak_rss_mb": rss / 2**20,
        "windows": windows,
        "windows_per_s": windows / run_s,
        "events": len(received),
        "latency_ms_median": float(np.median(lat)),
        "latency_ms_p99": float(np.percentile(lat, 99)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench agent", description=__doc__)
    parser.add_argument("--bundle", type=Path, default=None)
    parser.add_argument("--seconds", type=float, default=60.0, help="real-time run length")
    parser.add_argument("--channels", type=int, default=8, help="channels of the widest run")
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
            work = Path(tmp)
            console.print(f"recording {args.channels} simulated channels of {LOOP_S:.0f} s")
            sim = recording(work / "replay.npy", LOOP_S, args.channels)  # replayed in a loop
            run = functools.partial(
                run_agent, bundle, broker.port, args.seconds, backend=args.backend,
                workdir=work, protocol=broker.mqtt_protocol,
            )  # fmt: skip
            runs = []
            for channels, replay in ((1, None), (1, work / "replay.npy"),
                                     (args.channels, work / "replay.npy")):  # fmt: skip
                if channels == 1 and replay is not None and args.channels > 1:
                    one = work / "replay-1.npy"
                    np.save(one, np.load(replay)[:, :1])
                    replay = one
                console.print(f"run: {channels} channel(s), {'replay' if replay else 'simulator'}")
                runs.append(run(True, channels=channels, replay=replay))
            fast = run(False, channels=1, replay=None)
    finally:
        broker.stop()
    encoder_ms = encoder_ms_per_window(bundle, args.backend)
    most = fast["windows_per_s"] / channel_rate
    result = {
        "bundle": str(bundle),
        "backend": args.backend,
        "seconds": args.seconds,
        "runs": runs,
        **sim,
        "sim_cpu_percent_per_channel": 100 * sim["sim_cpu_s_per_channel_s"],
        "encoder_ms_per_window": encoder_ms,
        "encoder_cpu_percent_per_channel": encoder_ms * channel_rate / 10,
        "windows_per_s_one_core_unpaced": fast["windows_per_s"],
        "max_channels_one_core": most,
    }
    table = Table(title=f"agent on 12 kHz channels, {args.seconds:.0f} s real time "
                  f"({args.backend} int8, one core)")  # fmt: skip
    for column in ("run", "CPU % core", "CPU % per channel", "peak RSS MB", "windows/s",
                   "events", "latency median ms", "latency p99 ms"):  # fmt: skip
        table.add_column(column)
    for r in runs:
        table.add_row(
            f"{r['channels']} ch, {r['source']}",
            f"{r['cpu_percent']:.2f}",
            f"{r['cpu_percent_per_channel']:.2f}",
            f"{r['peak_rss_mb']:.0f}",
            f"{r['windows_per_s']:.1f}",
            str(r["events"]),
            f"{r['latency_ms_median']:.0f}",
            f"{r['latency_ms_p99']:.0f}",
        )
    console.print(table)
    console.print(
        f"targets: <= 1 % of a core per channel (replay), {args.channels} channels <= 150 MB RSS, "
        f"p99 <= 500 ms; {channel_rate:.1f} windows/s per channel\n"
        f"the encoder alone: {encoder_ms:.2f} ms per window = "
        f"{result['encoder_cpu_percent_per_channel']:.2f} % of a core per channel; "
        f"simulator source alone: {result['sim_cpu_percent_per_channel']:.2f} % of a core per "
        f"channel; unpaced: {fast['windows_per_s']:.0f} windows/s on one core = {most:.0f} "
        "channels"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    return 0
