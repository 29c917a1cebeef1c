"""MMVP-VLM: pairs of images that CLIP confuses, each with one statement per image.

The official protocol (tsb0601/MMVP, ``scripts/evaluate_vlm.py``): ``DIR/Questions.csv``
with the columns Question ID, Type, Statement; the images of a pair at
``DIR/MLLM_VLM Images/<Type of the pair's first row>/<Question ID>.jpg``. Two consecutive
rows form a pair. The prompt is "a photo of " + statement. For each text, softmax over the
two images' logits; the text picks image 1 if its probability is > 0.5, else image 2. A pair
counts only if both texts pick their own image. Scores are percentages per pattern and
their mean (``average``), which the official script does not print.

Where the official script and this module could part, this module makes them agree or says so:

- Ground truth: the official script makes a statement with an odd Question ID belong to
  image 1 and one with an even ID to image 2; here the first row of a pair belongs to
  image 1. A pair whose IDs are not odd then even is refused (with its row number), so
  both rules give the same answer on every file this module scores.
- Category: the official script gives pair ``k`` (counted from 0) the pattern
  ``PATTERNS[k // 15]``; here the Type column decides. On a file of exactly 135 pairs a
  warning names the pairs where the two disagree (other sizes have no official category).
- Precision: the official script runs in fp32, and so does :func:`evaluate` by default:
  under bf16 autocast close pairs flip, and one pair of 135 is 0.74 points.

The image side is the pooled, projected class embedding (``readout="pooled"``), as the official
script and un²CLIP score. ``readout="diva"`` is DIVA's own MMVP readout (its modified OpenAI-CLIP
``forward``): the class token plus the mean of 76 patch tokens drawn uniformly with replacement, every
token after the final norm and the visual projection; the draws come from ``readout_seed``.
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from un2clip.errors import first_few
from un2clip.eval.core.embed import ImageList, PathImages, embed_images, embed_texts
from un2clip.eval.core.metrics import mmvp_pair_correct, mmvp_scores, mmvp_text_picks

if TYPE_CHECKING:
    from un2clip.models.clip import ClipModel

COLUMNS = ("Question ID", "Type", "Statement")
IMAGE_FOLDER = "MLLM_VLM Images"
PROMPT_PREFIX = "a photo of "
# The nine patterns in the order the official script reports them.
PATTERNS = (
    "Orientation and Direction",
    "Presence of Specific Features",
    "State and Condition",
    "Quantity and Count",
    "Positional and Relational Context",
    "Color and Appearance",
    "Structural Characteristics",
    "Texts",
    "Viewpoint and Perspective",
)
PAIRS_PER_PATTERN = 15  # the official script's category of pair k is PATTERNS[k // PAIRS_PER_PATTERN]
OFFICIAL_PAIRS = PAIRS_PER_PATTERN * len(PATTERNS)  # 135
DEFAULT_PRECISION = "fp32"  # the official script's; bf16 autocast flips close pairs
LAYOUT = (f"expected MMVP-VLM's layout: DIR/Questions.csv with the columns {', '.join(COLUMNS)} "
          f"(two consecutive rows per pair) and the images at DIR/{IMAGE_FOLDER}/<Type>/<Question ID>.jpg")

# Published MMVP-VLM averages (un²CLIP, arXiv 2505.24517): the original encoder and its un²CLIP fine-tune.
PUBLISHED_MMVP = {
    "openai/clip-vit-large-patch14": {"original": 19.3, "un2clip": 32.6},
    "google/siglip-so400m-patch14-384": {"original": 37.0, "un2clip": 41.5},
}


@dataclass(frozen=True)
class MmvpPair:
    """Two images with one statement each; ``statements[j]`` describes ``images[j]``."""

    qids: tuple[str, str]
    pattern: str
    statements: tuple[str, str]
    images: tuple[Path, Path]


def read_mmvp(root: str | Path) -> list[MmvpPair]:
    """The pairs of an MMVP-VLM folder; a malformed folder is an error that names the path and the layout."""
    root = Path(root)
    table = root / "Questions.csv"
    if not table.is_file():
        raise FileNotFoundError(f"{table} not found; {LAYOUT}")
    with open(table, newline="", encoding="utf-8-sig") as f:
        rows = [r for r in csv.reader(f) if any(cell.strip() for cell in r)]
    if not rows:
        raise ValueError(f"{table} is empty; {LAYOUT}")
    header = tuple(c.strip() for c in rows[0])
    if header != COLUMNS:
        raise ValueError(f"{table} has the columns {list(header)}; {LAYOUT}")
    body = rows[1:]
    bad = next((k for k, r in enumerate(body) if len(r) != len(COLUMNS)), None)
    if bad is not None:
        raise ValueError(f"{table} row {bad + 2} has {len(body[bad])} fields instead of {len(COLUMNS)}; {LAYOUT}")
    if not body or len(body) % 2:
        raise ValueError(f"{table} has {len(body)} question rows, not a positive even number; {LAYOUT}")
    first_row: dict[str, int] = {}
    for k, (qid, _, statement) in enumerate(body):
        row = k + 2  # the header is row 1
        if not statement.strip():
            raise ValueError(f"{table} row {row} (Question ID {qid.strip()!r}) has an empty Statement; {LAYOUT}")
        if qid.strip() in first_row:
            raise ValueError(f"{table} rows {first_row[qid.strip()]} and {row} share the Question ID "
                             f"{qid.strip()!r}: each image needs its own; {LAYOUT}")
        first_row[qid.strip()] = row
    pairs, missing = [], []
    for k in range(0, len(body), 2):
        (q1, t1, s1), (q2, t2, s2) = ([c.strip() for c in r] for r in body[k:k + 2])
        if t1 != t2:
            raise ValueError(f"{table} rows {k + 2} and {k + 3} form a pair but have the types {t1!r} and {t2!r}; "
                             f"{LAYOUT}")
        _check_id_parity(table, k + 2, q1, q2)
        folder = root / IMAGE_FOLDER / t1
        images = (folder / f"{q1}.jpg", folder / f"{q2}.jpg")
        missing += [str(p) for p in images if not p.is_file()]
        pairs.append(MmvpPair((q1, q2), t1, (s1, s2), images))
    if missing:
        raise FileNotFoundError(f"{len(missing)} MMVP image(s) missing: {first_few(missing)}; {LAYOUT}")
    _warn_official_category_mismatch(table, [p.pattern for p in pairs])
    return pairs


def _check_id_parity(table: Path, row: int, q1: str, q2: str) -> None:
    """Refuse a pair (first row ``row``) whose Question IDs are not odd then even, the official script's image 1 and 2."""
    ids = []
    for r, q in ((row, q1), (row + 1, q2)):
        try:
            ids.append(int(q))
        except ValueError:
            raise ValueError(f"{table} row {r}: Question ID {q!r} is not a whole number; the official script reads "
                             f"IDs as integers and scores an odd ID against image 1, an even one against image 2; "
                             f"{LAYOUT}") from None
    if ids[0] % 2 != 1 or ids[1] % 2 != 0:
        first = row if ids[0] % 2 != 1 else row + 1
        raise ValueError(f"{table} row {first}: the pair of rows {row} and {row + 1} has the Question IDs {q1} and "
                         f"{q2}, not an odd then an even one; the official script scores an odd ID's statement "
                         f"against image 1 and an even ID's against image 2, this reader the first row's against "
                         f"image 1, and only odd-then-even pairs give both the same answer; {LAYOUT}")


def official_category_mismatches(pair_types: Sequence[str]) -> list[int] | None:
    """Indices of the pairs whose type is not the official script's category for them, ``PATTERNS[k // 15]``.

    None when there are not exactly 135 pairs: the official rule then names no category.
    """
    if len(pair_types) != OFFICIAL_PAIRS:
        return None
    return [k for k, t in enumerate(pair_types) if t != PATTERNS[k // PAIRS_PER_PATTERN]]


def _warn_official_category_mismatch(table: Path, pair_types: Sequence[str]) -> None:
    bad = official_category_mismatches(pair_types)
    if not bad:
        return
    shown = "; ".join(f"rows {2 * k + 2}-{2 * k + 3} {pair_types[k]!r} vs {PATTERNS[k // PAIRS_PER_PATTERN]!r}"
                      for k in bad[:3])
    more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
    warnings.warn(f"{table}: {len(bad)} of its {OFFICIAL_PAIRS} pairs have a Type other than the category the official "
                  f"MMVP-VLM script gives them (pair k, from 0, is in pattern k // {PAIRS_PER_PATTERN} of the official "
                  f"order): {shown}{more}. Scores here follow the Type column, so the per-pattern scores differ from "
                  f"the official script's", UserWarning, stacklevel=2)


READOUTS = ("pooled", "diva")
DIVA_READOUT_PATCHES = 76  # DIVA's int(77 - 1)


def diva_readout(tokens: torch.Tensor, picks: torch.Tensor) -> torch.Tensor:
    """(B, 1 + P, D) class then patch tokens (after final norm and projection), (B, n) patch indices -> (B, D):
    the class token plus the mean of the picked patch tokens."""
    patches = torch.gather(tokens[:, 1:], 1, picks[..., None].expand(-1, -1, tokens.shape[-1]))
    return tokens[:, 0] + patches.mean(1)


class DivaReadout:
    """``model`` with DIVA's MMVP image embedding as ``encode_image`` (other attributes are the model's)."""

    def __init__(self, model: ClipModel, *, n_patches: int = DIVA_READOUT_PATCHES, seed: int = 0):
        self.model = model
        self.n_patches = n_patches
        self.generator = torch.Generator().manual_seed(seed)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        tokens = self.model.image_tokens(pixels, keep_class=True).float()  # (B, 1 + P, D)
        picks = torch.randint(0, tokens.shape[1] - 1, (tokens.shape[0], self.n_patches), generator=self.generator)
        return diva_readout(tokens, picks.to(tokens.device))

    def __getattr__(self, name: str):
        return getattr(self.model, name)


def mmvp_logits(model: ClipModel, pairs: list[MmvpPair], *, prompt_prefix: str = PROMPT_PREFIX,
                batch_size: int = 32, num_workers: int = 0, precision: str = DEFAULT_PRECISION,
                progress: bool = True, readout: str = "pooled", readout_seed: int = 0) -> torch.Tensor:
    """(P, 2, 2) logits: ``[p, j, i]`` = logit scale x cos(text j, image i) of pair p."""
    if readout not in READOUTS:
        raise ValueError(f"MMVP readout must be one of {READOUTS}, got {readout!r}")
    paths = [im for p in pairs for im in p.images]
    reader = DivaReadout(model, seed=readout_seed) if readout == "diva" else model
    images = embed_images(reader, ImageList(PathImages(paths), len(paths), model.processing),
                          batch_size=batch_size, num_workers=num_workers, precision=precision,
                          progress=progress, desc="MMVP images")
    if images.n_skipped:
        bad = sorted(set(range(len(paths))) - set(images.index.tolist()))
        raise ValueError(f"{images.n_skipped} MMVP image(s) cannot be read: "
                         f"{', '.join(str(paths[i]) for i in bad[:3])}; the benchmark needs every image")
    texts = [prompt_prefix + s for p in pairs for s in p.statements]
    text_embeds = embed_texts(model, texts, batch_size=batch_size, precision=precision, progress=progress,
                              desc="MMVP texts")
    img = images.embeds.reshape(len(pairs), 2, -1)  # (P, 2 images, D)
    txt = text_embeds.reshape(len(pairs), 2, -1)  # (P, 2 texts, D)
    return model.logit_scale * torch.einsum("pjd,pid->pji", txt, img)  # (P, 2, 2)


def evaluate(model: ClipModel, data: str | Path, *, prompt_prefix: str = PROMPT_PREFIX, batch_size: int = 32,
             num_workers: int = 0, precision: str = DEFAULT_PRECISION, progress: bool = True,
             pairs_csv: str | Path | None = None, readout: str = "pooled",
             readout_seed: int = 0) -> dict[str, float]:
    """MMVP-VLM scores in percent: one per pattern and their mean, ``average``.

    ``precision`` defaults to fp32 on every device, as the official script runs ("auto":
    bf16 autocast on CUDA). ``readout``: "pooled" (the official script's image embedding) or
    "diva" (DIVA's: class token + mean of 76 drawn patch tokens, draws from ``readout_seed``).

    With ``pairs_csv`` also write one row per pair: qid1, qid2, pred1, pred2, gt1, gt2,
    score, type and the two texts' probabilities of image 1.
    """
    model.eval()
    pairs = read_mmvp(data)
    logits = mmvp_logits(model, pairs, prompt_prefix=prompt_prefix, batch_size=batch_size,
                         num_workers=num_workers, precision=precision, progress=progress, readout=readout,
                         readout_seed=readout_seed)
    p_first, picks = mmvp_text_picks(logits)
    correct = mmvp_pair_correct(picks)
    types = [p.pattern for p in pairs]
    known = [t for t in PATTERNS if t in types]
    order = known + [t for t in dict.fromkeys(types) if t not in PATTERNS]
    scores = mmvp_scores(correct, types, order)
    if pairs_csv is not None:
        write_pairs_csv(pairs_csv, pairs, picks, correct, p_first)
    scores["n_pairs"] = len(pairs)
    return scores


def average_definition(scores: dict[str, float]) -> str:
    """What ``scores["average"]`` of :func:`evaluate` is, in words, for the result file."""
    n = sum(k != "average" and not k.startswith("n_") for k in scores)
    return (f"the mean of the {n} pattern scores, each pattern weighted equally (not the share of all pairs); "
            f"the official MMVP-VLM script prints the pattern scores and no average")


def write_pairs_csv(path: str | Path, pairs: list[MmvpPair], picks: torch.Tensor, correct: torch.Tensor,
                    p_first: torch.Tensor) -> Path:
    """One row per pair, in the official script's vocabulary (``img1`` / ``img2``)."""
    name = ("img1", "img2")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["qid1", "qid2", "pred1", "pred2", "gt1", "gt2", "score", "type", "p_img1_text1", "p_img1_text2"])
        for p, pick, ok, prob in zip(pairs, picks.tolist(), correct.tolist(), p_first.tolist()):
            w.writerow([p.qids[0], p.qids[1], name[pick[0]], name[pick[1]], "img1", "img2", int(ok), p.pattern,
                        f"{prob[0]:.6f}", f"{prob[1]:.6f}"])
    return path


def published_anchor(model_spec: str, *, random_weights: bool = False) -> dict[str, float] | None:
    """The paper's MMVP-VLM averages when ``model_spec`` names an original encoder it reports (Hub id or preset)."""
    from un2clip.models.presets import PRESETS

    if random_weights:
        return None
    hub_id = PRESETS[model_spec].clip if model_spec in PRESETS else model_spec
    return PUBLISHED_MMVP.get(hub_id)


def result_extras(model_spec: str, metrics: dict[str, float], *, random_weights: bool = False
                  ) -> tuple[dict[str, object], list[str]]:
    """What a result file of this task adds (the paper's average for a model it reports, what ``average`` is)
    and the line printed under the metrics."""
    fields: dict[str, object] = {}
    lines: list[str] = []
    anchor = published_anchor(model_spec, random_weights=random_weights)
    if anchor:
        fields["published"] = anchor
        lines.append(f"published average (arXiv 2505.24517): original {anchor['original']}, "
                     f"un²CLIP {anchor['un2clip']}")
    fields["average_definition"] = average_definition(metrics)
    return fields, lines
