"""MMVP (the MLLM benchmark of Tong et al. 2024, "Eyes Wide Shut?"): 300 questions on 150 CLIP-blind image
pairs, two options each.

Layout of the official release (``tsb0601/MMVP``, the ``MMVP/MMVP`` dataset): ``DIR/Questions.csv`` with the
columns Index, Question, Options, Correct Answer (e.g. ``1, Are the butterfly's wings closer to being open or
closed?, (a) Open (b) Closed, (a)``) and the images at ``DIR/MMVP Images/<Index>.jpg`` (the official script
reads ``MMVP Imgaes``, which is accepted too). The prompt is Question + " " + Options, as the official
``evaluate_mllm.py`` builds it. Scoring as the paper does: questions 1-2, 3-4, ... form pairs, and a pair counts
only when both of its questions are answered right; ``accuracy`` is the percentage of such pairs. The paper
grades free answers with GPT-4; here an answer is matched to an option by letter or text
(:mod:`un2clip.eval.mllm.choices`), with no model in the loop.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from un2clip.errors import first_few
from un2clip.eval.core.metrics import mmvp_mllm_scores
from un2clip.eval.mllm.choices import generate_answers, letter_index, match_choice, write_samples_csv

if TYPE_CHECKING:
    from un2clip.models.llava import LlavaChat

COLUMNS = ("Index", "Question", "Options", "Correct Answer")
IMAGE_FOLDERS = ("MMVP Images", "MMVP Imgaes")  # the release's name, and the official script's spelling
LAYOUT = ("expected MMVP's layout: DIR/Questions.csv with the columns Index, Question, Options, Correct Answer "
          "(options as '(a) ... (b) ...', answers as '(a)'), two consecutive rows per image pair, and the images "
          "at DIR/MMVP Images/<Index>.jpg")
_OPTION = re.compile(r"\(([A-Za-z])\)\s*")


@dataclass(frozen=True)
class MmvpQuestion:
    """One MMVP question: ``answer`` indexes ``options``."""

    index: str
    question: str
    options: tuple[str, ...]
    answer: int
    image: Path
    options_text: str  # as written in the table

    @property
    def prompt(self) -> str:
        """The official prompt: the question, a space, the options as written in the table."""
        return self.question + " " + self.options_text


def parse_options(text: str) -> tuple[str, ...]:
    """``"(a) Open (b) Closed"`` -> ``("Open", "Closed")``; letters must run a, b, c ..."""
    parts = _OPTION.split(text.strip())
    if len(parts) < 5 or parts[0].strip():
        raise ValueError(f"options {text!r} are not written as '(a) ... (b) ...'")
    letters, values = parts[1::2], [v.strip() for v in parts[2::2]]
    if [x.lower() for x in letters] != [chr(97 + k) for k in range(len(letters))] or not all(values):
        raise ValueError(f"options {text!r} are not written as '(a) ... (b) ...'")
    return tuple(values)


def read_mmvp_mllm(root: str | Path) -> list[MmvpQuestion]:
    """The questions of an MMVP folder; a malformed folder is an error naming the path and the layout."""
    root = Path(root)
    table = root / "Questions.csv"
    if not table.is_file():
        raise FileNotFoundError(f"{table} not found; {LAYOUT}")
    folder = next((root / f for f in IMAGE_FOLDERS if (root / f).is_dir()), None)
    if folder is None:
        raise FileNotFoundError(f"{root / IMAGE_FOLDERS[0]} not found; {LAYOUT}")
    with open(table, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = tuple(c.strip() for c in reader.fieldnames or ())
        if not set(COLUMNS) <= set(header):
            raise ValueError(f"{table} has the columns {list(header)}; {LAYOUT}")
        rows = [{k.strip(): (v or "").strip() for k, v in r.items() if k} for r in reader]
    if not rows or len(rows) % 2:
        raise ValueError(f"{table} has {len(rows)} questions, not a positive even number; {LAYOUT}")
    questions, missing = [], []
    for n, row in enumerate(rows, start=2):
        try:
            options = parse_options(row["Options"])
        except ValueError as err:
            raise ValueError(f"{table} row {n}: {err}; {LAYOUT}") from None
        answer = _answer_index(row["Correct Answer"], options)
        if answer is None:
            raise ValueError(f"{table} row {n}: Correct Answer {row['Correct Answer']!r} names none of the options "
                             f"{list(options)}; {LAYOUT}")
        image = folder / f"{row['Index']}.jpg"
        if not image.is_file():
            missing.append(str(image))
        questions.append(MmvpQuestion(row["Index"], row["Question"], options, answer, image, row["Options"]))
    if missing:
        raise FileNotFoundError(f"{len(missing)} MMVP image(s) missing: {first_few(missing)}; {LAYOUT}")
    return questions


def _answer_index(text: str, options: tuple[str, ...]) -> int | None:
    m = re.fullmatch(r"\(?([A-Za-z])\)?", text.strip())
    if m:
        return letter_index(m.group(1), len(options))
    lowered = [o.lower() for o in options]
    return lowered.index(text.strip().lower()) if text.strip().lower() in lowered else None


def evaluate(model: LlavaChat, data: str | Path, *, batch_size: int = 8, max_new_tokens: int = 16,
             prompt_suffix: str = "", progress: bool = True, samples_csv: str | Path | None = None) -> dict[str, float]:
    """MMVP scores of a LLaVA in percent (see :func:`mmvp_mllm_scores`), plus ``n_unmatched``: answers that named
    no option. ``prompt_suffix`` goes after the official prompt (default none, as the official script)."""
    questions = read_mmvp_mllm(data)
    prompts = [q.prompt + prompt_suffix for q in questions]
    answers = generate_answers(model, lambda i: Image.open(questions[i].image), prompts, batch_size=batch_size,
                               max_new_tokens=max_new_tokens, progress=progress, desc="MMVP questions")
    picks = [match_choice(a, q.options) for a, q in zip(answers, questions)]
    correct = [p == q.answer for p, q in zip(picks, questions)]
    scores = mmvp_mllm_scores(correct)
    scores["n_unmatched"] = sum(p is None for p in picks)
    if samples_csv is not None:
        rows = [(q.index, k // 2, q.prompt, q.options[q.answer], a, "" if p is None else q.options[p], int(c))
                for k, (q, a, p, c) in enumerate(zip(questions, answers, picks, correct))]
        write_samples_csv(samples_csv, ("index", "pair", "prompt", "answer", "response", "matched", "correct"), rows)
    return scores
