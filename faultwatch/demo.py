"""`make demo`: the whole pipeline on built-in defaults, end to end, in a few minutes on 2 cores.

1. simulate the reference scenario and train (SimCLR pretraining + fine-tuning, small budget);
2. export the INT8 bundle (`faultwatch export`), exactly as a user would;
3. start a broker (mosquitto when installed, else the embedded amqtt);
4. record a replay stream with the simulator: healthy, an inner-race fault, a loose sensor
   (flat line), then healthy again with a drifting sensor;
5. run the gateway agent (`faultwatch agent run`) on that replay, and show what a SCADA
   subscriber receives.

`--sparkplug` (`make demo SPARKPLUG=1`): the agent speaks Sparkplug B (an edge node of group
`demo-plant`) and the SCADA side decodes Sparkplug (`faultwatch scada listen --sparkplug`).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

console = Console()
DEMO_TRAINING = {
    "data": "sim-reference",
    "labels_per_class": 50,
    "unlabeled_windows": 1500,
    "epochs": 5,
    "batch_size": 128,
    "probe_epochs": 40,
    "finetune_epochs": 20,
}


def step(title: str) -> None:
    console.rule(f"[bold]{title}")


def train(out: Path, quick: bool) -> Path:
    from train.config import load_config
    from train.report import VIEWS
    from train.workflow import run_all

    fields = dict(DEMO_TRAINING, out_dir=out, run_name="train")
    if quick:
        fields.update(unlabeled_windows=300, epochs=1, probe_epochs=5, finetune_epochs=2, width=0.5)
    result = run_all(load_config(None, None, **fields), baselines=False)
    test = result["metrics"]["test"]["SimCLR + fine-tune"]
    console.print(
        f"SimCLR + fine-tune on production test records: accuracy {test['accuracy']:.3f}, "
        f"macro-F1 {test['macro_f1']:.3f}, uncertain {test['uncertain_rate']:.1%}, "
        f"ECE {test['ece']:.3f}"
    )
    used = [text for key, text in VIEWS.items() if test.get(key, {}).get("used")]
    alone = test.get("model_alone")
    if alone:
        console.print(
            f"  with the {' and the '.join(used)}; the model alone: "
            f"macro-F1 {alone['macro_f1']:.3f}, uncertain {alone['uncertain_rate']:.1%}"
        )
    for key, text in VIEWS.items():
        report = test.get(key, {})
        if report and not report.get("used"):
            console.print(f"  {text} not used: {report.get('reason')}")
    return Path(result["checkpoint"])


def export(checkpoint: Path, out: Path) -> Path:
    """`faultwatch export` with the default parity gate (99 % agreement, <= 1 point drop),
    exactly as a user would run it. The demo's agent runs ONNX INT8, so the demo exports ONNX
    only (`make export-int8` adds the TFLite encoder; its conversion alone takes ~20 s here)."""
    cmd = [
        sys.executable,
        "-m",
        "faultwatch",
        "export",
        "--checkpoint",
        str(checkpoint),
        "--out",
        str(out),
        "--name",
        "demo",
        "--version",
        "1",
        "--formats",
        "onnx,onnx-int8",
    ]
    subprocess.run(cmd, check=True)
    return out / "demo-1"


def record_stream(
    path: Path, seconds_per_phase: float = 30.0, rate: int = 12_000
) -> list[tuple[float, str]]:
    """Write the replay recording (float32 g) and return its timeline of (start_s, what)."""
    from edge_agent.physics.bearing_sim import BearingSimulator, Conditions
    from train.scenarios import machine_seed

    healthy = Conditions(rpm=1500.0, load=0.5, fault="normal", severity=0.0)
    # the gearbox the model was trained on (plant seed 0 = the demo's training seed), new noise
    sim = BearingSimulator(healthy, sample_rate_hz=rate, seed=11, machine_seed=machine_seed(0))
    n = int(seconds_per_phase * rate)
    parts = [sim.read(n)]
    sim.set_conditions(replace(healthy, fault="inner_race", severity=0.6))
    parts.append(sim.read(n))
    parts.append(np.full(int(5 * rate), 0.013, np.float32))  # loose sensor: a flat line
    sim.set_conditions(replace(healthy, gain=0.7, noise_floor_g=0.02, dc_offset_g=0.1))
    parts.append(sim.read(n))
    np.save(path, np.concatenate(parts).astype(np.float32))
    return [
        (0.0, "healthy"),
        (seconds_per_phase, "inner-race fault"),
        (2 * seconds_per_phase, "sensor flat line"),
        (2 * seconds_per_phase + 5, "healthy, drifting sensor (gain, noise floor, DC offset)"),
    ]


AGENT_CONFIG = """\
state_dir = "state"
log_level = "WARNING"

[device]
id = "demo-gw"
type = "dev"
description = "faultwatch demo gateway (replay)"

[sensor]
sensitivity_mv_per_g = 100.0
full_scale_volts = 5.0
min_rms_g = 0.001
max_rms_g = 50.0

[source]
type = "file"
path = "stream.npy"
sample_rate_hz = 12000
realtime = false
loop = false

[inference]
bundle = "{bundle}"
backend = "onnx"
precision = "int8"
threads = 1

[decisions]                  # the replay compresses hours into 30 s phases: shorter dwell
k = 3
n = 5
drift_window = 60
min_dwell_s = 10.0
uncertain_after_s = 10.0

[commissioning]              # learn this gateway's normal from the first 20 s of the replay
period_s = 20.0
min_windows = 50

[bearing]                    # physics evidence beside the model: SKF 6205 at 1500 rpm
designation = "6205"
shaft_rpm = 1500.0

[mqtt]
host = "127.0.0.1"
port = {port}
protocol = "{protocol}"
site = "demo-plant"
asset = "pump-7"
device = "demo-gw"
"""
SPARKPLUG_CONFIG = """dialect = "sparkplug_b"

[mqtt.sparkplug]
group_id = "demo-plant"
"""


def show_events(events: list[dict]) -> None:
    """Print what the SCADA side received; times are stream seconds from the first event."""
    from datetime import datetime

    table = Table(title="SCADA subscriber: fault events received (QoS 1, de-duplicated)")
    for col in ("t (s)", "kind", "severity", "state", "conf.", "detail"):
        table.add_column(col, no_wrap=col != "detail")
    times = [datetime.fromisoformat(e.get("window_end_utc") or e["time_utc"]) for e in events]
    for e, t in zip(events, times, strict=True):
        detail = e.get("message") or ""
        if e.get("drift_score") is not None:
            detail = f"drift score {e['drift_score']:.2f}; {detail}"
        table.add_row(
            f"{(t - times[0]).total_seconds():6.1f}",
            e["kind"],
            e["severity"],
            e["state"],
            f"{e.get('confidence') or 0:.2f}",
            detail,
        )
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m faultwatch.demo", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("runs/demo"))
    parser.add_argument("--quick", action="store_true", help="tiny training budget (smoke test)")
    parser.add_argument("--checkpoint", type=Path, help="skip training: use this finetuned.pt")
    parser.add_argument(
        "--sparkplug", action="store_true", help="agent and listener speak Sparkplug B"
    )
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)

    step("1/5 train: SimCLR on the unlabeled production pool, fine-tune on 200 lab labels")
    checkpoint = args.checkpoint or train(out, args.quick)
    step("2/5 export: ONNX FP32 + INT8 bundle with the parity gate")
    # the previous demo's bundle: export never overwrites a version, and the demo rebuilds it
    shutil.rmtree(out / "bundles", ignore_errors=True)
    try:
        bundle = export(checkpoint, out / "bundles")
    except subprocess.CalledProcessError:
        console.print("[red]export failed (see above); the demo stops here[/red]")
        return 1
    step("3/5 broker")
    from faultwatch.broker import start_broker
    from faultwatch.scada import subscribe_events, subscribe_sparkplug

    broker = start_broker()
    console.print(f"{broker.kind} broker on 127.0.0.1:{broker.port}")
    try:
        step("4/5 replay recording: healthy -> inner-race fault -> loose sensor -> drifting sensor")
        timeline = record_stream(out / "stream.npy")
        for start, what in timeline:
            console.print(f"  t = {start:5.1f} s  {what}")
        config = out / "agent.toml"
        text = AGENT_CONFIG.format(bundle=bundle, port=broker.port, protocol=broker.mqtt_protocol)
        config.write_text(text + SPARKPLUG_CONFIG if args.sparkplug else text)
        dialect = "Sparkplug B" if args.sparkplug else "JSON"
        step(f"5/5 gateway agent on the replay; the SCADA side listens ({dialect})")
        subscribe = subscribe_sparkplug if args.sparkplug else subscribe_events
        with subscribe("127.0.0.1", broker.port) as scada:
            agent = [sys.executable, "-m", "faultwatch", "agent", "run", "--config", str(config)]
            if subprocess.run(agent).returncode != 0:
                console.print("[red]the agent failed (see above)[/red]")
                return 1
            scada.wait_for_events(1, timeout_s=10)
            time.sleep(1.0)
            events = [
                e.model_dump(mode="json") if hasattr(e, "model_dump") else e for e in scada.events
            ]
        show_events(events)
    finally:
        broker.stop()
    console.print(f"demo finished in {time.perf_counter() - t0:.0f} s; bundle: {bundle}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
