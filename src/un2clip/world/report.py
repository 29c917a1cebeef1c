"""Evaluate the demo's models on the shapes world and write the before/after report."""

from __future__ import annotations

import json
from pathlib import Path

ZEROSHOT_SETS = ("shape", "color")
# ClearCLIP on the world's 64 px segmentation scenes: the tiny CLIP sees 32 px (a 4 x 4 patch grid),
# so a 32 px window sliding by 16 px. A pixel whose top probability is under 0.7 becomes background
# (the word "background" means little to the tiny CLIP's text tower); 0.7 was picked among 0.3/0.5/0.7
# on the validation world (seed 100) with the original CLIP: mIoU 0.7 / 5.6 / 12.6.
SEG_SETTINGS = {"short_side": 64, "crop": 32, "stride": 16, "prob_threshold": 0.7}


RECON_IMAGES = 100  # held-out single-object images decoded and judged per model
# The reconstruction count is made twice: without guidance (what the embedding alone carries through the
# decoder) and with classifier-free guidance at this scale (how generators are sampled: Stable unCLIP's
# pipeline defaults to 10). 6 was the best of 1 / 3 / 6 / 10 on world 100's held-out images for both the
# 1,500-step and the 7,500-step decoder (both-right 14 / 19 / 22 / 21 % and 21 / 28 / 30 / 29 %).
RECON_GUIDANCE = 6.0


def _later_groups(world: Path, dec, *, seed: int, progress: bool, sampling_steps: int) -> dict[str, tuple]:
    """Metric groups computed when a cached evaluation lacks them: name -> (a key it writes, function of a
    model); the decoder's groups only when there is a decoder."""
    from un2clip.eval.decoder import diffloss
    from un2clip.world.judge import reconstruction_match
    from un2clip.world.text import text_separation
    from un2clip.world.words import separation_pairs

    def shuffled(model) -> dict[str, float]:  # the same draws as diffloss/loss_mean, another image's embedding
        other = diffloss.evaluate(model, world / "val" / "images", decoder=dec, seed=seed, progress=progress,
                                  condition="shuffled")
        return {"diffloss_shuffled/loss_mean": other["loss_mean"]}

    def own(model) -> dict[str, float]:  # the label-free diagnostic: held-out loss through the decoder
        d = diffloss.evaluate(model, world / "val" / "images", decoder=dec, seed=seed, progress=progress)
        return {"diffloss/loss_mean": d["loss_mean"], "diffloss/loss_sem": d["loss_sem"]}

    groups = {"text": ("text_cos/shape", lambda model: text_separation(model, separation_pairs()))}
    groups.update(downstream_groups(world, progress=progress))
    if dec is not None:  # a cache made without a decoder gains these once one is given
        groups["own"] = ("diffloss/loss_mean", own)
        groups["shuffled"] = ("diffloss_shuffled/loss_mean", shuffled)
        def recon(prefix: str, guidance: float):  # the match rate of samples drawn at one guidance scale
            return lambda model: {f"{prefix}/{k.split('/', 1)[1]}": v for k, v in reconstruction_match(
                model, dec, world / "val", n=RECON_IMAGES, seed=seed, num_inference_steps=sampling_steps,
                guidance_scale=guidance).items()}

        groups["recon"] = ("recon/both", recon("recon", 1.0))
        groups["recon_guided"] = ("recon_guided/both", recon("recon_guided", RECON_GUIDANCE))
    return groups


def downstream_groups(world: Path, *, progress: bool) -> dict[str, tuple]:
    """CLIP's downstream uses on the world's sets (written first when an older world lacks them), in %:
    name -> (a key it writes, function of a model). Detection only where pycocotools is installed."""
    from un2clip.world.downstream import ensure_downstream

    ensure_downstream(world)
    groups: dict[str, tuple] = {}

    def detect(model) -> dict[str, float]:
        from un2clip.eval.downstream import detect as det

        m = det.evaluate(model, world / "detect", progress=progress)
        return {f"detect/{k}": 100 * m[k] for k in ("AP", "AP50", "AP_base", "AP_novel", "AP50_novel")}

    def depth(model) -> dict[str, float]:
        from un2clip.eval.downstream import depth as dep

        # the world's 64 x 64 renders are no NYUv2 frames: resized and CLIP-normalised as the tiny CLIP was trained
        m = dep.evaluate(model, world / "depth", input="resize", flip=False, align_corners=False, progress=progress)
        return {"depth/delta1": 100 * m["delta1"], "depth/abs_rel": m["abs_rel"], "depth/rmse": m["rmse"],
                "depth/log10": m["log10"]}

    def pointcloud(model) -> dict[str, float]:
        from un2clip.eval.downstream import pointcloud as pc

        # densified intensity views: the rendered images the tiny CLIP knows, not PointCLIP's raw sparse depth
        m = pc.evaluate(model, world / "pointcloud", densify_size=3, view_image="intensity", progress=progress)
        return {"pointcloud/acc1": 100 * m["acc1"]}

    def video_retrieval(model) -> dict[str, float]:
        from un2clip.eval.downstream import video

        m = video.evaluate_retrieval(model, world / "video" / "retrieval", progress=progress)
        return {"video_retrieval/t2v_r1": 100 * m["text_to_video_recall@1"],
                "video_retrieval/v2t_r1": 100 * m["video_to_text_recall@1"],
                "video_retrieval/t2v_r5": 100 * m["text_to_video_recall@5"],
                "video_retrieval/t2v_median_rank": m["text_to_video_median_rank"],
                "video_retrieval/t2v_mean_rank": m["text_to_video_mean_rank"]}

    def video_zeroshot(model) -> dict[str, float]:
        from un2clip.eval.downstream import video

        m = video.evaluate_zeroshot(model, world / "video" / "actions", progress=progress)
        return {"video_zeroshot/acc1": 100 * m["acc1"], "video_zeroshot/acc5": 100 * m["acc5"],
                "video_zeroshot/mean_per_class_recall": 100 * m["mean_per_class_recall"]}

    if (world / "pointcloud").is_dir():
        groups["pointcloud"] = ("pointcloud/acc1", pointcloud)
    if (world / "video" / "clips.jsonl").is_file():
        groups["video_retrieval"] = ("video_retrieval/t2v_r1", video_retrieval)
        groups["video_zeroshot"] = ("video_zeroshot/acc1", video_zeroshot)
    if (world / "detect" / "annotations.json").is_file() and _has_pycocotools():
        groups["detect"] = ("detect/AP", detect)
    if (world / "depth" / "depth_scale.txt").is_file():
        groups["depth"] = ("depth/delta1", depth)
    return groups


def _has_pycocotools() -> bool:
    import importlib.util

    return importlib.util.find_spec("pycocotools") is not None


def _first_groups(model, world: Path, *, progress: bool, out: Path, name: str) -> dict[str, float]:
    """World-MMVP, zero-shot, retrieval, ClearCLIP segmentation of one model."""
    from un2clip.eval import seg
    from un2clip.eval.encoder import mmvp, retrieval, zeroshot

    m: dict[str, float] = {}
    scores = mmvp.evaluate(model, world / "mmvp", progress=progress, pairs_csv=out / f"{name}_mmvp_pairs.csv")
    m.update({f"mmvp/{k}": v for k, v in scores.items()})
    for task in ZEROSHOT_SETS:
        z = zeroshot.evaluate(model, world / "zeroshot" / task, progress=progress)
        m[f"zeroshot_{task}/acc1"] = 100 * z["acc1"]  # every metric of the report in %
    r = retrieval.evaluate(model, world / "val" / "captions.csv", progress=progress)
    m["retrieval/t2i_r1"] = 100 * r["text_to_image_recall@1"]
    m["retrieval/i2t_r1"] = 100 * r["image_to_text_recall@1"]
    s = seg.evaluate(model, world / "seg", method="clearclip", progress=progress, num_workers=0, **SEG_SETTINGS)
    m["seg_clearclip/mIoU"] = s["mIoU"]
    return m


def evaluate_models(out: Path, world: Path, models: dict[str, str], decoder: Path | None, *, seed: int,
                    fresh: bool, progress: bool, sampling_steps: int = 50) -> dict[str, dict[str, float]]:
    """{model name: metrics}: world-MMVP, zero-shot, held-out diffusion loss (own and shuffled condition),
    retrieval, segmentation, probes, text-tower separation, reconstruction match; cached as JSON per model.

    A cached evaluation made with an older probe protocol has its probes redone; one that lacks a later metric
    group gets that group added; the rest is reused. Without a ``decoder`` the diffusion metrics are left out."""
    from un2clip.load import load_clip, load_decoder
    from un2clip.world import probe

    out.mkdir(parents=True, exist_ok=True)
    dec = load_decoder(str(decoder)) if decoder is not None else None
    later = _later_groups(world, dec, seed=seed, progress=progress, sampling_steps=sampling_steps)
    results: dict[str, dict[str, float]] = {}

    def probes(model) -> dict[str, float]:
        return {f"probe/{k[6:]}": v for k, v in probe.world_probe(model, world, progress=progress).items()}

    for name, spec in models.items():
        cached = out / f"{name}.json"
        model, changed = None, fresh or not cached.exists()
        if not changed:
            record = json.loads(cached.read_text())
        else:
            model = load_clip(spec)
            metrics = {**_first_groups(model, world, progress=progress, out=out, name=name),
                       **probes(model)}
            record = {"model": spec, "metrics": metrics, "probe_protocol": probe.PROTOCOL}
        if record.get("probe_protocol") != probe.PROTOCOL:  # made with an older probe: redo the probes only
            print(f"{cached}: linear probes made with an older protocol, recomputing them")
            model = load_clip(spec)
            record["metrics"] = {k: v for k, v in record["metrics"].items() if not k.startswith("probe/")}
            record["metrics"].update(probes(model))
            record["probe_protocol"], changed = probe.PROTOCOL, True
        for key, compute in later.values():
            if key not in record["metrics"]:
                model = model or load_clip(spec)
                record["metrics"].update(compute(model))
                changed = True
        if changed:
            cached.write_text(json.dumps(record, indent=2))
        results[name] = record["metrics"]
    grid = out / "reconstructions.png"
    if dec is not None and (fresh or not grid.exists()):
        reconstruct_grid(grid, world, models, dec, seed=seed, steps=sampling_steps)
    return results


def reconstruct_grid(path: Path, world: Path, models: dict[str, str], decoder, *, seed: int, n: int = 8,
                     steps: int = 50) -> Path:
    """Rows: a validation image, then the decoder's image from each model's embedding (same seed)."""
    from un2clip.eval.decoder.reconstruct import first_images, reconstruction_grid
    from un2clip.load import load_clip

    images = first_images(str(world / "val" / "images"), n)
    grid = reconstruction_grid([load_clip(s) for s in models.values()], decoder, images, seed=seed,
                               labels=list(models), cell_size=64, num_inference_steps=steps, progress=False)
    grid.save(path)
    return path


SUMMARY_TITLES = {"mmvp/average": "world-MMVP avg", **{f"zeroshot_{t}/acc1": f"zero-shot {t}" for t in ZEROSHOT_SETS},
                  "retrieval/t2i_r1": "R@1 text→image", "retrieval/i2t_r1": "R@1 image→text",
                  "seg_clearclip/mIoU": "ClearCLIP mIoU", "diffloss/loss_mean": "diffusion loss",
                  "shuffled_ratio": "shuffled/own loss", "recon/both": "recon colour+shape",
                  "recon_guided/both": f"recon colour+shape, guidance {RECON_GUIDANCE:g}",
                  "recon/anywhere_both": "recon colour+shape anywhere",
                  "recon_guided/anywhere_both": f"recon colour+shape anywhere, guidance {RECON_GUIDANCE:g}",
                  "probe/mean": "probe mean"}
DOWNSTREAM_SECTIONS = (  # (title, metric prefix, note) of the downstream tables, each shown when measured
    ("Open-vocabulary detection, ViLD's image branch (world detect set: ground-truth boxes, 36 colour+shape "
     "classes, 6 novel; COCO box AP by pycocotools, %)", "detect/", ""),
    ("Zero-shot depth, DepthCLIP (world depth set: an object's depth sets its drawn size; delta1 in %, "
     "abs_rel, rmse in m, log10)", "depth/", ""),
    ("Zero-shot point clouds, PointCLIP (world pointcloud set: six primitives in random poses, six depth views; "
     "accuracy, %)", "pointcloud/", ""),
    ("Text-video retrieval, CLIP4Clip meanP (world video set: clips of 8 frames, a shape moving leftward, "
     "rightward, upward, downward or an arrow turning clockwise, counterclockwise; 2 captions a clip; recall in %, "
     "ranks)", "video_retrieval/", ""),
    ("Zero-shot action recognition, ActionCLIP prompts and meanP (world video set: the six motions as classes; "
     "accuracy, %)", "video_zeroshot/", ""),
)


def _derived(m: dict[str, float]) -> dict[str, float]:
    """Metrics with what the report derives: the shuffled/own diffusion-loss ratio (same draws)."""
    if "diffloss_shuffled/loss_mean" in m and "diffloss/loss_mean" in m:
        return {**m, "shuffled_ratio": m["diffloss_shuffled/loss_mean"] / m["diffloss/loss_mean"]}
    return m


def _cell(column: str, m: dict[str, float]) -> str:
    if column not in m:
        return "–"
    value = m[column]
    if column.startswith("diffloss"):
        return f"{value:.5f}"
    if column.startswith("text_cos") or column == "shuffled_ratio" or column in ("depth/abs_rel", "depth/rmse",
                                                                                    "depth/log10",
                                                                                    "video_retrieval/t2v_mean_rank"):
        return f"{value:.3f}"
    return f"{value:.1f}"


def _row(name: str, m: dict[str, float], columns: list[str]) -> str:
    return f"| {name} | " + " | ".join(_cell(c, m) for c in columns) + " |"


def write_report(out: Path, results: dict[str, dict[str, float]]) -> Path:
    """Markdown table of every model's metrics (models as rows) and the reconstruction grid."""
    results = {name: _derived(m) for name, m in results.items()}
    first = next(iter(results.values()))
    patterns = [k for k in first if k.startswith("mmvp/") and k not in ("mmvp/average", "mmvp/n_pairs")]
    head = (["mmvp/average"] + [f"zeroshot_{t}/acc1" for t in ZEROSHOT_SETS]
            + ["retrieval/t2i_r1", "retrieval/i2t_r1", "seg_clearclip/mIoU", "diffloss/loss_mean", "shuffled_ratio",
               "recon/both", "recon_guided/both", "recon/anywhere_both", "recon_guided/anywhere_both", "probe/mean"])
    probes = [k for k in first if k.startswith("probe/") and k != "probe/mean"]
    separation = [k for k in first if k.startswith("text_cos/")]
    lines = ["# un²CLIP in the shapes world", ""]
    tables = [("Summary", head), ("World-MMVP per pattern (pair accuracy, %)", patterns),
              ("Linear probe per attribute (accuracy, %)", probes)]
    for title, prefix, _ in DOWNSTREAM_SECTIONS:
        cols = [k for k in first if k.startswith(prefix)]
        if cols:
            tables.append((title, cols))
    if separation:
        tables.append(("Text-tower separation (mean cosine of two captions that differ in one attribute; "
                       "1 = the words are not told apart)", separation))
    for title, cols in tables:
        short = [SUMMARY_TITLES[c] if c in SUMMARY_TITLES else c.split("/", 1)[-1] for c in cols]
        lines += [f"## {title}", "", "| model | " + " | ".join(short) + " |", "|---" * (len(cols) + 1) + "|"]
        lines += [_row(name, m, cols) for name, m in results.items()] + [""]
    lines += ["Shuffled/own loss: the held-out diffusion loss with each image conditioned on another image's "
              "embedding over the loss with its own (same draws); near 1, the decoder ignores its condition. "
              f"Recon colour+shape: % of {RECON_IMAGES} held-out single-object images whose decoded sample shows "
              "their colour and shape, judged against the world's own renders of the input scene with every other "
              "attribute as in it (a right shape drawn elsewhere, larger or twice counts as wrong); *anywhere*: "
              "the colour by ink and the shape by the outline of the largest blob of that colour, matched to every "
              "shape the world draws in every size, place, state, orientation and view. Sampled without guidance "
              f"and with classifier-free guidance {RECON_GUIDANCE:g}.", ""]
    if (out / "eval" / "reconstructions.png").exists():
        lines += ["![reconstructions](eval/reconstructions.png)", "",
                  "Rows: a held-out image, then the decoder's sample from each model's embedding "
                  f"({', '.join(results)}), same seed.", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return report
