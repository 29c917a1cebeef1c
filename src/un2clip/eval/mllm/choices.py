"""Multiple-choice answers of a multimodal LLM: which option a free-text answer names, and the batched
generation loop the MLLM benchmarks (MMVP-MLLM, CV-Bench) share.

Matching, in order: a leading option letter ("(b)", "B.", "b)", "Answer: B"); else the one option whose text
appears in the answer as whole words (none or several: no match); else an option letter in parentheses
anywhere ("... is (a)"). A hedged answer, one that names two or more option letters ("(A) or (B)", "A/B",
"The answer is (A) and (C)"), matches no option, whatever its first letter. An answer that matches no option
counts as wrong.
"""

from __future__ import annotations

import csv
import re
import string
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image
from tqdm.auto import tqdm

if TYPE_CHECKING:
    from un2clip.models.llava import LlavaChat

LETTERS = string.ascii_uppercase
# "(b) ...", "B", "B.", "b)", "B: ...", "Answer: B", "The answer is (B)"; a letter followed by a word ("a cat")
# is not a letter answer
_LEADING = re.compile(r"^\s*(?:(?:the\s+)?(?:correct\s+)?(?:answer|option)(?:\s+is)?\s*[:\-]?\s*)?"
                      r"(?:\(([A-Za-z])\)|([A-Za-z])(?=$|[.):,]))", re.IGNORECASE)
_PARENS = re.compile(r"\(([A-Za-z])\)")
# bare capital letters joined as alternatives: "A or B", "A/B", "B and C", "A, B"
_ALTERNATIVES = re.compile(r"(?<![\w(])([A-Z])\)?\s*(?:\bor\b|\band\b|/|,)\s*\(?([A-Z])(?!\w)")


def letter_index(letter: str, n_choices: int) -> int | None:
    """'b' or 'B' -> 1; None outside the first ``n_choices`` letters."""
    k = LETTERS.find(letter.upper())
    return k if 0 <= k < n_choices else None


def named_letters(text: str, n_choices: int) -> set[int]:
    """The options an answer names by letter: in parentheses anywhere, or bare capitals joined by or/and/,/slash."""
    letters = _PARENS.findall(text) + [x for pair in _ALTERNATIVES.findall(text) for x in pair]
    if m := _LEADING.match(text.strip()):
        letters.append(m.group(1) or m.group(2))
    return {k for k in (letter_index(x, n_choices) for x in letters) if k is not None}


def match_choice(answer: str, choices: Sequence[str]) -> int | None:
    """The index of the option ``answer`` names, or None (see the module's rules)."""
    text = answer.strip()
    named = named_letters(text, len(choices))
    if len(named) > 1:  # hedged: "(A) or (B)" names no single option
        return None
    if m := _LEADING.match(text):
        k = letter_index(m.group(1) or m.group(2), len(choices))
        if k is not None:
            return k
    hits = [k for k, c in enumerate(choices)
            if c.strip() and re.search(rf"(?<!\w){re.escape(c.strip())}(?!\w)", text, re.IGNORECASE)]
    if len(hits) == 1:
        return hits[0]
    letters = {letter_index(x, len(choices)) for x in _PARENS.findall(text)} - {None}
    if len(letters) == 1:
        return letters.pop()
    return None


def generate_answers(model: LlavaChat, load_image: Callable[[int], Image.Image], prompts: Sequence[str], *,
                     batch_size: int = 8, max_new_tokens: int = 16, progress: bool = True,
                     desc: str = "answers") -> list[str]:
    """One answer per prompt (``load_image(i)`` is prompt i's image), generated ``batch_size`` at a time."""
    answers: list[str] = []
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc=desc, disable=not progress, unit="batch"):
        stop = min(start + batch_size, len(prompts))
        images = [load_image(i) for i in range(start, stop)]
        answers += model.answer(images, list(prompts[start:stop]), max_new_tokens=max_new_tokens)
    return answers


def write_samples_csv(path: str | Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> Path:
    """One row per question: what was asked, answered, matched, and whether it was right."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
    return path


def result_extras(model_spec: str, metrics: dict[str, float], *, random_weights: bool = False
                  ) -> tuple[dict[str, object], list[str]]:
    """What a result file of a multiple-choice task adds (its units, how answers are matched) and the line
    printed under the metrics."""
    fields = {"units": "percent", "answer_matching": "option letter, else option text (no LLM judge); an answer "
                                                   "naming several option letters matches none"}
    return fields, [f"unmatched answers: {metrics.get('n_unmatched', 0)}"]
