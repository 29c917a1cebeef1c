"""`un2clip` the shapes world's commands: world generate, demo, compare."""

from __future__ import annotations

import argparse


def _add_world(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("world", help="the shapes world: a small, seeded world of coloured shapes with captions")
    wsub = p.add_subparsers(dest="world_command", metavar="ACTION")
    _add_world_evaluate(wsub)
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
    g.add_argument("--n-grounding", type=int, default=40, metavar="N",
                   help="scenes of the grounding set, grounding/ in RefCOCO's layout (two referring expressions per "
                        "object; every fifth scene val; 0: none) (default 40)")
    g.add_argument("--n-lseg", type=int, default=0,
                   help="LSeg sets: lseg/train and lseg/val (this many scenes each of the seen shapes) and lseg/unseen "
                        "(as many of the unseen arrow and cross), for `un2clip train-dense` and `eval seg --method "
                        "lseg` (default 0: none; the other outputs are the same either way)")
    g.add_argument("--noise-swap", type=float, default=0.0, metavar="F",
                   help="noisy pool: fraction of training captions replaced by another image's caption (default 0)")
    g.add_argument("--noise-boilerplate", type=float, default=0.0, metavar="F",
                   help="noisy pool: fraction of training captions replaced by boilerplate such as 'image', "
                        "'photo', 'untitled' (default 0)")
    g.add_argument("--long-tail", type=float, default=0.0, metavar="A",
                   help="noisy pool: draw training shapes and colours with Zipf weights 1/k^A (default 0: uniform)")
    g.add_argument("--n-trusted", type=int, default=0,
                   help="also write trusted/: clean captioned images for a DFN-style filter (default 0: none)")
    g.add_argument("--talk-colors", nargs="+", default=[], metavar="COLOR",
                   help="context transfer: captions name the rare attributes of objects of these colours with "
                        "--talk-rate (the others keep --rare-rate), and the MMVP pairs use only the other colours "
                        "(default: none, every colour alike)")
    g.add_argument("--talk-rate", type=float, default=0.5,
                   help="with --talk-colors: probability that a caption names each rare attribute of a "
                        "talk-coloured object (default 0.5)")
    g.add_argument("--mmvp-colors", nargs="+", default=None, metavar="COLOR",
                   help="colours the MMVP pairs' objects take (default: every colour, or the silent ones "
                        "with --talk-colors)")
    m = g.add_argument_group("LLaVA question sets (mllm/)")
    m.add_argument("--mllm", action="store_true",
                   help="also write mllm/: LLaVA training files (pretrain.json from the train captions, instruct.json "
                        "of questions on every attribute), a world MMVP-MLLM on the silent colours with a talk-colour "
                        "control, and a world CV-Bench, in the layouts `un2clip llava train` and `un2clip eval "
                        "mmvp-mllm | cvbench` read (default: off)")
    m.add_argument("--mllm-instruct", type=int, default=2000, metavar="N",
                   help="scenes of the instruction data, three questions each (default 2000)")
    m.add_argument("--mllm-single-scenes", action="store_true",
                   help="draw every instruction scene alone, as the first version did (default: scenes in pairs that "
                        "differ in one attribute, both asked the question whose answer differs first)")
    m.add_argument("--mllm-pairs-per-pattern", type=int, default=15, metavar="N",
                   help="MMVP-MLLM image pairs per pattern, in each of the two sets (default 15)")
    m.add_argument("--cvbench-per-task", type=int, default=50, metavar="N",
                   help="world CV-Bench questions per task: Count, Relation, Depth, Distance (default 50)")
    g.add_argument("--seg-color", action="store_true",
                   help="also seg-color/: the scenes of seg/ with each object labelled by its colour (background + "
                        "6 colours, each named before the shape words: 'red circle, red square, ...'), for `eval seg` "
                        "with --no-background-query (default: off; `compare --seg-heads` writes it when missing)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing world in OUTPUT")

    def run(args: argparse.Namespace) -> int:
        if args.world_command != "generate":
            p.print_help()
            return 2
        import json

        from un2clip.world import generate_world

        if args.seg_color and args.n_seg < 1:
            raise ValueError("--seg-color labels the scenes of seg/ by colour: give --n-seg N (N >= 1)")
        info = generate_world(args.output, seed=args.seed, n_train=args.n_train, n_val=args.n_val,
                              image_size=args.image_size, rare_rate=args.rare_rate,
                              pairs_per_pattern=args.pairs_per_pattern, n_seg=args.n_seg, overwrite=args.overwrite,
                              noise_swap=args.noise_swap, noise_boilerplate=args.noise_boilerplate,
                              long_tail=args.long_tail, n_trusted=args.n_trusted, talk_colors=args.talk_colors,
                              talk_rate=args.talk_rate, mmvp_colors=args.mmvp_colors, mllm=args.mllm,
                              n_mllm_instruct=args.mllm_instruct,
                              mllm_contrastive=not args.mllm_single_scenes, mllm_pairs_per_pattern=args.mllm_pairs_per_pattern,
                              n_cvbench_per_task=args.cvbench_per_task, n_grounding=args.n_grounding,
                              n_lseg=args.n_lseg)
        if args.seg_color:
            from un2clip.world.evalsets import write_seg_color

            write_seg_color(args.output, args.seed, args.n_seg, args.image_size)
        keys = ("seed", "n_train", "n_val", "image_size", "rare_rate", "noise_swap", "noise_boilerplate", "long_tail",
                "n_trusted", "talk_colors", "talk_rate", "mmvp_colors", "mllm", "n_lseg")
        print(json.dumps({k: info[k] for k in keys if k in info}))
        print(f"wrote the world to {args.output}")
        return 0

    p.set_defaults(func=run)


def _add_world_settings(p: argparse.ArgumentParser) -> None:
    """Options of `demo` and `compare` that change the world's words or where the models start."""
    p.add_argument("--weights", metavar="DIR",
                   help="start from the CLIP and decoders in DIR (laid out like assets/tiny-world/seed0: clip/, "
                        "decoder/, optionally light-decoder/ and t2i-decoder/) instead of the shipped ones; {seed} in DIR "
                        "is replaced by the world seed (e.g. runs/weights/seed{seed}: each seed its own models)")
    p.add_argument("--rare-rate", type=float, default=None,
                   help="probability that a caption names each rare attribute of a silent colour's object (default: "
                        "the demo's 0)")
    p.add_argument("--talk-colors", nargs="*", default=None, metavar="COLOR",
                   help="context transfer (see `world generate`): captions name the rare attributes of these "
                        "colours' objects with --talk-rate, and the MMVP pairs use only the other colours (default: "
                        "red yellow green; given with no colour: the plain world, e.g. with --rare-rate 0.03)")
    p.add_argument("--talk-rate", type=float, default=None, help="with --talk-colors (default 0.5)")


def _world_settings(args: argparse.Namespace, settings):
    """``settings`` (DemoSettings) with the options of :func:`_add_world_settings`."""
    from dataclasses import replace

    given = {"talk_colors": None if args.talk_colors is None else tuple(args.talk_colors),
             "talk_rate": args.talk_rate, "rare_rate": args.rare_rate}
    return replace(settings, **{k: v for k, v in given.items() if v is not None})


def _add_world_evaluate(wsub) -> None:
    e = wsub.add_parser(
        "evaluate", help="the demo's report for any models on a written world (competence of the world's models)",
        description="World-MMVP per pattern, zero-shot shape and colour, retrieval, ClearCLIP segmentation, linear "
                    "probes per attribute, text-tower separation, and through --decoder the held-out diffusion loss, "
                    "its shuffled/own ratio and the reconstruction match rate; one cached JSON per model in "
                    "OUTPUT/eval/, the table in OUTPUT/report.md.")
    e.add_argument("--model", nargs="+", required=True, metavar="NAME=SPEC",
                   help="models to evaluate: preset, folder, run directory or export, each optionally named NAME=")
    e.add_argument("--decoder", help="unCLIP decoder the diffusion metrics go through (without: no diffusion metrics)")
    e.add_argument("--world", required=True, help="a folder written by `un2clip world generate`")
    e.add_argument("--output", required=True, help="folder of the report and the cached evaluations")
    e.add_argument("--seed", type=int, default=0, help="seed of the diffusion draws and samples (default 0)")
    e.add_argument("--fresh", action="store_true", help="recompute cached evaluations")
    e.add_argument("--no-progress", action="store_true", help="no progress bars")

    def run(args: argparse.Namespace) -> int:
        from pathlib import Path

        from un2clip.world.report import evaluate_models, write_report

        models = dict(m.split("=", 1) if "=" in m else (Path(m).name or m, m) for m in args.model)
        out = Path(args.output)
        decoder = Path(args.decoder) if args.decoder else None
        results = evaluate_models(out / "eval", Path(args.world), models, decoder, seed=args.seed,
                                  fresh=args.fresh, progress=not args.no_progress)
        report = write_report(out, results, Path(args.world))
        print(report.read_text())
        print(f"report: {report}")
        return 0

    e.set_defaults(func=run)


def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare", help="un²CLIP, its ablations and alignment keepers over world seeds: one table",
        description="Per world seed: the demo's stages (world, tiny CLIP, decoder, un²CLIP), then each variant as a "
                    "cached stage (original, un2clip, projector-random, projector-identity, update-decoder, "
                    "alpha0.25/0.5/0.75 WiSE-FT exports, anchor0.1/anchor1, lora, genhancer and genhancer-unet, diva and "
                    "diva-adamw when registered), each "
                    "evaluated like the demo (world-MMVP, zero-shot, held-out diffusion loss, probes). Writes "
                    "OUT/report.md (mean ± std over seeds), OUT/results.json, OUT/mmvp_vs_zeroshot.png.")
    p.add_argument("--output", default="runs/compare", help="where every seed and the report go (default runs/compare)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="world seeds (default 0 1 2)")
    p.add_argument("--variants", nargs="+", metavar="NAME", help="only these variants (default: all; original is "
                   "always evaluated, the un2clip run always made)")
    p.add_argument("--steps", type=int, help="fine-tune steps of every trained variant (default: the demo's)")
    p.add_argument("--flow-decoder-steps", type=int, metavar="N",
                   help="steps (of 64 images) of GenHancer's stage 1, its light flow denoiser trained from scratch "
                        "(default 1000)")
    p.add_argument("--fresh", action="store_true", help="recompute every stage instead of reusing finished ones")
    p.add_argument("--from-scratch", action="store_true",
                   help="retrain the tiny CLIP and decoder instead of starting from the shipped weights")
    p.add_argument("--weights-seed", type=int, metavar="S",
                   help="start every seed from the shipped CLIP and decoders of seed S (the worlds, pairs and "
                        "fine-tune draws still follow --seeds)")
    p.add_argument("--grounding", action="store_true",
                   help="also GLIP-style grounding accuracy of original and un2clip: per seed a grounding set "
                        "(400 scenes, RefCOCO layout), a head trained 300 steps on each frozen encoder "
                        "(`un2clip train-grounding`, lr 1e-3), scored on its val split beside the constant "
                        "mean-box reference (default: off)")
    p.add_argument("--lseg", action="store_true",
                   help="also LSeg mIoU of original and un2clip: per seed the LSeg sets (200 scenes each, as `world "
                        "generate --n-lseg 200`), a dense head trained 300 steps of 16 on each frozen encoder "
                        "(`un2clip train-dense --head lseg`, lr 1e-3), scored by `eval seg --method lseg` on seen "
                        "names (lseg/val) and unseen ones (lseg/unseen), each beside its all-background reference "
                        "(default: off)")
    p.add_argument("--seg-heads", action="store_true",
                   help="also every training-free segmentation head (vanilla, maskclip, sclip, clearclip, naclip), "
                        "each without and with PAMR (10 steps, dilations 1 and 2 for the 64 px scenes), on every "
                        "variant's encoder, on the seed's whole segmentation set twice: labelled by shape (seg/, as "
                        "the report runs ClearCLIP) and by colour (seg-color/, written when missing; background by "
                        "each head's threshold alone), each beside its all-background and patch-oracle mIoU "
                        "(evaluation only; default: off)")
    p.add_argument("--llava", action="store_true",
                   help="also the MLLM claim: per seed the world's LLaVA sets (written when missing, as `world generate "
                        "--mllm --mllm-instruct 10000`), stage lm (the tiny LM on the captions, shared), then per "
                        "encoder LLaVA-1.5's stage 1 (projector, 1 pass of 32 at 1e-3) and stage 2 (projector + LM, "
                        "5000 steps of 16 at 2e-4), scored on the world MMVP-MLLM (silent colours), its talk-colour "
                        "control and the world CV-Bench (25-30 min an encoder on a 2-core machine; default: off)")
    p.add_argument("--llava-encoders", nargs="+", metavar="NAME",
                   help="the variants --llava trains a LLaVA on, each among the compared ones (implies --llava; "
                        "default: those of original, un2clip, genhancer, diva that are compared)")
    _add_world_settings(p)
    p.add_argument("--audio-sketch", action="store_true",
                   help="also measure original and un2clip by AudioCLIP (an audio head trained into each one's "
                        "space on the world's scene sounds and their images and captions, then zero-shot on 36 "
                        "colour + shape sounds: audio zs; a second head on the audio-image pairs alone, as "
                        "train-audio --no-texts: audio zs (img)) and CLIPasso (each one sketches the world's shapes "
                        "with 4, 8, 16 strokes, the original CLIP judges: sketch@8); default off")
    p.add_argument("--quick", action="store_true", help="a few steps of everything (a smoke test, no result)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")

    def run(args: argparse.Namespace) -> int:
        from dataclasses import replace
        from pathlib import Path

        from un2clip.world.compare import QUICK, CompareSettings, run_compare
        from un2clip.world.grounding import GROUNDING_QUICK, GroundingSettings

        settings = QUICK if args.quick else CompareSettings()
        if args.grounding:
            settings = replace(settings, grounding=GROUNDING_QUICK if args.quick else GroundingSettings())
        if args.lseg:
            from un2clip.world.lseg import LSEG_QUICK, LSegSettings

            settings = replace(settings, lseg=LSEG_QUICK if args.quick else LSegSettings())
        if args.seg_heads:
            from un2clip.world.segheads import SEG_HEADS_QUICK, SegHeadSettings

            settings = replace(settings, seg_heads=SEG_HEADS_QUICK if args.quick else SegHeadSettings())
        if args.llava or args.llava_encoders:
            from un2clip.world.llava import LLAVA_QUICK, LlavaSettings

            llava = LLAVA_QUICK if args.quick else LlavaSettings()
            if args.llava_encoders:
                llava = replace(llava, encoders=tuple(dict.fromkeys(args.llava_encoders)))
            settings = replace(settings, llava=llava)
        if args.audio_sketch:
            from un2clip.world import audiosketch

            settings = replace(settings, audio_sketch=audiosketch.QUICK if args.quick
                               else audiosketch.AudioSketchSettings())
        settings = replace(settings, demo=_world_settings(args, settings.demo))
        if args.flow_decoder_steps is not None:
            if args.flow_decoder_steps < 1:
                raise ValueError(f"--flow-decoder-steps must be >= 1, got {args.flow_decoder_steps}")
            settings = replace(settings, demo=replace(settings.demo, flow_decoder_steps=args.flow_decoder_steps))
        report = run_compare(Path(args.output), seeds=args.seeds, variants=args.variants,
                             settings=settings, steps=args.steps,
                             fresh=args.fresh, from_scratch=args.from_scratch, progress=not args.no_progress,
                             weights_seed=args.weights_seed, weights=args.weights)
        print(report.read_text())
        print(f"report: {report}")
        return 0

    p.set_defaults(func=run)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="the whole method in the shapes world on a CPU (what `make demo` runs)",
        description="Stages, each cached in OUTPUT/<stage>/ and skipped when done: generate the shapes world (by "
                    "default with context-transfer captions: the rare attributes of red, yellow and green objects "
                    "named half of the time, never those of the other colours, whose pairs world-MMVP asks about); the "
                    "tiny CLIP (shipped in assets/tiny-world/ or pre-trained); its unCLIP decoder (shipped or "
                    "trained); the un²CLIP fine-tune; world-MMVP, zero-shot, retrieval, segmentation, held-out "
                    "diffusion loss, probes and reconstructions before and after, in OUTPUT/report.md.")
    p.add_argument("--output", default="runs/demo", help="where every stage writes (default runs/demo)")
    p.add_argument("--seed", type=int, default=0, help="world and training seed (default 0)")
    p.add_argument("--fresh", action="store_true", help="recompute every stage instead of reusing finished ones")
    p.add_argument("--from-scratch", action="store_true",
                   help="retrain the tiny CLIP and decoder instead of starting from the shipped weights")
    p.add_argument("--weights-seed", type=int, metavar="S",
                   help="start from the shipped CLIP and decoder of seed S whatever --seed is (the world, pairs "
                        "and fine-tune draws still follow --seed)")
    _add_world_settings(p)
    p.add_argument("--quick", action="store_true", help="a few steps of each stage (a smoke test, no result)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")

    def run(args: argparse.Namespace) -> int:
        from pathlib import Path

        from un2clip.world.demo import QUICK, DemoSettings, run_demo

        settings = _world_settings(args, QUICK if args.quick else DemoSettings())
        report = run_demo(Path(args.output), seed=args.seed, fresh=args.fresh, from_scratch=args.from_scratch,
                          settings=settings, progress=not args.no_progress,
                          weights_seed=args.weights_seed, weights=args.weights)
        print(report.read_text())
        print(f"report: {report}")
        return 0

    p.set_defaults(func=run)


# sub-commands of this group, in the order `un2clip --help` lists them
COMMANDS = [_add_demo, _add_compare, _add_world]
