"""CV-Bench (Tong et al. 2024, Cambrian-1): 2,638 vision-centric multiple-choice questions, 2D (spatial
relation, object count on ADE20K and COCO images) and 3D (depth order, relative distance on Omni3D images).

Layout of the release (the ``nyu-visionx/CV-Bench`` dataset): ``DIR/test_2d.jsonl`` and ``DIR/test_3d.jsonl``
(or one ``DIR/test.jsonl``), one question a line with the fields idx, type (2D/3D), task, question, choices
(a list), answer (``"(C)"``), prompt (question and choices pre-formatted), filename (the image under DIR, e.g.
``img/2D/count/ade20k_10.png``) and source (ADE20K, COCO, Omni3D); or the same rows as ``test*.parquet`` with
the image bytes in ``image`` (read with pyarrow). ``--data`` may also name one jsonl file.

Scoring as the CV-Bench authors report it: accuracy per source; 2D = mean of the ADE20K and COCO accuracies,
3D = the Omni3D accuracy, ``accuracy`` = mean of 2D and 3D. Per-task accuracies are given too. Percentages.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from un2clip.errors import first_few
from un2clip.eval.core.metrics import cvbench_scores
from un2clip.eval.mllm.choices import generate_answers, letter_index, match_choice, write_samples_csv

if TYPE_CHECKING:
    from un2clip.models.llava import LlavaChat

JSONL_FILES = (("test_2d.jsonl", "test_3d.jsonl"), ("test.jsonl",))
PARQUET_FILES = (("test_2d.parquet", "test_3d.parquet"), ("test.parquet",))
FIELDS = ("idx", "type", "task", "question", "choices", "answer", "source")
LAYOUT = ("expected CV-Bench's layout: DIR/test_2d.jsonl and DIR/test_3d.jsonl (or DIR/test.jsonl, or "
          "test*.parquet with the images inside) with the fields idx, type, task, question, choices, answer "
          "('(A)'...), source and filename (the image path under DIR)")
DEFAULT_SUFFIX = "\nAnswer with the option's letter from the given choices directly."

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CvBenchItem:
    """One CV-Bench question; ``answer`` indexes ``choices``; the image is a path or encoded bytes."""

    idx: str
    type: str
    task: str
    source: str
    question: str
    choices: tuple[str, ...]
    answer: int
    prompt: str
    image: Path | bytes

    def load_image(self) -> Image.Image:
        return Image.open(io.BytesIO(self.image) if isinstance(self.image, bytes) else self.image)


def _format_prompt(question: str, choices: Sequence[str]) -> str:
    return question + " Select from the following choices.\n" + "\n".join(
        f"({chr(65 + k)}) {c}" for k, c in enumerate(choices))


def _item(row: dict, where: str, root: Path) -> CvBenchItem:
    missing = [f for f in FIELDS if f not in row]
    if missing:
        raise ValueError(f"{where} lacks the field(s) {missing}; {LAYOUT}")
    choices = tuple(str(c) for c in row["choices"])
    m = re.fullmatch(r"\(?([A-Za-z])\)?", str(row["answer"]).strip())
    answer = letter_index(m.group(1), len(choices)) if m else None
    if answer is None:
        raise ValueError(f"{where}: answer {row['answer']!r} is not the letter of one of its {len(choices)} choices; "
                         f"{LAYOUT}")
    image = row.get("image")
    if isinstance(image, dict) and image.get("bytes"):
        img: Path | bytes = image["bytes"]
    elif isinstance(image, (bytes, bytearray)):
        img = bytes(image)
    elif row.get("filename"):
        img = root / str(row["filename"])
    else:
        raise ValueError(f"{where} has neither a filename nor image bytes; {LAYOUT}")
    prompt = str(row.get("prompt") or _format_prompt(str(row["question"]), choices))
    return CvBenchItem(str(row["idx"]), str(row["type"]), str(row["task"]), str(row["source"]),
                       str(row["question"]), choices, answer, prompt, img)


def read_cvbench(data: str | Path) -> list[CvBenchItem]:
    """The questions of a CV-Bench folder (or one jsonl file); malformed input is an error naming the path."""
    data = Path(data)
    if data.is_file():
        files, root = [data], data.parent
    elif data.is_dir():
        root = data
        files = _annotation_files(data)
    else:
        raise FileNotFoundError(f"{data} not found; {LAYOUT}")
    items: list[CvBenchItem] = []
    for file in files:
        for n, row in enumerate(_rows(file), start=1):
            items.append(_item(row, f"{file} row {n}", root))
    if not items:
        raise ValueError(f"{data} holds no questions; {LAYOUT}")
    missing = [str(it.image) for it in items if isinstance(it.image, Path) and not it.image.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} CV-Bench image(s) missing: {first_few(missing)}; {LAYOUT}")
    return items


def _annotation_files(folder: Path) -> list[Path]:
    """The annotation files of a CV-Bench folder: both halves, or the one file; one half alone is read with a
    warning naming the other."""
    for group in JSONL_FILES + PARQUET_FILES:
        present = [folder / f for f in group if (folder / f).is_file()]
        if len(present) == len(group):
            return present
    for group in (JSONL_FILES[0], PARQUET_FILES[0]):  # one half of the split release
        present = [folder / f for f in group if (folder / f).is_file()]
        if present:
            missing = [f for f in group if not (folder / f).is_file()]
            log.warning("%s has %s but not %s: scoring %s only (no overall accuracy)", folder, present[0].name,
                        missing[0], "2D" if "2d" in present[0].name else "3D")
            return present
    raise FileNotFoundError(f"{folder} holds none of test_2d.jsonl, test_3d.jsonl, test.jsonl or their .parquet "
                            f"forms; {LAYOUT}")


def _rows(file: Path) -> list[dict]:
    if file.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ModuleNotFoundError:
            raise ModuleNotFoundError(f"reading {file} needs pyarrow (pip install pyarrow), or use the release's "
                                      "test_2d.jsonl / test_3d.jsonl and img/ folder") from None
        return pq.read_table(file).to_pylist()
    rows = []
    with open(file, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{file} line {n} is not JSON ({err.msg}); {LAYOUT}") from None
    return rows


def evaluate(model: LlavaChat, data: str | Path, *, batch_size: int = 8, max_new_tokens: int = 16,
             prompt_suffix: str = DEFAULT_SUFFIX, limit: int | None = None, progress: bool = True,
             samples_csv: str | Path | None = None) -> dict[str, float]:
    """CV-Bench scores of a LLaVA in percent (see :func:`cvbench_scores`), plus ``n_unmatched``. The prompt is the
    row's ``prompt`` + ``prompt_suffix`` (default: LLaVA's instruction to answer with the option's letter)."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of questions, not {limit}")
    items = read_cvbench(data)
    if limit is not None:
        items = items[:limit]
    answers = generate_answers(model, lambda i: items[i].load_image(), [it.prompt + prompt_suffix for it in items],
                               batch_size=batch_size, max_new_tokens=max_new_tokens, progress=progress,
                               desc="CV-Bench questions")
    picks = [match_choice(a, it.choices) for a, it in zip(answers, items)]
    correct = [p == it.answer for p, it in zip(picks, items)]
    scores = cvbench_scores([it.source for it in items], [it.task for it in items], correct)
    scores["n_unmatched"] = sum(p is None for p in picks)
    if samples_csv is not None:
        rows = [(it.idx, it.type, it.task, it.source, it.choices[it.answer], a, "" if p is None else it.choices[p], int(c))
                for it, a, p, c in zip(items, answers, picks, correct)]
        write_samples_csv(samples_csv, ("idx", "type", "task", "source", "answer", "response", "matched", "correct"),
                          rows)
    return scores
