"""Every evaluation, registered: its name, the one description its command shows, its own flags, what it loads.

This module is the one source of an evaluation: `un2clip eval NAME` is generated from these registrations
(:mod:`un2clip.cli.eval` iterates ``TASKS``), and ``un2clip.eval.evaluate("NAME", ...)`` runs the same
function. It imports no task module: the functions are named ``"module:function"`` and imported on first use,
so ``un2clip --help`` stays fast and torch-free. A flags hook adds the task's own flags to its command's
argument group; each flag's dest is a keyword of that task's ``evaluate``, and the command passes exactly
those (a test holds every dest against the signature).
"""

from __future__ import annotations

import argparse
from typing import Any

from un2clip.argtypes import (
    fraction,
    int_at_least,
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_int,
)
from un2clip.eval.registry import EvalTask, register_task

# -- flags of each task (the shared ones of its model kind, --model, --batch-size ..., come from the command) --


def _mmvp_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--prompt-prefix", help="put before each statement (default 'a photo of ')")
    g.add_argument("--readout", choices=["pooled", "diva"],
                   help="image embedding: pooled (the official script's, default) or diva (DIVA's own MMVP readout: "
                        "class token + mean of 76 patch tokens drawn with replacement); diva's result is the task "
                        "mmvp-diva")
    g.add_argument("--readout-seed", type=int, help="seed of the diva readout's patch draws (default 0)")
    g.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="fp32",
                   help="autocast precision (default fp32 on every device, as the official MMVP-VLM script "
                        "runs: one pair is 0.74 points and bf16 autocast flipped up to 9 of 135 predictions "
                        "of a tiny CLIP; auto: bf16 on CUDA)")


def _webdataset_split_flag(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--split", help="webdataset split folder (default test)")


def _zeroshot_flags(g: argparse._ArgumentGroup) -> None:
    _webdataset_split_flag(g)
    g.add_argument("--classnames", metavar="FILE", help="one class name a line (overrides the dataset's)")
    g.add_argument("--templates", metavar="FILE",
                   help="one template a line, {c} or {} for the class name (default: the dataset's, "
                        "else CLIP's 80 ImageNet templates)")
    g.add_argument("--knowledge", metavar="FILE",
                   help="K-LITE: class<TAB>definition lines (`un2clip knowledge` builds one from WordNet); "
                        "each template is also filled with 'class, definition.' and ensembled with the plain ones")


def _retrieval_flags(g: argparse._ArgumentGroup) -> None:
    _webdataset_split_flag(g)
    g.add_argument("--image-column", help="table column holding image paths")
    g.add_argument("--caption-column", help="table column holding captions")


def _diffloss_flags(g: argparse._ArgumentGroup) -> None:
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


def _mmvp_label(options: dict[str, Any]) -> str:
    """MMVP under another image readout is another measurement: its own result file and report column."""
    readout = options.get("readout") or "pooled"
    return "mmvp" if readout == "pooled" else f"mmvp-{readout}"


def _diffloss_label(options: dict[str, Any]) -> str:
    """A loss under another condition is another measurement: its own result file and report column."""
    condition = options.get("condition") or "own"
    return "diffloss" if condition == "own" else f"diffloss-{condition}"


def _cvbench_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--limit", type=positive_int, help="the first N questions only, N >= 1 (default: all)")


def _densify_size(text: str) -> int:
    value = nonneg_int(text)
    if value > 1 and (value % 2 == 0 or value > 257):
        raise argparse.ArgumentTypeError(f"must be 0 or 1 (off) or an odd size up to 257, got {value}")
    return value


class _ViewWeights(argparse.Action):
    """Six finite, non-negative view weights, not all 0 (all 0 would score every cloud 0 for every class)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        if not any(values):
            parser.error(f"{option_string}: the weights are all 0, so every class would score 0 (chance); give at "
                         "least one positive weight")
        setattr(namespace, self.dest, values)


def _detect_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--images", metavar="DIR", help="image folder of the annotations' file_name entries "
                                                   "(default: DIR/images, or images/ beside --data FILE.json)")
    g.add_argument("--proposals", metavar="FILE",
                   help="boxes to classify instead of the ground truth: a JSON list of {image_id, bbox [x, y, w, h]} "
                        "(COCO result format; scores ignored); a box with nothing inside its image, or with zero or "
                        "negative width or height, is skipped, counted and named; a non-finite coordinate is an error")
    g.add_argument("--novel", metavar="FILE",
                   help="the novel classes: a file of names, one a line, or a COCO JSON whose categories are marked "
                        "\"split\": \"seen\"/\"unseen\" (OVR-CNN's 48/17 files) or \"base\"/\"novel\" (default: "
                        "the annotations' own marks; none: no split). A split file with no category marked is an error")
    g.add_argument("--templates", metavar="FILE",
                   help="prompt templates: vild (ViLD's 63, 'This is a photo of a {}.' ...; the default unless "
                        "DIR/templates.txt exists), imagenet (CLIP's 80), or a file, one a line with {} or {c}")
    g.add_argument("--background", action="store_true",
                   help="add the embedding of the word 'background' (same templates) to the softmax as one more "
                        "class, its probability dropped. ViLD learns its background embedding while training; this "
                        "word embedding is a training-free stand-in (default: off)")
    g.add_argument("--classes-per-box", type=int_at_least(1),
                   help="detections per box: its N most probable classes, N >= 1 (default 3)")
    g.add_argument("--nms-iou", type=fraction, help="per-class NMS IoU for proposals, in [0, 1] (default 0.5)")
    g.add_argument("--region", choices=["vild", "unit-mean"],
                   help="a box's embedding from its 1x and 1.5x crops: vild = the raw embeddings summed, then "
                        "normalised (ViLD; default); unit-mean = the mean of the unit embeddings (ours before)")
    g.add_argument("--crop-resize", choices=["clip", "squash"],
                   help="each crop to the model input: clip = short side to the input size, centre crop, as CLIP "
                        "preprocesses (ViLD; default); squash = stretched to a square (ours before)")


def _grounding_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--head", required=True, metavar="RUN",
                   help="the grounding head: a `un2clip train-grounding` run (or its head/ folder) trained on this "
                        "--model")
    g.add_argument("--split", help="split to score: a RefCOCO refs split (val, testA, testB, test) or a Flickr30k "
                                   "Entities DIR/<split>.txt (default val)")
    g.add_argument("--images", metavar="DIR", help="folder of the image files (default: DIR/images for RefCOCO, "
                                                   "DIR/flickr30k-images for Flickr30k Entities)")
    g.add_argument("--split-by", metavar="NAME",
                   help="RefCOCO's refs(NAME).p to read when the folder holds several (umd, google, unc; default: "
                        "the only one)")
    g.add_argument("--merge-boxes", action="store_true",
                   help="score each phrase against the union of its boxes (Flickr30k's merged protocol; default: "
                        "any of its boxes, GLIP's and MDETR's default)")
    g.add_argument("--nms-iou", type=fraction, help="NMS IoU among a phrase's boxes, in [0, 1] (default 0.6, GLIP's)")
    g.add_argument("--limit", type=positive_int, help="score the first N captions only (default: all)")


def _sketch_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--judge", metavar="SPEC",
                   help="the fixed model that classifies the sketches: preset, folder, Hub id or run directory "
                        "(default: each --model judges its own sketches; give one judge to compare encoders)")
    g.add_argument("--strokes", type=int_at_least(1), nargs="+", metavar="N",
                   help="stroke counts, one acc1@N each (default 4 8 16)")
    g.add_argument("--steps", type=int_at_least(1), help="Adam steps per sketch (default 500, CLIPasso's)")
    g.add_argument("--limit", type=int_at_least(1), help="images per class (default 10)")
    g.add_argument("--seed", type=int, help="seed of image i's sketch is SEED + i (default 0)")
    g.add_argument("--canvas", type=int_at_least(8), help="canvas side in pixels (default 224, CLIPasso's)")
    g.add_argument("--templates", metavar="FILE",
                   help="one template a line, {c} or {} for the class name (default: the dataset's "
                        "templates.txt, else CLIP's 80 ImageNet templates)")


def _audio_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--templates", metavar="FILE",
                   help="one template a line, {c} or {} for the class name (default: DIR/templates.txt, else '{}', "
                        "the class name alone, as AudioCLIP prompts)")


def _depth_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--depth-scale", type=positive_float,
                   help="PNG value per metre (default: DIR/depth_scale.txt, else 1000 as NYUv2 exports write)")
    g.add_argument("--min-depth", type=positive_float,
                   help="score pixels deeper than this, clamp predictions (default 1e-3)")
    g.add_argument("--max-depth", type=positive_float,
                   help="score pixels nearer than this, clamp predictions (default 10)")
    g.add_argument("--eigen-crop", nargs="?", const="on", choices=["auto", "on", "off"],
                   help="score NYUv2's Eigen crop (rows 45-470, columns 46-600 as DepthCLIP scores): auto = on for "
                        "640x480 maps, off for other sizes (default); on (the flag alone) = a map of another size "
                        "is an error naming the file; off = every valid pixel")
    g.add_argument("--input", choices=["depthclip", "resize"],
                   help="what the encoder sees: depthclip = DepthCLIP's 416x544 crop of a 640x480 frame (rows "
                        "56-471, columns 60-603; other sizes whole, so large photos are better resized) at native "
                        "resolution, ImageNet mean/std, only the crop scored (default); resize = the image resized to --short-side, the model's "
                        "mean/std, the whole frame scored (ours before)")
    g.add_argument("--no-flip", dest="flip", action="store_false", default=None,
                   help="no test-time flip (default: averaged with the horizontally flipped input, as DepthCLIP)")
    g.add_argument("--no-align-corners", dest="align_corners", action="store_false", default=None,
                   help="upsample the depth grid with align_corners=False (default True, as DepthCLIP)")
    g.add_argument("--short-side", type=int_at_least(1),
                   help="with --input resize: resize each image's short side to this before the encoder (default: "
                        "the model's input size; positions interpolated for other sizes)")


def _pointcloud_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--split", help="subfolder of each class folder to read when it has one (default test)")
    g.add_argument("--n-points", type=int_at_least(1),
                   help="points per cloud, >= 1 (default 1024; a mesh is sampled with this many)")
    g.add_argument("--point-subset", choices=["first", "random"],
                   help="which points of a longer cloud: first = its first N, as PointCLIP slices ModelNet40 "
                        "(default); random = a seeded draw (ours before)")
    g.add_argument("--densify-size", type=_densify_size,
                   help="fill empty depth pixels from this odd neighbourhood (default 0: off, PointCLIP's sparse "
                        "maps; 3 was ours before)")
    g.add_argument("--view-image", choices=["raw", "intensity"],
                   help="what the encoder sees of a view: raw = the depth values, not normalised, as PointCLIP "
                        "feeds them (default); intensity = near bright, far dim, CLIP-normalised (ours)")
    g.add_argument("--no-normalize", dest="normalize", action="store_false", default=None,
                   help="take the points of files as they are too (default: clouds from .off/.txt/.npy files are "
                        "centred and scaled into the unit sphere; ModelNet40's HDF5 clouds, already in it, are taken "
                        "as they are, as PointCLIP takes them)")
    g.add_argument("--view-weights", type=nonneg_float, nargs=6, metavar="W", action=_ViewWeights,
                   help="weights of the front, right, back, left, top, bottom views, >= 0 and not all 0 (default "
                        "all 1)")
    g.add_argument("--template", help="prompt, {} for the class (default 'point cloud depth map of a {}.')")


def _video_flags(g: argparse._ArgumentGroup, *, frames: int, sampling: str) -> None:
    g.add_argument("--frames", type=int_at_least(1),
                   help=f"frames encoded per video (default {frames}; every frame of a shorter video with uniform "
                        "sampling)")
    g.add_argument("--sampling", choices=["uniform", "segments"],
                   help=f"which frames: uniform = evenly spaced from first to last (CLIP4Clip), segments = the middle "
                        f"frame of equal segments (ActionCLIP's test sampling); default {sampling}")
    g.add_argument("--skip-bad", action="store_true",
                   help="skip a video that does not decode (or an empty frame folder), count it (n_skipped_videos) "
                        "and name it on the console; default: such a video is an error naming the file")


def _video_retrieval_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--videos", metavar="DIR", help="folder of the videos or frame folders the table names (default: "
                                                   "DIR/videos, or videos/ beside --data FILE.csv, else its folder)")
    g.add_argument("--video-column", help="table column holding video ids (default: video_id, video, vid, id, ...)")
    g.add_argument("--caption-column", help="table column holding captions (default: sentence, caption, text, title)")
    g.add_argument("--extract-fps", type=int_at_least(0),
                   help="frames a second taken from a video file before the uniform pick, as CLIP4Clip extracts "
                        "them (default 1; 0: every frame, ours before); a file whose frame rate is unknown gives "
                        "every frame; a frame folder is taken as already extracted at this rate")
    g.add_argument("--caption-tokens", type=int_at_least(3),
                   help="cut each caption at this many tokens, start and end included (default 32, CLIP4Clip's "
                        "max_words; 77: CLIP's full context)")
    g.add_argument("--video-to-text", choices=["clip4clip", "captions"],
                   help="video->text with several captions per video: clip4clip = each video's best caption ranked "
                        "among the V videos' best captions (default); captions = among all T captions, as image "
                        "retrieval (keys video_to_caption_*)")
    _video_flags(g, frames=12, sampling="uniform")


def _video_zeroshot_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--split", help="read the class folders of DIR/SPLIT (e.g. val for Kinetics; default: DIR)")
    g.add_argument("--classnames", metavar="FILE", help="one class name a line, sorted folder order (default: "
                                                        "DIR/classnames.txt, else folder names, _ read as a space)")
    g.add_argument("--templates", metavar="FILE", help="one template a line, {} or {c} for the action (default: "
                                                       "DIR/templates.txt, else ActionCLIP's 16)")
    _video_flags(g, frames=8, sampling="segments")


def _seg_flags(p: argparse.ArgumentParser) -> None:
    """Flags of `un2clip eval seg` (and its alias `un2clip seg`): every flag, grouped."""
    p.add_argument("--method", nargs="+", required=True, metavar="M",
                   help="vanilla, maskclip, sclip, clearclip, naclip (several: one table); lseg (a trained LSeg head "
                        "on --model's frozen tower: --head); groupvit (--model a GroupViT: Hub id such as "
                        "nvidia/groupvit-gcc-yfcc, folder or pretrain run; segments by its grouping, on its own)")
    p.add_argument("--head", nargs="+", metavar="RUN",
                   help="with --method lseg: the `un2clip train-dense --head lseg` run(s), one per --model or one "
                        "for all (default: none; lseg needs it)")
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
    p.add_argument("--classes", metavar="FILE", help="class-name file (one class per line, synonyms comma-separated; default: the "
                        "method's repo's file for a named benchmark, see --class-names, or a generic folder's "
                        "classes.txt)")
    p.add_argument("--templates", metavar="FILE", help="prompt templates, one per line with {c} (default: 80 ImageNet)")
    p.add_argument("--split", default="val", help="split file / folder of the named layouts (default val)")
    p.add_argument("--max-images", type=positive_int, help="evaluate the first N images only, N >= 1")
    p.add_argument("--resize-masks", action="store_true",
                   help="resize a mask whose size differs from its image's to the image's, nearest neighbour "
                        "(default: such a pair is an error naming both files). Mask labels outside the class list "
                        "are always ignored like 255 and counted (n_out_of_range in the results), with a warning")
    g = p.add_argument_group("settings (default: the method's preset for the dataset, as its reference repo's "
                             "config; README: 'Fidelity to the reference code')")
    g.add_argument("--short-side", type=int,
                   help="resize the short side to this, OpenCV bilinear on uint8 as mmcv (0: keep; SCLIP and NACLIP "
                        "336, COCO-Stuff SCLIP 448, Cityscapes 560; ClearCLIP 448)")
    g.add_argument("--crop", type=int,
                   help="sliding-window side (0: the whole image, never padded; 224, ClearCLIP 448, NACLIP on voc21 "
                        "and voc20 0)")
    g.add_argument("--stride", type=int, help="sliding-window stride (112, ClearCLIP 224)")
    g.add_argument("--pad-windows", action=argparse.BooleanOptionalAction, default=None,
                   help="zero-pad each sliding window to a multiple of the patch, centred, as ClearCLIP does (default "
                        "on for clearclip; off for the others, whose patch embedding drops the leftover pixels)")
    g.add_argument("--logit-scale", type=float, help="scale of cosine similarities before the softmax (40-65)")
    g.add_argument("--prob-threshold", type=float, help="below this top probability a pixel becomes background")
    g.add_argument("--background-query", action=argparse.BooleanOptionalAction, default=None,
                   help="--no-background-query: the background class gets no text query, a pixel is background only "
                        "when its top probability among the other classes is under --prob-threshold (GroupViT and TCL "
                        "also threshold their class scores instead; for a background word the text tower never "
                        "learnt, as in the shapes world); default: a query like any class")
    g.add_argument("--area-threshold", type=float, help="SCLIP: drop classes on less than this fraction of foreground")
    g.add_argument("--gaussian-std", type=float, help="NACLIP neighbourhood std in patches (default 5)")
    g.add_argument("--pamr-steps", type=int,
                   help="refine the logits with PAMR for this many iterations (0: off; default naclip 10 as its "
                        "main results, the others 0)")
    g.add_argument("--pamr-dilations", type=int, nargs="+", metavar="D",
                   help="PAMR's neighbourhood dilations (default 8 16, as SCLIP and NACLIP)")
    g.add_argument("--class-names", choices=["sclip", "clearclip"],
                   help="whose shipped class-name files a named benchmark reads: sclip (synonym sets, also NACLIP's) "
                        "or clearclip (one name per class); default clearclip for clearclip, sclip for the others; "
                        "--classes FILE overrides both")
    g = p.add_argument_group("running")
    g.add_argument("--random-weights", action="store_true", help="a preset's architecture, random weights")
    g.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    g.add_argument("--precision", choices=["auto", "fp32", "fp16", "bf16"], default="auto",
                   help="autocast precision (default auto: fp16 on CUDA, as the reference repos run CLIP in half "
                        "precision there, and fp32 on CPU); every result records the one used")
    g.add_argument("--batch-size", type=positive_int, default=16, help="windows per forward pass (default 16)")
    g.add_argument("--num-workers", type=nonneg_int, default=2, help="image-reading processes (default 2)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


# -- the registrations, in the order `un2clip eval --help` lists them and reports show them ---------------------

register_task(EvalTask(
    "mmvp", "un2clip.eval.encoder.mmvp:evaluate", ("average",),
    "MMVP-VLM: CLIP-blind image pairs, 9 patterns; percent of pairs where both statements pick their own image "
    "(DIR/Questions.csv, DIR/MLLM_VLM Images/<Type>/<qid>.jpg)",
    flags=_mmvp_flags, check_data="un2clip.eval.encoder.mmvp:read_mmvp", item_csv="pairs_csv",
    result_extras="un2clip.eval.encoder.mmvp:result_extras", label=_mmvp_label,
))
register_task(EvalTask(
    "zeroshot", "un2clip.eval.encoder.zeroshot:evaluate", ("acc1", "acc5"),
    "zero-shot classification, CLIP_benchmark protocol: template ensemble; acc1, acc5, mean per-class recall "
    "(ImageFolder or CLIP_benchmark webdataset)",
    flags=_zeroshot_flags, check_data="un2clip.eval.encoder.zeroshot:load_classification_set",
))
register_task(EvalTask(
    "retrieval", "un2clip.eval.encoder.retrieval:evaluate", ("text_to_image_recall@1", "image_to_text_recall@1"),
    "image-text retrieval, CLIP_benchmark protocol: recall@1/5/10 both ways (CSV/TSV or JSONL of image + caption)",
    flags=_retrieval_flags, check_data="un2clip.eval.encoder.retrieval:load_retrieval_set",
))
register_task(EvalTask(
    "diffloss", "un2clip.eval.decoder.diffloss:evaluate", ("loss_mean",),
    "the un²CLIP diffusion loss on held-out images, identical draws for every encoder; lower is better",
    flags=_diffloss_flags, check_data="un2clip.eval.decoder.diffloss:open_data", needs_decoder=True,
    item_csv="samples_csv", label=_diffloss_label,
))
register_task(EvalTask(
    "mmvp-mllm", "un2clip.eval.mllm.mmvp_mllm:evaluate", ("accuracy",),
    "MMVP with a LLaVA: 300 two-option questions on CLIP-blind pairs (DIR/Questions.csv with Index, "
    "Question, Options, Correct Answer; DIR/MMVP Images/<Index>.jpg); pairs scored as the paper does",
    check_data="un2clip.eval.mllm.mmvp_mllm:read_mmvp_mllm", model_kind="llava", item_csv="samples_csv",
    result_extras="un2clip.eval.mllm.choices:result_extras",
))
register_task(EvalTask(
    "cvbench", "un2clip.eval.mllm.cvbench:evaluate", ("accuracy", "accuracy_2d", "accuracy_3d"),
    "CV-Bench with a LLaVA: 2D/3D multiple choice (DIR/test_2d.jsonl, DIR/test_3d.jsonl, images at each "
    "row's filename; or test*.parquet); per-source accuracy, 2D, 3D and their mean",
    flags=_cvbench_flags, check_data="un2clip.eval.mllm.cvbench:read_cvbench", model_kind="llava",
    item_csv="samples_csv", result_extras="un2clip.eval.mllm.choices:result_extras",
))
register_task(EvalTask(
    "detect", "un2clip.eval.downstream.detect:evaluate", ("AP", "AP50", "AP_novel"),
    "open-vocabulary detection, ViLD's image branch on given boxes: 1x + 1.5x crops resized as CLIP "
    "preprocesses, raw embeddings summed then normalised, classes ensembled over ViLD's 63 prompts, COCO box "
    "AP/AP50 by pycocotools (pip install 'un2clip[detect]'); base/novel AP with a split (OVR-CNN's seen/unseen "
    "marks read). Layout: DIR/annotations.json (COCO format) + DIR/images/, or --data FILE.json --images DIR. A "
    "ground-truth box with nothing inside its image, a non-finite coordinate or a zero/negative size, and "
    "duplicate ids, are errors naming the file and row; such a proposal is skipped, counted (n_skipped_boxes) "
    "and named; an unreadable image is skipped, counted (n_skipped_images) and named",
    flags=_detect_flags, check_data="un2clip.eval.downstream.detect:read_detection_set", extras=("detect",),
    ignores=("num_workers",),
))
register_task(EvalTask(
    "grounding", "un2clip.eval.downstream.grounding:evaluate", ("accuracy", "recall@5", "recall@10"),
    "phrase grounding, GLIP's protocol, with a head trained on the frozen --model by `un2clip train-grounding` "
    "(--head RUN): each location's box scored sqrt(mean token sigmoid x centerness sigmoid), NMS 0.6, a phrase "
    "found at k when one of its k best boxes has IoU >= 0.5 with a ground-truth box; accuracy (= recall@1) and "
    "recall@5/10 in percent of phrases, and accuracy_mean_box (one constant box, the mean ground truth: a "
    "reference that reads neither image nor words). Layouts: RefCOCO (DIR/instances.json + DIR/refs(<split_by>).p "
    "or .json) or Flickr30k Entities (DIR/Sentences/<id>.txt, DIR/Annotations/<id>.xml, DIR/<split>.txt). A "
    "malformed file is an error naming the file and row; an unreadable image is skipped, counted "
    "(n_skipped_images) and named",
    flags=_grounding_flags, check_data="un2clip.eval.downstream.grounding:read_grounding_set",
    ignores=("num_workers",), item_csv="samples_csv",
))
register_task(EvalTask(
    "depth", "un2clip.eval.downstream.depth:evaluate", ("delta1", "abs_rel", "rmse"),
    "zero-shot monocular depth, DepthCLIP: patch features vs 'This object is {giant ... unseen}', softmax over "
    "the seven words weights DepthCLIP's bin depths (1-3 m); by default as DepthCLIP evaluates NYUv2 (640x480 "
    "frames: its 416x544 crop at native resolution, ImageNet mean/std, flip averaged, align_corners=True, Eigen "
    "crop); delta1/2/3, abs_rel, sq_rel, rmse, rmse_log, log10, silog per image, averaged. Layout: "
    "DIR/images/<name>.jpg|png + DIR/depths/<name>.png (16-bit), or BTS's NYUv2 export (rgb_<n>.jpg + "
    "sync_depth_<n>.png). An image without its depth map, a depth map of another size than its image, an 8-bit "
    "depth map or a bad depth_scale.txt is an error naming the file; an unreadable image is skipped, counted "
    "(n_skipped_images) and named",
    flags=_depth_flags, check_data="un2clip.eval.downstream.depth:read_depth_set",
    ignores=("batch_size", "num_workers"),
))
register_task(EvalTask(
    "pointcloud", "un2clip.eval.downstream.pointcloud:evaluate", ("acc1",),
    "zero-shot point-cloud classification, PointCLIP: the first 1,024 points, six sparse depth views by "
    "PointCLIP's pixel rule, fed raw as PointCLIP feeds them, each encoded, view logits summed with view "
    "weights, prompt 'point cloud depth map of a [CLASS].'; acc1/acc5. Layouts: ModelNet40's HDF5 release as "
    "PointCLIP reads it (DIR/shape_names.txt, DIR/<split>_files.txt, ply_data_*.h5; pip install "
    "'un2clip[pointcloud]'), or DIR/<class>/[<split>/]<file>.off|.txt|.npy. An empty or unreadable point file is "
    "skipped, counted (n_skipped_files) and named",
    flags=_pointcloud_flags, check_data="un2clip.eval.downstream.pointcloud:read_pointcloud_set",
    ignores=("num_workers",),
))
register_task(EvalTask(
    "video-retrieval", "un2clip.eval.downstream.video:evaluate_retrieval",
    ("text_to_video_recall@1", "video_to_text_recall@1"),
    "text-video retrieval, CLIP4Clip's parameter-free variant (meanP): one frame a second, then --frames of "
    "those picked uniformly (default 12, CLIP4Clip's MSR-VTT setting), each CLIP-encoded and L2-normalised, "
    "averaged, normalised again; captions cut at 32 tokens; recall@1/5/10, median and mean rank, text->video and "
    "video->text (CLIP4Clip's: each video's best caption among the V videos'); several captions per video "
    "allowed. Layout (MSR-VTT style): DIR/captions.csv + DIR/videos/, or --data FILE.csv --videos DIR; an id "
    "names a frame folder (one folder of images per video, natural order) or a video file (PyAV: pip install "
    "'un2clip[video]'). --batch-size counts videos. A video that does not decode, or an empty frame folder, is "
    "an error naming the file (default) or, with --skip-bad, skipped and counted (n_skipped_videos) with its "
    "captions; a caption naming a missing video is an error",
    flags=_video_retrieval_flags, check_data="un2clip.eval.downstream.video:read_video_captions", extras=("video",),
))
register_task(EvalTask(
    "video-zeroshot", "un2clip.eval.downstream.video:evaluate_zeroshot", ("acc1", "acc5"),
    "zero-shot action recognition, ActionCLIP-style: the middle frames of --frames equal segments "
    "(default 8), averaged (ActionCLIP's meanP) and normalised, against classes embedded from "
    "ActionCLIP's 16 prompts ('a photo of action {}', ...) ensembled as zero-shot image "
    "classification does; acc1/acc5. Layout (Kinetics / UCF101 style): DIR/[<split>/]<class>/"
    "<video file or frame folder>, optional DIR/classnames.txt and DIR/templates.txt. "
    "--batch-size counts videos. A video that does not decode, or an empty frame folder, is an "
    "error naming the file (default) or, with --skip-bad, skipped and counted (n_skipped_videos)",
    flags=_video_zeroshot_flags, check_data="un2clip.eval.downstream.video:read_video_classes", extras=("video",),
))
register_task(EvalTask(
    "sketch", "un2clip.eval.downstream.sketch:evaluate", ("acc1@4", "acc1@8", "acc1@16"),
    "sketch recognisability, CLIPasso: each image (at most --limit per class of an ImageFolder or CLIP_benchmark "
    "webdataset) sketched under the model with 4, 8 and 16 cubic Bezier strokes (CLIPasso's loss on the image "
    "tower's middle blocks + 0.1 x semantic, saliency-initialised, Adam lr 1.0), then classified zero-shot by a "
    "fixed --judge; acc1@N per stroke count and acc1_photo, the judge on the images themselves. An unreadable "
    "image is skipped and counted (n_skipped_images)",
    flags=_sketch_flags, check_data="un2clip.eval.downstream.sketch:read_sketch_set",
    ignores=("precision", "batch_size", "num_workers"),
))
register_task(EvalTask(
    "audio-zeroshot", "un2clip.eval.downstream.audio:evaluate", ("acc1",),
    "zero-shot sound classification, AudioCLIP: a `un2clip train-audio` run's audio head against its CLIP's text "
    "embeddings of the class names; ESC-50 (DIR/audio/*.wav, DIR/meta/esc50.csv) or UrbanSound8K "
    "(DIR/audio/foldN/*.wav, DIR/metadata/UrbanSound8K.csv); top-1 accuracy per fold (foldN_acc1) and their mean "
    "(acc1)",
    flags=_audio_flags, check_data="un2clip.eval.downstream.audio:read_sound_set", model_kind="audio",
))
register_task(EvalTask(
    "seg", "un2clip.eval.seg:evaluate", ("mIoU", "aAcc", "mAcc"),
    "training-free open-vocabulary segmentation: vanilla | maskclip | sclip | clearclip | naclip. Change the last "
    "block of a frozen CLIP ViT (MaskCLIP, SCLIP, ClearCLIP, NACLIP or none), compare patch features with text "
    "embeddings of class names (80 ImageNet templates, synonyms), sliding window, mIoU as mmsegmentation computes "
    "it. Also lseg (a trained LSeg head, `train-dense`, on the frozen tower: --head) and groupvit (a GroupViT's "
    "grouping, NVlabs' inference). One JSON per model x method x dataset in --output, then one table. Settings "
    "default to each method's preset for the dataset.",
    flags=_seg_flags, runner="seg",
))
