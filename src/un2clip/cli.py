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


def _add_presets(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("presets", help="list the registered encoder + decoder presets")

    def run(args: argparse.Namespace) -> int:
        from un2clip.models.presets import describe_presets

        print(describe_presets())
        return 0

    p.set_defaults(func=run)


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    """Flags shared by every training command; each overrides the recipe's value when given."""
    p.add_argument("config", nargs="?", help="YAML recipe (see configs/); flags below override it")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its newest checkpoint")
    g = p.add_argument_group("models")
    g.add_argument("--preset", help="named encoder + decoder pair (see `un2clip presets`); default tiny")
    g.add_argument("--clip", help="encoder: preset, HF folder, Hub id or run directory (overrides the preset's)")
    g.add_argument("--decoder", help="unCLIP decoder: preset, folder, Hub id or train-decoder run (overrides the preset's)")
    g.add_argument("--random-weights", action="store_true", default=None,
                   help="build the preset's real architecture with random weights (no download)")
    g = p.add_argument_group("data")
    g.add_argument("--data", help="image folder, CSV/TSV file with an image column, webdataset shards, or "
                                  "(finetune) a folder written by `un2clip cache-latents`")
    g.add_argument("--image-column", help="CSV/TSV column holding image paths")
    g.add_argument("--caption-column", help="CSV/TSV column holding captions")
    g.add_argument("--num-workers", type=int, help="data-loader worker processes (default 0)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--lr", type=float, help="learning rate (paper: 3e-7 for ViT-L/14)")
    g.add_argument("--optimizer", choices=["adamw", "sgd"], help="optimiser (default adamw)")
    g.add_argument("--weight-decay", type=float, help="weight decay (default 0)")
    g.add_argument("--warmup-steps", type=int, help="linear warm-up steps (default 0)")
    g.add_argument("--lr-schedule", choices=["constant", "cosine"], help="after warm-up (default constant)")
    g.add_argument("--max-grad-norm", type=float, help="clip gradients to this norm (default 1.0)")
    g = p.add_argument_group("loop")
    g.add_argument("--max-steps", type=int, help="optimiser steps to run (default 200)")
    g.add_argument("--batch-size", type=int, help="global batch: all processes and accumulation steps (default 32)")
    g.add_argument("--grad-accum", type=int, help="gradient accumulation micro-steps per optimiser step")
    g.add_argument("--precision", choices=["fp32", "bf16", "fp16"], help="autocast precision (default fp32)")
    g.add_argument("--grad-checkpointing", action="store_true", default=None,
                   help="recompute encoder activations in the backward pass (less memory)")
    g.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the encoder and the UNet (first step slower; eager with a warning "
                        "if compilation fails)")
    g.add_argument("--channels-last", action="store_true", default=None,
                   help="convolution weights (UNet, VAE) in channels-last memory format")
    g.add_argument("--save-every", type=int, help="checkpoint every N steps (default 500, and at the end)")
    g.add_argument("--seed", type=int, help="seed of data order, augmentations and diffusion draws")
    g.add_argument("--output", help="run directory (metrics.jsonl, config.yaml, checkpoints/, trained models)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


TRAIN_KEYS = ("preset", "clip", "decoder", "random_weights", "data", "image_column", "caption_column",
              "num_workers", "lr", "optimizer", "weight_decay", "warmup_steps", "lr_schedule", "max_grad_norm",
              "max_steps", "batch_size", "grad_accum", "precision", "grad_checkpointing", "compile", "channels_last",
              "save_every", "seed", "output")


def _resolve_run_config(args: argparse.Namespace, objective: str, objective_options: dict):
    """Recipe (or the resumed run's config.yaml) + flags -> RunConfig."""
    from pathlib import Path

    from un2clip.train.config import RunConfig, apply_overrides, load_config

    overrides = {k: getattr(args, k, None) for k in TRAIN_KEYS}
    if args.resume:
        run_cfg = Path(args.resume) / "config.yaml"
        if not run_cfg.exists():
            raise FileNotFoundError(f"{run_cfg} not found: --resume takes the run directory of an earlier run")
        # a resumed run keeps its recipe; only the step budget may be extended
        return apply_overrides(load_config(run_cfg), {"output": args.resume, "max_steps": args.max_steps})
    cfg = load_config(args.config) if args.config else RunConfig(objective=objective)
    if cfg.objective != objective:
        raise ValueError(f"{args.config} is a recipe for objective {cfg.objective!r}, not {objective!r}")
    options = {k: v for k, v in objective_options.items() if v is not None}
    merged = {**cfg.objective_options, **options}
    return apply_overrides(cfg, {**overrides, "objective_options": merged})


def _run_training(args: argparse.Namespace, objective: str, objective_options: dict) -> int:
    from un2clip.train.recipes import run

    cfg = _resolve_run_config(args, objective, objective_options)
    result = run(cfg, resume=bool(args.resume), progress=not args.no_progress)
    print(f"run directory: {result.output}")
    print(f"  steps: {result.step}, last loss: {result.last_loss:.6f}, skipped images: {result.n_bad}")
    print(f"  metrics: {result.output / 'metrics.jsonl'}  config: {result.output / 'config.yaml'}")
    print(f"  checkpoints: {result.output / 'checkpoints'}")
    return 0


def _add_finetune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune", help="un²CLIP: fine-tune a CLIP image encoder through a frozen unCLIP decoder",
        description="Minimise a frozen unCLIP decoder's diffusion loss with respect to the CLIP image "
                    "encoder that conditions it. Images only; the text tower is untouched.")
    _add_train_flags(p)
    g = p.add_argument_group("un²CLIP options")
    g.add_argument("--projector", choices=["none", "random", "identity"],
                   help="ablation: trainable linear layer between encoder and decoder (default none); the run "
                        "records it (projector.safetensors, un2clip_run.json) but its clip/ is the encoder "
                        "alone, which is what `un2clip eval` loads")
    g.add_argument("--train-decoder", action="store_true", default=None,
                   help="ablation: update the decoder together with the encoder (written to decoder/)")
    g.add_argument("--anchor-weight", type=float, metavar="L",
                   help="keep alignment: add L * batch mean of (1 - cosine similarity) between the encoder's "
                        "embedding and a frozen copy of the original encoder's, same view (default 0: off)")
    g.add_argument("--lora-rank", type=int, metavar="R",
                   help="train rank-R LoRA adapters on the image tower instead of all its weights; the run's "
                        "clip/ is the merged model (needs: pip install 'un2clip[lora]')")
    g.add_argument("--lora-alpha", type=float, metavar="A", help="LoRA scale is A / R (default A = R)")
    g.add_argument("--lora-targets", metavar="NAMES",
                   help="comma-separated linear layers that get adapters "
                        "(default q_proj,k_proj,v_proj,out_proj,fc1,fc2)")
    g.add_argument("--noise-level", type=int, help="noise augmentation level of the embedding (default 0)")
    g.add_argument("--timesteps-per-image", type=int,
                   help="K noised copies per encoder pass (default 1)")
    g.add_argument("--max-timestep", type=int,
                   help="draw diffusion timesteps in [0, N) only (default: all; not in the paper)")

    def run(args: argparse.Namespace) -> int:
        opts = {"projector": args.projector, "train_decoder": args.train_decoder,
                "noise_level": args.noise_level, "timesteps_per_image": args.timesteps_per_image,
                "max_timestep": args.max_timestep, "anchor_weight": args.anchor_weight,
                "lora_rank": args.lora_rank, "lora_alpha": args.lora_alpha,
                "lora_targets": [t.strip() for t in args.lora_targets.split(",") if t.strip()]
                if args.lora_targets else None}
        return _run_training(args, "un2clip", opts)

    p.set_defaults(func=run)


def _add_cache_latents(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "cache-latents", help="run the frozen VAE once over the data; finetune then reads the cache (--data DIR)",
        description="One pass over the data: each image gets the crop un²CLIP would draw for it in epoch 0 with "
                    "--seed; its decoder view is encoded by the decoder's VAE (float16 latents; the pixels for a "
                    "pixel-space decoder) and its CLIP view stored as uint8 pixels, in safetensors shards with an "
                    "index (un2clip_latents.json). `un2clip finetune --data DIR` recognises the folder and skips the "
                    "VAE; with the same --seed its first epoch equals the on-the-fly one (latents rounded to "
                    "float16), later epochs reuse the same crops.")
    p.add_argument("--decoder", required=True, help="unCLIP decoder: preset, folder or Hub id (its VAE encodes)")
    p.add_argument("--clip", required=True, help="encoder whose input size and resize mode the CLIP view follows")
    p.add_argument("--data", required=True, help="image folder, CSV/TSV file or webdataset shards")
    p.add_argument("--output", required=True, help="cache folder to write (new or empty)")
    p.add_argument("--seed", type=int, default=0, help="seed of the crops: use the training run's (default 0)")
    p.add_argument("--shard-size", type=int, default=1024, help="samples per safetensors shard (default 1024)")
    p.add_argument("--batch-size", type=int, default=16, help="images per VAE call (default 16)")
    p.add_argument("--num-workers", type=int, default=0, help="image-decoding processes (default 0)")
    p.add_argument("--center-crop", action="store_true", help="centre crops (for runs with random_crop: false)")
    p.add_argument("--image-column", help="CSV/TSV column holding image paths")
    p.add_argument("--random-weights", action="store_true", help="presets' architectures with random weights")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    def run(args: argparse.Namespace) -> int:
        import torch

        from un2clip.data.latent_cache import cache_latents
        from un2clip.data.sources import open_source
        from un2clip.models.presets import load_clip, load_decoder

        source = open_source(args.data, image_column=args.image_column)
        processing = load_clip(args.clip, random_weights=args.random_weights).processing
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        decoder = load_decoder(args.decoder, random_weights=args.random_weights).freeze().to(device)
        index = cache_latents(source, processing, decoder, args.output, seed=args.seed,
                              random_crop=not args.center_crop, shard_size=args.shard_size,
                              batch_size=args.batch_size, num_workers=args.num_workers,
                              info={"source": args.data, "clip": args.clip, "decoder": args.decoder,
                                    "random_weights": args.random_weights},
                              progress=not args.no_progress)
        print(f"cached {index['n_cached']} of {index['n_samples']} images ({index['n_bad']} unreadable) in "
              f"{len(index['shards'])} shard(s) at {args.output}: latents {tuple(index['latents']['shape'])} "
              f"float16, CLIP view {index['clip_view']['size']} px uint8")
        return 0

    p.set_defaults(func=run)


def _add_pretrain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain", help="contrastive CLIP training (symmetric InfoNCE, learnable temperature) on image-text pairs",
        description="Train both towers of a CLIP model on captioned images: a preset's random init "
                    "(e.g. tiny) or any loadable model to continue from.")
    _add_train_flags(p)
    g = p.add_argument_group("contrastive options")
    g.add_argument("--max-logit-scale", type=float, help="clamp of the learnable temperature's scale (default 100)")

    def run(args: argparse.Namespace) -> int:
        return _run_training(args, "contrastive", {"max_logit_scale": args.max_logit_scale})

    p.set_defaults(func=run)


def _add_train_decoder(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-decoder", help="train an unCLIP decoder on a frozen CLIP's image embeddings (or, with "
                              "--text-conditioned, a text-to-image decoder on captions)",
        description="Stable unCLIP's recipe: the decoder denoises images given the CLIP image embedding, "
                    "noise-augmented at a random level per sample. Also how to build a decoder for an encoder "
                    "with no public unCLIP (ViT-L/14@336, SigLIP). With --text-conditioned: a text-to-image "
                    "decoder (e.g. --preset diva-tiny) learns to denoise images given their captions through a "
                    "frozen text encoder (--clip: that CLIP's text tower), the generator `un2clip diva` needs.")
    _add_train_flags(p)
    g = p.add_argument_group("decoder options")
    g.add_argument("--text-conditioned", action="store_true",
                   help="train a text-to-image decoder on image-caption pairs (objective t2i-decoder)")
    g.add_argument("--max-noise-level", type=int, help="embedding noise levels drawn from [0, N) (default 1000)")
    g.add_argument("--p-uncond", type=float,
                   help="probability of zeroed class labels (or, text-conditioned, of the empty caption), "
                        "for guidance (default 0.1)")

    def run(args: argparse.Namespace) -> int:
        if args.text_conditioned:
            return _run_training(args, "t2i-decoder", {"p_uncond": args.p_uncond,
                                                       "max_noise_level": args.max_noise_level})
        return _run_training(args, "decoder", {"max_noise_level": args.max_noise_level, "p_uncond": args.p_uncond})

    p.set_defaults(func=run)


def _add_diva(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "diva", help="the DIVA baseline: fine-tune a CLIP image encoder through a frozen text-to-image model",
        description="DIVA (arXiv 2407.20171): the frozen UNet's cross-attention context is the text encoder's "
                    "hidden states of 'a photo of a .' followed by a trainable linear projection of the class "
                    "token and N randomly drawn patch tokens (after the final norm and visual projection); the "
                    "noise-prediction loss trains the encoder and the projection. Images only. Recipe: "
                    "configs/diva_openai_l14.yaml; tiny: --preset diva-tiny.")
    _add_train_flags(p)
    g = p.add_argument_group("DIVA options")
    g.add_argument("--n-patch-tokens", type=int, help="patch tokens drawn with replacement per image (default 76)")
    g.add_argument("--prompt", help="template whose text hidden states come first (default 'a photo of a .')")
    g.add_argument("--combine", choices=["concat", "add"],
                   help="concat: text states then visual tokens (default); add: summed position by position, "
                        "as DIVA's released code does (needs n-patch-tokens + 1 = text length)")
    g.add_argument("--draws-per-image", type=int,
                   help="timestep, noise and token draws per encoder pass, losses averaged (default 1)")

    def run(args: argparse.Namespace) -> int:
        opts = {"n_patch_tokens": args.n_patch_tokens, "prompt": args.prompt, "combine": args.combine,
                "draws_per_image": args.draws_per_image}
        return _run_training(args, "diva", opts)

    p.set_defaults(func=run)


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a trained encoder in the formats other projects load",
                       description="hf: a folder that transformers' CLIPModel and CLIPVisionModelWithProjection "
                                   "load (what LLaVA loads). With --alpha: weight-space interpolation "
                                   "(WiSE-FT) of the image tower between the original and the fine-tuned one.")
    p.add_argument("model", help="run directory, model folder, preset or Hub id")
    p.add_argument("--format", choices=["hf"], default="hf", help="output format (default hf)")
    p.add_argument("--output", required=True, help="folder to write")
    p.add_argument("--alpha", type=float, metavar="A",
                   help="image tower and visual projection = (1 - A) * original + A * MODEL, A in [0, 1]; "
                        "text tower: the original's")
    p.add_argument("--original", metavar="SPEC",
                   help="with --alpha: the original encoder (default: the one the run MODEL started from, "
                        "from its un2clip_run.json)")

    def run(args: argparse.Namespace) -> int:
        from un2clip.export import export_hf, interpolate_clip, original_spec
        from un2clip.models.presets import load_clip

        if args.alpha is None:
            if args.original:
                raise ValueError("--original goes with --alpha")
            out = export_hf(load_clip(args.model), args.output)
            print(f"wrote {args.format} export to {out}")
            return 0
        original, random_weights = (args.original, False) if args.original else original_spec(args.model)
        model = interpolate_clip(load_clip(original, random_weights=random_weights), load_clip(args.model),
                                 args.alpha)
        out = export_hf(model, args.output)
        print(f"wrote {args.format} export to {out}: image tower = {1 - args.alpha:g} * {original} "
              f"+ {args.alpha:g} * {args.model}")
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
    p.add_argument("--batch-size", type=int, default=8,
                   help="image-timestep pairs per step, i.e. the decoder's batch (default 8)")
    p.add_argument("--steps", type=int, default=10, help="timed steps; the median is reported (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps (default 2)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--decoder-size", type=int, metavar="PX",
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
    g.add_argument("--timesteps-per-image", type=int, default=1,
                   help="K noised copies per encoder pass (with --ladder: the K rung's, default 4)")
    g.add_argument("--grad-checkpointing", action="store_true", help="recompute encoder activations")
    g.add_argument("--compile", action="store_true", help="torch.compile the encoder and the UNet")
    p.add_argument("--json", help="write the result(s) as JSON to this file")
    p.add_argument("--markdown", help="write the table as Markdown to this file")

    def run(args: argparse.Namespace) -> int:
        import json

        from un2clip.bench import StepConfig, format_markdown, run_ladder, run_single

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
            with open(args.markdown, "w") as f:
                f.write(table + "\n")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=2)
        return 0

    p.set_defaults(func=run)


def _add_world(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("world", help="the shapes world: a small, seeded world of coloured shapes with captions")
    wsub = p.add_subparsers(dest="world_command", metavar="ACTION")
    g = wsub.add_parser("generate", help="write training data, MMVP-layout pairs, zero-shot and segmentation sets")
    g.add_argument("output", help="folder to write")
    g.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
    g.add_argument("--n-train", type=int, default=20000, help="training images (default 20000)")
    g.add_argument("--n-val", type=int, default=1000, help="validation images (default 1000)")
    g.add_argument("--image-size", type=int, default=32, help="image side in pixels (default 32)")
    g.add_argument("--rare-rate", type=float, default=0.03,
                   help="probability that a caption names each rare attribute (default 0.03)")
    g.add_argument("--pairs-per-pattern", type=int, default=15, help="MMVP pairs per pattern (default 15)")
    g.add_argument("--n-seg", type=int, default=200, help="segmentation images (default 200)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing world in OUTPUT")

    def run(args: argparse.Namespace) -> int:
        if args.world_command != "generate":
            p.print_help()
            return 2
        import json

        from un2clip.data.world import generate_world

        info = generate_world(args.output, seed=args.seed, n_train=args.n_train, n_val=args.n_val,
                              image_size=args.image_size, rare_rate=args.rare_rate,
                              pairs_per_pattern=args.pairs_per_pattern, n_seg=args.n_seg, overwrite=args.overwrite)
        print(json.dumps({k: info[k] for k in ("seed", "n_train", "n_val", "image_size", "rare_rate") if k in info}))
        print(f"wrote the world to {args.output}")
        return 0

    p.set_defaults(func=run)


def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare", help="un²CLIP, its ablations and alignment keepers over world seeds: one table",
        description="Per world seed: the demo's stages (world, tiny CLIP, decoder, un²CLIP), then each variant as a "
                    "cached stage (original, un2clip, projector-random, projector-identity, update-decoder, "
                    "alpha0.25/0.5/0.75 WiSE-FT exports, anchor0.1/anchor1, lora, diva when registered), each "
                    "evaluated like the demo (world-MMVP, zero-shot, held-out diffusion loss, probes). Writes "
                    "OUT/report.md (mean ± std over seeds), OUT/results.json, OUT/mmvp_vs_zeroshot.png.")
    p.add_argument("--output", default="runs/compare", help="where every seed and the report go (default runs/compare)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="world seeds (default 0 1 2)")
    p.add_argument("--variants", nargs="+", metavar="NAME", help="only these variants (default: all; original is "
                   "always evaluated, the un2clip run always made)")
    p.add_argument("--steps", type=int, help="fine-tune steps of every trained variant (default: the demo's)")
    p.add_argument("--fresh", action="store_true", help="recompute every stage instead of reusing finished ones")
    p.add_argument("--from-scratch", action="store_true",
                   help="retrain the tiny CLIP and decoder instead of starting from the shipped weights")
    p.add_argument("--weights-seed", type=int, metavar="S",
                   help="start every seed from the shipped CLIP and decoders of seed S (the worlds, pairs and "
                        "fine-tune draws still follow --seeds)")
    p.add_argument("--quick", action="store_true", help="a few steps of everything (a smoke test, no result)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")

    def run(args: argparse.Namespace) -> int:
        from pathlib import Path

        from un2clip.compare import QUICK, CompareSettings, run_compare

        report = run_compare(Path(args.output), seeds=args.seeds, variants=args.variants,
                             settings=QUICK if args.quick else CompareSettings(), steps=args.steps,
                             fresh=args.fresh, from_scratch=args.from_scratch, progress=not args.no_progress,
                             weights_seed=args.weights_seed)
        print(report.read_text())
        print(f"report: {report}")
        return 0

    p.set_defaults(func=run)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    # listed for --help only: main() hands `un2clip demo ...` to un2clip.demo.main
    sub.add_parser("demo", help="the whole method in the shapes world on a CPU (what `make demo` runs)")


_EVAL_HELP = {
    "mmvp": "MMVP-VLM: CLIP-blind image pairs (DIR/Questions.csv, DIR/MLLM_VLM Images/<Type>/<qid>.jpg)",
    "zeroshot": "zero-shot classification, CLIP_benchmark protocol (ImageFolder or CLIP_benchmark webdataset)",
    "retrieval": "image-text retrieval recall@1/5/10 both ways (CSV/TSV or JSONL of image + caption)",
    "diffloss": "the un²CLIP diffusion loss on held-out images, identical draws for every encoder",
}


def _eval_task_flags(task: str, p: argparse.ArgumentParser) -> None:
    """Flags of one evaluation; each ``dest`` is the name of a keyword of that task's ``evaluate``."""
    g = p.add_argument_group(f"{task} options")
    if task == "mmvp":
        g.add_argument("--prompt-prefix", help="put before each statement (default 'a photo of ')")
    if task in ("zeroshot", "retrieval"):
        g.add_argument("--split", help="webdataset split folder (default test)")
    if task == "zeroshot":
        g.add_argument("--classnames", metavar="FILE", help="one class name a line (overrides the dataset's)")
        g.add_argument("--templates", metavar="FILE",
                       help="one template a line, {c} or {} for the class name (default: the dataset's, "
                            "else CLIP's 80 ImageNet templates)")
    if task == "retrieval":
        g.add_argument("--image-column", help="table column holding image paths")
        g.add_argument("--caption-column", help="table column holding captions")
    if task == "diffloss":
        g.add_argument("--decoder", help="unCLIP decoder: preset, folder, Hub id or run directory "
                                         "(default: the model's own when it is a preset or a fine-tune run)")
        g.add_argument("--seed", type=int, help="seed of the per-image draws (default 0)")
        g.add_argument("--draws-per-image", type=int, help="timestep/noise draws per image (default 1)")
        g.add_argument("--num-buckets", type=int, help="timestep buckets reported (default 10)")
        g.add_argument("--noise-level", type=int, help="noise augmentation level of the embedding (default 0)")
        g.add_argument("--limit", type=int, help="use the first N images only")
        g.add_argument("--condition", choices=["own", "shuffled"],
                       help="own: each image conditioned on its own embedding (default); shuffled: on another "
                            "image's (a fixed derangement), same draws: how much the decoder uses its condition; "
                            "its result is the task diffloss-shuffled")


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="evaluate encoders: mmvp | zeroshot | retrieval | diffloss | seg",
        description="Evaluate one or more models; each (model, task, dataset) gives one JSON file in --output "
                    "with the metrics and the options used. Merge them with `un2clip report OUTPUT`.")
    tasks = p.add_subparsers(dest="task", metavar="TASK")
    for task, help_text in _EVAL_HELP.items():
        tp = tasks.add_parser(task, help=help_text, description=help_text)
        tp.add_argument("--model", nargs="+", required=True, metavar="M",
                        help="preset (e.g. tiny), Hub id, model folder, fine-tune run directory or exported folder")
        tp.add_argument("--data", required=True, help="the dataset (folder or file; see the task's layout)")
        tp.add_argument("--output", required=True, metavar="OUT", help="folder for the result files")
        tp.add_argument("--model-name", nargs="+", metavar="NAME", help="names of the models in the results")
        tp.add_argument("--dataset-name", help="name of the dataset in the results (default: from --data)")
        tp.add_argument("--random-weights", action="store_true", help="a preset's architecture, random weights")
        tp.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
        tp.add_argument("--precision", choices=["auto", "fp32", "bf16"],
                        help="autocast precision (default auto: bf16 on CUDA, fp32 on CPU)")
        tp.add_argument("--batch-size", type=int, help="images per batch")
        tp.add_argument("--num-workers", type=int, help="image-reading processes (default 0)")
        tp.add_argument("--no-progress", action="store_true", help="no progress bars")
        _eval_task_flags(task, tp)
        tp.set_defaults(func=_run_eval)
    sp = tasks.add_parser("seg", help="open-vocabulary segmentation (the same as `un2clip seg`)",
                          description="Training-free open-vocabulary segmentation; see `un2clip seg --help`.")
    _seg_flags(sp)
    sp.set_defaults(func=_run_seg)

    def usage(args: argparse.Namespace) -> int:
        p.print_help()
        return 2

    p.set_defaults(func=usage)


def _data_name(data: str) -> str:
    from pathlib import Path

    path = Path(data.rstrip("/"))
    return path.name if path.is_dir() or not path.suffix else f"{path.parent.name}-{path.stem}".lstrip("-")


def _model_name(spec: str) -> str:
    """A model's name in results: the spec as given; a local path relative to the working folder when inside it."""
    import os

    spec = spec.rstrip("/") or spec
    if os.path.isabs(spec) and os.path.exists(spec):
        rel = os.path.relpath(spec)
        return spec if rel.startswith("..") else rel
    return spec


def _run_eval(args: argparse.Namespace) -> int:
    import inspect
    from pathlib import Path

    from un2clip.eval import get_task
    from un2clip.eval.diffloss import default_decoder_spec
    from un2clip.eval.embed import pick_device
    from un2clip.eval.mmvp import published_anchor
    from un2clip.eval.report import format_value, result_path, write_result
    from un2clip.models.presets import load_clip, load_decoder

    task = get_task(args.task)
    names = args.model_name or [_model_name(m) for m in args.model]
    if len(names) != len(args.model):
        raise ValueError(f"{len(args.model)} models but {len(names)} --model-name values")
    if not Path(args.data).exists():
        raise FileNotFoundError(f"--data {args.data} not found")
    dataset = args.dataset_name or _data_name(args.data)
    device = pick_device(args.device)
    params = inspect.signature(task.evaluate).parameters
    options = {k: getattr(args, k) for k in params if k not in ("model", "data") and getattr(args, k, None) is not None}
    options["progress"] = not args.no_progress
    if task.check_data is not None:  # a malformed dataset fails before any model loads
        wanted = inspect.signature(task.check_data).parameters
        task.check_data(args.data, **{k: v for k, v in options.items() if k in wanted})
    # a loss under another condition is another measurement: its own result file and report column
    task_label = task.name if options.get("condition", "own") == "own" else f"{task.name}-{options['condition']}"
    decoders: dict[str, object] = {}
    for spec, name in zip(args.model, names):
        model = load_clip(spec, random_weights=args.random_weights).to(device)
        opts, recorded = dict(options), dict(options)
        if task.needs_decoder:
            dec_spec = args.decoder or default_decoder_spec(spec)
            if dec_spec is None:
                raise ValueError(f"{spec} is neither a preset nor a run directory with a decoder: pass --decoder")
            if dec_spec not in decoders:
                decoders[dec_spec] = load_decoder(dec_spec, random_weights=args.random_weights).to(device)
            opts["decoder"], recorded["decoder"] = decoders[dec_spec], dec_spec
        path = result_path(args.output, name, task_label, dataset)
        for key, suffix in (("pairs_csv", ".pairs.csv"), ("samples_csv", ".samples.csv")):
            if key in params:
                opts[key] = recorded[key] = path.with_name(path.stem + suffix)
        metrics = task.evaluate(model, args.data, **opts)
        extra = {"model_spec": spec, "data": str(Path(args.data).resolve()), "device": str(device),
                 "random_weights": args.random_weights}
        anchor = published_anchor(spec, random_weights=args.random_weights) if task.name == "mmvp" else None
        if anchor:
            extra["published"] = anchor
        write_result(args.output, model=name, task=task_label, dataset=dataset, metrics=metrics,
                     options=recorded, extra=extra)
        shown = [k for k in metrics if not k.startswith("n_")]
        print(f"{name} | {task_label} | {dataset}")
        for k in shown:
            print(f"  {k}: {format_value(metrics[k])}")
        if anchor:
            print(f"  published average (arXiv 2505.24517): original {anchor['original']}, "
                  f"un²CLIP {anchor['un2clip']}")
        print(f"  -> {path}")
        del model
    return 0


def _add_reconstruct(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reconstruct", help="PNG grid: each input image, then the decoder's image from each model's embedding",
        description="Encode images with each model and decode the embeddings with one unCLIP decoder, same seeds "
                    "for every model: which details does each encoder keep?")
    p.add_argument("--models", nargs="+", required=True, metavar="M", help="presets, Hub ids, folders or run dirs")
    p.add_argument("--images", required=True, help="image folder, CSV/TSV or webdataset shards")
    p.add_argument("--output", required=True, help="PNG file to write (a folder gets reconstructions.png)")
    p.add_argument("--decoder", help="unCLIP decoder (default: that of the first model that is a preset or run)")
    p.add_argument("--labels", nargs="+", help="column titles of the models (default: their specs)")
    p.add_argument("--num-images", type=int, default=8, help="rows: the first N readable images (default 8)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed, the same for every model (default 0)")
    p.add_argument("--guidance-scale", type=float, default=1.0, help="classifier-free guidance (default 1: none)")
    p.add_argument("--noise-level", type=int, default=0, help="embedding noise augmentation level (default 0)")
    p.add_argument("--cell-size", type=int, help="pixels per grid cell (default: the decoder's resolution)")
    p.add_argument("--batch-size", type=int, default=8, help="images decoded at once (default 8)")
    p.add_argument("--random-weights", action="store_true", help="presets' architectures, random weights")
    p.add_argument("--device", help="cpu, cuda ... (default: cuda if available)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto", help="autocast precision")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")

    def run(args: argparse.Namespace) -> int:
        from pathlib import Path

        from un2clip.eval.diffloss import default_decoder_spec
        from un2clip.eval.embed import pick_device
        from un2clip.eval.reconstruct import first_images, reconstruction_grid
        from un2clip.models.presets import load_clip, load_decoder

        labels = args.labels or [_model_name(m) for m in args.models]
        if len(labels) != len(args.models):
            raise ValueError(f"{len(args.models)} models but {len(labels)} --labels")
        dec_spec = args.decoder or next((s for s in map(default_decoder_spec, args.models) if s), None)
        if dec_spec is None:
            raise ValueError("no model is a preset or a run directory with a decoder: pass --decoder")
        device = pick_device(args.device)
        images = first_images(args.images, args.num_images)
        decoder = load_decoder(dec_spec, random_weights=args.random_weights).to(device)
        models = [load_clip(m, random_weights=args.random_weights).to(device) for m in args.models]
        grid = reconstruction_grid(models, decoder, images, labels=labels, cell_size=args.cell_size, seed=args.seed,
                                   num_inference_steps=args.steps, guidance_scale=args.guidance_scale,
                                   noise_level=args.noise_level, batch_size=args.batch_size,
                                   precision=args.precision, progress=not args.no_progress)
        out = Path(args.output)
        if out.is_dir() or not out.suffix:
            out = out / "reconstructions.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        grid.save(out)
        print(f"{len(images)} images x {len(models)} models, decoder {dec_spec}, seed {args.seed} -> {out}")
        return 0

    p.set_defaults(func=run)


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="merge `un2clip eval` results into a Markdown table, a CSV and a chart")
    p.add_argument("results", metavar="RESULTS_DIR", help="folder of result files (searched recursively)")
    p.add_argument("--output", help="where report.md, report.csv, mmvp_patterns.png go (default RESULTS_DIR)")

    def run(args: argparse.Namespace) -> int:
        from un2clip.eval.report import write_report

        files = write_report(args.results, args.output)
        print(files.text)
        written = [files.markdown, files.csv] + ([files.chart] if files.chart else [])
        print("wrote " + ", ".join(str(f) for f in written))
        if files.chart is None:
            print("(no MMVP chart: no MMVP results, or matplotlib missing: pip install 'un2clip[plot]')")
        return 0

    p.set_defaults(func=run)


def _add_seg(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "seg", help="training-free open-vocabulary segmentation: vanilla | maskclip | sclip | clearclip | naclip",
        description="Change the last block of a frozen CLIP ViT (MaskCLIP, SCLIP, ClearCLIP, NACLIP or none), compare "
                    "patch features with text embeddings of class names (80 ImageNet templates, synonyms), sliding "
                    "window, mIoU as mmsegmentation computes it. One JSON per model x method x dataset in --output, "
                    "then one table. Settings default to each method's preset for the dataset.")
    _seg_flags(p)
    p.set_defaults(func=_run_seg)


def _seg_flags(p: argparse.ArgumentParser) -> None:
    """Flags of `un2clip seg` (also usable under `un2clip eval seg`)."""
    p.add_argument("--method", nargs="+", required=True, metavar="M",
                   help="vanilla, maskclip, sclip, clearclip, naclip (several: one table)")
    p.add_argument("--model", nargs="+", required=True, metavar="MODEL",
                   help="preset (e.g. tiny), Hub id, model folder, fine-tune run directory or exported folder")
    p.add_argument("--model-name", nargs="+", metavar="NAME", help="names of the models in the results")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--data", metavar="DIR", help="one dataset's root folder (layout: --dataset)")
    where.add_argument("--benchmarks-root", metavar="ROOT",
                       help="mmsegmentation's data root: runs voc21 voc20 context60 context59 coco_object "
                            "coco_stuff cityscapes ade20k from VOCdevkit/VOC2012, VOCdevkit/VOC2010, "
                            "coco_stuff164k, cityscapes, ade/ADEChallengeData2016")
    p.add_argument("--dataset", default="generic",
                   help="layout of --data: generic (images/, masks/, classes.txt; default), voc21, voc20, "
                        "context60, context59, coco_object, coco_stuff, cityscapes, ade20k")
    p.add_argument("--datasets", nargs="+", metavar="NAME", help="with --benchmarks-root: only these benchmarks")
    p.add_argument("--output", required=True, metavar="OUT", help="folder for the result files")
    p.add_argument("--classes", metavar="FILE", help="class-name file (one class per line, synonyms comma-separated)")
    p.add_argument("--templates", metavar="FILE", help="prompt templates, one per line with {c} (default: 80 ImageNet)")
    p.add_argument("--split", default="val", help="split file / folder of the named layouts (default val)")
    p.add_argument("--max-images", type=int, help="evaluate the first N images only")
    g = p.add_argument_group("settings (default: the method's preset for the dataset)")
    g.add_argument("--short-side", type=int, help="resize the short side to this (0: keep; SCLIP 336, ClearCLIP 448)")
    g.add_argument("--crop", type=int, help="sliding-window side (0: whole image; 224, ClearCLIP 448)")
    g.add_argument("--stride", type=int, help="sliding-window stride (112, ClearCLIP 224)")
    g.add_argument("--logit-scale", type=float, help="scale of cosine similarities before the softmax (40-65)")
    g.add_argument("--prob-threshold", type=float, help="below this top probability a pixel becomes background")
    g.add_argument("--area-threshold", type=float, help="SCLIP: drop classes on less than this fraction of foreground")
    g.add_argument("--gaussian-std", type=float, help="NACLIP neighbourhood std in patches (default 5)")
    g.add_argument("--pamr-steps", type=int,
                   help="refine the logits with PAMR for this many iterations (SCLIP/NACLIP's option: 10; default 0, off)")
    g = p.add_argument_group("running")
    g.add_argument("--random-weights", action="store_true", help="a preset's architecture, random weights")
    g.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    g.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="autocast precision (default auto: bf16 on CUDA, fp32 on CPU)")
    g.add_argument("--batch-size", type=int, default=16, help="windows per forward pass (default 16)")
    g.add_argument("--num-workers", type=int, default=2, help="image-reading processes (default 2)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


def _run_seg(args: argparse.Namespace) -> int:
    from pathlib import Path

    from un2clip.seg.presets import OPTION_NAMES
    from un2clip.seg.report import DataSpec, benchmark_specs, format_table, run_seg

    if args.benchmarks_root:
        data = benchmark_specs(args.benchmarks_root, args.datasets)
    else:
        if args.datasets:
            raise ValueError("--datasets goes with --benchmarks-root; with --data give --dataset")
        data = [DataSpec(args.dataset, Path(args.data))]
    templates = None
    if args.templates:
        from un2clip.seg.infer import read_templates

        templates = read_templates(args.templates)
    settings = {k: getattr(args, k) for k in OPTION_NAMES}  # every SegSettings field has its flag
    records = run_seg(args.model, args.method, data, output=args.output, model_names=args.model_name,
                      classes=args.classes, templates=templates, split=args.split, max_images=args.max_images,
                      random_weights=args.random_weights, device=args.device, batch_size=args.batch_size,
                      num_workers=args.num_workers, precision=args.precision, progress=not args.no_progress,
                      settings=settings)
    print(format_table(records))
    return 0


# Sub-commands, in the order `un2clip --help` lists them. Add new ones here.
COMMANDS = [_add_demo, _add_compare, _add_world, _add_pretrain, _add_train_decoder, _add_finetune, _add_cache_latents, _add_diva, _add_eval, _add_seg, _add_reconstruct, _add_report, _add_export, _add_bench, _add_presets, _add_version]


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
    if argv[:1] == ["demo"]:  # the demo has its own parser (also `python -m un2clip.demo`)
        from un2clip.demo import main as demo_main

        return demo_main(argv[1:])
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


if __name__ == "__main__":
    sys.exit(main())
