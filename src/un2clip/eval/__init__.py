"""Evaluations, one contract: ``evaluate(model, data, **options) -> dict[str, float]``, registered by name.

Each evaluation runs in three steps kept apart: embed (:mod:`un2clip.eval.core.embed`), score
matrix, metric (pure functions in :mod:`un2clip.eval.core.metrics`).

>>> from un2clip.eval import evaluate
>>> evaluate("mmvp", model, "data/MMVP_VLM")  # doctest: +SKIP
{'Orientation and Direction': 13.3, ..., 'average': 19.3, 'n_pairs': 135}
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from un2clip.eval.decoder import diffloss
from un2clip.eval.downstream import depth, detect, pointcloud, video
from un2clip.eval.encoder import mmvp, retrieval, zeroshot
from un2clip.eval.mllm import cvbench, mmvp_mllm
from un2clip.registry import Registry

if TYPE_CHECKING:
    from un2clip.models.clip import ClipModel


@dataclass(frozen=True)
class EvalTask:
    """A registered evaluation."""

    name: str
    evaluate: Callable[..., dict[str, float]]
    headline: tuple[str, ...]  # the metrics a report shows first
    description: str = ""
    needs_decoder: bool = False  # evaluate takes ``decoder=UnclipDecoder``
    # opens the data without a model (same keyword options as evaluate), so a malformed folder fails fast
    check_data: Callable[..., object] | None = None
    model_kind: str = "clip"  # what evaluate takes: "clip" (ClipModel) | "llava" (un2clip.models.llava.LlavaChat)


TASKS: Registry[EvalTask] = Registry("evaluation")


def register_task(task: EvalTask) -> EvalTask:
    """Add an evaluation to the registry (names are unique)."""
    return TASKS.add(task.name, task)


def get_task(name: str) -> EvalTask:
    return TASKS.lookup(name)


def evaluate(task: str, model: ClipModel, data: str | Path, **options: Any) -> dict[str, float]:
    """Run the registered evaluation ``task`` of ``model`` on ``data``."""
    return get_task(task).evaluate(model, data, **options)


register_task(EvalTask(
    "mmvp", mmvp.evaluate, ("average",),
    "MMVP-VLM: CLIP-blind image pairs, 9 patterns; percent of pairs where both statements pick their own image",
    check_data=mmvp.read_mmvp,
))
register_task(EvalTask(
    "zeroshot", zeroshot.evaluate, ("acc1", "acc5"),
    "zero-shot classification (CLIP_benchmark): template ensemble; acc1, acc5, mean per-class recall",
    check_data=zeroshot.load_classification_set,
))
register_task(EvalTask(
    "retrieval", retrieval.evaluate, ("text_to_image_recall@1", "image_to_text_recall@1"),
    "image-text retrieval (CLIP_benchmark): recall@1/5/10, text->image and image->text",
    check_data=retrieval.load_retrieval_set,
))
register_task(EvalTask(
    "diffloss", diffloss.evaluate, ("loss_mean",),
    "the un²CLIP diffusion loss on held-out images, fixed draws per image; lower is better",
    needs_decoder=True, check_data=diffloss.open_data,
))
register_task(EvalTask(
    "mmvp-mllm", mmvp_mllm.evaluate, ("accuracy",),
    "MMVP (MLLM): 150 CLIP-blind image pairs, two-option questions; percent of pairs with both answers right",
    check_data=mmvp_mllm.read_mmvp_mllm, model_kind="llava",
))
register_task(EvalTask(
    "cvbench", cvbench.evaluate, ("accuracy", "accuracy_2d", "accuracy_3d"),
    "CV-Bench: 2D (relation, count) and 3D (depth, distance) multiple choice; per-source accuracy, 2D, 3D, mean",
    check_data=cvbench.read_cvbench, model_kind="llava",
))
register_task(EvalTask(
    "detect", detect.evaluate, ("AP", "AP50", "AP_novel"),
    "open-vocabulary detection (ViLD's image branch on given boxes): COCO box AP, AP50, base/novel",
    check_data=detect.read_detection_set,
))
register_task(EvalTask(
    "depth", depth.evaluate, ("delta1", "abs_rel", "rmse"),
    "zero-shot monocular depth (DepthCLIP): delta1/2/3, abs_rel, rmse, log10",
    check_data=depth.read_depth_set,
))
register_task(EvalTask(
    "pointcloud", pointcloud.evaluate, ("acc1",),
    "zero-shot point-cloud classification (PointCLIP): six depth views, weighted view logits; acc1, acc5",
    check_data=pointcloud.read_pointcloud_set,
))
register_task(EvalTask(
    "video-retrieval", video.evaluate_retrieval, ("text_to_video_recall@1", "video_to_text_recall@1"),
    "text-video retrieval, CLIP4Clip's parameter-free meanP: 12 uniform frames, normalised mean; recall@1/5/10, "
    "median and mean rank both ways",
    check_data=video.read_video_captions,
))
register_task(EvalTask(
    "video-zeroshot", video.evaluate_zeroshot, ("acc1", "acc5"),
    "zero-shot action recognition, ActionCLIP's 16 prompts and meanP fusion over 8 segment frames; acc1, acc5",
    check_data=video.read_video_classes,
))

__all__ = ["TASKS", "EvalTask", "evaluate", "get_task", "register_task"]
