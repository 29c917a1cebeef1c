"""Command-line entry point: parse arguments, call the library, print or write results.

One module per command group (:mod:`.world`, :mod:`.train`, :mod:`.eval`, :mod:`.tools`); each
``_add_<name>`` function registers one sub-command's parser and sets ``func``. Heavy imports
happen inside the command, so ``un2clip --help`` is fast. Nothing in the library imports this
package: workflows call library functions, never the command line.
"""

from __future__ import annotations

import argparse
import sys

from un2clip.cli import curate, tools, train, world
from un2clip.cli import eval as eval_commands

# Sub-commands, in the order `un2clip --help` lists them: add new ones to their group's COMMANDS.
COMMANDS = [*world.COMMANDS, *train.COMMANDS, *curate.COMMANDS, *eval_commands.COMMANDS, *tools.COMMANDS]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="un2clip",
        description="Make CLIP image encoders see visual details (un²CLIP), and measure it.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError, ModuleNotFoundError) as err:  # user errors, missing extras: one line
        print(f"un2clip {args.command}: error: {err}", file=sys.stderr)
        return 2
