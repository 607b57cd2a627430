"""What the training benches share: `--config FILE` and `--set field=value`, `--seeds` and
`--out`, the CWRU check and the JSON they write."""

from __future__ import annotations

import argparse
from pathlib import Path

from train.config import ConfigError, TrainConfig, load_config


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """Add `--config` (a TOML training config) and repeatable `--set field=value`."""
    parser.add_argument("--config", type=Path, help="TOML training config (budget, model)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        help="override a training config field, field=value (e.g. cwru_channel=FE)",
    )


def config_from(parser: argparse.ArgumentParser, args: argparse.Namespace) -> TrainConfig:
    """The training config the options name; a bad file or field exits 2 naming it."""
    try:
        return load_config(args.config, args.set)
    except ConfigError as err:
        parser.error(str(err))


def seeded_parser(prog: str, doc: str | None, seeds: int, out: Path) -> argparse.ArgumentParser:
    """A bench's parser with `--seeds`, `--out` (its JSON) and the config options."""
    parser = argparse.ArgumentParser(
        prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=seeds)
    parser.add_argument("--out", type=Path, default=out)
    add_config_options(parser)
    return parser


def has_cwru(cfg: TrainConfig) -> bool:
    """Whether the CWRU records are under the configured data root; says so when they are not."""
    from train.cwru import default_data_root

    if ((cfg.data_root or default_data_root()) / "cwru").is_dir():
        return True
    print("not measured: no CWRU records (see ../shared/datasets)")
    return False


def write_result(
    out: Path, overrides: list[str], summary: dict, runs: dict, started: float
) -> None:
    """Write the bench's JSON (overrides, summary, runs, seconds since `started`) and say so."""
    import json
    import time

    out.parent.mkdir(parents=True, exist_ok=True)
    seconds = time.perf_counter() - started
    result = dict(overrides=overrides, summary=summary, runs=runs, seconds=seconds)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out} in {seconds:.0f} s")
