"""The shapes world's linear probes: how much of each scene attribute a frozen image embedding carries.

``world_probe`` embeds a shapes-world split and probes each attribute of the scene (count, view) on every
image and each attribute of an object on the images with one object only: in a scene of two or three objects
"the shape" has several answers, and the first object's would be a label the embedding cannot be expected to
predict. The classifier is :func:`un2clip.eval.encoder.probe.linear_probe`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from un2clip.eval.encoder.probe import linear_probe

PROBED = ("shape", "color", "size", "position", "orientation", "state", "dot", "glyph", "count", "view")
SCENE_ATTRIBUTES = ("count", "view")
# bumped whenever world_probe's numbers change meaning, so that cached results made before are redone
# 1: first object of every scene; 2: object attributes on single-object scenes; 3: the classifier starts from
# zero (it started from the global RNG, so two identical calls could differ by a point or two)
PROTOCOL = 3


def _labels(rows: list[dict], attribute: str) -> list[str]:
    """Each row's label; "None" where it has none (an object attribute of a scene with several objects,
    or one its object lacks, such as the orientation of a circle)."""
    if attribute in SCENE_ATTRIBUTES:
        return [str(r[attribute]) for r in rows]
    return [str(r["objects"][0].get(attribute)) if len(r["objects"]) == 1 else "None" for r in rows]


@torch.inference_mode()
def embed_files(model, paths: list[Path], *, batch_size: int = 256, progress: bool = True) -> torch.Tensor:
    """(N, D) L2-normalised image embeddings of image files."""
    out = []
    for i in tqdm(range(0, len(paths), batch_size), desc="embedding", disable=not progress):
        images = [Image.open(p).convert("RGB") for p in paths[i:i + batch_size]]
        out.append(F.normalize(model.encode_image(model.preprocess(images).to(model.device)).float(), dim=-1).cpu())
    return torch.cat(out)


def world_probe(model, world: str | Path, *, n_train: int = 5000, progress: bool = True) -> dict[str, float]:
    """Probe accuracy (%) per attribute: fitted on world/train (first ``n_train``), scored on world/val.

    Object attributes use the single-object images of each split only (see the module docstring)."""
    world = Path(world)
    splits = {}
    for split, limit in (("train", n_train), ("val", None)):
        path = world / split / "attributes.jsonl"
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: expected a shapes world written by `un2clip world generate`")
        rows = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()][:limit]
        if not rows:
            raise ValueError(f"{path} lists no images: the linear probes need a world with training and "
                             "validation images (`un2clip world generate --n-train N --n-val M`)")
        splits[split] = (rows, embed_files(model, [world / split / r["image"] for r in rows], progress=progress))
    (tr_rows, tr_x), (te_rows, te_x) = splits["train"], splits["val"]
    results = {}
    for attribute in PROBED:
        tr, te = _labels(tr_rows, attribute), _labels(te_rows, attribute)
        keep_tr = [i for i, v in enumerate(tr) if v != "None"]
        keep_te = [i for i, v in enumerate(te) if v != "None"]
        classes = sorted({tr[i] for i in keep_tr})
        if len(classes) < 2 or not keep_te:
            continue
        index = {c: k for k, c in enumerate(classes)}
        keep_te = [i for i in keep_te if te[i] in index]
        ytr = torch.tensor([index[tr[i]] for i in keep_tr])
        yte = torch.tensor([index[te[i]] for i in keep_te])
        results[f"probe_{attribute}"] = linear_probe(tr_x[keep_tr], ytr, te_x[keep_te], yte)
    results["probe_mean"] = sum(results.values()) / max(1, len(results))
    return results
