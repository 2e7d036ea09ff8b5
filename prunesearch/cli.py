"""The `prunesearch` command: each sub-package registers its own sub-commands."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from typing import Any

# Modules that expose `register(subparsers)`; each adds sub-commands whose handler is `args.handler(args)`.
_COMMAND_MODULES = (
    "prunesearch.pruning.cli",
    "prunesearch.profilers.cli",
    "prunesearch.search.cli",
    "prunesearch.service.cli",
)


class CLIError(Exception):
    """A user-facing error: printed as one line on stderr, exit code 2, never a traceback."""


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prunesearch", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.handler(args)
    except (CLIError, ValueError, OSError) as exc:
        print(f"prunesearch {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
