"""LLaVA's conversation data: the JSON file LLaVA trains on, and the token/label layout of its two prompt styles.

A file (``blip_laion_cc_sbu_558k.json``, ``llava_v1_5_mix665k.json`` or one written by ``un2clip world generate
--mllm``) is a JSON list of::

    {"id": "000001", "image": "coco/train2017/000000033471.jpg",
     "conversations": [{"from": "human", "value": "<image>\\nWhat colour is the bus?"},
                       {"from": "gpt", "value": "White"}, ...]}

Image paths are relative to an image folder (LLaVA's ``--image_folder``; default: the JSON file's folder).
:class:`ConversationSource` reads it as a training :class:`~un2clip.data.sources.Source`. Turns alternate
human / gpt, starting with the human; the first human turn holds the one ``<image>`` token.

:func:`conversation_tokens` lays a conversation out as token ids with labels that are ``IGNORE_INDEX``
everywhere but on the answers, following LLaVA's ``preprocess_plain`` (stage 1: ``<image>`` + caption + sep)
and ``preprocess_v1`` (stage 2: ``SYSTEM USER: question ASSISTANT: answer</s>USER: ...``). The conversation is
tokenised as one string, as a prompt is at inference; the supervised tokens are those whose characters fall in
an answer (the fast tokenizer's offsets), rather than counted by re-tokenising prefixes as LLaVA does.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from un2clip.data.sources import Record, Source, Strings, check_index, decode_image
from un2clip.errors import first_few

IMAGE_TOKEN = "<image>"
IGNORE_INDEX = -100
#: LLaVA-1.5's ``conv_vicuna_v1`` system prompt
LLAVA_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
                "The assistant gives helpful, detailed, and polite answers to the human's questions.")
STYLES = ("plain", "v1")


@dataclass
class ConversationRecord(Record):
    """A training record with its conversation: ``turns`` alternate human, gpt (the answers)."""

    turns: list[str] = field(default_factory=list)


def parse_conversation(entry: Any, *, where: str) -> tuple[str, str, list[str]]:
    """One entry of a LLaVA JSON list -> (id, image path, turn texts); a clear ValueError naming ``where`` if bad."""
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected an object with 'image' and 'conversations', got {type(entry).__name__}")
    ident = str(entry.get("id", ""))
    name = f"{where} (id {ident!r})" if ident else where
    image = entry.get("image")
    if not isinstance(image, str) or not image:
        raise ValueError(f"{name} has no image: text-only conversations are not supported (filter them out)")
    conv = entry.get("conversations")
    if not isinstance(conv, list) or len(conv) < 2:
        raise ValueError(f"{name}: 'conversations' must be a list of at least two turns (human, gpt)")
    turns = []
    for k, turn in enumerate(conv):
        want = "human" if k % 2 == 0 else "gpt"
        if not isinstance(turn, dict) or turn.get("from") != want or not isinstance(turn.get("value"), str):
            raise ValueError(f"{name}: turn {k} must be {{'from': '{want}', 'value': text}} (turns alternate "
                             "human, gpt, starting with the human)")
        turns.append(turn["value"])
    if len(turns) % 2:
        raise ValueError(f"{name}: the last turn is a question without an answer")
    n_tokens = sum(t.count(IMAGE_TOKEN) for t in turns)
    if n_tokens != 1 or IMAGE_TOKEN not in turns[0]:
        raise ValueError(f"{name}: the first human turn must hold the one {IMAGE_TOKEN} token "
                         f"(found {n_tokens} in the conversation)")
    return ident, image, turns


class ConversationSource(Source):
    """The conversations of a LLaVA JSON file, each with its image: ``load(i)`` -> :class:`ConversationRecord`.

    Opening checks every entry and that every image file exists (a clear error listing the missing ones);
    an image that exists but cannot be decoded is skipped and counted by the training loop like any other.
    """

    kind = "conversations"

    def __init__(self, path: str | os.PathLike, *, image_folder: str | os.PathLike | None = None):
        path = Path(path)
        self.spec = str(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err}); expected LLaVA's conversation list") from err
        if not isinstance(data, list) or not data:
            raise ValueError(f"{path}: expected a non-empty JSON list of conversations "
                             "({'id', 'image', 'conversations': [...]}, as LLaVA's training files)")
        root = Path(image_folder) if image_folder else path.parent
        parsed = [parse_conversation(e, where=f"{path} entry {i}") for i, e in enumerate(data)]
        missing = [p for _, p, _ in parsed if not (root / p).is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} image(s) of {path} missing under {root}: "
                                    f"{first_few(missing)} "
                                    "(pass the folder the image paths are relative to as --image-folder)")
        self.root = root
        self._images = Strings(p for _, p, _ in parsed)
        self._turns = Strings(json.dumps(t) for _, _, t in parsed)  # one flat buffer: fork friendly

    def __len__(self) -> int:
        return len(self._images)

    def key(self, i: int) -> str:
        return self._images[check_index(i, len(self))]

    def turns(self, i: int) -> list[str]:
        return json.loads(self._turns[check_index(i, len(self))])

    def load(self, i: int) -> ConversationRecord | None:
        key = self.key(i)
        image = decode_image(str(self.root / key), key)
        if image is None:
            return None
        return ConversationRecord(image=image, text=None, key=key, turns=self.turns(i))


# ----------------------------------------------------------------------------- token layout

def conversation_pieces(turns: Sequence[str], *, style: str, system: str = LLAVA_SYSTEM) -> list[tuple[str, bool]]:
    """The text of a conversation as ``(piece, supervised)`` in order; ``<image>`` is a piece of its own.

    ``plain`` (LLaVA stage 1, ``preprocess_plain``): the first turn is replaced by the image, then the answer and
    a newline, supervised. ``v1`` (stage 2, ``conv_vicuna_v1``): ``system USER: q ASSISTANT: a</s>USER: ...``,
    where each answer and the end-of-sequence marker that closes it (``"</s>"`` stands for the tokenizer's EOS) are
    supervised. The image token goes first in the first question, as LLaVA's ``preprocess_multimodal`` moves it.
    """
    if style == "plain":
        if len(turns) != 2:
            raise ValueError(f"the plain style (stage 1) takes one question and one answer, got {len(turns)} turns")
        return [(IMAGE_TOKEN, False), (turns[1] + "\n", True)]
    if style != "v1":
        raise ValueError(f"conversation style must be one of {STYLES}, got {style!r}")
    pieces: list[tuple[str, bool]] = [(system + " " if system else "", False)]
    for k in range(0, len(turns), 2):
        question = turns[k]
        if IMAGE_TOKEN in question:
            question = question.replace(IMAGE_TOKEN, "").strip()
            pieces += [("USER: ", False), (IMAGE_TOKEN, False), ("\n" + question + " ASSISTANT: ", False)]
        else:
            pieces.append(("USER: " + question + " ASSISTANT: ", False))
        pieces += [(turns[k + 1], True), ("</s>", True)]
    return [(p, s) for p, s in pieces if p]


def conversation_tokens(turns: Sequence[str], tokenizer: Any, *, style: str, n_image_tokens: int,
                        image_token_id: int, system: str = LLAVA_SYSTEM) -> tuple[list[int], list[int]]:
    """(input ids, labels) of one conversation: BOS, then the conversation's text tokenised as one string (as the
    processor tokenises a prompt at inference); ``<image>`` becomes ``n_image_tokens`` copies of ``image_token_id``.

    Labels copy the ids of the tokens that overlap a supervised piece (by the fast tokenizer's character offsets)
    and are ``IGNORE_INDEX`` elsewhere.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{type(tokenizer).__name__} is not a fast tokenizer: answer tokens are found by character "
                         "offsets, which only fast (Rust) tokenizers give")
    text, spans = "", []
    for piece, supervised in conversation_pieces(turns, style=style, system=system):
        start = len(text)
        text += tokenizer.eos_token if piece == "</s>" else piece
        if supervised:
            spans.append((start, len(text)))
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    labels: list[int] = [IGNORE_INDEX] * len(ids)
    for token, (a, b) in zip(enc["input_ids"], enc["offset_mapping"]):
        if token == image_token_id:
            ids += [image_token_id] * n_image_tokens
            labels += [IGNORE_INDEX] * n_image_tokens
            continue
        ids.append(token)
        labels.append(token if any(a < end and b > start for start, end in spans) else IGNORE_INDEX)
    return ids, labels


def prompt_template(style: str, system: str = LLAVA_SYSTEM) -> str:
    """The prompt of one question at inference, ``{question}`` to fill, as the style lays it out in training."""
    if style == "plain":
        return IMAGE_TOKEN
    return (system + " " if system else "") + "USER: " + IMAGE_TOKEN + "\n{question} ASSISTANT:"
