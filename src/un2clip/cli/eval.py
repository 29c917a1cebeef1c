"""`un2clip` evaluation commands: eval TASK, seg, reconstruct, report."""

from __future__ import annotations

import argparse

from un2clip.cli.types import OVERWRITE_HELP, finite_float, nonneg_int, positive_int

_EVAL_HELP = {
    "mmvp": "MMVP-VLM: CLIP-blind image pairs (DIR/Questions.csv, DIR/MLLM_VLM Images/<Type>/<qid>.jpg)",
    "zeroshot": "zero-shot classification, CLIP_benchmark protocol (ImageFolder or CLIP_benchmark webdataset)",
    "retrieval": "image-text retrieval recall@1/5/10 both ways (CSV/TSV or JSONL of image + caption)",
    "diffloss": "the un²CLIP diffusion loss on held-out images, identical draws for every encoder",
    "detect": "open-vocabulary detection, ViLD's image branch on given boxes: 1x + 1.5x crops, prompt-ensembled "
              "classes, COCO box AP/AP50 by pycocotools (pip install 'un2clip[detect]'); base/novel AP with a "
              "split. Layout: DIR/annotations.json (COCO format) + DIR/images/, or --data FILE.json --images DIR. "
              "A ground-truth box with nothing inside its image is an error naming the file and annotation; "
              "such a proposal is skipped and counted (n_skipped_boxes); an unreadable image is skipped and "
              "counted (n_skipped_images)",
    "depth": "zero-shot monocular depth, DepthCLIP: patch features vs 'This object is {giant ... unseen}', softmax "
             "over the seven words weights DepthCLIP's bin depths (1-3 m), upsampled; delta1/2/3, abs_rel, rmse, "
             "log10 per image, averaged. Layout: DIR/images/<name>.jpg|png + DIR/depths/<name>.png (16-bit), or "
             "BTS's NYUv2 export (rgb_<n>.jpg + sync_depth_<n>.png). An image without its depth map, or a depth "
             "map of another size than its image, is an error naming the files; an unreadable image is skipped "
             "and counted (n_skipped_images)",
    "pointcloud": "zero-shot point-cloud classification, PointCLIP: six sparse depth views (densified), each "
                  "encoded, view logits summed with view weights, prompt 'point cloud depth map of a [CLASS].'; "
                  "acc1/acc5. Layout (ModelNet40): DIR/<class>/[<split>/]<file>.off|.txt|.npy. An empty or "
                  "unreadable point file is skipped and counted (n_skipped_files)",
    "video-retrieval": "text-video retrieval, CLIP4Clip's parameter-free variant (meanP): --frames frames picked "
                       "uniformly (default 12, CLIP4Clip's MSR-VTT setting), each CLIP-encoded and L2-normalised, "
                       "averaged, normalised again; recall@1/5/10, median and mean rank, text->video and "
                       "video->text; several captions per video allowed. Layout (MSR-VTT style): DIR/captions.csv "
                       "+ DIR/videos/, or --data FILE.csv --videos DIR; an id names a frame folder (one folder of "
                       "images per video, natural order) or a video file (PyAV: pip install 'un2clip[video]'). "
                       "--batch-size counts videos. A video that does not decode, or an empty frame folder, is an "
                       "error naming the file (default) or, with --skip-bad, skipped and counted "
                       "(n_skipped_videos) with its captions; a caption naming a missing video is an error",
    "video-zeroshot": "zero-shot action recognition, ActionCLIP-style: the middle frames of --frames equal segments "
                      "(default 8), averaged (ActionCLIP's meanP) and normalised, against classes embedded from "
                      "ActionCLIP's 16 prompts ('a photo of action {}', ...) ensembled as zero-shot image "
                      "classification does; acc1/acc5. Layout (Kinetics / UCF101 style): DIR/[<split>/]<class>/"
                      "<video file or frame folder>, optional DIR/classnames.txt and DIR/templates.txt. "
                      "--batch-size counts videos. A video that does not decode, or an empty frame folder, is an "
                      "error naming the file (default) or, with --skip-bad, skipped and counted (n_skipped_videos)",
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
        g.add_argument("--knowledge", metavar="FILE",
                       help="K-LITE: class<TAB>definition lines (`un2clip knowledge` builds one from WordNet); "
                            "each template is also filled with 'class, definition.' and ensembled with the plain ones")
    if task == "retrieval":
        g.add_argument("--image-column", help="table column holding image paths")
        g.add_argument("--caption-column", help="table column holding captions")
    if task in _DOWNSTREAM_FLAGS:
        _DOWNSTREAM_FLAGS[task](g)
    if task == "diffloss":
        g.add_argument("--decoder", help="unCLIP decoder: preset, folder, Hub id or run directory "
                                         "(default: the model's own when it is a preset or a fine-tune run)")
        g.add_argument("--seed", type=int, help="seed of the per-image draws (default 0)")
        g.add_argument("--draws-per-image", type=positive_int, help="timestep/noise draws per image (default 1)")
        g.add_argument("--num-buckets", type=positive_int, help="timestep buckets reported (default 10)")
        g.add_argument("--noise-level", type=nonneg_int, help="noise augmentation level of the embedding (default 0)")
        g.add_argument("--limit", type=positive_int, help="use the first N images only, N >= 1 (default: all)")
        g.add_argument("--condition", choices=["own", "shuffled"],
                       help="own: each image conditioned on its own embedding (default); shuffled: on another "
                            "image's (a fixed derangement), same draws: how much the decoder uses its condition; "
                            "its result is the task diffloss-shuffled")


def _detect_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--images", metavar="DIR", help="image folder of the annotations' file_name entries "
                                                   "(default: DIR/images, or images/ beside --data FILE.json)")
    g.add_argument("--proposals", metavar="FILE",
                   help="boxes to classify instead of the ground truth: a JSON list of {image_id, bbox [x, y, w, h]} "
                        "(COCO result format; scores ignored); a box with nothing inside its image is skipped and "
                        "counted")
    g.add_argument("--novel", metavar="FILE", help="novel class names, one a line (default: categories marked "
                                                   "\"split\": \"novel\" in the annotations; none: no split)")
    g.add_argument("--templates", metavar="FILE", help="prompt templates, {} or {c} for the class name "
                                                       "(default: DIR/templates.txt, else CLIP's 80 ImageNet ones)")
    g.add_argument("--background", action="store_true",
                   help="add a 'background' class to the softmax (its probability is dropped), as ViLD does")
    g.add_argument("--classes-per-box", type=int, help="detections per box: its N most probable classes (default 3)")
    g.add_argument("--nms-iou", type=float, help="per-class NMS IoU for proposals (default 0.5)")


def _depth_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--depth-scale", type=float,
                   help="PNG value per metre (default: DIR/depth_scale.txt, else 1000 as NYUv2 exports write)")
    g.add_argument("--min-depth", type=float, help="score pixels deeper than this, clamp predictions (default 1e-3)")
    g.add_argument("--max-depth", type=float, help="score pixels nearer than this, clamp predictions (default 10)")
    g.add_argument("--eigen-crop", action="store_true", help="score NYUv2's Eigen crop only (480 x 640 frames)")
    g.add_argument("--short-side", type=int,
                   help="resize each image's short side to this before the encoder (default: the model's input "
                        "size; positions interpolated for other sizes)")


def _pointcloud_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--split", help="subfolder of each class folder to read when it has one (default test)")
    g.add_argument("--n-points", type=int, help="points per cloud, a seeded subset (default 1024)")
    g.add_argument("--densify-size", type=int,
                   help="fill empty depth pixels from this neighbourhood (default 3; 1: PointCLIP's sparse maps)")
    g.add_argument("--view-weights", type=float, nargs=6, metavar="W",
                   help="weights of the front, right, back, left, top, bottom views (default all 1)")
    g.add_argument("--template", help="prompt, {} for the class (default 'point cloud depth map of a {}.')")


def _video_flags(g: argparse._ArgumentGroup, *, frames: int, sampling: str) -> None:
    g.add_argument("--frames", type=int, help=f"frames encoded per video (default {frames}; every frame of a shorter "
                                              "video with uniform sampling)")
    g.add_argument("--sampling", choices=["uniform", "segments"],
                   help=f"which frames: uniform = evenly spaced from first to last (CLIP4Clip), segments = the middle "
                        f"frame of equal segments (ActionCLIP's test sampling); default {sampling}")
    g.add_argument("--skip-bad", action="store_true",
                   help="skip a video that does not decode (or an empty frame folder) and count it "
                        "(n_skipped_videos); default: such a video is an error naming the file")


def _video_retrieval_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--videos", metavar="DIR", help="folder of the videos or frame folders the table names (default: "
                                                   "DIR/videos, or videos/ beside --data FILE.csv, else its folder)")
    g.add_argument("--video-column", help="table column holding video ids (default: video_id, video, vid, id, ...)")
    g.add_argument("--caption-column", help="table column holding captions (default: sentence, caption, text, title)")
    _video_flags(g, frames=12, sampling="uniform")


def _video_zeroshot_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--split", help="read the class folders of DIR/SPLIT (e.g. val for Kinetics; default: DIR)")
    g.add_argument("--classnames", metavar="FILE", help="one class name a line, sorted folder order (default: "
                                                        "DIR/classnames.txt, else folder names, _ read as a space)")
    g.add_argument("--templates", metavar="FILE", help="one template a line, {} or {c} for the action (default: "
                                                       "DIR/templates.txt, else ActionCLIP's 16)")
    _video_flags(g, frames=8, sampling="segments")


_DOWNSTREAM_FLAGS = {"detect": _detect_flags, "depth": _depth_flags, "pointcloud": _pointcloud_flags,
                     "video-retrieval": _video_retrieval_flags, "video-zeroshot": _video_zeroshot_flags}


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="evaluate encoders: mmvp | zeroshot | retrieval | diffloss | detect | depth | pointcloud | "
                     "video-retrieval | video-zeroshot | seg | mmvp-mllm | cvbench",
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
        if task == "mmvp":
            tp.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="fp32",
                            help="autocast precision (default fp32 on every device, as the official MMVP-VLM script "
                                 "runs: one pair is 0.74 points and bf16 autocast flipped up to 9 of 135 predictions "
                                 "of a tiny CLIP; auto: bf16 on CUDA)")
        else:
            tp.add_argument("--precision", choices=["auto", "fp32", "bf16"],
                            help="autocast precision (default auto: bf16 on CUDA, fp32 on CPU)")
        tp.add_argument("--batch-size", type=positive_int, help="images per batch")
        tp.add_argument("--num-workers", type=nonneg_int, help="image-reading processes (default 0)")
        tp.add_argument("--no-progress", action="store_true", help="no progress bars")
        _eval_task_flags(task, tp)
        tp.set_defaults(func=_run_eval)
    from un2clip.cli.llava import add_eval_tasks

    add_eval_tasks(tasks, data_name=_data_name, model_name=_model_name)  # LLaVA evaluations: mmvp-mllm, cvbench
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
    from un2clip.eval.core.embed import pick_device
    from un2clip.eval.core.results import format_value, result_path, write_result
    from un2clip.eval.decoder.diffloss import default_decoder_spec
    from un2clip.eval.encoder.mmvp import average_definition, published_anchor
    from un2clip.load import load_clip, load_decoder

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
        if task.name == "mmvp":
            extra["average_definition"] = average_definition(metrics)
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
    p.add_argument("--max-images", type=positive_int, help="evaluate the first N images only, N >= 1")
    p.add_argument("--resize-masks", action="store_true",
                   help="resize a mask whose size differs from its image's to the image's, nearest neighbour "
                        "(default: such a pair is an error naming both files). Mask labels outside the class list "
                        "are always ignored like 255 and counted (n_out_of_range in the results), with a warning")
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
    g.add_argument("--batch-size", type=positive_int, default=16, help="windows per forward pass (default 16)")
    g.add_argument("--num-workers", type=nonneg_int, default=2, help="image-reading processes (default 2)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


def _run_seg(args: argparse.Namespace) -> int:
    from pathlib import Path

    from un2clip.eval.seg.presets import OPTION_NAMES
    from un2clip.eval.seg.report import DataSpec, benchmark_specs, format_table, run_seg

    if args.benchmarks_root:
        data = benchmark_specs(args.benchmarks_root, args.datasets)
    else:
        if args.datasets:
            raise ValueError("--datasets goes with --benchmarks-root; with --data give --dataset")
        data = [DataSpec(args.dataset, Path(args.data))]
    templates = None
    if args.templates:
        from un2clip.eval.seg.infer import read_templates

        templates = read_templates(args.templates)
    settings = {k: getattr(args, k) for k in OPTION_NAMES}  # every SegSettings field has its flag
    records = run_seg(args.model, args.method, data, output=args.output, model_names=args.model_name,
                      classes=args.classes, templates=templates, split=args.split, max_images=args.max_images,
                      random_weights=args.random_weights, device=args.device, batch_size=args.batch_size,
                      num_workers=args.num_workers, precision=args.precision, progress=not args.no_progress,
                      settings=settings, resize_masks=args.resize_masks)
    print(format_table(records))
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
    p.add_argument("--num-images", type=positive_int, default=8, help="rows: the first N readable images (default 8)")
    p.add_argument("--steps", type=positive_int, default=50, help="DDIM steps (default 50)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed, the same for every model (default 0)")
    p.add_argument("--guidance-scale", type=finite_float, default=1.0, help="classifier-free guidance (default 1: none)")
    p.add_argument("--noise-level", type=nonneg_int, default=0, help="embedding noise augmentation level (default 0)")
    p.add_argument("--cell-size", type=positive_int, help="pixels per grid cell (default: the decoder's resolution)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="images decoded at once (default 8)")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.add_argument("--random-weights", action="store_true", help="presets' architectures, random weights")
    p.add_argument("--device", help="cpu, cuda ... (default: cuda if available)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto", help="autocast precision")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")

    def run(args: argparse.Namespace) -> int:
        from pathlib import Path

        from un2clip.eval.core.embed import pick_device
        from un2clip.eval.decoder.diffloss import default_decoder_spec
        from un2clip.eval.decoder.reconstruct import first_images, reconstruction_grid
        from un2clip.files import check_output
        from un2clip.load import load_clip, load_decoder

        labels = args.labels or [_model_name(m) for m in args.models]
        if len(labels) != len(args.models):
            raise ValueError(f"{len(args.models)} models but {len(labels)} --labels")
        out = Path(args.output)
        if out.is_dir() or not out.suffix:
            out = out / "reconstructions.png"
        check_output(out, inputs=[args.images, *args.models], overwrite=args.overwrite)
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


# sub-commands of this group, in the order `un2clip --help` lists them
COMMANDS = [_add_eval, _add_seg, _add_reconstruct, _add_report]
