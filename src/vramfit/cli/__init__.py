"""The `vramfit` command: argparse subcommands, each a thin layer over the Python API.

Each subcommand lives in its own module with `register(subparsers)`; errors from vramfit print as one line
and exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from vramfit.errors import VramfitError

# Modules that register subcommands, in the order `vramfit --help` lists them.
_COMMAND_MODULES = ("estimate", "search", "serve", "truth")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vramfit",
        description="Will this model, with these settings, fit on these GPUs? Exact per-GPU memory estimates.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from importlib import import_module

    for name in _COMMAND_MODULES:
        import_module(f"vramfit.cli.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except VramfitError as error:
        print(f"vramfit: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vramfit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
