"""`un2clip llava train | swap`. The LLaVA evaluations (`un2clip eval mmvp-mllm | cvbench`) are registered tasks of model
kind llava, run by :mod:`un2clip.cli.eval` like every other."""

from __future__ import annotations

import argparse

from un2clip.cli.types import OVERWRITE_HELP
from un2clip.train.llava import EPOCHS_LM, STAGE_DEFAULTS, STAGE_OBJECTIVES, WARMUP_RATIO, llava_defaults

#: help of the shared training flags whose default `llava train` changes
LLAVA_FLAG_HELP = {
    "preset": "LLaVA preset: tower + language model of a new model (default llava-tiny)",
    "lr": "learning rate (default: 1e-3 in stages lm and pretrain, 2e-5 in finetune, as LLaVA-1.5)",
    "batch_size": "global batch: all processes and accumulation steps (default: 64 lm, 256 pretrain, 128 finetune)",
    "max_steps": "optimiser steps to run (default: --epochs passes over the data at --batch-size)",
    "warmup_steps": "linear warm-up steps (default: --warmup-ratio of the steps, rounded up)",
    "lr_schedule": "learning-rate schedule after warm-up (default cosine)",
}


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
    _add_llava_train(cmds)


def _add_llava_train(cmds: argparse._SubParsersAction) -> None:
    from un2clip.cli.train import _add_train_flags, _run_training

    t = cmds.add_parser(
        "train", help="train a LLaVA-1.5 (stage lm: the language model alone on texts; pretrain: projector on "
                      "captions; finetune: projector + LM on instructions) on LLaVA's JSON conversations",
        description="LLaVA-1.5's recipe on transformers' LlavaForConditionalGeneration, run by the toolkit's "
                    "training loop (checkpoints, --resume, signals, accelerate). The CLIP tower is frozen and read "
                    "at its penultimate layer (patch tokens); a two-layer GELU MLP projects them into the language "
                    "model. Stage pretrain trains the projector alone (LLaVA's 'plain' prompts: image, caption); "
                    "stage finetune trains projector and language model (Vicuna-v1 conversations), the loss on the "
                    "answer tokens only. Defaults follow LLaVA's scripts/v1_5: lr 1e-3 / 2e-5, global batch 256 / "
                    "128, one epoch, cosine schedule with 3 % warm-up, no weight decay. The run writes llava/, a "
                    "transformers LLaVA folder for `un2clip eval mmvp-mllm | cvbench --model RUN/llava` and for "
                    "--init of the next stage. Stage lm comes first when the language model has never read text "
                    "(llava-tiny's is random): LLaVA-1.5's projector learns to speak to a pre-trained Vicuna, and a "
                    "random frozen LM gives it nothing to align to. Stage lm trains the language model alone "
                    "(next-token loss on every token of BOS text EOS) on the captions of a CSV/TSV table or the "
                    "turns of JSON conversations (<image> removed), and writes lm/, a transformers causal-LM folder "
                    "with its tokenizer for --language-model of stage pretrain.")
    _add_train_flags(t)
    for action in t._actions:  # the shared flags whose defaults this command sets otherwise
        if action.dest in LLAVA_FLAG_HELP:
            action.help = LLAVA_FLAG_HELP[action.dest]
    g = t.add_argument_group("LLaVA options")
    g.add_argument("--stage", choices=list(STAGE_DEFAULTS), required=False,
                   help="lm (the language model alone, texts: a captions CSV/TSV or JSON conversations), pretrain "
                        "(projector only, captions) or finetune (projector + LM, instructions); required unless "
                        "resuming")
    g.add_argument("--init", metavar="LLAVA",
                   help="start from this LLaVA: a transformers LLaVA folder or a `llava train` run (stage "
                        "finetune from the pretrain run); default: a new model of --clip (or the preset's tower) "
                        "and --language-model with a random projector")
    g.add_argument("--language-model", metavar="LM",
                   help="causal LM of a new model (stage lm: the LM to train): a transformers folder or Hub id "
                        "(LLaVA-1.5: lmsys/vicuna-7b-v1.5), a stage-lm run or its lm/, or a LLaVA preset "
                        "(default: the preset's, llava-tiny's 2-layer Llama)")
    g.add_argument("--image-folder", metavar="DIR",
                   help="folder the JSON's image paths are relative to (default: the JSON file's folder)")
    g.add_argument("--max-length", type=int, metavar="N",
                   help="tokens per conversation, image tokens included; longer ones are cut (default 2048; "
                        "stage lm: the LM's positions, at most 2048)")
    g.add_argument("--system-prompt", metavar="TEXT",
                   help="system prompt of the finetune conversations (default: Vicuna-v1's, as LLaVA-1.5)")
    g.add_argument("--vision-select", choices=["default", "full"],
                   help="image tokens the LM reads: default, the penultimate layer's patch tokens (LLaVA-1.5); full, "
                        "the class token too (one token more); with --init it changes the loaded LLaVA "
                        "(default: a new model's default, an --init model's own)")
    g.add_argument("--epochs", type=float,
                   help="passes over the data that set --max-steps when it is not given (default 1; stage lm: "
                        f"{EPOCHS_LM:g}: llava-tiny's LM levels off within the first pass over the world's "
                        "captions)")
    g.add_argument("--warmup-ratio", type=float, default=WARMUP_RATIO,
                   help="share of the steps that warm up linearly, when --warmup-steps is not given (default 0.03)")

    def train(args: argparse.Namespace) -> int:
        opts = {"stage": args.stage, "init": args.init, "language_model": args.language_model,
                "max_length": args.max_length, "system": args.system_prompt, "vision_select": args.vision_select}
        defaults = None
        objective = "llava"
        if not args.resume:
            if args.stage is None:
                raise ValueError("--stage is required: lm (language model on texts), pretrain (projector on "
                                 "captions) or finetune (projector + language model on instructions)")
            objective = STAGE_OBJECTIVES[args.stage]
            if args.stage == "lm":
                given = [flag for flag, value in (("--init", args.init), ("--vision-select", args.vision_select),
                                                  ("--system-prompt", args.system_prompt), ("--clip", args.clip))
                         if value is not None]
                if given:
                    raise ValueError(f"stage lm trains a language model alone on text: {', '.join(given)} "
                                     "(a LLaVA's image or prompt settings) do not go with it; the LM to start from "
                                     "is --language-model")
                opts = {"language_model": args.language_model, "max_length": args.max_length}
            n = None
            if args.max_steps is None and args.data and not args.config:
                from un2clip.data import open_source

                source = open_source(args.data, image_folder=args.image_folder, caption_column=args.caption_column)
                if args.stage == "lm":
                    from un2clip.data.texts import text_source

                    source = text_source(source)
                n = len(source)
            epochs = args.epochs if args.epochs is not None else (EPOCHS_LM if args.stage == "lm" else 1.0)
            defaults = llava_defaults(args.stage, n_samples=n, batch_size=args.batch_size, max_steps=args.max_steps,
                                      epochs=epochs, warmup_ratio=args.warmup_ratio)
            if args.warmup_steps is not None:
                defaults.pop("warmup_steps", None)
        return _run_training(args, objective, opts, defaults)

    t.set_defaults(func=train)


COMMANDS = [_add_llava]
