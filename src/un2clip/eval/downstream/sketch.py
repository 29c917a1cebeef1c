"""Sketch recognisability (CLIPasso): how well a fixed judge names an encoder's sketches at 4, 8 and 16 strokes.

Each image of an image-classification set (at most ``limit`` per class) is sketched under the encoder being
measured (:func:`un2clip.sketch.optimise.sketch_image`, same seed for every encoder), then a fixed judge model
classifies the sketches zero-shot with the set's class prompts (template ensemble, as `un2clip eval zeroshot`).
acc1@N is the judge's top-1 accuracy on the N-stroke sketches; acc1_photo its accuracy on the images themselves
(the ceiling the sketches approach). With few strokes only what the encoder's geometry and semantic features
keep of the object can be drawn: a test of the dense detail in the encoder that made the sketch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from un2clip.data import transforms as T
from un2clip.eval.core.metrics import zeroshot_metrics
from un2clip.eval.encoder.zeroshot import load_classification_set, zeroshot_classifier, zeroshot_logits
from un2clip.models.clip import ClipModel
from un2clip.sketch.files import CANVAS
from un2clip.sketch.optimise import DEFAULT_STEPS, sketch_image

STROKES = (4, 8, 16)
LIMIT = 10  # images per class


def read_sketch_set(data: str | Path, *, templates: Sequence[str] | str | Path | None = None):
    """The classification set to sketch (an ImageFolder or CLIP_benchmark webdataset, as eval zeroshot reads)."""
    return load_classification_set(data, templates=templates)


def pick_images(dataset, limit: int) -> tuple[list[torch.Tensor], list[int], int]:
    """The first ``limit`` readable images (PIL) of each class of a :class:`ClassificationSet`, their labels, and
    the number of unreadable images skipped."""
    images, labels, counts, skipped = [], [], {}, 0
    for i in range(dataset.n):
        image, label = dataset.load(i)
        label = int(label)
        if counts.get(label, 0) >= limit:
            continue
        if image is None:
            skipped += 1
            continue
        counts[label] = counts.get(label, 0) + 1
        images.append(image)
        labels.append(label)
    return images, labels, skipped


def judge_accuracy(judge: ClipModel, pictures: torch.Tensor, labels: torch.Tensor,
                   classifier: torch.Tensor) -> float:
    """Top-1 zero-shot accuracy of ``judge`` on [0, 1] pictures (B, 3, S, S)."""
    with torch.no_grad():
        embeds = judge.encode_image(judge.processing.from_unit(pictures.to(judge.device))).float()
    embeds = torch.nn.functional.normalize(embeds, dim=-1)
    return float(zeroshot_metrics(zeroshot_logits(embeds, classifier.to(embeds.device)), labels)["acc1"])


def evaluate(model: ClipModel, data: str | Path, *, judge: str | None = None,
             strokes: Sequence[int] = STROKES, steps: int = DEFAULT_STEPS, limit: int = LIMIT, seed: int = 0,
             canvas: int = CANVAS, templates: Sequence[str] | str | Path | None = None,
             progress: bool = True) -> dict[str, float]:
    """acc1@N per stroke count N, acc1_photo, n_images, n_classes (see the module). ``judge``: a model spec
    (default: ``model`` itself judges its own sketches)."""
    from tqdm.auto import tqdm

    if any(n <= 0 for n in strokes) or not strokes:
        raise ValueError(f"--strokes must be positive stroke counts, got {list(strokes)}")
    if steps <= 0:
        raise ValueError(f"--steps must be > 0, got {steps}")
    if limit <= 0:
        raise ValueError(f"--limit must be > 0, got {limit}")
    dataset = read_sketch_set(data, templates=templates)
    photos, labels, skipped = pick_images(dataset, limit)
    if not photos:
        raise ValueError(f"{data}: no readable images")
    if judge is None:
        judge_model = model
    else:
        from un2clip.load import load_clip

        judge_model = load_clip(judge).to(model.device).eval()
    classifier = zeroshot_classifier(judge_model, dataset.classnames, dataset.templates, progress=progress)
    targets = torch.tensor(labels, dtype=torch.long)
    pictures = torch.stack([T.pil_to_tensor(T.center_crop(T.resize_short_side(T.to_rgb(im), canvas), canvas))
                            for im in photos])
    metrics: dict[str, float] = {}
    jobs = [(n, i) for n in strokes for i in range(len(pictures))]
    sketches: dict[int, list[torch.Tensor]] = {n: [] for n in strokes}
    for n, i in tqdm(jobs, desc="sketches", unit="sketch", disable=not progress):
        result = sketch_image(model, pictures[i], n, steps=steps, seed=seed + i)
        sketches[n].append(result.picture())
    for n in strokes:
        metrics[f"acc1@{n}"] = judge_accuracy(judge_model, torch.stack(sketches[n]), targets, classifier)
    metrics["acc1_photo"] = judge_accuracy(judge_model, pictures, targets, classifier)
    metrics.update(n_images=len(photos), n_classes=len(dataset.classnames), n_skipped_images=skipped)
    return metrics
