"""Phrase grounding, GLIP's protocol: a trained grounding head ranks boxes for each phrase of a caption.

``un2clip train-grounding`` trains the head (:mod:`un2clip.objectives.grounding`) on a frozen encoder; this
scores it on a RefCOCO-style or Flickr30k-Entities-style split (:mod:`un2clip.data.grounding`). For each
phrase, every patch location's box is scored as GLIP's post-processing does, sqrt(mean over the phrase's tokens
of sigmoid(region-word logit) x sigmoid(centerness)), duplicates are removed by NMS (IoU 0.6, GLIP's
``MODEL.ATSS.NMS_TH``), and the phrase counts as found at k when one of its k best boxes has IoU >= 0.5 with
one of its ground-truth boxes (any-box protocol; ``merge_boxes`` scores against their union, Flickr30k's
merged protocol). ``accuracy`` is recall@1. Beside it, ``accuracy_mean_box``: every phrase answered with one
constant box, the mean of the split's ground-truth boxes in fractions of the image side, a reference that reads
neither image nor words.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from un2clip.data.grounding import GroundingSample, GroundingSet, read_grounding
from un2clip.data.sources import decode_image
from un2clip.eval.core.embed import inference_context
from un2clip.eval.core.metrics import GROUNDING_KS, greedy_nms, grounding_hits, grounding_metrics, xyxy_iou
from un2clip.eval.downstream.common import report_skipped
from un2clip.models.grounding import GroundingHead, phrase_token_map
from un2clip.objectives.grounding import (
    grounding_pixels,
    normalised_boxes,
    text_token_features,
    tokenize_with_offsets,
)

if TYPE_CHECKING:
    from un2clip.models.clip import ClipModel

NMS_IOU = 0.6  # GLIP's MODEL.ATSS.NMS_TH


def read_grounding_set(data: str | Path, *, split: str = "val", images: str | Path | None = None,
                       split_by: str | None = None) -> GroundingSet:
    """The grounding split ``split`` of ``data`` (RefCOCO or Flickr30k Entities layout)."""
    return read_grounding(data, split=split, images=images, split_by=split_by)


def nms_xyxy(boxes: torch.Tensor, scores: torch.Tensor, iou: float) -> torch.Tensor:
    """Greedy non-maximum suppression of (N, 4) boxes x0, y0, x1, y1: kept indices, best score first."""
    return greedy_nms(xyxy_iou(boxes, boxes), scores, iou)


def phrase_scores(logits: torch.Tensor, centerness: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """(N,) GLIP's score of each location for one phrase: sqrt(mean sigmoid of the phrase's token logits x
    sigmoid(centerness)). ``logits`` (N, L), ``centerness`` (N,), ``tokens`` (L,) bool."""
    if not tokens.any():
        raise ValueError("a phrase with no token cannot be scored")
    probs = torch.sigmoid(logits[:, tokens].float()).mean(-1)
    return (probs * torch.sigmoid(centerness.float())).sqrt()


def rank_boxes(boxes: torch.Tensor, scores: torch.Tensor, *, nms_iou: float = NMS_IOU,
               keep: int = max(GROUNDING_KS)) -> torch.Tensor:
    """The ``keep`` best of ``boxes`` (N, 4) by ``scores`` after NMS, best first."""
    return boxes[nms_xyxy(boxes, scores, nms_iou)[:keep]]


def merged_box(boxes: torch.Tensor) -> torch.Tensor:
    """(G, 4) -> (1, 4): the smallest box holding them all (Flickr30k Entities' merged protocol)."""
    return torch.cat([boxes[:, :2].min(0).values, boxes[:, 2:].max(0).values])[None]


def score_phrases(ranked: list[torch.Tensor], truths: list[torch.Tensor], *, merge_boxes: bool = False
                  ) -> list[dict[int, bool]]:
    """Hits at 1/5/10 of each phrase: its ranked boxes against its ground-truth boxes (same coordinates)."""
    return [grounding_hits(r, merged_box(t) if merge_boxes else t) for r, t in zip(ranked, truths)]


def _truths(sample: GroundingSample, width: int, height: int) -> list[torch.Tensor]:
    return [normalised_boxes(list(t.boxes), width, height) for t in sample.targets]


def evaluate(model: ClipModel, data: str | Path, *, head: str | Path, split: str = "val",
             images: str | Path | None = None, split_by: str | None = None, merge_boxes: bool = False,
             nms_iou: float = NMS_IOU, limit: int | None = None, precision: str = "auto", batch_size: int = 16,
             progress: bool = True, samples_csv: str | Path | None = None) -> dict[str, float]:
    """accuracy and recall@1/5/10 (percent of phrases), the constant-box reference and counts."""
    if not 0.0 <= nms_iou <= 1.0:
        raise ValueError(f"nms_iou must be in [0, 1], got {nms_iou}")
    grounding_head, info = GroundingHead.load(head)
    text_dim = int(model.model.config.text_config.hidden_size)
    cfg = grounding_head.config
    if (cfg.image_dim, cfg.text_dim) != (model.embed_dim, text_dim):
        raise ValueError(f"the head in {head} reads patch width {cfg.image_dim} and text width {cfg.text_dim} "
                         f"(trained on {info.get('clip')!r}); this model gives {model.embed_dim} and {text_dim}: "
                         "train a head on this encoder with `un2clip train-grounding --clip ...`")
    size = int(info.get("input_size") or model.image_size)
    grid = (size // model.patch_size,) * 2
    context = int(info.get("context_length") or model.meta.context_length)
    ds = read_grounding_set(data, split=split, images=images, split_by=split_by)
    samples = ds.samples[:limit] if limit else ds.samples
    grounding_head = grounding_head.to(model.device).eval()
    model.eval()
    ranked: list[torch.Tensor] = []
    truths: list[torch.Tensor] = []
    rows: list[list] = []
    unreadable: list[str] = []
    n_untokenised = 0
    with inference_context(model.device, precision):
        for start in tqdm(range(0, len(samples), batch_size), desc="grounding", disable=not progress, leave=False):
            batch, pixels, encs = [], [], []
            for sample in samples[start:start + batch_size]:
                image = decode_image(sample.image, sample.key)
                if image is None:
                    unreadable.append(sample.image)
                    continue
                batch.append((sample, image.size))
                pixels.append(grounding_pixels(model, image, size))
                encs.append(tokenize_with_offsets(model.tokenizer, sample.caption, context))
            if not batch:
                continue
            ids = torch.stack([e["input_ids"] for e in encs])
            mask = torch.stack([e["attention_mask"] for e in encs])
            patches = model.image_tokens(torch.stack(pixels).to(model.device))
            tokens = text_token_features(model, ids, mask)
            out = grounding_head(patches.float(), grid, tokens.float())
            for b, ((sample, (width, height)), enc) in enumerate(zip(batch, encs)):
                token_map = phrase_token_map(enc["offsets"], enc["attention_mask"], [list(t.spans) for t in
                                                                                      sample.targets])
                for target, tokens_p, truth in zip(sample.targets, token_map, _truths(sample, width, height)):
                    if not tokens_p.any():  # cut off with the caption's tail: scored as not found
                        n_untokenised += 1
                        boxes = torch.zeros(0, 4)
                    else:
                        scores = phrase_scores(out["logits"][b].cpu(), out["centerness"][b].cpu(), tokens_p)
                        boxes = rank_boxes(out["boxes"][b].float().cpu(), scores, nms_iou=nms_iou)
                    ranked.append(boxes)
                    truths.append(truth)
                    if samples_csv is not None:
                        top = boxes[:1]
                        iou = float(xyxy_iou(top, truth).max()) if len(top) else 0.0
                        rows.append([sample.key, target.phrase, *(top[0].tolist() if len(top) else [""] * 4), iou])
    if not ranked:
        raise ValueError(f"none of the {len(samples)} images of {data} (split {split}) could be read")
    report_skipped("images (unreadable)", unreadable)
    hits = score_phrases(ranked, truths, merge_boxes=merge_boxes)
    mean_box = torch.stack([t[0] for t in truths]).mean(0, keepdim=True)
    reference = score_phrases([mean_box] * len(truths), truths, merge_boxes=merge_boxes)
    metrics = grounding_metrics(hits)
    metrics["accuracy_mean_box"] = grounding_metrics(reference)["accuracy"]
    metrics.update(n_phrases=float(len(hits)), n_samples=float(len(samples) - len(unreadable)),
                   n_skipped_images=float(len(unreadable)), n_phrases_cut=float(n_untokenised),
                   n_phrases_without_box=float(ds.n_phrases_without_box))
    if samples_csv is not None:
        Path(samples_csv).parent.mkdir(parents=True, exist_ok=True)
        with open(samples_csv, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["key", "phrase", "x0", "y0", "x1", "y1", "iou"])
            w.writerows(rows)
    return metrics
