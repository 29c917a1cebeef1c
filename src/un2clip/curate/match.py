"""MetaCLIP substring matching: which metadata entries a caption contains.

MetaCLIP pads the caption and every entry with spaces (and puts spaces around ``, . ; : ? ! ```), so
that an entry matches whole words only: " red circle " is found in " a red circle , left " but " red "
is not found in " reddish ". Matching is case-sensitive, as theirs is. Many entries are matched at once
with an Aho-Corasick automaton, which also finds overlapping entries (" red ", " red circle ",
" circle " in the same caption): ``pyahocorasick`` when it is installed, else the pure-Python
automaton here (the same matches; a test checks both against plain substring search).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence

PUNCTUATION_TO_WRAP = (",", ".", ";", ":", "?", "!", "`")
CHARACTERS_TO_SPACE = ("\t", "\n", "\r")


def spaced(text: str) -> str:
    """The caption as matched: padded with spaces, punctuation wrapped in spaces, tabs/newlines as spaces."""
    out = f" {text} "
    for p in PUNCTUATION_TO_WRAP:
        out = out.replace(p, f" {p} ")
    for c in CHARACTERS_TO_SPACE:
        out = out.replace(c, " ")
    return out


class AhoCorasick:
    """A pure-Python Aho-Corasick automaton over ``patterns``: every (end, pattern id) occurrence in a text."""

    def __init__(self, patterns: Sequence[str]):
        self.goto: list[dict[str, int]] = [{}]
        self.out: list[list[int]] = [[]]
        for pid, pattern in enumerate(patterns):
            if not pattern:
                raise ValueError("empty pattern")
            node = 0
            for ch in pattern:
                nxt = self.goto[node].get(ch)
                if nxt is None:
                    nxt = len(self.goto)
                    self.goto[node][ch] = nxt
                    self.goto.append({})
                    self.out.append([])
                node = nxt
            self.out[node].append(pid)
        self.fail = [0] * len(self.goto)
        queue = deque(self.goto[0].values())
        while queue:  # breadth first: a node's failure link is set before its children's
            node = queue.popleft()
            for ch, child in self.goto[node].items():
                queue.append(child)
                f = self.fail[node]
                while f and ch not in self.goto[f]:
                    f = self.fail[f]
                target = self.goto[f].get(ch, 0)
                self.fail[child] = target if target != child else 0
                self.out[child] = self.out[child] + self.out[self.fail[child]]

    def iter(self, text: str) -> Iterator[tuple[int, int]]:
        """(index of the last character, pattern id) of every occurrence, overlapping ones included."""
        node = 0
        for i, ch in enumerate(text):
            while node and ch not in self.goto[node]:
                node = self.fail[node]
            node = self.goto[node].get(ch, 0)
            for pid in self.out[node]:
                yield i, pid


def _pyahocorasick(patterns: Sequence[str]):
    try:
        import ahocorasick
    except ImportError:
        return None
    automaton = ahocorasick.Automaton()
    for pid, pattern in enumerate(patterns):
        automaton.add_word(pattern, pid)
    automaton.make_automaton()
    return automaton


class EntryMatcher:
    """Which metadata entries occur (MetaCLIP's spaced substring rule) in a caption.

    ``backend``: "auto" (pyahocorasick when installed, else "python"), "pyahocorasick" or "python".
    Duplicate entries keep their first id; empty entries are refused.
    """

    def __init__(self, entries: Sequence[str], *, backend: str = "auto"):
        self.entries = [str(e) for e in entries]
        blank = [i for i, e in enumerate(self.entries) if not e.strip()]
        if blank:
            raise ValueError(f"metadata entry {blank[0]} is empty")
        patterns = [f" {e} " for e in self.entries]
        if backend not in ("auto", "pyahocorasick", "python"):
            raise ValueError(f"backend must be auto, pyahocorasick or python, got {backend!r}")
        self._automaton = _pyahocorasick(patterns) if backend != "python" else None
        if backend == "pyahocorasick" and self._automaton is None:
            raise ModuleNotFoundError("the pyahocorasick package is not installed (pip install pyahocorasick)")
        self.backend = "pyahocorasick" if self._automaton is not None else "python"
        self._python = AhoCorasick(patterns) if self._automaton is None else None
        first: dict[str, int] = {}
        self._canonical = [first.setdefault(p, i) for i, p in enumerate(patterns)]

    def __len__(self) -> int:
        return len(self.entries)

    def match(self, text: str) -> list[int]:
        """Sorted ids of the entries found in ``text``."""
        text = spaced(text)
        hits = (self._automaton.iter(text) if self._automaton is not None else self._python.iter(text))
        return sorted({self._canonical[pid] for _, pid in hits})


def read_metadata(path) -> list[str]:
    """Metadata entries: a ``.json`` list of strings (MetaCLIP's metadata.json) or one entry a line."""
    import json
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"metadata file {path} not found (a JSON list of strings or one entry a line)")
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".json":
        data = json.loads(text)
        if not isinstance(data, list) or not all(isinstance(e, str) for e in data):
            raise ValueError(f"{path}: expected a JSON list of strings")
        entries = data
    else:
        entries = [line.strip() for line in text.splitlines()]
    entries = [e for e in entries if e.strip()]
    if not entries:
        raise ValueError(f"{path} holds no metadata entries")
    return entries
