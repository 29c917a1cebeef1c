"""Zero-shot classification with CLIP_benchmark's protocol.

A class's text embedding is the mean of the L2-normalised embeddings of every template
filled with the class name, normalised again; logits = 100 x normalised image embedding
. class embeddings; metrics acc1, acc5 (with 5 or more classes) and the mean per-class
recall, as fractions.

Two on-disk layouts:

- an **image folder per class** (torchvision's ImageFolder): ``DIR/<class>/**/<image>``,
  classes in sorted folder order; optional ``DIR/classnames.txt`` (one name per line, in
  sorted folder order, e.g. ImageNet's synset folders) and ``DIR/templates.txt``.
  Without ``classnames.txt`` the folder names are the class names, ``_`` read as a space.
- **CLIP_benchmark's local webdataset**: ``DIR/<split>/nshards.txt``,
  ``DIR/<split>/0.tar ...`` with an image and a ``.cls`` label per sample,
  ``DIR/classnames.txt`` and ``DIR/zeroshot_classification_templates.txt``.

Templates hold ``{c}`` (CLIP_benchmark) or ``{}`` where the class name goes; without a
templates file the 80 ImageNet templates of CLIP are used.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from un2clip.data.sources import IMAGE_EXTENSIONS, is_image_name
from un2clip.eval.core.embed import ImageList, PathImages, SourceImages, embed_images, embed_texts
from un2clip.eval.core.metrics import zeroshot_metrics

if TYPE_CHECKING:
    from PIL import Image

    from un2clip.models.clip import ClipModel

FOLDER_LAYOUT = ("expected an image folder per class (DIR/<class>/<image>, optional DIR/classnames.txt and "
                 "DIR/templates.txt) or CLIP_benchmark's webdataset layout (DIR/<split>/nshards.txt, "
                 "DIR/<split>/0.tar ... with image + .cls members, DIR/classnames.txt, "
                 "DIR/zeroshot_classification_templates.txt)")


def imagenet_templates() -> list[str]:
    """The 80 prompt templates CLIP uses for ImageNet, ``{c}`` marking the class name."""
    text = resources.files("un2clip.eval").joinpath("data/imagenet_templates.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_lines(path: str | Path) -> list[str]:
    """Non-empty stripped lines of a UTF-8 text file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    return [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]


def fill_template(template: str, classname: str) -> str:
    """Put ``classname`` where ``{c}`` or ``{}`` stands in ``template``."""
    if "{c}" in template:
        return template.replace("{c}", classname)
    if "{}" in template:
        return template.replace("{}", classname)
    raise ValueError(f"template {template!r} has no {{c}} or {{}} where the class name goes")


def _lines(value: Sequence[str] | str | Path | None) -> list[str] | None:
    """A list as given, or the lines of a file named by a string or path."""
    if value is None:
        return None
    if isinstance(value, (str, Path)):
        return read_lines(value)
    return [str(v) for v in value]


# -- data -----------------------------------------------------------------------------------------------


@dataclass
class ClassificationSet:
    """Labelled images to classify: ``load(i) -> (image or None, label)`` for i in range(n)."""

    load: Callable[[int], tuple[Image.Image | None, Any]]
    n: int
    classnames: list[str]
    templates: list[str]
    layout: str  # "folder" | "webdataset"
    n_skipped_at_open: int = 0  # webdataset samples without an image member


def _folder_images(folder: Path) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [os.path.join(dirpath, f) for f in sorted(filenames) if is_image_name(f)]
    return found


def _image_folder_set(root: Path, classnames: list[str] | None, templates: list[str] | None) -> ClassificationSet:
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise ValueError(f"{root} has no class folders; {FOLDER_LAYOUT}")
    paths, labels = [], []
    for label, folder in enumerate(folders):
        found = _folder_images(folder)
        if not found:
            raise ValueError(f"class folder {folder} has no images ({', '.join(IMAGE_EXTENSIONS)}); "
                             f"{FOLDER_LAYOUT}")
        paths += found
        labels += [label] * len(found)
    names = [f.name for f in folders]
    if classnames is None and (root / "classnames.txt").is_file():
        classnames = read_lines(root / "classnames.txt")
    if classnames is None:
        classnames = [n.replace("_", " ") for n in names]
    elif set(classnames) == set(names):
        classnames = names
    elif len(classnames) != len(names):
        raise ValueError(f"{len(classnames)} class names for {len(names)} class folders in {root}: "
                         "classnames.txt holds one name per class folder, in sorted folder order")
    if templates is None and (root / "templates.txt").is_file():
        templates = read_lines(root / "templates.txt")
    return ClassificationSet(PathImages(paths, labels), len(paths), list(classnames),
                             templates or imagenet_templates(), "folder")


def parse_label(text: str | None) -> int:
    """The integer class index of a ``.cls`` member; ``ValueError`` when absent or not an integer."""
    if text is None:
        raise ValueError("sample has no .cls label")
    return int(text.strip())


def webdataset_shards(root: Path, split: str) -> list[str] | None:
    """The shards of ``root/split`` (named by ``nshards.txt``, else every ``.tar`` there), or None."""
    folder = root / split
    if (folder / "nshards.txt").is_file():
        try:
            n = int((folder / "nshards.txt").read_text().strip())
        except ValueError:
            raise ValueError(f"{folder / 'nshards.txt'} does not hold a number of shards; {FOLDER_LAYOUT}") from None
        shards = [folder / f"{k}.tar" for k in range(n)]
        missing = [str(s) for s in shards if not s.is_file()]
        if missing:
            raise FileNotFoundError(f"{folder / 'nshards.txt'} names {n} shards but {missing[0]} is missing "
                                    f"({len(missing)} missing); {FOLDER_LAYOUT}")
        return [str(s) for s in shards]
    if folder.is_dir():
        tars = sorted(folder.glob("*.tar"), key=lambda p: (len(p.stem), p.stem))
        return [str(t) for t in tars] or None
    return None


def _webdataset_set(root: Path, shards: list[str], classnames: list[str] | None,
                    templates: list[str] | None) -> ClassificationSet:
    from un2clip.data.shards import WebDatasetSource

    if classnames is None:
        if not (root / "classnames.txt").is_file():
            raise FileNotFoundError(f"{root / 'classnames.txt'} not found (or pass classnames); {FOLDER_LAYOUT}")
        classnames = read_lines(root / "classnames.txt")
    if templates is None and (root / "zeroshot_classification_templates.txt").is_file():
        templates = read_lines(root / "zeroshot_classification_templates.txt")
    source = WebDatasetSource(shards, spec=str(root), caption_extension="cls")
    return ClassificationSet(SourceImages(source, parse_label), len(source), list(classnames),
                             templates or imagenet_templates(), "webdataset", source.n_skipped)


def load_classification_set(data: str | Path, *, split: str = "test",
                            classnames: Sequence[str] | str | Path | None = None,
                            templates: Sequence[str] | str | Path | None = None) -> ClassificationSet:
    """Open an ImageFolder or a CLIP_benchmark webdataset; ``classnames``/``templates`` override the folder's."""
    root = Path(data)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder; {FOLDER_LAYOUT}")
    names, temps = _lines(classnames), _lines(templates)
    if temps is not None:
        for t in temps:
            fill_template(t, "x")  # refuse a template without a placeholder before any work
    shards = webdataset_shards(root, split)
    if shards is not None:
        dataset = _webdataset_set(root, shards, names, temps)
    else:
        dataset = _image_folder_set(root, names, temps)
    if len(dataset.classnames) < 2:  # one class is always "right": acc1 would read 100 %
        named = f" ({dataset.classnames[0]})" if dataset.classnames else ""
        raise ValueError(f"{root} has {len(dataset.classnames)} class{named}: zero-shot classification needs at "
                         f"least two classes to choose between; {FOLDER_LAYOUT}")
    return dataset


# -- K-LITE knowledge prompts (un2clip.eval.encoder.knowledge builds the definitions from WordNet) ---------------------


def read_knowledge(path: str | os.PathLike) -> dict[str, str]:
    """``class<TAB>definition`` lines -> {class: definition}; blank lines and ``#`` comments skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"knowledge file {path} not found (expected class<TAB>definition lines)")
    out: dict[str, str] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        name, tab, definition = line.partition("\t")
        if not tab or not name.strip() or not definition.strip():
            raise ValueError(f"{path}:{n}: expected class<TAB>definition, got {line[:80]!r}")
        out[name.strip()] = definition.strip()
    return out


def knowledge_prompt(template: str, classname: str, definition: str) -> str:
    """The template filled with the class name, then ", <definition>." (K-LITE's appended knowledge)."""
    base = fill_template(template, classname).rstrip().rstrip(".")
    return f"{base}, {definition.strip().rstrip('.')}."


def class_prompts(classname: str, templates: Sequence[str], definition: str | None) -> list[str]:
    """Every prompt of one class: the plain templates, plus the knowledge prompts when there is a definition."""
    plain = [fill_template(t, classname) for t in templates]
    if not definition:
        return plain
    return plain + [knowledge_prompt(t, classname, definition) for t in templates]



# -- classifier and scores -----------------------------------------------------------------------------------


def zeroshot_classifier(model: ClipModel, classnames: Sequence[str], templates: Sequence[str], *,
                        batch_size: int = 256, precision: str = "auto", progress: bool = True,
                        knowledge: dict[str, str] | None = None) -> torch.Tensor:
    """(D, C) class embeddings: per class the normalised mean of its normalised template embeddings.

    ``knowledge`` ({class: definition}, K-LITE): a class with a definition also averages in the templates
    followed by its definition (:func:`un2clip.eval.encoder.knowledge.class_prompts`).
    """
    if knowledge:
        prompts = [class_prompts(c, templates, knowledge.get(c)) for c in classnames]
        emb = embed_texts(model, [p for ps in prompts for p in ps], batch_size=batch_size, precision=precision,
                          progress=progress, desc="class prompts")  # (sum of prompts, D), unit rows
        per_class = torch.stack([chunk.mean(dim=0) for chunk in emb.split([len(ps) for ps in prompts])])
        return torch.nn.functional.normalize(per_class, dim=-1).T.contiguous()  # (D, C)
    texts = [fill_template(t, c) for c in classnames for t in templates]
    emb = embed_texts(model, texts, batch_size=batch_size, precision=precision, progress=progress,
                      desc="class prompts")  # (C * T, D), unit rows
    per_class = emb.reshape(len(classnames), len(templates), -1).mean(dim=1)  # (C, D)
    return torch.nn.functional.normalize(per_class, dim=-1).T.contiguous()  # (D, C)


def zeroshot_logits(image_embeds: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
    """(N, D) normalised image embeddings, (D, C) classifier -> (N, C) logits = 100 x cosine."""
    return 100.0 * image_embeds @ classifier


def evaluate(model: ClipModel, data: str | Path, *, split: str = "test",
             classnames: Sequence[str] | str | Path | None = None,
             templates: Sequence[str] | str | Path | None = None, batch_size: int = 64, num_workers: int = 0,
             precision: str = "auto", progress: bool = True,
             knowledge: dict[str, str] | str | Path | None = None) -> dict[str, float]:
    """acc1, acc5 (5 classes or more), mean_per_class_recall, and the counts of images, classes, skipped images.

    ``knowledge``: K-LITE definitions ({class: definition} or a ``class<TAB>definition`` TSV file), ensembled
    with the plain templates; ``n_knowledge_classes`` counts the classes that had one.
    """
    model.eval()
    dataset = load_classification_set(data, split=split, classnames=classnames, templates=templates)
    if isinstance(knowledge, (str, Path)):
        knowledge = read_knowledge(knowledge)
    classifier = zeroshot_classifier(model, dataset.classnames, dataset.templates, batch_size=max(batch_size, 64),
                                     precision=precision, progress=progress, knowledge=knowledge)
    images = embed_images(model, ImageList(dataset.load, dataset.n, model.processing), batch_size=batch_size,
                          num_workers=num_workers, precision=precision, progress=progress, desc="zero-shot images")
    targets = torch.tensor(images.payloads, dtype=torch.long)
    n_classes = len(dataset.classnames)
    out_of_range = targets[(targets < 0) | (targets >= n_classes)]
    if out_of_range.numel():
        raise ValueError(f"{data}: label {int(out_of_range[0])} outside the {n_classes} classes of the class names")
    metrics = zeroshot_metrics(zeroshot_logits(images.embeds, classifier), targets)
    metrics.update(n_images=len(targets), n_classes=n_classes, n_templates=len(dataset.templates),
                   n_skipped_images=images.n_skipped + dataset.n_skipped_at_open)
    if knowledge is not None:
        metrics["n_knowledge_classes"] = sum(c in knowledge for c in dataset.classnames)
    return metrics
