"""The training-config options the benches share: `--config FILE` and `--set field=value`."""

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
