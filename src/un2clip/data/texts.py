"""Texts alone, for training a language model before it meets an image (``un2clip llava train --stage lm``).

:func:`text_source` takes the texts of a source that :func:`un2clip.data.open_source` opened, without reading
an image: the caption column of a CSV/TSV table (``un2clip world generate`` writes ``train/captions.csv``) or
the turns of LLaVA's JSON conversations (one text per conversation: its turns in order, ``<image>`` removed,
one turn a line). Blank texts are left out; a source with none left is refused.
"""

from __future__ import annotations

from un2clip.data.conversations import IMAGE_TOKEN, ConversationSource
from un2clip.data.sources import Record, Source, Strings, TableSource, check_index


def conversation_text(turns: list[str]) -> str:
    """The text of one conversation: its non-blank turns, ``<image>`` removed, stripped, one a line."""
    lines = (t.replace(IMAGE_TOKEN, "").strip() for t in turns)
    return "\n".join(line for line in lines if line)


class TextSource(Source):
    """Texts in a fixed order: ``load(i)`` -> a :class:`Record` with ``text`` and no image (``image`` is None)."""

    kind = "texts"

    def __init__(self, texts: list[str], keys: list[str], *, spec: str, n_skipped: int = 0):
        if len(texts) != len(keys):
            raise ValueError(f"{len(texts)} texts but {len(keys)} keys")
        self.spec, self.n_skipped = spec, n_skipped
        self._texts, self._keys = Strings(texts), Strings(keys)

    def __len__(self) -> int:
        return len(self._texts)

    def key(self, i: int) -> str:
        return self._keys[check_index(i, len(self))]

    def text(self, i: int) -> str:
        return self._texts[check_index(i, len(self))]

    def load(self, i: int) -> Record:
        return Record(image=None, text=self.text(i), key=self.key(i))  # type: ignore[arg-type]


def text_source(source: Source) -> TextSource:
    """The non-blank texts of a captions table or of a conversation file, keyed as ``source`` keys them."""
    if isinstance(source, TableSource):
        if source.caption_column is None:
            raise ValueError(f"{source.spec} has no caption column (looked for caption, text, title; or pass "
                             "--caption-column): a language model trains on its texts")
        texts = [(source.key(i), source.caption(i) or "") for i in range(len(source))]
    elif isinstance(source, ConversationSource):
        texts = [(source.key(i), conversation_text(source.turns(i))) for i in range(len(source))]
    else:
        raise ValueError(f"{source.spec} is a {source.kind} source; a language model trains on the texts of a "
                         "captions table (CSV/TSV with a caption column) or of LLaVA's JSON conversations")
    stripped = ((k, t.strip()) for k, t in texts)
    kept = [(k, t) for k, t in stripped if t]
    if not kept:
        raise ValueError(f"{source.spec} holds no text: every caption or conversation is blank")
    return TextSource([t for _, t in kept], [k for k, _ in kept], spec=source.spec,
                      n_skipped=source.n_skipped + len(texts) - len(kept))
