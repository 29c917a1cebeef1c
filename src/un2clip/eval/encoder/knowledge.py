"""K-LITE (Shen et al. 2022): knowledge-augmented zero-shot prompts.

A class name is followed by its definition ("a photo of a circle, a ring-shaped figure."), and the
class embedding averages these prompts with the plain templates' (both L2-normalised, then the mean
normalised again, as CLIP_benchmark's ensemble). Definitions come from a TSV file ``class<TAB>definition``;
:func:`wordnet_definitions` builds one from WordNet glosses (first noun sense) when the ``wn`` package
with an English WordNet, or the Debian ``wordnet`` database (``/usr/share/wordnet``), is installed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from un2clip.eval.encoder.zeroshot import class_prompts, knowledge_prompt, read_knowledge

__all__ = ["class_prompts", "find_wordnet", "knowledge_prompt", "missing_wordnet_message", "read_knowledge",
           "wordnet_definitions", "write_knowledge"]

WORDNET_DIRS = ("/usr/share/wordnet", "/usr/local/share/wordnet", "/usr/share/wordnet-3.0/dict")


def write_knowledge(path: str | os.PathLike, definitions: Mapping[str, str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{c}\t{' '.join(d.split())}\n" for c, d in definitions.items()), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- WordNet


def _wn_gloss(name: str) -> str | None:
    import wn  # the package; its data must be downloaded once (python -m wn download oewn:2021)

    synsets = (wn.synsets(name.replace(" ", "_"), pos="n", lang="en")
               or wn.synsets(name, pos="n", lang="en"))
    return synsets[0].definition() if synsets else None


def _debian_gloss(folder: Path, name: str, index: dict[str, int]) -> str | None:
    offset = index.get(name.lower().replace(" ", "_"))
    if offset is None:
        return None
    with open(folder / "data.noun", "rb") as f:
        f.seek(offset)
        line = f.readline().decode("utf-8", "replace")
    gloss = line.partition(" | ")[2].strip()
    return gloss.split('; "')[0].strip() or None  # the definition, without the usage examples


def _debian_index(folder: Path) -> dict[str, int]:
    """lemma -> byte offset of its first (most frequent) noun sense in data.noun."""
    index = {}
    for line in (folder / "index.noun").read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith(" "):
            continue  # the licence header
        parts = line.split()
        p_cnt = int(parts[3])
        offsets = parts[4 + p_cnt + 2:]
        if offsets:
            index[parts[0]] = int(offsets[0])
    return index


def find_wordnet() -> str | None:
    """"wn" when the wn package has an English lexicon, a database folder when Debian's is installed, else None."""
    if _wn_state() == "ready":
        return "wn"
    for d in (os.environ.get("WNSEARCHDIR"), *WORDNET_DIRS):
        if d and (Path(d) / "index.noun").is_file() and (Path(d) / "data.noun").is_file():
            return d
    return None


def _wn_state() -> str:
    """"ready" (wn with an English lexicon), "no-data" (wn installed, no English lexicon) or "absent"."""
    try:
        import wn
    except ImportError:
        return "absent"
    try:
        return "ready" if wn.lexicons(lang="en") else "no-data"
    except Exception:  # wn raises its own errors when its database is empty or unreadable
        return "no-data"


def missing_wordnet_message() -> str:
    """What to install when no WordNet is found, saying whether the wn package or only its data is missing."""
    debian = "or the Debian wordnet database (apt-get install wordnet-base: /usr/share/wordnet, or set WNSEARCHDIR)"
    if _wn_state() == "no-data":
        return ("wn is installed but its English WordNet data is missing: run `python -m wn download oewn:2021` "
                f"(a download of about 30 MB), {debian}; or write the TSV yourself")
    return (f"no WordNet found: install wn (pip install wn, then python -m wn download oewn:2021), {debian}; "
            "or write the TSV yourself")


def wordnet_definitions(classnames: Sequence[str], *, wordnet: str | None = None) -> dict[str, str]:
    """{class: gloss of its first WordNet noun sense} for the classes WordNet knows."""
    found = wordnet or find_wordnet()
    if found is None:
        raise ModuleNotFoundError(missing_wordnet_message())
    out: dict[str, str] = {}
    if found == "wn":
        for name in classnames:
            gloss = _wn_gloss(name)
            if gloss:
                out[name] = gloss
        return out
    folder = Path(found)
    index = _debian_index(folder)
    for name in classnames:
        gloss = _debian_gloss(folder, name, index)
        if gloss:
            out[name] = gloss
    return out
