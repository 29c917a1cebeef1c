"""Command-line entry point: parse arguments, call the library, print or write results.

One module per command group (:mod:`.world`, :mod:`.train`, :mod:`.eval`, :mod:`.tools`); each
``_add_<name>`` function registers one sub-command's parser and sets ``func``. Heavy imports
happen inside the command, so ``un2clip --help`` is fast. Nothing in the library imports this
package: workflows call library functions, never the command line.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator

from un2clip.cli import curate, llava, sketch, tools, train, world
from un2clip.cli import eval as eval_commands

# Sub-commands, in the order `un2clip --help` lists them: add new ones to their group's COMMANDS.
COMMANDS = [*world.COMMANDS, *train.COMMANDS, *curate.COMMANDS, *eval_commands.COMMANDS, *sketch.COMMANDS, *llava.COMMANDS, *tools.COMMANDS]


DEBUG_HELP = "show the full traceback of an error instead of its one-line message"


def _add_debug_flag(parser: argparse.ArgumentParser) -> None:
    """``--debug`` on ``parser`` and on every sub-command below it, so it may follow the command's name."""
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases share one parser
                _add_debug_flag(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="un2clip",
        description="Make CLIP image encoders see visual details (un²CLIP), and measure it.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    _add_debug_flag(parser)
    return parser


def one_line(err: BaseException) -> str:
    """An error's message on one line (third-party messages may span several)."""
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    return text or type(err).__name__


@contextlib.contextmanager
def progress_bars_off() -> Iterator[None]:
    """Silence the progress bars of the Hugging Face libraries (hub downloads, transformers' and diffusers'
    loading and pipelines) for the block; our own bars follow each command's ``progress`` argument. The previous
    state is restored afterwards (the settings are process-wide)."""
    import importlib

    env = os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS")
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # for processes this one starts
    undo = []
    for name in ("huggingface_hub.utils", "transformers.utils.logging", "diffusers.utils.logging"):
        try:
            module = importlib.import_module(name)
        except ImportError:  # an optional library that is not installed has no bars to silence
            continue
        if name == "huggingface_hub.utils":
            if not module.are_progress_bars_disabled():
                module.disable_progress_bars()
                undo.append(module.enable_progress_bars)
        elif module.is_progress_bar_enabled():
            module.disable_progress_bar()
            undo.append(module.enable_progress_bar)
    try:
        yield
    finally:
        for restore in undo:
            restore()
        if env is None:
            os.environ.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
        else:
            os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = env


def main(argv: list[str] | None = None) -> int:
    """Run one command. The error boundary: an error raised on purpose prints ``un2clip COMMAND: error: ...``
    on one line and returns 2, or 1 for a training run that stopped (NaN loss, a signal, a failed
    checkpoint write); ``--debug`` shows the traceback instead. Anything else is a bug and keeps its
    traceback."""
    from un2clip.errors import RunStopped, Un2clipError

    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    quiet = progress_bars_off() if getattr(args, "no_progress", False) else contextlib.nullcontext()
    try:
        with quiet:
            return int(args.func(args) or 0)
    # on purpose: bad input (ValueError, a missing path), the environment (a full disk, no permission: OSError),
    # a missing optional extra (ModuleNotFoundError), and the toolkit's own faults (un2clip.errors)
    except (Un2clipError, ValueError, OSError, ModuleNotFoundError) as err:
        if getattr(args, "debug", False):
            raise
        print(f"un2clip {args.command}: error: {one_line(err)}", file=sys.stderr)
        return 1 if isinstance(err, RunStopped) else 2
    except KeyboardInterrupt:
        if getattr(args, "debug", False):
            raise
        print(f"un2clip {args.command}: interrupted", file=sys.stderr)
        return 130
