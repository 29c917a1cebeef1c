"""Command-line entry point: parse arguments, call the library, print or write results.

Each sub-command is one ``_add_<name>`` function that registers its parser and sets
``func``; heavy imports happen inside the command so that ``un2clip --help`` is fast.
"""

from __future__ import annotations

import argparse
import sys


def _add_version(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("version", help="print the package version")

    def run(args: argparse.Namespace) -> int:
        from un2clip import __version__

        print(__version__)
        return 0

    p.set_defaults(func=run)


# Sub-commands, in the order `un2clip --help` lists them. Add new ones here.
COMMANDS = [_add_version]


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
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError) as err:  # user errors: one clear line, no traceback
        print(f"un2clip {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
