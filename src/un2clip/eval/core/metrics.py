"""Pure metric functions: score matrices, predictions and labels in, numbers out — every evaluation's metric.

Nothing here loads a model or a file, so every metric is unit-tested on hand-built
inputs whose answers are known. The evaluation modules embed and score; their numbers
come from here (segmentation's streaming histogram, mmsegmentation's mIoU, is the one
exception: :mod:`un2clip.eval.seg.metrics`). Conventions follow the official protocols:

- MMVP-VLM (tsb0601/MMVP, ``scripts/evaluate_vlm.py``): per-pattern scores and their
  mean in percent.
- Zero-shot classification and retrieval (CLIP_benchmark): accuracies and recalls as
  fractions in [0, 1].
- MMVP and CV-Bench with an MLLM: percent of pairs / questions answered right.
- Monocular depth (BTS / AdaBins): delta1/2/3, abs_rel, sq_rel, rmse, rmse_log, log10, silog per image,
  then averaged.
- Detection: COCO box AP by pycocotools (the ``detect`` extra, imported when called).
- Phrase grounding (GLIP / MDETR's RefCOCO and Flickr30k Entities protocols): a phrase is found at k when one
  of its k best boxes overlaps one of its ground-truth boxes with IoU >= 0.5; accuracy is that at k = 1, all
  in percent of phrases.

One tie rule for every accuracy, recall and rank here (:func:`positive_ranks`): a tie counts against the
query. The rank of a query's answer is 1 + the number of wrong candidates scored at least as high as its
best right one, so a collapsed model that scores everything alike ranks last, not first. ``acc1``,
``acc5``, ``mean_per_class_recall``, ``recall@k`` and the median and mean ranks all read that rank (a hit
at k is rank <= k), so acc1 and mean per-class recall agree on a balanced set whatever the ties. With
real-valued scores ties are rare and the rule changes nothing; the references do not agree on one
(CLIP_benchmark's top-k breaks ties by index order, CLIP4Clip's ``compute_metrics`` counts a tied row
several times).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence

import numpy as np
import torch

# -- zero-shot classification -----------------------------------------------------------------------


def positive_ranks(scores: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """(Q,) rank of each query's best positive: 1 + the number of negatives scored at least as high.

    scores (Q, G) query-by-candidate scores, positives (Q, G) bool with at least one positive per row. The
    module's tie rule: a negative tied with the best positive ranks before it; positives never push each
    other down.
    """
    if scores.shape != positives.shape or scores.ndim != 2:
        raise ValueError(f"expected scores and positives of one (Q, G) shape, got {tuple(scores.shape)} "
                         f"and {tuple(positives.shape)}")
    positives = positives.to(scores.device)
    if not positives.any(dim=1).all():
        raise ValueError("every query needs at least one positive")
    best = scores.masked_fill(~positives, float("-inf")).max(dim=1, keepdim=True).values  # (Q, 1)
    return 1 + ((scores >= best) & ~positives).sum(dim=1)


def class_ranks(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(N,) rank of each target class among the (N, C) logits, by the module's tie rule."""
    if logits.ndim != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"expected logits (N, C) and targets (N,), got {tuple(logits.shape)} and "
                         f"{tuple(targets.shape)}")
    if logits.shape[0] == 0:
        raise ValueError("no samples to score")
    positives = torch.zeros(logits.shape, dtype=torch.bool)
    positives[torch.arange(logits.shape[0]), targets.cpu().long()] = True
    return positive_ranks(logits.cpu(), positives)


def topk_accuracy(logits: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Fraction of rows whose target ranks k or better (a tie counts against it), for each k.

    logits (N, C), targets (N,) integer class indices.
    """
    ranks = class_ranks(logits, targets)
    k_max = max(ks)
    if k_max > logits.shape[1]:
        raise ValueError(f"top-{k_max} accuracy needs at least {k_max} classes, got {logits.shape[1]}")
    return {k: int((ranks <= k).sum()) / len(ranks) for k in ks}


def mean_per_class_recall(hits: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean over the classes present in ``targets`` of the fraction of their samples that are hits.

    ``hits`` (N,) bool: the sample was classified right (from :func:`class_ranks`: rank 1). Given (N,)
    predicted class indices instead, a hit is a prediction equal to the target: what scikit-learn's
    ``balanced_accuracy_score`` computes (CLIP_benchmark's metric).
    """
    if hits.shape != targets.shape or hits.numel() == 0:
        raise ValueError(f"expected two non-empty (N,) tensors, got {tuple(hits.shape)} and {tuple(targets.shape)}")
    hits, targets = hits.reshape(-1).cpu(), targets.reshape(-1).cpu()
    if hits.dtype != torch.bool:
        hits = hits == targets
    recalls = [float(hits[targets == c].double().mean()) for c in targets.unique().tolist()]
    return sum(recalls) / len(recalls)


def zeroshot_metrics(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """acc1, acc5 (only with 5 or more classes), mean per-class recall, all from one rank per sample.

    logits (N, C) image-to-class scores, targets (N,). The module's tie rule: a class tied with the target
    beats it, so acc1 and mean per-class recall agree on a balanced set.
    """
    ranks = class_ranks(logits, targets)
    ks = (1, 5) if logits.shape[1] >= 5 else (1,)
    out = {f"acc{k}": int((ranks <= k).sum()) / len(ranks) for k in ks}
    out["mean_per_class_recall"] = mean_per_class_recall(ranks == 1, targets)
    return out


def fold_accuracy(logits: torch.Tensor, targets: torch.Tensor, folds: Sequence[int]) -> dict[str, float]:
    """Top-1 accuracy of each fold (``fold<N>_acc1``, the module's tie rule) and their unweighted mean (``acc1``),
    as ESC-50 and UrbanSound8K results are reported (folds of unequal size weigh the same)."""
    folds_t = torch.as_tensor(list(folds), dtype=torch.long)
    if folds_t.shape[0] != logits.shape[0]:
        raise ValueError(f"{logits.shape[0]} rows of logits but {folds_t.shape[0]} folds")
    hits = class_ranks(logits, targets) == 1
    out = {f"fold{f}_acc1": float(hits[folds_t == f].double().mean()) for f in sorted(set(folds_t.tolist()))}
    out["acc1"] = sum(out.values()) / len(out)
    return out


# -- retrieval ---------------------------------------------------------------------------------------


def recall_at_k(scores: torch.Tensor, positives: torch.Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[int, float]:
    """Fraction of queries whose best positive ranks k or better (:func:`positive_ranks`; ties count against).

    scores (Q, G) query-by-candidate similarities; positives (Q, G) bool. A k larger than the number of
    candidates counts all of them.
    """
    if scores.shape != positives.shape or scores.ndim != 2:
        raise ValueError(f"expected scores and positives of one (Q, G) shape, got {tuple(scores.shape)} "
                         f"and {tuple(positives.shape)}")
    if scores.shape[0] == 0:
        raise ValueError("no queries to score")
    ranks = positive_ranks(scores, positives)
    return {k: int((ranks <= k).sum()) / scores.shape[0] for k in ks}


def _caption_positives(scores: torch.Tensor, caption_item: torch.Tensor, name: str
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Caption-by-item ``scores`` (T, I) on the CPU and the (T, I) mask of each caption's own item."""
    t, i = scores.shape
    if caption_item.shape != (t,):
        raise ValueError(f"{name} must be ({t},), got {tuple(caption_item.shape)}")
    positives = torch.zeros(t, i, dtype=torch.bool)
    positives[torch.arange(t), caption_item.cpu().long()] = True
    return scores.cpu(), positives


def best_caption_scores(scores: torch.Tensor, caption_item: torch.Tensor) -> torch.Tensor:
    """(I, I) item-by-item scores: entry [v, g] is item v's score with the best-scoring caption of item g.

    CLIP4Clip's video->text with several captions per video (``tensor_video_to_text_sim``: the maximum
    over each video's captions): each video ranks its own best caption among the other videos' best ones,
    V candidates, not T. scores (T, I) caption-by-item, caption_item (T,).
    """
    scores, positives = _caption_positives(scores, caption_item, "caption_item")
    n = scores.shape[1]
    if not positives.any(dim=0).all():
        raise ValueError("every item needs at least one caption")
    out = torch.full((n, n), float("-inf"), dtype=scores.dtype)
    for g in range(n):
        out[:, g] = scores[positives[:, g]].max(dim=0).values
    return out


def retrieval_metrics(scores: torch.Tensor, caption_image: torch.Tensor,
                      ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Recall@k both ways from caption-by-image scores (T, I) and each caption's image index (T,).

    ``text_to_image_recall@k``: a caption finds its image in the top k (CLIP_benchmark's
    ``image_retrieval_recall@k``). ``image_to_text_recall@k``: an image finds any of its
    captions in the top k among all T captions (CLIP_benchmark's ``text_retrieval_recall@k``).
    """
    scores, positives = _caption_positives(scores, caption_image, "caption_image")
    t2i = recall_at_k(scores, positives, ks)
    i2t = recall_at_k(scores.T, positives.T, ks)
    out = {f"text_to_image_recall@{k}": v for k, v in t2i.items()}
    out.update({f"image_to_text_recall@{k}": v for k, v in i2t.items()})
    return out


def retrieval_ranks(scores: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """(Q,) rank of each query's best positive (:func:`positive_ranks`: a tie counts against the query)."""
    return positive_ranks(scores, positives)


def rank_summary(ranks: torch.Tensor) -> tuple[float, float]:
    """(median, mean) of (Q,) ranks. The median of an even count is the mean of the two middle ranks
    (``numpy.median``, as CLIP4Clip's ``compute_metrics`` reports MdR; its several-captions text->video
    path takes ``torch.median``, the lower middle rank, which can read 0.5 lower)."""
    r = ranks.double().reshape(-1).sort().values
    if r.numel() == 0:
        raise ValueError("no ranks")
    mid = r.numel() // 2
    median = float(r[mid]) if r.numel() % 2 else float((r[mid - 1] + r[mid]) / 2)
    return median, float(r.mean())


def retrieval_rank_metrics(scores: torch.Tensor, caption_item: torch.Tensor, item: str = "image"
                           ) -> dict[str, float]:
    """Median and mean rank both ways from caption-by-item scores (T, I) and each caption's item index (T,).

    ``text_to_<item>_median_rank``: rank of a caption's item among all items; ``<item>_to_text_median_rank``:
    rank of an item's best-ranked caption among all captions (as recall counts any of its captions).
    """
    scores, positives = _caption_positives(scores, caption_item, "caption_item")
    out: dict[str, float] = {}
    for name, s, p in ((f"text_to_{item}", scores, positives), (f"{item}_to_text", scores.T, positives.T)):
        median, mean = rank_summary(retrieval_ranks(s, p))
        out[f"{name}_median_rank"], out[f"{name}_mean_rank"] = median, mean
    return out


def video_retrieval_metrics(scores: torch.Tensor, caption_video: torch.Tensor, ks: Sequence[int] = (1, 5, 10), *,
                            video_to_text: str = "clip4clip") -> dict[str, float]:
    """Recall@k, median and mean rank both ways from caption-by-video scores (T, V) and each caption's video.

    text->video: each caption ranks the V videos. video->text, ``clip4clip``: each video ranks its own best
    caption among the V videos' best captions (:func:`best_caption_scores`);
    ``captions``: among all T captions, keys ``video_to_caption_*``. With one caption per video the two agree.
    """
    if video_to_text not in ("clip4clip", "captions"):
        raise ValueError(f"video_to_text must be clip4clip or captions, got {video_to_text!r}")
    out = {k: v for k, v in retrieval_metrics(scores, caption_video, ks).items() if k.startswith("text_to")}
    out = {k.replace("image", "video"): v for k, v in out.items()}
    ranks = retrieval_rank_metrics(scores, caption_video, "video")
    out.update({k: v for k, v in ranks.items() if k.startswith("text_to")})
    if video_to_text == "clip4clip":
        per_video = best_caption_scores(scores, caption_video)  # (V, V)
        r = positive_ranks(per_video, torch.eye(per_video.shape[0], dtype=torch.bool))
        name = "video_to_text"
    else:
        positives = torch.zeros(scores.shape, dtype=torch.bool)
        positives[torch.arange(scores.shape[0]), caption_video.long()] = True
        r = positive_ranks(scores.T.cpu(), positives.T)
        name = "video_to_caption"
    out.update({f"{name}_recall@{k}": int((r <= k).sum()) / len(r) for k in ks})
    median, mean = rank_summary(r)
    out.update({f"{name}_median_rank": median, f"{name}_mean_rank": mean})
    return out


# -- MMVP-VLM ----------------------------------------------------------------------------------------


def mmvp_text_picks(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Which image each text of each pair picks.

    logits (P, 2, 2): ``logits[p, j, i]`` scores text j against image i of pair p (with
    the model's logit scale, as ``logits_per_text`` is). For each text, softmax over the
    two images; the text picks image 1 if its probability is > 0.5, else image 2, so an
    exact tie picks image 2. Returns (probability of image 1 (P, 2), picked image index
    (P, 2): 0 for image 1, 1 for image 2).
    """
    if logits.ndim != 3 or logits.shape[1:] != (2, 2):
        raise ValueError(f"expected (P, 2, 2) logits, got {tuple(logits.shape)}")
    p_first = logits.float().softmax(dim=-1)[..., 0]  # (P, 2)
    picks = torch.where(p_first > 0.5, 0, 1)
    return p_first, picks


def mmvp_pair_correct(picks: torch.Tensor) -> torch.Tensor:
    """(P, 2) picked image per text -> (P,) bool: text 1 picked image 1 and text 2 picked image 2."""
    return (picks[:, 0] == 0) & (picks[:, 1] == 1)


def mmvp_scores(pair_correct: torch.Tensor | Sequence[bool], pair_types: Sequence[str],
                patterns: Sequence[str] | None = None) -> dict[str, float]:
    """Per-pattern score (correct pairs / pairs x 100) and their mean as ``average``.

    ``patterns`` fixes the order of the keys (default: the order in which types first
    appear); every pattern listed must have at least one pair.
    """
    correct = [bool(c) for c in (pair_correct.tolist() if isinstance(pair_correct, torch.Tensor) else pair_correct)]
    if len(correct) != len(pair_types):
        raise ValueError(f"{len(correct)} pair results but {len(pair_types)} pair types")
    if not correct:
        raise ValueError("no pairs to score")
    order = list(patterns) if patterns is not None else list(dict.fromkeys(pair_types))
    out: dict[str, float] = {}
    for pattern in order:
        hits = [c for c, t in zip(correct, pair_types) if t == pattern]
        if not hits:
            raise ValueError(f"pattern {pattern!r} has no pairs")
        out[pattern] = 100.0 * sum(hits) / len(hits)
    out["average"] = sum(out.values()) / len(order)
    return out


# -- diffusion loss ------------------------------------------------------------------------------------


def timestep_buckets(num_timesteps: int, num_buckets: int) -> list[tuple[int, int]]:
    """Split [0, num_timesteps) into ``num_buckets`` contiguous (first, last) ranges, inclusive."""
    if not 1 <= num_buckets <= num_timesteps:
        raise ValueError(f"num_buckets must be in [1, {num_timesteps}], got {num_buckets}")
    edges = [round(b * num_timesteps / num_buckets) for b in range(num_buckets + 1)]
    return [(edges[b], edges[b + 1] - 1) for b in range(num_buckets)]


def bucket_key(first: int, last: int, width: int) -> str:
    """Name of a timestep bucket, e.g. ``loss_t000-099``."""
    return f"loss_t{first:0{width}d}-{last:0{width}d}"


def diffusion_loss_summary(losses: torch.Tensor, timesteps: torch.Tensor, num_timesteps: int,
                           num_buckets: int = 10) -> dict[str, float]:
    """Mean loss, its standard error, and the mean per timestep bucket (empty buckets are left out).

    losses (N,) per-draw losses, timesteps (N,) the draws' timesteps in [0, num_timesteps).
    """
    losses, timesteps = losses.detach().double().cpu().reshape(-1), timesteps.cpu().reshape(-1)
    if losses.numel() == 0 or losses.shape != timesteps.shape:
        raise ValueError(f"expected non-empty (N,) losses and timesteps, got {tuple(losses.shape)} "
                         f"and {tuple(timesteps.shape)}")
    n = losses.numel()
    out = {"loss_mean": float(losses.mean()),
           "loss_sem": float(losses.std(unbiased=True) / n**0.5) if n > 1 else 0.0}
    width = len(str(num_timesteps - 1))
    for first, last in timestep_buckets(num_timesteps, num_buckets):
        inside = (timesteps >= first) & (timesteps <= last)
        if inside.any():
            out[bucket_key(first, last, width)] = float(losses[inside].mean())
    return out


# -- multiple choice with an MLLM (MMVP, CV-Bench): percent ------------------------------------------


def mmvp_mllm_scores(correct: list[bool]) -> dict[str, float]:
    """Percent of pairs (questions 2k, 2k + 1) with both answers right (``accuracy``, the paper's score) and
    percent of questions answered right (``question_accuracy``)."""
    if not correct or len(correct) % 2:
        raise ValueError(f"{len(correct)} answers: MMVP needs a positive even number (pairs of questions)")
    pairs = [correct[k] and correct[k + 1] for k in range(0, len(correct), 2)]
    return {"accuracy": 100.0 * sum(pairs) / len(pairs), "question_accuracy": 100.0 * sum(correct) / len(correct),
            "n_pairs": len(pairs), "n_questions": len(correct)}


SOURCES_2D, SOURCES_3D = ("ADE20K", "COCO"), ("Omni3D",)  # CV-Bench's 2D and 3D image sources


def cvbench_scores(sources: Sequence[str], tasks: Sequence[str], correct: Sequence[bool]) -> dict[str, float]:
    """Percent right per source and per task; ``accuracy_2d`` = mean over ADE20K and COCO, ``accuracy_3d`` =
    Omni3D, ``accuracy`` = mean of the two (each only when its sources are present)."""
    if not (len(sources) == len(tasks) == len(correct)) or not correct:
        raise ValueError("sources, tasks and correct must be equally long and not empty")

    def acc(keys: Sequence[str], value: str) -> float:
        hits = [c for k, c in zip(keys, correct) if k == value]
        return 100.0 * sum(hits) / len(hits)

    scores: dict[str, float] = {}
    per_source = {s: acc(sources, s) for s in dict.fromkeys(sources)}
    d2 = [per_source[s] for s in SOURCES_2D if s in per_source]
    d3 = [per_source[s] for s in SOURCES_3D if s in per_source]
    if d2:
        scores["accuracy_2d"] = sum(d2) / len(d2)
    if d3:
        scores["accuracy_3d"] = sum(d3) / len(d3)
    if d2 and d3:
        scores["accuracy"] = (scores["accuracy_2d"] + scores["accuracy_3d"]) / 2
    scores.update({f"source_{s}": v for s, v in per_source.items()})
    scores.update({f"task_{t}": acc(tasks, t) for t in dict.fromkeys(tasks)})
    scores["n_questions"] = len(correct)
    return scores


# -- monocular depth (BTS / AdaBins evaluation) ------------------------------------------------------


def depth_metrics(pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor | None = None) -> dict[str, float]:
    """One image's metrics over ``valid`` pixels (default gt > 0): delta1/2/3, abs_rel, sq_rel, rmse, rmse_log,
    log10, silog (BTS / AdaBins definitions; silog = 100 sqrt(mean(e^2) - mean(e)^2), e = ln pred - ln gt)."""
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and ground truth {tuple(gt.shape)} differ in shape")
    valid = gt > 0 if valid is None else valid & (gt > 0)
    p, g = pred[valid].double(), gt[valid].double()
    if p.numel() == 0:
        raise ValueError("no valid ground-truth pixels to score")
    if (p <= 0).any():
        raise ValueError("predicted depths must be positive")
    ratio = torch.maximum(p / g, g / p)
    e = p.log() - g.log()
    return {"delta1": float((ratio < 1.25).double().mean()), "delta2": float((ratio < 1.25 ** 2).double().mean()),
            "delta3": float((ratio < 1.25 ** 3).double().mean()), "abs_rel": float(((p - g).abs() / g).mean()),
            "sq_rel": float(((p - g) ** 2 / g).mean()), "rmse": float(((p - g) ** 2).mean().sqrt()),
            "rmse_log": float((e ** 2).mean().sqrt()), "log10": float((p.log10() - g.log10()).abs().mean()),
            "silog": float(((e ** 2).mean() - e.mean() ** 2).clamp(min=0).sqrt() * 100)}


def mean_metrics(per_image: Sequence[dict[str, float]]) -> dict[str, float]:
    """The mean of each metric over images."""
    if not per_image:
        raise ValueError("no images scored")
    return {k: float(np.mean([m[k] for m in per_image])) for k in per_image[0]}


# -- phrase grounding ----------------------------------------------------------------------------------

GROUNDING_KS = (1, 5, 10)


def xyxy_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, 4), (M, 4) boxes x0, y0, x1, y1 -> (N, M) intersection over union (0 where both are empty)."""
    a, b = a.float(), b.float()
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)  # (N, M)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def greedy_nms(overlaps: torch.Tensor, scores: torch.Tensor, iou: float) -> torch.Tensor:
    """Greedy non-maximum suppression given the (N, N) pairwise IoU of the boxes: the indices kept, best score
    first; a box is dropped when its IoU with a kept, better-scored box exceeds ``iou``."""
    suppressed = torch.zeros(len(scores), dtype=torch.bool)
    keep: list[int] = []
    for i in scores.argsort(descending=True).tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= overlaps[i] > iou
    return torch.tensor(keep, dtype=torch.long)


def grounding_hits(ranked: torch.Tensor, truth: torch.Tensor, ks: Sequence[int] = GROUNDING_KS,
                   threshold: float = 0.5) -> dict[int, bool]:
    """``{k: found}`` for one phrase: whether one of the first k of ``ranked`` (R, 4) boxes, best first, has
    IoU >= ``threshold`` with one of ``truth`` (G, 4)."""
    if truth.shape[0] == 0:
        raise ValueError("a phrase without a ground-truth box cannot be scored")
    if ranked.shape[0] == 0:
        return {k: False for k in ks}
    good = (xyxy_iou(ranked, truth) >= threshold).any(1)  # (R,)
    return {k: bool(good[:k].any()) for k in ks}


def grounding_metrics(hits: Sequence[dict[int, bool]], ks: Sequence[int] = GROUNDING_KS) -> dict[str, float]:
    """``accuracy`` (percent of phrases found at k = 1) and ``recall@k`` (percent found among the k best)."""
    if not hits:
        raise ValueError("no phrases scored")
    if 1 not in ks:
        raise ValueError(f"accuracy is recall@1: ks must hold 1, got {tuple(ks)}")
    recalls = {f"recall@{k}": 100.0 * sum(h[k] for h in hits) / len(hits) for k in ks}
    return {"accuracy": recalls["recall@1"], **recalls}


# -- detection: COCO box AP by pycocotools (the ``detect`` extra), imported on use ----------------------

COCO_INSTALL = "pip install 'un2clip[detect]' (or: pip install pycocotools)"


def require_pycocotools() -> None:
    """Raise ImportError with the install command when pycocotools is missing."""
    try:
        import pycocotools.cocoeval  # noqa: F401
    except ImportError:
        raise ImportError(f"eval detect scores boxes with pycocotools, which is not installed: {COCO_INSTALL}") from None


def coco_box_ap(ground_truth: dict, results: list[dict], *, image_ids: Sequence[int] | None = None,
                groups: dict[str, Sequence[int]] | None = None) -> dict[str, float]:
    """COCO box AP (IoU .50:.95) and AP50 by pycocotools, as fractions: ``AP``, ``AP50``, and ``AP_<group>``,
    ``AP50_<group>`` for each named group of category ids (e.g. base, novel). ``ground_truth`` is a COCO dict."""
    require_pycocotools()
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO()
    gt.dataset = _with_areas(ground_truth)
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        if not results:
            return {"AP": 0.0, "AP50": 0.0, **{f"{p}_{g}": 0.0 for g in (groups or {}) for p in ("AP", "AP50")}}
        dt = gt.loadRes(list(results))
        ev = COCOeval(gt, dt, "bbox")
        if image_ids is not None:
            ev.params.imgIds = sorted(int(i) for i in image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"]  # (T IoUs, R recalls, K classes, A areas, M max-dets); -1: no ground truth
    cat_ids = list(ev.params.catIds)
    out = {"AP": float(ev.stats[0]), "AP50": float(ev.stats[1])}

    def mean_valid(p) -> float:
        valid = p[p > -1]
        return float(valid.mean()) if valid.size else float("nan")

    for name, ids in (groups or {}).items():
        ks = [cat_ids.index(c) for c in ids if c in cat_ids]
        out[f"AP_{name}"] = mean_valid(precision[:, :, ks, 0, -1])
        out[f"AP50_{name}"] = mean_valid(precision[0, :, ks, 0, -1])
    return out


def _with_areas(coco: dict) -> dict:
    """The COCO dict with ``area``, ``iscrowd`` and ``id`` filled in where annotations lack them."""
    anns = []
    for k, a in enumerate(coco.get("annotations", [])):
        a = dict(a)
        a.setdefault("area", float(a["bbox"][2]) * float(a["bbox"][3]))
        a.setdefault("iscrowd", 0)
        a.setdefault("id", k + 1)
        anns.append(a)
    return {**coco, "annotations": anns, "categories": coco.get("categories", [])}
