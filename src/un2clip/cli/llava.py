"""`un2clip llava swap`. The LLaVA evaluations (`un2clip eval mmvp-mllm | cvbench`) are registered tasks of model
kind llava, run by :mod:`un2clip.cli.eval` like every other."""

from __future__ import annotations

import argparse

from un2clip.cli.types import OVERWRITE_HELP


def _add_llava(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("llava", help="LLaVA with another vision tower: swap",
                       description="Work on transformers LlavaForConditionalGeneration folders.")
    cmds = p.add_subparsers(dest="llava_command", metavar="COMMAND")
    s = cmds.add_parser(
        "swap", help="write a LLaVA folder whose vision tower is another CLIP image encoder",
        description="Copy a LLaVA folder with its vision tower replaced by ENCODER's image tower (an export, run, "
                    "preset, converted open_clip checkpoint or CLIPVisionModel folder). The encoder must have the "
                    "tower's image size, patch size and width; everything else (projector, language model, "
                    "processor) is kept as it is.")
    s.add_argument("--llava", required=True, metavar="LLAVA_DIR", help="transformers LLaVA folder")
    s.add_argument("--encoder", required=True, metavar="EXPORT", help="the new image encoder")
    s.add_argument("--output", required=True, metavar="DIR", help="folder to write (not --llava itself)")
    s.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)

    def swap(args: argparse.Namespace) -> int:
        from un2clip.export import swap_llava_tower

        out, notes = swap_llava_tower(args.llava, args.encoder, args.output, overwrite=args.overwrite)
        print(f"wrote LLaVA with the vision tower of {args.encoder} to {out}")
        for note in notes:
            print(f"  note: {note}")
        return 0

    def usage(args: argparse.Namespace) -> int:
        p.print_help()
        return 2

    s.set_defaults(func=swap)
    p.set_defaults(func=usage)


COMMANDS = [_add_llava]
