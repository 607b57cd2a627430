"""The single `faultwatch` command. Sub-apps are imported only when named, so
`faultwatch agent ...` works on a gateway that has only the `edge` extra (no torch)."""

from __future__ import annotations

import importlib
import sys

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": ("train.cli", "pretrain, fine-tune, baselines and evaluation (needs the train extra)"),
    "export": ("export.cli", "ONNX / TFLite INT8 model bundles with a parity gate"),
    "agent": ("edge_agent.cli", "the gateway agent: acquisition, inference, MQTT, calibration"),
    "scada": ("faultwatch.scada", "a SCADA-side subscriber that prints fault events"),
}


def usage() -> str:
    lines = ["Usage: faultwatch COMMAND [ARGS]...", "", "Commands:"]
    lines += [f"  {name:<8} {text}" for name, (_, text) in SUBCOMMANDS.items()]
    lines += ["", "Run `faultwatch COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(
            f"faultwatch: unknown command {name!r}; valid: {', '.join(SUBCOMMANDS)}",
            file=sys.stderr,
        )
        return 2
    module_name = SUBCOMMANDS[name][0]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        extra = {"train": "train", "export": "export"}.get(name, "edge")
        print(
            f"faultwatch {name}: missing dependency ({exc.name or exc}); "
            f"install it with `pip install 'faultwatch[{extra}]'`",
            file=sys.stderr,
        )
        return 1
    module.app(args=rest, prog_name=f"faultwatch {name}")  # Typer exits with the command's code
    return 0


def _entry() -> None:  # pragma: no cover - console script shim
    sys.exit(main())
