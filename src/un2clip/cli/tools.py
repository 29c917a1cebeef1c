"""`un2clip` tools: export, convert, bench, presets, version."""

from __future__ import annotations

import argparse

from un2clip.cli.types import OVERWRITE_HELP, fraction, nonneg_int, positive_int


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a trained encoder in the formats other projects load",
                       description="hf: a folder that transformers' CLIPModel and CLIPVisionModelWithProjection "
                                   "load (what LLaVA loads). openclip: the OpenAI-CLIP / open_clip state-dict "
                                   "layout (what the un²CLIP and DIVA repositories release): OUTPUT ending in "
                                   ".safetensors/.pt/.bin is one state-dict file, else a folder in open_clip's Hub "
                                   "layout with the tokenizer. With --alpha: weight-space interpolation "
                                   "(WiSE-FT) of the image tower between the original and the fine-tuned one.")
    p.add_argument("model", help="run directory, model folder, preset or Hub id")
    p.add_argument("--format", choices=["hf", "openclip"], default="hf",
                   help="hf: transformers folder; openclip: open_clip / OpenAI-CLIP state dict (default hf)")
    p.add_argument("--output", required=True, help="folder to write (openclip: or a .safetensors/.pt/.bin file)")
    p.add_argument("--visual-only", action="store_true",
                   help="with --format openclip: the image tower and visual.proj only (how encoders are released)")
    p.add_argument("--alpha", type=fraction, metavar="A",
                   help="image tower and visual projection = (1 - A) * original + A * MODEL, A in [0, 1]; "
                        "text tower: the original's")
    p.add_argument("--original", metavar="SPEC",
                   help="with --alpha: the original encoder (default: the one the run MODEL started from, "
                        "from its un2clip_run.json)")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)

    def run(args: argparse.Namespace) -> int:
        from un2clip.export import export_model

        out, mix = export_model(args.model, args.output, alpha=args.alpha, original=args.original,
                                format=args.format, visual_only=args.visual_only, overwrite=args.overwrite)
        print(f"wrote {args.format} export to {out}" + (f": {mix}" if mix else ""))
        return 0

    p.set_defaults(func=run)


# the named architectures of un2clip.models.openclip_format.OPENCLIP_CONFIGS (spelt out: --help imports no torch)
CONFIG_NAMES = ("ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336", "ViT-H-14", "ViT-g-14", "ViT-bigG-14")


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert", help="convert CLIP checkpoints between Hugging Face folders and the OpenAI-CLIP / open_clip layout",
        description="--to hf: SRC is an OpenAI-CLIP / open_clip ViT checkpoint (.safetensors, or .pt/.bin/.pth read "
                    "with torch.load(weights_only=True); full model or visual tower only) or an open_clip folder; a "
                    "visual-only checkpoint is completed with the text tower of --base. --to openclip: SRC is any "
                    "model the toolkit loads (HF folder, preset, run, export). Neither open_clip nor clip is imported.")
    p.add_argument("src", metavar="SRC", help="checkpoint file or folder (--to hf); model spec (--to openclip)")
    p.add_argument("--to", required=True, choices=["hf", "openclip"], help="the layout to write")
    p.add_argument("--output", required=True, metavar="DST",
                   help="folder to write (--to openclip: or a .safetensors/.pt/.bin file)")
    p.add_argument("--config", metavar="NAME|JSON",
                   help=f"architecture the checkpoint must match: {', '.join(CONFIG_NAMES)} (add -quickgelu for "
                        "QuickGELU; a name without it means GELU, as in open_clip; --to openclip refuses a model of "
                        "the other activation) or an open_clip model-config JSON (default: open_clip_config.json beside SRC, "
                        "else the checkpoint's shapes)")
    p.add_argument("--base", metavar="SPEC",
                   help="--to hf: HF CLIP (folder, Hub id, preset) giving the tokenizer, preprocessing and, for a "
                        "visual-only checkpoint, the text tower (default: the architecture's OpenAI/LAION model)")
    p.add_argument("--activation", choices=["quick_gelu", "gelu"],
                   help="--to hf: MLP activation (default: the --config name's, -quickgelu or not, or the config "
                        "file's quick_gelu; without a config the base model's, said on the console). A visual-only "
                        "checkpoint's text tower keeps the base's activation")
    p.add_argument("--visual-only", action="store_true", help="--to openclip: write the image tower only")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)

    def run(args: argparse.Namespace) -> int:
        from un2clip.export import convert_checkpoint

        out = convert_checkpoint(args.src, args.to, args.output, config=args.config, base=args.base,
                                 activation=args.activation, visual_only=args.visual_only, overwrite=args.overwrite)
        print(f"wrote {args.to} checkpoint to {out}")
        return 0

    p.set_defaults(func=run)


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help="images/s, memory and MFU of the un²CLIP training step: one configuration or a ladder",
        description="Without --ladder: one step configuration given by the flags. With --ladder: the "
                    "straightforward step, then bf16, cached latents, SDPA, channels-last, fused/foreach AdamW, "
                    "K timesteps per image, gradient checkpointing and torch.compile added one at a time, all "
                    "measured in one run on the same device, each rung in a fresh process.")
    p.add_argument("--preset", default="tiny", help="preset to measure (default tiny; small: CPU-sized real layout)")
    p.add_argument("--random-weights", action="store_true", help="real architecture, random weights")
    p.add_argument("--batch-size", type=positive_int, default=8,
                   help="image-timestep pairs per step, i.e. the decoder's batch (default 8)")
    p.add_argument("--steps", type=positive_int, default=10, help="timed steps; the median is reported (default 10)")
    p.add_argument("--warmup", type=nonneg_int, default=2, help="untimed warm-up steps (default 2)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--decoder-size", type=positive_int, metavar="PX",
                   help="decoder view side instead of the preset's (e.g. 512 for openai-l14, whose decoder is 768)")
    p.add_argument("--ladder", action="store_true", help="measure the ladder of optimisations")
    p.add_argument("--rungs", help="with --ladder: comma-separated subset of "
                                   "base,bf16,cache,sdpa,nhwc,adamw,k,ckpt,compile")
    p.add_argument("--in-process", action="store_true", help="with --ladder: all rungs in this process")
    g = p.add_argument_group("one configuration (without --ladder)")
    g.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                   help="autocast precision; bf16/fp16 also store the frozen decoder in that dtype (as training does)")
    g.add_argument("--cached-latents", action="store_true", help="latents precomputed: no VAE in the step")
    g.add_argument("--attention", choices=["sdpa", "eager"], default="sdpa", help="attention kernels (default sdpa)")
    g.add_argument("--channels-last", action="store_true", help="convolution weights in channels-last format")
    g.add_argument("--optimizer-impl", choices=["auto", "fused", "foreach", "for-loop"], default="auto",
                   help="AdamW implementation (default auto: fused on CUDA, foreach on CPU)")
    g.add_argument("--timesteps-per-image", type=positive_int, default=1,
                   help="K noised copies per encoder pass (with --ladder: the K rung's, default 4)")
    g.add_argument("--grad-checkpointing", action="store_true", help="recompute encoder activations")
    g.add_argument("--compile", action="store_true", help="torch.compile the encoder and the UNet")
    p.add_argument("--json", help="write the result(s) as JSON to this file")
    p.add_argument("--markdown", help="write the table as Markdown to this file")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)

    def run(args: argparse.Namespace) -> int:
        import json

        from un2clip.bench import StepConfig, format_markdown, run_ladder, run_single
        from un2clip.files import atomic_write_text, check_output

        for option, path in (("--json", args.json), ("--markdown", args.markdown)):  # before minutes of timing
            if path:
                check_output(path, overwrite=args.overwrite, option=option)
        if args.ladder:
            only = [r.strip() for r in args.rungs.split(",") if r.strip()] if args.rungs else None
            k = args.timesteps_per_image if args.timesteps_per_image > 1 else 4
            result = run_ladder(args.preset, random_weights=args.random_weights, batch_size=args.batch_size,
                                steps=args.steps, warmup=args.warmup, device=args.device, timesteps_per_image=k,
                                decoder_size=args.decoder_size, only=only, isolate=not args.in_process)
        else:
            low = None if args.precision == "fp32" else args.precision
            cfg = StepConfig("one", f"{args.precision}, attention {args.attention}", autocast=low, frozen_dtype=low,
                             cached_latents=args.cached_latents, attention=args.attention,
                             channels_last=args.channels_last, optimizer=args.optimizer_impl,
                             timesteps_per_image=args.timesteps_per_image,
                             grad_checkpointing=args.grad_checkpointing, compile=args.compile)
            result = run_single(args.preset, cfg, random_weights=args.random_weights, batch_size=args.batch_size,
                                steps=args.steps, warmup=args.warmup, device=args.device,
                                decoder_size=args.decoder_size)
        table = format_markdown(result)
        print(table)
        if args.markdown:
            atomic_write_text(args.markdown, table + "\n")
        if args.json:
            atomic_write_text(args.json, json.dumps(result, indent=2))
        return 0

    p.set_defaults(func=run)


def _add_presets(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("presets", help="list the registered encoder + decoder presets")

    def run(args: argparse.Namespace) -> int:
        from un2clip.models.presets import describe_presets

        print(describe_presets())
        return 0

    p.set_defaults(func=run)


def _add_version(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("version", help="print the package version")

    def run(args: argparse.Namespace) -> int:
        from un2clip import __version__

        print(__version__)
        return 0

    p.set_defaults(func=run)


# sub-commands of this group, in the order `un2clip --help` lists them
COMMANDS = [_add_export, _add_convert, _add_bench, _add_presets, _add_version]
