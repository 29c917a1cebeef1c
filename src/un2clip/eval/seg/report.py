"""Runs over models x methods x datasets: one JSON per run, and one table of mIoU.

Result files use the evaluation suite's format (``un2clip-eval-result/1``, one file
``<model>__seg_<method>__<dataset>.json`` per run) so that ``un2clip report`` merges them
with the other evaluations: task ``seg/<method>``, the headline numbers under
``metrics`` (mIoU, aAcc, mAcc in percent; n_images, n_skipped; the two reference points of the same masks:
``background_mIoU`` of the all-background predictor and ``oracle_mIoU`` of the patch-resolution oracle, see
``eval.seg.reference``), the settings used under
``options`` (with the precision the run used: fp32, fp16 or bf16, and the one requested), and ``per_class_iou`` (``null`` for a class absent from both predictions and
labels).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from un2clip.eval.seg.datasets import BENCHMARK_DIRS, BENCHMARKS, SegDataset, check_mask_sizes, load_dataset
from un2clip.eval.seg.dense import DEFAULT_TEMPLATES, DENSE_METHODS
from un2clip.eval.seg.presets import resolve_settings
from un2clip.files import atomic_write_text

RESULT_FORMAT = "un2clip-eval-result/1"
HEADLINE = ("mIoU", "aAcc", "mAcc", "n_images", "n_skipped", "n_out_of_range", "background_mIoU", "background_aAcc",
            "oracle_mIoU", "oracle_aAcc")


@dataclass(frozen=True)
class DataSpec:
    """One dataset to evaluate: its layout name and root folder."""

    dataset: str
    root: Path


def benchmark_specs(root: str | Path, datasets: Sequence[str] | None = None) -> list[DataSpec]:
    """The named benchmarks under mmsegmentation's data root; every missing folder named in one error."""
    root = Path(root)
    names = list(datasets) if datasets else list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARK_DIRS]
    if unknown:
        raise ValueError(f"unknown benchmark(s) {unknown}; known: {', '.join(BENCHMARKS)}")
    specs = [DataSpec(n, root / BENCHMARK_DIRS[n]) for n in names]
    missing = [f"{s.dataset}: {s.root}" for s in specs if not s.root.is_dir()]
    if missing:
        raise FileNotFoundError("benchmark folders not found under " + str(root) + " (mmsegmentation's data "
                                "layout; pick some with --datasets): " + "; ".join(missing))
    return specs


def slug(text: str) -> str:
    """A file-name-safe form of a model, task or dataset name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._") or "unnamed"


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def result_record(model: str, method: str, dataset: str, metrics: dict[str, float], options: dict[str, Any],
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON record of one run (model name, method, dataset, metrics, per-class IoU, options)."""
    from un2clip import __version__

    return {
        "format": RESULT_FORMAT, "model": model, "task": f"seg/{method}", "method": method, "dataset": dataset,
        "metrics": {k: int(metrics[k]) if k.startswith("n_") else _finite(float(metrics[k]))
                    for k in HEADLINE if k in metrics},
        "per_class_iou": {k[len("IoU."):]: _finite(v) for k, v in metrics.items() if k.startswith("IoU.")},
        "options": options, "un2clip_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), **(extra or {}),
    }


def result_path(output: str | Path, record: dict[str, Any]) -> Path:
    """``OUTPUT/<model>__seg_<method>__<dataset>.json``."""
    return Path(output) / f"{slug(record['model'])}__{slug(record['task'])}__{slug(record['dataset'])}.json"


def write_record(output: str | Path, record: dict[str, Any]) -> Path:
    """Write ``record`` atomically into ``output``; return its path."""
    path = result_path(output, record)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, json.dumps(record, indent=2, allow_nan=False) + "\n")


def format_table(records: Sequence[dict[str, Any]]) -> str:
    """Rows dataset x method, one mIoU column per model (and aAcc for a single model), then the two reference
    points of each row: ``all-bg`` (the all-background, or most-frequent-class, predictor) and ``oracle`` (the
    patch-resolution oracle; one column per model when the models' patch grids give different values); last
    the mean mIoU."""
    models = list(dict.fromkeys(r["model"] for r in records))
    rows = list(dict.fromkeys((r["dataset"], r["method"]) for r in records))
    by_key = {(r["dataset"], r["method"], r["model"]): r["metrics"] for r in records}
    single = len(models) == 1

    def value(dataset: str, method: str, model: str, key: str) -> float | None:
        return by_key.get((dataset, method, model), {}).get(key)

    def cell(dataset: str, method: str, model: str, key: str) -> str:
        v = value(dataset, method, model, key)
        return "-" if v is None else f"{v:.2f}"

    def first(dataset: str, method: str, key: str) -> str:
        found = [value(dataset, method, m, key) for m in models]
        return next((f"{v:.2f}" for v in found if v is not None), "-")

    oracle_varies = any(len({value(d, me, m, "oracle_mIoU") for m in models} - {None}) > 1 for d, me in rows)
    oracle_models = models if oracle_varies else models[:1]
    header = (["dataset", "method"] + (["mIoU", "aAcc"] if single else [f"mIoU {m}" for m in models]) + ["all-bg"]
              + ([f"oracle {m}" for m in models] if oracle_varies else ["oracle"]))
    body = []
    for dataset, method in rows:
        body.append([dataset, method] + [cell(dataset, method, m, "mIoU") for m in models]
                    + ([cell(dataset, method, models[0], "aAcc")] if single else [])
                    + [first(dataset, method, "background_mIoU")]
                    + [cell(dataset, method, m, "oracle_mIoU") for m in oracle_models])
    if len(rows) > 1:
        means = []
        for m in models:
            values = [value(d, me, m, "mIoU") for d, me in rows]
            means.append("-" if None in values else f"{sum(values) / len(values):.2f}")
        body.append(["mean", ""] + means + ([""] if single else []) + [""] * (1 + len(oracle_models)))
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def line(row: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    note = ("all-bg: every pixel the background class (the most frequent class where a dataset has none); "
            "oracle: the ground truth pooled to the patch grid by majority and upsampled as the heads' logits are")
    return "\n".join([line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in body] + [note])


def run_seg(models: Sequence[str], methods: Sequence[str], data: Sequence[DataSpec], *,
            output: str | Path | None = None, model_names: Sequence[str] | None = None,
            classes: str | Path | None = None, templates: Sequence[str] | None = None, split: str = "val",
            max_images: int | None = None, random_weights: bool = False, device: str | None = None,
            batch_size: int = 16, num_workers: int = 2, precision: str = "auto", progress: bool = True,
            settings: dict[str, Any] | None = None, resize_masks: bool = False, heads: Sequence[str] | None = None,
            log=print) -> list[dict[str, Any]]:
    """Evaluate every model x method x dataset; write one JSON each into ``output``; return the records.

    ``lseg`` needs ``heads``: one trained LSeg head (`un2clip train-dense` run or head folder) per model, or one
    for all; its windows default to the head's training crop. ``groupvit`` reads GroupViT models (``models``)
    and goes in a command of its own; on a generic folder its windows default to the model's input size.

    Methods, settings and every dataset folder are checked before any model is loaded; the
    text queries of a dataset are computed once per model and class-name set and shared by the
    methods that read the same names (ClearCLIP reads its own files, see ``SegSettings.class_names``).
    """
    import torch

    from un2clip.eval.seg import evaluate
    from un2clip.eval.seg.infer import TextClassifier, resolve_precision, text_classifier
    from un2clip.load import load_clip

    names = list(model_names) if model_names else [m.rstrip("/") for m in models]
    if len(names) != len(models):
        raise ValueError(f"{len(models)} models but {len(names)} model names")
    lseg_heads, heads_used = _lseg_heads(models, methods, heads)
    if "groupvit" in methods and len(set(methods)) > 1:
        raise ValueError("--method groupvit reads GroupViT models, the other methods CLIP models: run it on its own")
    settings = {k: v for k, v in (settings or {}).items() if v is not None}
    # each method reads its own repo's class-name files (its preset's class_names), unless --classes is given
    runs = [(method, i, resolve_settings(method, spec.dataset, **settings)) for i, spec in enumerate(data)
            for method in methods]  # a bad method or setting fails before anything is read
    loaded: dict[tuple[int, str], SegDataset] = {}
    for _, i, cfg in runs:
        key = (i, "file" if classes is not None else cfg.class_names)
        if key not in loaded:
            loaded[key] = load_dataset(data[i].root, data[i].dataset, classes=classes, split=split,
                                       max_images=max_images, class_names=cfg.class_names)
    first = {i: d for (i, _), d in reversed(loaded.items())}  # one loaded copy per dataset
    if not resize_masks:  # a mask of another size than its image fails before any model loads
        for i in range(len(data)):  # the files are the same whichever class names were read
            check_mask_sizes(first[i])
    for _, i, cfg in runs:  # a threshold without a background class fails before loading anything
        if (cfg.prob_threshold > 0 or cfg.area_threshold > 0) and first[i].background is None:
            raise ValueError(f"{data[i].dataset} has no background class: prob_threshold and area_threshold "
                             "must be 0")
    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    used_precision = resolve_precision(dev, precision)
    records = []
    for spec, name in zip(models, names):
        if "groupvit" in methods:
            from un2clip.models.groupvit import load_groupvit

            model = load_groupvit(spec).to(dev).eval()
        else:
            model = load_clip(spec, random_weights=random_weights).to(dev).eval()
        head = lseg_heads.get(spec)
        classifiers: dict[tuple[int, str, str], TextClassifier] = {}
        for i in range(len(data)):
            for method in methods:
                cfg = next(c for m, j, c in runs if m == method and j == i)
                if method in DENSE_METHODS:  # the windows' side follows the head or the model
                    cfg = resolve_settings(method, data[i].dataset,
                                           **{**_dense_sizes(method, data[i].dataset, model, head), **settings})
                key = (i, "file" if classes is not None else cfg.class_names)
                ds = loaded[key]
                used = list(templates) if templates is not None else DEFAULT_TEMPLATES.get(method, ds.templates)
                text_key = (*key, repr(used))
                if text_key not in classifiers:
                    classifiers[text_key] = text_classifier(model, ds.classes, used, precision=precision)
                scorer = _scorer(method, model, head, classifiers[text_key], ds.background)
                metrics = evaluate(model, ds, method=method, classifier=classifiers[text_key], batch_size=batch_size,
                                   num_workers=num_workers, precision=precision, progress=progress,
                                   resize_masks=resize_masks, scorer=scorer, **cfg.to_dict())
                options = {**cfg.to_dict(), "split": split, "max_images": max_images, "precision": used_precision,
                           "precision_requested": precision, "resize_masks": resize_masks,
                           "templates": "imagenet-80" if used is None else used,
                           "classes_file": None if classes is None else str(classes), "classes": ds.classes}
                extra = {"model_spec": spec, "data": str(ds.root.resolve()), "device": str(dev),
                         "random_weights": random_weights}
                if method == "lseg":
                    extra["lseg_head"] = heads_used[spec]
                    extra["lseg_trained_labels"] = list(head.config.labels)
                record = result_record(name, method, ds.name, metrics, options, extra)
                if output is not None:
                    path = write_record(output, record)
                    log(f"{name} | {method} | {ds.name}: mIoU {metrics['mIoU']:.2f}, aAcc {metrics['aAcc']:.2f}"
                        f" -> {path}")
                records.append(record)
        del model
    return records


def _lseg_heads(models: Sequence[str], methods: Sequence[str],
                heads: Sequence[str] | None) -> tuple[dict[str, Any], dict[str, str]]:
    """{model spec: LSegHead} and {model spec: head spec} for ``--method lseg``; every head read before any model."""
    if "lseg" not in methods:
        if heads:
            raise ValueError("--head goes with --method lseg (a trained LSeg head)")
        return {}, {}
    if not heads:
        raise ValueError("--method lseg needs --head RUN: a `un2clip train-dense --head lseg` run (or its lseg/ "
                         "folder), one per --model or one for all")
    if len(heads) not in (1, len(models)):
        raise ValueError(f"{len(models)} models but {len(heads)} LSeg heads: give one head per model, or one")
    from un2clip.models.lseg import load_head

    chosen = list(heads) * len(models) if len(heads) == 1 else list(heads)
    loaded = {h: load_head(h) for h in dict.fromkeys(chosen)}
    return {m: loaded[h] for m, h in zip(models, chosen)}, dict(zip(models, chosen))


def _dense_sizes(method: str, dataset: str, model: Any, head: Any) -> dict[str, int]:
    """Default window geometry of a dense method: LSeg's training crop; GroupViT's input size on a generic folder
    (NVlabs' 448 / 224 on the named benchmarks)."""
    if method == "lseg":
        side = int(head.config.image_size)
    elif dataset == "generic":
        side = int(model.image_size)
    else:
        return {}
    return {"short_side": side, "crop": side, "stride": max(1, side // 2)}


def _scorer(method: str, model: Any, head: Any, classifier: Any, background: int | None) -> Any:
    """The window scorer of a dense method (None for the last-block heads)."""
    from un2clip.eval.seg.dense import GroupViTScorer, LSegScorer

    if method == "lseg":
        return LSegScorer(model, head)
    if method == "groupvit":
        return GroupViTScorer(model, classifier.query_class.tolist(), background)
    return None
