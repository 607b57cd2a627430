"""`faultwatch agent ...`: run the gateway agent, check configs and bundles, calibrate, roll back.

    faultwatch agent run --config /etc/faultwatch/agent.toml
    faultwatch agent check-config firmware_configs/raspberry-pi-4.toml --bundle
    faultwatch agent verify-bundle /var/lib/faultwatch/bundle
    faultwatch agent calibrate --config agent.toml --label outer_race rec1.wav rec2.wav
    faultwatch agent heads --config agent.toml
    faultwatch agent rollback --config agent.toml --version 2

User mistakes (a bad config, a bundle that does not verify, a missing device) end with one line
and exit code 1, never a traceback. `calibrate` and `rollback` change the head store directly:
stop the agent first (or send the `calibrate` / `rollback_head` command over MQTT while it
runs), since one process owns a store.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from edge_agent.agent.agent import Agent, load_runtime
from edge_agent.backends import BackendError
from edge_agent.calibration.embedding_log import (
    CALIBRATION_SET_FILE,
    CalibrationSet,
    calibrate_with_set,
    embed_recordings,
)
from edge_agent.calibration.headstore import HeadStore
from edge_agent.config import (
    AgentConfig,
    ConfigError,
    check_against_bundle,
    load_config,
    outbox_path,
)
from edge_agent.contract.bundle import BundleError, Manifest
from edge_agent.contract.bundle_store import opened_bundle
from edge_agent.contract.wire import one_line
from edge_agent.mqtt.link import topics
from edge_agent.mqtt.outbox import OutboxError
from edge_agent.sources import SourceError

logger = logging.getLogger(__name__)

MIN_RENORMALIZE_WINDOWS = 20

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="The gateway agent: acquisition, inference, MQTT events, on-device calibration.",
)

STARTUP_ERRORS = (ConfigError, BundleError, SourceError, BackendError, OutboxError, OSError)
SYSLOG_PRIORITY = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}
LEVEL_COLOUR = {"DEBUG": "2", "INFO": "36", "WARNING": "33", "ERROR": "31", "CRITICAL": "1;31"}


class LogFormat(str, Enum):
    text = "text"
    json = "json"


# ---- logging ----------------------------------------------------------------------------------


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message and the record's `fields`."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update({k: v for k, v in fields.items() if k not in out})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """Terminal: time and a coloured level. journald (JOURNAL_STREAM set): a `<priority>` prefix
    journald turns into the syslog level, no time (journald stamps it). Other pipes: no colour."""

    def __init__(self, stream: Any) -> None:
        super().__init__()
        self.journal = bool(os.environ.get("JOURNAL_STREAM"))
        self.colour = not self.journal and hasattr(stream, "isatty") and stream.isatty()

    def format(self, record: logging.LogRecord) -> str:
        text = f"{record.name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        level = record.levelname
        if self.journal:
            return f"<{SYSLOG_PRIORITY.get(level, 6)}>{level} {text}"
        when = self.formatTime(record, "%Y-%m-%d %H:%M:%S")
        if self.colour:
            level = f"\033[{LEVEL_COLOUR.get(level, '0')}m{level:<7}\033[0m"
        else:
            level = f"{level:<7}"
        return f"{when} {level} {text}"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is now (test runners swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def setup_logging(level: str, log_format: LogFormat = LogFormat.text) -> None:
    """Root logger to stderr at `level` in `log_format` (replaces a previous setup_logging)."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(handler)
    handler = _StderrHandler(sys.stderr)
    formatter = JsonFormatter() if log_format == LogFormat.json else TextFormatter(sys.stderr)
    handler.setFormatter(formatter)
    root.addHandler(handler)
    root.setLevel(level)


# ---- helpers ----------------------------------------------------------------------------------


def _fail(message: str) -> typer.Exit:
    typer.echo(f"agent: {message}", err=True)
    return typer.Exit(1)


def _load(config: Path) -> AgentConfig:
    try:
        return load_config(config)
    except ConfigError as exc:
        raise _fail(f"invalid config {config}: {one_line(exc)}") from None


def _channel(cfg: AgentConfig, name: str | None) -> AgentConfig:
    """The config view of channel `name` (a single-channel config is its own view)."""
    names = [c.name for c in cfg.channels]
    if not names:
        if name is not None:
            raise _fail(f"--channel {name}: this config has one channel; leave --channel out")
        return cfg
    if name not in names:
        given = "--channel is needed" if name is None else f"unknown channel {name!r}"
        raise _fail(f"{given}: this config has channels {', '.join(names)}")
    return cfg.channel_views()[names.index(name)]


def _store(cfg: AgentConfig) -> HeadStore:
    try:
        return HeadStore(cfg.state_dir / "heads")
    except OSError as exc:
        raise _fail(f"cannot open the head store in {cfg.state_dir} ({exc})") from None


def _states(status: dict) -> str:
    """`normal`, or `de=normal nde=inner_race` for a multi-channel agent's status."""
    if "channels" not in status:
        return str(status["state"])
    return " ".join(f"{name}={ch['state']}" for name, ch in status["channels"].items())


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


ChannelOption = Annotated[
    str | None,
    typer.Option("--channel", help="Which channel of a multi-channel config ([[channels]] name)."),
]
ConfigOption = Annotated[
    Path,
    typer.Option("--config", "-c", help="Agent config (TOML), e.g. /etc/faultwatch/agent.toml."),
]


# ---- commands ---------------------------------------------------------------------------------


@app.command()
def run(
    config: ConfigOption,
    max_windows: Annotated[
        int | None, typer.Option(min=1, help="Stop after this many windows (tests, demos).")
    ] = None,
    max_seconds: Annotated[
        float | None, typer.Option(min=0, help="Stop after this many seconds.")
    ] = None,
    log_format: Annotated[
        LogFormat, typer.Option(help="text (journald-friendly) or json (one object a line).")
    ] = LogFormat.text,
    bundle: Annotated[
        Path | None,
        typer.Option(help="Model bundle (folder or .tar.gz) instead of the config's."),
    ] = None,
) -> None:
    """Run the agent until SIGTERM/SIGINT, a limit, or the end of a replayed file."""
    cfg = _load(config)
    if bundle is not None:
        inference = cfg.inference.model_copy(update={"bundle": bundle.resolve()})
        cfg = cfg.model_copy(update={"inference": inference})
    setup_logging(cfg.log_level, log_format)
    os.umask(0o027)  # state files (heads, calibration set) are not world-readable
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        logger.info("%s received: stopping", signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            agent = Agent(cfg)
        except STARTUP_ERRORS as exc:
            raise _fail(f"cannot start: {one_line(exc)}") from None
        with agent:
            try:
                summary = agent.run(stop, max_windows=max_windows, max_seconds=max_seconds)
            except (SourceError, ConfigError) as exc:
                raise _fail(f"cannot start: {one_line(exc)}") from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    typer.echo(
        f"agent: stopped after {summary['windows_total']} windows, {summary['events_total']} "
        f"events, state {_states(summary)}, {summary['outbox_pending']} events in the outbox"
    )
    if agent.source_abandoned:  # a driver thread is blocked in the kernel: PortAudio's exit
        logger.warning("exiting without waiting for the blocked audio driver")  # would hang
        logging.shutdown()
        sys.stdout.flush()
        os._exit(0)


@app.command("check-config")
def check_config(
    file: Annotated[Path, typer.Argument(help="Agent config (TOML) to validate.")],
    bundle: Annotated[
        bool,
        typer.Option("--bundle", help="Also verify the configured bundle and check them together."),
    ] = False,
) -> None:
    """Validate a config: every problem as `section.field: message` (exit 1), or a summary."""
    try:
        cfg = load_config(file)
    except ConfigError as exc:
        for message in exc.messages:
            typer.echo(message)
        raise typer.Exit(1) from None
    bundle_line = None
    if bundle:
        try:
            with opened_bundle(cfg.inference.bundle) as (folder, manifest, _):
                problems = check_against_bundle(cfg, manifest)
        except BundleError as exc:
            typer.echo(f"inference.bundle: {one_line(exc)}")
            raise typer.Exit(1) from None
        if problems:
            for message in problems:
                typer.echo(message)
            raise typer.Exit(1)
        bundle_line = f"  bundle     {_bundle_line(manifest)} ({folder})"
    src = cfg.source
    rate = f"{src.sample_rate_hz} Hz" if src.sample_rate_hz else "the file's rate"
    resample = ", resampled to the bundle's rate" if getattr(src, "resample", False) else ""
    mqtt = cfg.mqtt
    tls = " (TLS)" if mqtt.tls else ""
    inf = cfg.inference
    typer.echo(f"ok: {file}")
    typer.echo(f"  device     {cfg.device.id} ({cfg.device.type})")
    typer.echo(f"  source     {src.type} at {rate}{resample}")
    typer.echo(
        f"  inference  {inf.backend} {inf.precision}, {inf.threads} thread(s), batch "
        f"{inf.batch_windows}, bundle {inf.bundle}"
    )
    typer.echo(f"  decisions  {cfg.decisions.k} of {cfg.decisions.n} windows")
    typer.echo(f"  mqtt       {mqtt.host}:{mqtt.port}{tls}, topics {topics(mqtt).base}")
    typer.echo(f"  state      {cfg.state_dir} (outbox {outbox_path(cfg)})")
    for view in cfg.channel_views() if cfg.channels else []:
        c = view.channel
        assert c is not None
        bearing = view.bearing.designation or "custom" if view.bearing else "none"
        typer.echo(
            f"  channel    {c.name}: input {c.input}, {view.decisions.k} of "
            f"{view.decisions.n}, bearing {bearing}, topics {topics(view.mqtt).base}"
        )
    if bundle_line:
        typer.echo(bundle_line)


def _bundle_line(m: Manifest) -> str:
    p = m.preprocessing
    return (
        f"{m.model_name} {m.model_version}: {len(m.class_names)} classes, {p.sample_rate_hz} Hz, "
        f"window {p.window}, hop {p.hop}, formats {', '.join(e.format for e in m.encoders)}"
    )


@app.command("verify-bundle")
def verify_bundle(
    path: Annotated[Path, typer.Argument(help="Bundle folder or .tar.gz.")],
) -> None:
    """Verify a bundle's checksums and print its manifest summary (exit 1 when it fails)."""
    try:
        with opened_bundle(path) as (folder, m, head):  # an archive's copy is removed after
            sizes = {e.file: (folder / e.file).stat().st_size for e in m.encoders}
    except BundleError as exc:
        raise _fail(f"bundle does not verify: {one_line(exc)}") from None
    p = m.preprocessing
    classes = ", ".join(f"{c}*" if c == m.normal_class else c for c in m.class_names)
    encoders = ", ".join(
        f"{e.format} {e.file} ({sizes[e.file] / 1024:.0f} kB, batch {e.batch})" for e in m.encoders
    )
    models = m.parity.get("models", []) if isinstance(m.parity, dict) else []
    agreement = ", ".join(
        f"{x.get('format')} {x.get('agreement', 0):.1%}" for x in models if isinstance(x, dict)
    )
    passed = {True: "passed", False: "FAILED"}.get(m.parity.get("passed"), "not recorded")
    typer.echo(f"ok: {folder} (every checksum matches)")
    typer.echo(f"  model       {m.model_name} {m.model_version} (created {m.created_utc})")
    typer.echo(f"  classes     {classes}   (* normal)")
    typer.echo(
        f"  input       {p.sample_rate_hz} Hz, window {p.window}, hop {p.hop}, {p.normalization}"
    )
    typer.echo(f"  encoders    {encoders}")
    typer.echo(
        f"  head        {m.head_file}: {head.embedding_dim} -> {head.w1.shape[1]} -> "
        f"{head.num_classes}, temperature {head.temperature:.2f}"
    )
    typer.echo(
        f"  thresholds  uncertain below {m.thresholds.uncertain_below:.2f}, drift score "
        f"{m.thresholds.drift_score:.1f}"
    )
    typer.echo(f"  parity      {passed}{': agreement ' + agreement if agreement else ''}")


def _offline_model(config: Path, channel: str | None):
    """Channel config, head store and verified model for the offline commands (exit 1 on
    failure); the store starts from the bundle's factory head."""
    cfg = _channel(_load(config), channel)
    setup_logging("WARNING")
    store = _store(cfg)
    try:
        model = load_runtime(cfg)
        store.init_from_factory(model.factory, model.manifest.model_version)
        return cfg, store, model
    except STARTUP_ERRORS as exc:
        raise _fail(f"cannot load the model: {one_line(exc)}") from None


RateOption = Annotated[
    int | None,
    typer.Option(
        "--rate-hz",
        min=1,
        help="Sample rate of NPY/CSV recordings (they do not carry it; WAV files do). "
        "Recordings are resampled to the bundle's rate.",
    ),
]
MaxWindowsOption = Annotated[
    int | None,
    typer.Option(min=1, help="At most this many windows per file, spread evenly over it."),
]


StartOption = Annotated[
    float | None,
    typer.Option(
        "--start-s", min=0, help="Label each file from this second on (default: its start)."
    ),
]
EndOption = Annotated[
    float | None,
    typer.Option("--end-s", min=0, help="Label each file up to this second (default: its end)."),
]


def _embed_files(cfg, model, files: list[Path], rate_hz: int | None = None, **stretch):
    """Embeddings, times, spectral views and rejected-window count of recordings (exit 1 on a
    bad file); `stretch`: max_windows, start_s, end_s (embed_recordings)."""
    try:
        return embed_recordings(
            files,
            cfg.sensor,
            model.manifest,
            model.backend,
            cfg.inference.batch_windows,
            rate_hz=rate_hz,
            **stretch,
        )
    except SourceError as exc:
        raise _fail(one_line(exc)) from None


@app.command()
def calibrate(
    config: ConfigOption,
    label: Annotated[str, typer.Option(help="Class name of every window in FILES.")],
    files: Annotated[
        list[Path], typer.Argument(help="Recordings on this device (WAV, NPY or CSV).")
    ],
    rate_hz: RateOption = None,
    max_windows: MaxWindowsOption = None,
    start_s: StartOption = None,
    end_s: EndOption = None,
    channel: ChannelOption = None,
) -> None:
    """Label recordings, refit the device head on all labels so far, commit it unless worse.

    Labels accumulate in the device's calibration set: label one class now and another later,
    and the head is refit on both (the same head as labeling both at once). --start-s / --end-s
    label only that stretch of each file (where the fault shows in a longer recording).
    """
    cfg, store, model = _offline_model(config, channel)
    m = model.manifest
    if label not in m.class_names:
        raise _fail(f"unknown label {label!r}; valid: {', '.join(m.class_names)}")
    emb, t, views, rejected = _embed_files(
        cfg, model, files, rate_hz, max_windows=max_windows, start_s=start_s, end_s=end_s
    )
    if not len(t):
        raise _fail(
            f"no window of {len(files)} file(s) passed the sensor checks ({rejected} failed)"
        )
    cal_set = CalibrationSet(
        cfg.state_dir / CALIBRATION_SET_FILE, m.model_version, m.class_names, m.embedding_dim
    )
    labels = [m.class_names.index(label)] * len(t)
    try:
        outcome = calibrate_with_set(store, model.factory, cal_set, emb, t, labels, views)
    except ValueError as exc:
        raise _fail(f"calibration: {exc}") from None
    r = outcome.result
    counts = ", ".join(f"{k} {v}" for k, v in outcome.set_counts.items())
    typer.echo(
        f"{len(t)} windows from {len(files)} file(s) labeled {label!r} ({rejected} failed the "
        f"sensor checks); calibration set: {counts}"
    )
    typer.echo(r.reason)
    if not r.accepted:
        raise _fail(r.reason)
    typer.echo(f"accepted: head v{outcome.head_version} is now current")


@app.command()
def renormalize(
    config: ConfigOption,
    files: Annotated[
        list[Path], typer.Argument(help="Recordings of NORMAL operation on this device.")
    ],
    rate_hz: RateOption = None,
    channel: ChannelOption = None,
) -> None:
    """Map this device's normal embeddings onto the bundle's reference normal statistics.

    For a sensor, mounting or machine that sits off the training fleet: per-dimension mean and
    scale are fitted from normal-operation recordings and stored as a new head version
    (`rollback` undoes it). Prints the drift score of those windows before and after.
    """
    import numpy as np

    from edge_agent.calibration.drift import DriftMonitor
    from edge_agent.calibration.headstore import CommitMeta
    from edge_agent.calibration.refit import fit_renormalization

    cfg, store, model = _offline_model(config, channel)
    m = model.manifest
    reference = m.reference_stats.get(m.normal_class)
    if reference is None:
        raise _fail(f"the bundle has no reference statistics for {m.normal_class!r}")
    emb, t, _, rejected = _embed_files(cfg, model, files, rate_hz)
    if len(t) < MIN_RENORMALIZE_WINDOWS:
        raise _fail(
            f"{len(t)} usable windows ({rejected} failed the sensor checks); re-normalization "
            f"needs at least {MIN_RENORMALIZE_WINDOWS} windows of normal operation"
        )
    _, current = store.current()
    head = fit_renormalization(current, emb, np.asarray(reference.mean), np.asarray(reference.cov))
    monitor = DriftMonitor(m.reference_stats, m.normal_class, window=len(t))
    before = monitor.update(current.adapt(emb)).score
    monitor.reset()
    after = monitor.update(head.adapt(emb)).score
    version = store.commit(
        head, CommitMeta(n_samples=len(t), note="re-normalization from normal operation")
    )
    typer.echo(
        f"head v{version}: embeddings re-normalized from {len(t)} normal windows; "
        f"drift score of those windows {before:.2f} -> {after:.2f}"
    )


@app.command()
def commission(config: ConfigOption, channel: ChannelOption = None) -> None:
    """Learn this device's normal again at the agent's next start (after a repair or a bearing
    change); a running agent does it at once on the `commission` MQTT command."""
    from edge_agent.calibration.commissioning import BASELINE_FILE
    from edge_agent.calibration.monitoring import HEALTH_FILE

    cfg = _channel(_load(config), channel)
    removed = []
    for name in (BASELINE_FILE, HEALTH_FILE):
        path = cfg.state_dir / name
        if path.is_file():
            path.unlink()
            removed.append(name)
    what = f"removed {', '.join(removed)}" if removed else "no baseline stored yet"
    typer.echo(
        f"{what}; the agent learns this device's normal for {cfg.commissioning.period_s:.0f} s "
        "from its next start: keep the machine in normal operation then"
    )


@app.command()
def heads(config: ConfigOption, channel: ChannelOption = None) -> None:
    """List the device's head versions (the current one is marked *)."""
    cfg = _channel(_load(config), channel)
    store = _store(cfg)
    history = store.history()
    if not history:
        typer.echo(f"no heads stored yet in {store.folder}; start the agent once")
        return
    try:
        current, _ = store.current()
    except LookupError:
        current = None
    table = Table("", "version", "created (UTC)", "source", "bundle", "before", "after", "n")
    for e in history:
        table.add_row(
            "*" if e.version == current else "",
            f"v{e.version}",
            e.created_utc.replace("T", " ")[:16],
            e.source,
            e.bundle_model_version,
            _pct(e.accuracy_before),
            _pct(e.accuracy_after),
            str(e.n_samples),
        )
    Console(highlight=False).print(table)


@app.command()
def rollback(
    config: ConfigOption,
    version: Annotated[
        int | None, typer.Option(min=1, help="Head version to go back to (default: the previous).")
    ] = None,
    channel: ChannelOption = None,
) -> None:
    """Make an earlier head current again (stored as a new version; nothing is deleted)."""
    cfg = _channel(_load(config), channel)
    store = _store(cfg)
    try:
        before, _ = store.current()
        after = store.rollback(version)
    except (LookupError, ValueError) as exc:
        raise _fail(f"rollback: {exc}") from None
    note = store.history()[-1].note if after != before else "already current"
    typer.echo(f"head v{before} -> v{after} ({note}); restart the agent to use it")


if __name__ == "__main__":  # pragma: no cover
    app()
