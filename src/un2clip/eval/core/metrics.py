"""Pure metric functions: score matrices and labels in, numbers out.

Nothing here loads a model or a file, so every metric is unit-tested on hand-built
inputs whose answers are known. Conventions follow the official protocols:

- MMVP-VLM (tsb0601/MMVP, ``scripts/evaluate_vlm.py``): per-pattern scores and their
  mean in percent.
- Zero-shot classification and retrieval (CLIP_benchmark): accuracies and recalls as
  fractions in [0, 1].

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

from collections.abc import Sequence

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
