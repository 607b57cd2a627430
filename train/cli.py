"""`faultwatch train ...`: run | pretrain | finetune | baseline | suggest | evaluate.

Every command takes `--config FILE.toml` and `--set field=value` overrides (unknown fields are
errors naming the field); common fields also have their own options.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, get_args

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from train.config import ConfigError, DataName, TrainConfig, load_config

app = typer.Typer(
    help="Contrastive pretraining, fine-tuning, baselines and evaluation.", no_args_is_help=True
)
console = Console()

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="TOML config file.")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", "-s", help="Override a field: --set epochs=5.")
]
DataOpt = Annotated[
    str | None,
    typer.Option(help=" | ".join(get_args(DataName))),
]
EpochsOpt = Annotated[int | None, typer.Option(help="Pretraining epochs.")]
SeedOpt = Annotated[int | None, typer.Option(help="Random seed.")]
DeviceOpt = Annotated[str | None, typer.Option(help="auto | cpu | cuda | cuda:N")]
RunOpt = Annotated[str | None, typer.Option("--run-name", help="Run folder name under out_dir.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]


class Baseline(str, Enum):
    supervised = "supervised"
    pseudo_label = "pseudo-label"


def _setup_logging(quiet: bool) -> None:
    level = logging.WARNING if quiet else logging.INFO
    logging.basicConfig(
        level=level,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
        force=True,
    )


def _config(config: Path | None, overrides: list[str] | None, **fields: Any) -> TrainConfig:
    try:
        return load_config(config, overrides, **fields)
    except ConfigError as exc:
        console.print(f"[red]invalid config[/red]\n{exc}")
        raise typer.Exit(1) from exc


def _config_args(
    config: Path | None, overrides: list[str] | None, data: str | None, seed: int | None
) -> str:
    """The configuration options of a command line, to print a next step that runs as shown
    (labels_manifest left out: the next step sets it)."""
    args = [] if config is None else ["--config", str(config)]
    for item in overrides or []:
        if item.partition("=")[0].strip() != "labels_manifest":
            args += ["--set", item]
    args += [] if data is None else ["--data", data]
    args += [] if seed is None else ["--seed", str(seed)]
    return "".join(f" {shlex.quote(a)}" for a in args)


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(1)


def print_metrics(results: dict[str, dict[str, Any]]) -> None:
    table = Table(title="test metrics")
    for col in ("method", "accuracy", "macro-F1", "uncertain", "acc. confident"):
        table.add_column(col)
    for name, m in results.items():
        conf = m.get("confident_accuracy")
        table.add_row(
            name,
            f"{m['accuracy']:.3f}",
            f"{m['macro_f1']:.3f}",
            f"{m['uncertain_rate']:.3f}",
            "-" if conf is None else f"{conf:.3f}",
        )
    console.print(table)


@app.command()
def run(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data: DataOpt = None,
    epochs: EpochsOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    run_name: RunOpt = None,
    quiet: QuietOpt = False,
    baselines: Annotated[
        bool, typer.Option(help="Also train the supervised and pseudo-label baselines.")
    ] = True,
    resume: Annotated[
        bool, typer.Option(help="Continue an interrupted pretraining of this run.")
    ] = False,
) -> None:
    """The whole recipe: pretrain, fine-tune, baselines, report (writes runs/<name>/)."""
    _setup_logging(quiet)
    cfg = _config(
        config, set_, data=data, epochs=epochs, seed=seed, device=device, run_name=run_name
    )
    from train.workflow import run_all

    try:
        out = run_all(cfg, baselines=baselines, resume=resume, show_progress=not quiet)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    print_metrics(out["metrics"]["test"])
    console.print(f"run folder: {out['run_dir']}  (report.md, finetuned.pt)")


@app.command("pretrain")
def pretrain_cmd(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data: DataOpt = None,
    epochs: EpochsOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    run_name: RunOpt = None,
    quiet: QuietOpt = False,
    resume: Annotated[bool, typer.Option(help="Continue from the run's pretrained.pt.")] = False,
) -> None:
    """SimCLR pretraining only; writes runs/<name>/pretrained.pt (resumable)."""
    _setup_logging(quiet)
    cfg = _config(
        config, set_, data=data, epochs=epochs, seed=seed, device=device, run_name=run_name
    )
    from train.data import build_split
    from train.loop import pretrain
    from train.runs import PRETRAINED

    try:
        split = build_split(cfg)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    result = pretrain(
        cfg, split, checkpoint=cfg.run_dir() / PRETRAINED, resume=resume, show_progress=not quiet
    )
    kept = result.selection
    chosen = (
        f"; kept epoch {kept['best_epoch']} of {len(kept['scores'])}, monitor "
        f"{kept['best_score']:.2f}"
        if kept
        else ""
    )
    console.print(
        f"pretrained encoder: {cfg.run_dir() / PRETRAINED}  "
        f"({result.views_per_second:.0f} views/s{chosen})"
    )
    if result.collapse.get("warning"):
        console.print(f"[bold red]COLLAPSE: {result.collapse['warning']}[/bold red]")


@app.command()
def finetune(
    pretrained: Annotated[
        Path, typer.Option(help="A pretrained.pt from `faultwatch train pretrain`.")
    ],
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data: DataOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    run_name: RunOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Fine-tune a pretrained encoder on the labeled windows; writes finetuned.pt and the report."""
    _setup_logging(quiet)
    if not pretrained.is_file():
        _fail(f"{pretrained}: no such checkpoint; run `faultwatch train pretrain` first")
    cfg = _config(config, set_, data=data, seed=seed, device=device, run_name=run_name)
    from train.workflow import run_all

    out = run_all(cfg, baselines=False, pretrained=pretrained, show_progress=not quiet)
    print_metrics(out["metrics"]["test"])
    console.print(f"fine-tuned checkpoint: {out['checkpoint']}")


@app.command()
def baseline(
    method: Annotated[Baseline, typer.Argument(help="supervised | pseudo-label")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data: DataOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Train a baseline on the same split and print its test metrics."""
    _setup_logging(quiet)
    cfg = _config(config, set_, data=data, seed=seed, device=device)
    from train.baselines import pseudo_label, supervised
    from train.data import build_split
    from train.runs import evaluate

    split = build_split(cfg)
    fn = supervised if method is Baseline.supervised else pseudo_label
    model = fn(cfg, split, show_progress=not quiet)
    print_metrics({method.value: evaluate(model, split, cfg.uncertain_below)})


@app.command()
def suggest(
    budget: Annotated[int, typer.Option(min=1, help="How many windows to label.")] = 20,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data: DataOpt = None,
    seed: SeedOpt = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Also write them to this CSV file; on a plant's recordings, a manifest of "
            "excerpts whose label column you fill in, read with --set labels_manifest=FILE."
        ),
    ] = None,
) -> None:
    """Propose the unlabeled windows to label: one per k-means group of the pool's spectral
    views (train.suggest), so a few labels cover every kind of window the pool holds."""
    _setup_logging(True)
    cfg = _config(config, set_, data=data, seed=seed)
    from train.data import build_split
    from train.suggest import suggest_from_pool, write_label_sheet

    if out is not None:  # before the work: a folder made, or a clear error
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            _fail(f"--out {out}: cannot write ({exc.strerror})")
        if not os.access(out.parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
            _fail(f"--out {out}: cannot write (permission denied)")
    try:
        split = build_split(cfg, need_labels=False)
        unlabeled = split.description.get("unlabeled_records")  # a plant's: not the labeled
        _, where = suggest_from_pool(
            split.pool, budget, cfg.seed, None if cfg.data != "recordings" else unlabeled or []
        )
    except ValueError as exc:
        _fail(str(exc))
    rate, window = cfg.sample_rate_hz, cfg.window
    sources = split.description.get("sources", {})  # a plant's recordings: times in the file
    table = Table("#", "record", "from (s)", "to (s)")
    for n, (record, first) in enumerate(where, 1):
        t = sources[record]["first_s"] + first / rate if sources else first / rate
        table.add_row(str(n), record, f"{t:.3f}", f"{t + window / rate:.3f}")
    console.print(table)
    if out is not None and sources:
        from train.recordings import load_manifest

        carried = [] if cfg.labels_manifest is None else load_manifest(cfg.labels_manifest)
        write_label_sheet(out, where, sources, rate, window, carried)
        step = shlex.quote(f"labels_manifest={out}")
        tested = len(split.description["test_records"])
        console.print(
            f"wrote {out}: {len(where)} windows of {window / rate:.3f} s to label, one per row"
            + (f", after the {len(carried)} rows of {cfg.labels_manifest}. " if carried else ". ")
            + "Fill in the label column (leave a row empty if unsure). The model is tested on "
            "whole recordings labeled in the manifest (a row without start_s, end_s; "
            f"{tested} now), ideally one of each class. Then train on both:"
        )
        print(f"  faultwatch train run{_config_args(config, set_, data, seed)} --set {step}")
        return
    if out is not None:
        lines = ["record,first_sample,from_s,to_s"]
        lines += [f"{r},{f},{f / rate:.4f},{(f + window) / rate:.4f}" for r, f in where]
        out.write_text("\n".join(lines) + "\n")
        console.print(f"wrote {out}")
    console.print(
        f"label these {len(where)} windows ({window} samples at {rate} Hz from the time shown)"
    )


@app.command("evaluate")
def evaluate_cmd(
    checkpoint: Annotated[Path, typer.Option(help="A finetuned.pt (or its run folder).")],
    quiet: QuietOpt = False,
) -> None:
    """Re-evaluate a fine-tuned checkpoint on its own held-out windows (heldout.npz)."""
    _setup_logging(quiet)
    import numpy as np
    import torch

    from edge_agent.pipeline.head import Head
    from train.loop import load_encoder
    from train.metrics import classification_metrics

    path = checkpoint / "finetuned.pt" if checkpoint.is_dir() else checkpoint
    heldout = path.parent / "heldout.npz"
    if not path.is_file() or not heldout.is_file():
        _fail(f"{path}: need finetuned.pt and heldout.npz in the run folder")
    state = torch.load(path, map_location="cpu", weights_only=False)
    encoder = load_encoder(path)
    head = Head(
        **{k: np.asarray(v) for k, v in state["head"].items() if k != "temperature"},
        temperature=float(state["head"]["temperature"]),
    )
    with np.load(heldout) as data:
        x, y = data["x"], data["y"]
    from train.loop import embed

    metrics = classification_metrics(
        head.probabilities(embed(encoder, x)),
        y,
        state["class_names"],
        state["config"]["uncertain_below"],
    )
    print_metrics({path.parent.name: metrics})
    console.print_json(json.dumps({"per_class": metrics["per_class"]}))


@app.command()
def shards(
    manifest: Annotated[Path, typer.Option(help="CSV/TOML manifest of (unlabeled) recordings.")],
    out: Annotated[Path, typer.Option(help="Folder for the shards (created).")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
    shard_size: Annotated[int, typer.Option(help="Windows per shard file.")] = 4096,
) -> None:
    """Write a large unlabeled pool as memory-mapped window shards, one recording at a time;
    pretrain on it with `--set pool_shards=<out>`."""
    _setup_logging(False)
    cfg = _config(config, set_)
    from edge_agent.contract.preprocess import PreprocessSpec
    from train.shards import ShardedWindows, write_manifest_shards

    spec = PreprocessSpec(cfg.sample_rate_hz, cfg.window, cfg.hop, cfg.normalization)
    try:
        folder = write_manifest_shards(manifest, out, spec, shard_size)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    pool = ShardedWindows(folder)
    console.print(f"{len(pool)} windows in {pool.num_shards} shards: {folder}")
