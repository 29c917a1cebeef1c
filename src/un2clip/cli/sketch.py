"""`un2clip sketch`: CLIPasso's abstract sketches of images under an encoder's image tower."""

from __future__ import annotations

import argparse

from un2clip.argtypes import int_at_least, nonneg_float, positive_float


def _add_sketch(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sketch", help="CLIPasso: abstract sketches of images, strokes optimised under a CLIP image tower",
        description="CLIPasso (Vinker et al. 2022) on the model's image tower: N black cubic Bezier strokes, started "
                    "where the tower's class-token attention looks (softmax temperature 0.3), moved by Adam (lr 1.0) "
                    "to lower the L2 distance between the tower's block outputs on the sketch and on the image "
                    "plus 0.1 x the cosine distance of their embeddings, over the pair and 4 random crops (0.7 to "
                    "all of the area) of both. Writes NAME.svg and NAME.png per image and grid.png (each row: "
                    "image, sketch) to --output.")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="images to sketch")
    p.add_argument("--strokes", type=int_at_least(1), default=16, metavar="N", help="strokes per sketch (default 16)")
    p.add_argument("--output", required=True, metavar="DIR", help="folder for the SVG, PNG and grid files")
    p.add_argument("--model", required=True, metavar="SPEC",
                   help="the encoder: preset, folder, Hub id, run directory or OpenAI-CLIP/open_clip checkpoint")
    p.add_argument("--steps", type=int_at_least(1), default=500, help="Adam steps (default 500, CLIPasso's)")
    p.add_argument("--layers", type=int, nargs="+", metavar="K",
                   help="0-based blocks of the image tower whose outputs the geometric loss compares (default: "
                        "the blocks ending the 2nd and 3rd quarters of its depth, 5 and 8 of 12: where CLIPasso's "
                        "RN101 weights 0,0,1,1,0 put it)")
    p.add_argument("--layer-weights", type=nonneg_float, nargs="+", metavar="W",
                   help="one weight per --layers block (default 1 each)")
    p.add_argument("--width", type=positive_float, default=1.5, help="stroke width in pixels, > 0 (default 1.5)")
    p.add_argument("--canvas", type=int_at_least(8), default=224,
                   help="canvas side in pixels; images are resized (shortest side) and centre-cropped to it "
                        "(default 224, CLIPasso's)")
    p.add_argument("--perspective", type=nonneg_float, default=0.0,
                   help="random perspective of the augmented views, corners moved up to this share of the side "
                        "/ 2 (CLIPasso uses 0.5; default 0: crops only)")
    p.add_argument("--seed", type=int, default=0, help="seed of the start points and augmentations (default 0)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")

    def run(args: argparse.Namespace) -> int:
        from un2clip.eval.core.embed import pick_device
        from un2clip.load import load_clip
        from un2clip.sketch.files import load_image, sketch_files
        from un2clip.sketch.loss import check_layers, tower_depth

        if args.perspective >= 1:
            raise ValueError(f"--perspective must be < 1, got {args.perspective}")
        for path in args.images:  # every image readable before the model loads
            load_image(path, args.canvas)
        model = load_clip(args.model).to(pick_device(args.device)).eval()
        if args.layers is not None:
            check_layers(args.layers, args.layer_weights, tower_depth(model))
        elif args.layer_weights is not None:
            raise ValueError("--layer-weights goes with --layers")
        records = sketch_files(model, args.images, args.output, n_strokes=args.strokes, canvas=args.canvas,
                               progress=not args.no_progress, steps=args.steps, layers=args.layers,
                               layer_weights=args.layer_weights, seed=args.seed, stroke_width=args.width,
                               perspective=args.perspective)
        for r in records:
            print(f"{r['image']}: loss {r['initial_loss']:.4f} -> {r['final_loss']:.4f}  {r['svg']}")
        print(f"grid: {args.output}/grid.png")
        return 0

    p.set_defaults(func=run)


COMMANDS = [_add_sketch]
