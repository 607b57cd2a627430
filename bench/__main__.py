"""`python -m bench NAME [options]`; `all` runs every benchmark with its defaults."""

from __future__ import annotations

import importlib
import sys

BENCHES = {
    "fewlabel": "bench.fewlabel",
    "throughput": "bench.throughput",
    "latency": "bench.latency",
    "agent": "bench.agent",
    "device": "bench.device",
    "openset": "bench.openset",
    "labels": "bench.labels",
    "encoders": "bench.encoders",
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(
            f"usage: python -m bench {{{','.join(BENCHES)},all}} [options]; NAME --help for options"
        )
        return 0
    names = list(BENCHES) if argv[0] == "all" else [argv[0]]
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        print(
            f"unknown benchmark {unknown[0]!r}; valid: {', '.join(BENCHES)}, all", file=sys.stderr
        )
        return 2
    status = 0
    for name in names:
        status |= importlib.import_module(BENCHES[name]).main(argv[1:] if len(names) == 1 else [])
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
