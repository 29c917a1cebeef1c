"""`un2clip` training commands: pretrain, train-decoder, finetune (un²CLIP), cache-latents, diva, genhancer,
train-grounding, train-audio, train-dense."""

from __future__ import annotations

import argparse

from un2clip.cli.types import nonneg_int, positive_int, positive_int_list


def _dashed(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    """Flags shared by every training command, generated from :class:`~un2clip.train.config.RunConfig`'s fields:
    each overrides the recipe's value when given (so every flag's parser default is None)."""
    from un2clip.train.config import RESUMABLE, flag_fields, flag_help, flag_type

    p.add_argument("config", nargs="?", help="YAML recipe (see configs/); flags below override it")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its newest checkpoint, with its own recipe; only "
                        f"{_or_list([_dashed(k) for k in RESUMABLE])} may be given "
                        "(recorded in config.yaml and metrics.jsonl)")
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in flag_fields():
        meta = f.metadata
        group = groups.get(meta["group"]) or groups.setdefault(meta["group"], p.add_argument_group(meta["group"]))
        kind = flag_type(f)
        options: dict = {"help": flag_help(f), "default": None}
        if kind is bool:
            options["action"] = "store_true"
        else:
            options.update(type=None if kind is str else kind, choices=meta["choices"], metavar=meta["metavar"])
        group.add_argument(_dashed(f.name), **options)
    groups["loop"].add_argument("--no-progress", action="store_true", help="no progress bar")


def _or_list(items: list[str]) -> str:
    """``a, b and c``."""
    return ", ".join(items[:-1]) + " and " + items[-1] if len(items) > 1 else "".join(items)


def _resolve_run_config(args: argparse.Namespace, objective: str, objective_options: dict,
                        defaults: dict | None = None):
    """Recipe (or the resumed run's config.yaml) + flags -> RunConfig; ``defaults``: the command's own defaults
    of RunConfig fields, used without a recipe file."""
    from pathlib import Path

    from un2clip.train.config import RESUMABLE, RunConfig, apply_overrides, command_line_fields, load_config

    overrides = {k: getattr(args, k, None) for k in command_line_fields()}
    if args.resume:
        run_cfg = Path(args.resume) / "config.yaml"
        if not run_cfg.exists():
            raise FileNotFoundError(f"{run_cfg} not found: --resume takes the run directory of an earlier run")
        # a resumed run keeps its recipe: only settings that leave the model, objective and data order alone
        given = [k for k, v in {**overrides, **objective_options}.items() if v is not None and k not in RESUMABLE]
        given = (["a recipe file"] if args.config else []) + [_dashed(k) for k in given]
        if given:
            accepted = ", ".join(_dashed(k) for k in RESUMABLE)
            raise ValueError(f"--resume continues {args.resume} with its own recipe and accepts only {accepted} "
                             f"(and --no-progress); not {', '.join(given)}")
        return apply_overrides(load_config(run_cfg), {"output": args.resume,
                                                      **{k: overrides[k] for k in RESUMABLE}})
    cfg = load_config(args.config) if args.config else RunConfig(objective=objective, **(defaults or {}))
    if cfg.objective != objective:
        raise ValueError(f"{args.config} is a recipe for objective {cfg.objective!r}, not {objective!r}")
    options = {k: v for k, v in objective_options.items() if v is not None}
    merged = {**cfg.objective_options, **options}
    return apply_overrides(cfg, {**overrides, "objective_options": merged})


def _run_training(args: argparse.Namespace, objective: str, objective_options: dict,
                  defaults: dict | None = None) -> int:
    from un2clip.train.recipes import run

    cfg = _resolve_run_config(args, objective, objective_options, defaults)
    result = run(cfg, resume=bool(args.resume), progress=not args.no_progress)
    print(f"run directory: {result.output}")
    print(f"  steps: {result.step}, last loss: {result.last_loss:.6f}, skipped images: {result.n_bad}")
    print(f"  metrics: {result.output / 'metrics.jsonl'}  config: {result.output / 'config.yaml'}")
    print(f"  checkpoints: {result.output / 'checkpoints'}")
    return 0


def _add_pretrain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain", help="contrastive CLIP training (symmetric InfoNCE, learnable temperature) on image-text pairs",
        description="Train both towers of a CLIP model on captioned images: a preset's random init "
                    "(e.g. tiny) or any loadable model to continue from.")
    _add_train_flags(p)
    g = p.add_argument_group("contrastive options")
    g.add_argument("--max-logit-scale", type=float, help="clamp of the learnable temperature's scale (default 100)")
    g.add_argument("--hard-negatives", metavar="FILE",
                   help="NegCLIP-style hard negatives: FILE holds groups of interchangeable words, one group per "
                        "line (`un2clip world generate` writes swap_groups.txt); each caption also gives a copy with "
                        "one word swapped within its group, scored as an extra negative (default: none)")

    g = p.add_argument_group("GroupViT options (--preset groupvit-tiny: a tiny GroupViT from scratch, or --clip a "
                             "GroupViT folder or run)")
    g.add_argument("--nouns", metavar="FILE",
                   help="one noun a line (the world's nouns.txt): each caption also gives prompts 'a photo of a "
                        "{noun}.' of its nouns for GroupViT's multi-label contrastive loss (default: none, InfoNCE "
                        "only)")
    g.add_argument("--max-words", type=nonneg_int, help="noun prompts per caption, padded with the caption (default 3)")
    g.add_argument("--multi-label-weight", type=float, help="weight of the multi-label loss (default 1)")

    def run(args: argparse.Namespace) -> int:
        return _run_training(args, "contrastive", {"max_logit_scale": args.max_logit_scale,
                                                   "hard_negatives": args.hard_negatives, "nouns": args.nouns,
                                                   "max_words": args.max_words,
                                                   "multi_label_weight": args.multi_label_weight})

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
    g.add_argument("--vae", help="replace a latent decoder's VAE: a `un2clip train-autoencoder` run, a decoder or "
                                 "pipeline folder, or a Hub id (default: the decoder's own)")
    g.add_argument("--text-conditioned", action="store_true",
                   help="train a text-to-image decoder on image-caption pairs (objective t2i-decoder)")
    g.add_argument("--max-noise-level", type=int, help="embedding noise levels drawn from [0, N) (default 1000)")
    g.add_argument("--p-uncond", type=float,
                   help="probability of zeroed class labels (or, text-conditioned, of the empty caption), "
                        "for guidance (default 0.1)")
    g.add_argument("--snr-gamma", type=float, metavar="G",
                   help="Min-SNR-γ loss weighting (Hang et al. 2023; 5 is their choice): no timestep dominates, "
                        "faster convergence (default: off, plain MSE); unCLIP decoders only")

    def run(args: argparse.Namespace) -> int:
        if args.text_conditioned:
            if args.snr_gamma is not None:
                raise ValueError("--snr-gamma weights the unCLIP decoder's loss; it does not go with --text-conditioned")
            return _run_training(args, "t2i-decoder", {"p_uncond": args.p_uncond,
                                                       "max_noise_level": args.max_noise_level})
        return _run_training(args, "decoder", {"max_noise_level": args.max_noise_level, "p_uncond": args.p_uncond,
                                               "snr_gamma": args.snr_gamma})

    p.set_defaults(func=run)


def _add_train_autoencoder(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-autoencoder", help="train the VAE of a latent unCLIP decoder (its first stage, before train-decoder)",
        description="Latent diffusion's first stage: the decoder's AutoencoderKL learns to reconstruct the images "
                    "(L1 + a small KL term); its scaling factor is set to 1 / std of the latents. The run's "
                    "decoder/ is the whole decoder with the trained VAE: pass the run as `--vae RUN` (or `--decoder "
                    "RUN`) to `un2clip train-decoder`, which trains a UNet on the frozen VAE's latents.")
    _add_train_flags(p)
    g = p.add_argument_group("autoencoder options")
    g.add_argument("--kl-weight", type=float, help="weight of the KL term, per latent element (default 1e-4)")
    g.add_argument("--vae", help="start from this VAE instead of the decoder's own (a run, folder or Hub id)")

    def run(args: argparse.Namespace) -> int:
        return _run_training(args, "autoencoder", {"kl_weight": args.kl_weight})

    p.set_defaults(func=run)


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
    p.add_argument("--shard-size", type=positive_int, default=1024, help="samples per safetensors shard (default 1024)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="images per VAE call (default 16)")
    p.add_argument("--num-workers", type=nonneg_int, default=0, help="image-decoding processes (default 0)")
    p.add_argument("--center-crop", action="store_true", help="centre crops (for runs with random_crop: false)")
    p.add_argument("--image-column", help="CSV/TSV column holding image paths")
    p.add_argument("--random-weights", action="store_true", help="presets' architectures with random weights")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    def run(args: argparse.Namespace) -> int:
        import torch

        from un2clip.data import open_source
        from un2clip.data.latent_cache import cache_latents
        from un2clip.load import load_clip, load_decoder

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
    g.add_argument("--sum-draws", action="store_true", default=None,
                   help="sum the losses of the --draws-per-image draws instead of averaging them, as DIVA's code "
                        "(--train_steps 2) backpropagates each draw (default: averaged)")

    def run(args: argparse.Namespace) -> int:
        opts = {"n_patch_tokens": args.n_patch_tokens, "prompt": args.prompt, "combine": args.combine,
                "draws_per_image": args.draws_per_image, "sum_draws": args.sum_draws}
        return _run_training(args, "diva", opts)

    p.set_defaults(func=run)


def _add_genhancer(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "genhancer", help="the GenHancer baseline: a light flow denoiser (stage 1), then the encoder through it "
                          "with LoRA (stage 2)",
        description="GenHancer (arXiv 2503.19480), continuous version. --stage 1: a small FLUX-style transformer "
                    "(2 double + 4 single blocks) learns, by rectified flow with logit-normal timesteps, to denoise "
                    "--vae's latents given the frozen CLIP's class token (through two LayerNorm-MLPs: the "
                    "modulation vector and one attention token); theirs: AdamW lr 1e-4, weight decay 0.01. "
                    "--stage 2: that denoiser (--decoder, the stage-1 run) frozen, the image tower tuned through "
                    "LoRA adapters on every linear layer (rank 16, alpha 16, dropout 0.1); theirs: AdamW lr 1e-5, "
                    "weight decay 0.01. Images only.")
    _add_train_flags(p)
    g = p.add_argument_group("GenHancer options")
    g.add_argument("--stage", type=int, choices=[1, 2], required=True,
                   help="1: train the flow denoiser (needs --vae); 2: tune the encoder (needs --decoder)")
    g.add_argument("--vae", help="stage 1: the first stage whose latents the denoiser learns (a decoder folder, "
                                 "a train-autoencoder run or a Hub id)")
    g.add_argument("--logit-normal-scale", type=float,
                   help="timesteps t = sigmoid(scale · N(0, 1)) (default 1, GenHancer's)")
    g.add_argument("--lora-rank", type=int, help="stage 2: LoRA rank (default 16)")
    g.add_argument("--lora-alpha", type=float, help="stage 2: LoRA alpha (default 16)")
    g.add_argument("--lora-dropout", type=float, help="stage 2: dropout on the adapters' input (default 0.1)")

    def run(args: argparse.Namespace) -> int:
        opts = {"logit_normal_scale": args.logit_normal_scale}
        if args.stage == 1:
            return _run_training(args, "flow-decoder", opts)
        opts |= {"lora_rank": args.lora_rank, "lora_alpha": args.lora_alpha, "lora_dropout": args.lora_dropout}
        return _run_training(args, "genhancer", opts)

    p.set_defaults(func=run)


# the shared flags whose defaults train-grounding sets otherwise: GLIP's fine-tuning optimiser (AdamW, lr 1e-4,
# weight decay 1e-4) and a run folder of its own
GROUNDING_DEFAULTS = {"lr": 1e-4, "weight_decay": 1e-4, "batch_size": 16, "output": "runs/grounding"}
GROUNDING_FLAG_HELP = {
    "lr": "learning rate (default 1e-4, GLIP's fine-tuning rate; a head from scratch in the world trains faster "
          "at 1e-3)",
    "weight_decay": "weight decay (default 1e-4, GLIP's)",
    "batch_size": "global batch: all processes and accumulation steps (default 16)",
    "output": "run directory (metrics.jsonl, config.yaml, checkpoints/, head/) (default runs/grounding)",
}


def _add_train_grounding(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-grounding", help="GLIP-style phrase grounding on a frozen CLIP: train a box + region-word head on "
                                "its patch grid (RefCOCO or Flickr30k Entities layout)",
        description="Both CLIP towers (--clip, else the preset's) stay frozen; a head on the image tower's patch "
                    "grid learns, FCOS-style, a box (distances to its edges) and a centerness per location, and "
                    "region-word logits = projected location features . projected, L2-normalised text-token "
                    "features / a learned temperature + a per-token bias, trained with GLIP's token-level sigmoid "
                    "focal loss (alpha 0.25, gamma 2) against the positive box->token map, GIoU and centerness "
                    "losses. --data: a RefCOCO folder (instances.json + refs(<split_by>).p|json) or a Flickr30k "
                    "Entities folder (Sentences/, Annotations/, train.txt); its train split is read. The run's "
                    "head/ is what `un2clip eval grounding --head RUN` scores. Images are squashed to the input "
                    "square (no crop, no flip: 'left of' phrases keep their meaning).")
    _add_train_flags(p)
    for action in p._actions:
        if action.dest in GROUNDING_FLAG_HELP:
            action.help = GROUNDING_FLAG_HELP[action.dest]
    g = p.add_argument_group("grounding options")
    g.add_argument("--image-folder", metavar="DIR",
                   help="folder of the annotations' image files (default: DIR/images for RefCOCO, "
                        "DIR/flickr30k-images for Flickr30k Entities)")
    g.add_argument("--hidden-dim", type=positive_int, help="width of the head's two 3x3 convolutions (default 128)")
    g.add_argument("--proj-dim", type=positive_int, help="width of the region-word dot product (default 64)")
    g.add_argument("--input-size", type=positive_int,
                   help="side of the square the image is resized to, a multiple of the patch size (default: the "
                        "encoder's input size)")
    g.add_argument("--model", metavar="SPEC", help="the frozen CLIP: preset, folder, Hub id or run directory (the "
                                                   "same as --clip; default the preset's)")

    def run(args: argparse.Namespace) -> int:
        _model_as_clip(args)
        opts = {"hidden_dim": args.hidden_dim, "proj_dim": args.proj_dim, "input_size": args.input_size}
        return _run_training(args, "grounding", opts, None if args.resume else dict(GROUNDING_DEFAULTS))

    p.set_defaults(func=run)


def _model_as_clip(args: argparse.Namespace) -> None:
    """Commands that train a head on a frozen encoder also take it as --model (as `eval` names it): one of the
    two, or both naming the same."""
    if args.model:
        if args.clip and args.clip != args.model:
            raise ValueError(f"--model {args.model} and --clip {args.clip} name two encoders: give one")
        args.clip = args.model


AUDIO_DEFAULTS = {"lr": 1e-3, "output": "runs/audio"}  # a head trained from scratch: a larger rate than a fine-tune


def _add_train_audio(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-audio", help="AudioCLIP (partial training): an audio head learns a frozen CLIP's joint space",
        description="AudioCLIP's partial-training mode: a log-mel front end and a small ResNeXt-style CNN map "
                    "sound clips into the frozen CLIP's joint space, by a symmetric cross-entropy against the "
                    "clips' text embeddings (class names, or a caption column) and, where the meta file has an "
                    "image column (the shapes world's sounds), their images' embeddings; one learnable scale per "
                    "pair, initialised to 100 and clamped to [1, 100]. --data: an ESC-50 folder (audio/*.wav, "
                    "meta/esc50.csv) or an UrbanSound8K folder (audio/foldN/*.wav, metadata/UrbanSound8K.csv). "
                    "The run's audio/ is the head; `un2clip eval audio-zeroshot --model RUN` scores it.")
    _add_train_flags(p)
    for action in p._actions:  # the shared flags whose defaults this command sets otherwise
        if action.dest == "lr":
            action.help = f"learning rate (default {AUDIO_DEFAULTS['lr']:g}: the head trains from scratch)"
        elif action.dest == "output":
            action.help = ("run directory (metrics.jsonl, config.yaml, checkpoints/, the head in audio/; default "
                           f"{AUDIO_DEFAULTS['output']})")
        elif action.dest == "data":
            action.help = ("an ESC-50 folder (audio/*.wav, meta/esc50.csv) or an UrbanSound8K folder "
                           "(audio/foldN/*.wav, metadata/UrbanSound8K.csv); optional meta columns caption and image")
    g = p.add_argument_group("audio options")
    g.add_argument("--model", metavar="SPEC",
                   help="the frozen CLIP (preset, folder, Hub id or run directory; the same as --clip; default: "
                        "the preset's)")
    g.add_argument("--clip-seconds", type=float, help="clips are cropped (randomly) or zero-padded to this length "
                                                      "(default 5, ESC-50's)")
    g.add_argument("--sample-rate", type=positive_int, help="clips are resampled to this rate (default 16000)")
    g.add_argument("--n-mels", type=positive_int, help="mel bands of the front end (default 64)")
    g.add_argument("--widths", type=positive_int_list, metavar="W,W,...",
                   help="channels of the CNN's stages (default 64,128,256)")
    g.add_argument("--blocks", type=positive_int_list, metavar="N,N,...",
                   help="ResNeXt blocks per stage (default 1,1,1)")
    g.add_argument("--cardinality", type=positive_int, help="groups of each block's 3x3 convolution (default 8)")
    g.add_argument("--no-images", dest="use_images", action="store_false", default=None,
                   help="leave the audio-image pairs out of the loss (default: used where the data has images)")
    g.add_argument("--no-texts", dest="use_texts", action="store_false", default=None,
                   help="leave the audio-text pairs out of the loss (default: used)")

    def run(args: argparse.Namespace) -> int:
        _model_as_clip(args)
        if args.clip_seconds is not None and args.clip_seconds <= 0:
            raise ValueError(f"--clip-seconds must be > 0, got {args.clip_seconds}")
        opts = {k: getattr(args, k) for k in ("clip_seconds", "sample_rate", "n_mels", "widths", "blocks",
                                               "cardinality", "use_images", "use_texts")}
        return _run_training(args, "audio", opts, defaults=AUDIO_DEFAULTS)

    p.set_defaults(func=run)


def _block_list(text: str) -> list[int]:
    try:
        blocks = [int(b) for b in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 4 block indices such as 5,11,17,23, got {text!r}") from None
    if len(blocks) != 4 or min(blocks) < 0:
        raise argparse.ArgumentTypeError(f"expected 4 non-negative block indices such as 5,11,17,23, got {text!r}")
    return blocks


def _add_train_dense(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-dense", help="train a dense head (LSeg) on a frozen CLIP image tower, per pixel against the frozen "
                            "text embeddings of the label names",
        description="LSeg (Li et al. 2022): four blocks of the image tower, a DPT reassemble-and-fuse decoder, a 1x1 "
                    "projection to the joint space; per-pixel logits = 1/0.07 x cosine with the text embeddings of "
                    "the dataset's label names; per-pixel cross entropy. The tower stays frozen, so the head "
                    "measures the encoder; `un2clip eval seg --method lseg --head RUN` scores it, also on label "
                    "names it never saw. LSeg's own recipe is SGD, lr 0.004 with the head at 10x, poly decay; a "
                    "head trained from scratch wants a higher rate than the shared default (e.g. --lr 1e-3) and its "
                    "own --output.")
    _add_train_flags(p)
    g = p.add_argument_group("dense-head options")
    g.add_argument("--head", choices=["lseg"], default="lseg", help="which head (default lseg)")
    g.add_argument("--model", metavar="SPEC", help="the frozen encoder: preset, folder, Hub id or run directory "
                                                   "(the same as --clip; default the preset's)")
    g.add_argument("--seg-layout", metavar="LAYOUT",
                   help="layout of --data: generic (images/, masks/, classes.txt; default) or a named "
                        "mmsegmentation layout (voc21, context59, ade20k, ...), as `un2clip eval seg` reads")
    g.add_argument("--seg-split", metavar="SPLIT",
                   help="split of a named layout (default train; ADE20K's is training)")
    g.add_argument("--features", type=positive_int, help="the decoder's fusion width (default 256, LSeg's)")
    g.add_argument("--blocks", type=_block_list, metavar="I,J,K,L",
                   help="the 4 blocks (0-based) the head reads (default: the last of each quarter of the tower, "
                        "5,11,17,23 on 24 blocks as LSeg)")
    g.add_argument("--no-flip", dest="flip", action="store_false", default=None,
                   help="no random horizontal flips (default: flip half the crops)")

    def run(args: argparse.Namespace) -> int:
        _model_as_clip(args)
        return _run_training(args, args.head, {"features": args.features, "blocks": args.blocks, "flip": args.flip})

    p.set_defaults(func=run)


# sub-commands of this group, in the order `un2clip --help` lists them
COMMANDS = [_add_pretrain, _add_train_autoencoder, _add_train_decoder, _add_finetune, _add_cache_latents, _add_diva,
            _add_genhancer, _add_train_grounding, _add_train_audio,
            _add_train_dense]
