"""The `prunesearch` command: each sub-package registers its own sub-commands; `export` is registered here."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from prunesearch.choices import DType, values
from prunesearch.cliutil import CLIError, one_line
from prunesearch.profilers import cli as profilers_cli
from prunesearch.pruning import cli as pruning_cli
from prunesearch.search import cli as search_cli
from prunesearch.search import draft_cli
from prunesearch.service import cli as service_cli
from prunesearch.service import client_cli

# Each exposes `register(subparsers)`, adding sub-commands whose handler is `args.handler(args)`. They are plain
# imports: every one ships with the package, and a broken one should fail loudly, not vanish from the help.
_COMMAND_MODULES = (pruning_cli, profilers_cli, search_cli, draft_cli, service_cli)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prunesearch", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in _COMMAND_MODULES:
        module.register(subparsers)
    _register_export(subparsers)
    return parser


def _register_export(subparsers: argparse._SubParsersAction) -> None:
    """`export` has two forms: with a job id the service exports the trial; without one, a trial of a local
    study (`--storage/--study/--out`) is exported here. Both forms share `--trial` and `--dtype`."""
    parser = subparsers.add_parser(
        "export", help="export one trial as a checkpoint: of a service job, or of a local study"
    )
    parser.add_argument("job_id", nargs="?", help="a service job id (remote export); omit for a local study")
    parser.add_argument("--trial", required=True, type=int)
    parser.add_argument("--dtype", choices=values(DType), default=DType.FP32.value)
    client_cli.add_remote_export_arguments(parser)
    search_cli.add_local_export_arguments(parser)
    parser.set_defaults(handler=_export)


def _export(args: argparse.Namespace) -> int | None:
    if args.job_id:
        return client_cli.export_remote(args)
    if client_cli.heal_options(args):
        raise CLIError("--heal-* options need a service job id; heal a local export with `prunesearch heal`")
    return search_cli.export_local(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one sub-command. A `CLIError` (the user's mistake) prints one line and exits 2; any other exception
    is a bug and propagates with its traceback (Python exits 1)."""
    args = build_parser().parse_args(argv)
    try:
        result = args.handler(args)
    except CLIError as exc:
        print(f"prunesearch {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
