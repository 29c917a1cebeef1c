"""The README a newcomer reads: install near the top, short lines, a Python example that runs, extras that exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_LINE = 120
MARKER = "<!-- tested: tests/test_readme.py runs the next block -->"


def _lines() -> list[str]:
    return README.read_text(encoding="utf-8").splitlines()


def python_api_block(text: str) -> str:
    """The fenced python block right after the README's test marker."""
    found = re.search(re.escape(MARKER) + r"\s*```python\n(.*?)```", text, flags=re.S)
    if not found:
        raise AssertionError(f"README.md has no ```python block right after {MARKER!r}")
    return found.group(1)


def test_install_comes_within_the_first_40_lines():
    head = _lines()[:40]
    assert "## Install" in head, "the Install section should start within the README's first 40 lines"
    assert any(line.startswith("pip install") for line in head), "a pip install command within the first 40 lines"


def test_no_readme_line_is_longer_than_120_characters():
    long = [(n, len(line)) for n, line in enumerate(_lines(), 1) if len(line) > MAX_LINE]
    assert not long, f"README.md lines over {MAX_LINE} characters (line, length): {long}"


def test_paths_the_readme_names_exist():
    text = README.read_text(encoding="utf-8")
    named = set(re.findall(r"\]\(((?:docs|benchmarks|assets|configs)/[^)#\s]*)\)", text))
    named |= set(re.findall(r"`((?:docs|benchmarks|configs)/[\w./-]+\.\w+)`", text))
    missing = sorted(p for p in named if "*" not in p and not (ROOT / p).exists())
    assert named and not missing, f"README.md names paths that do not exist: {missing}"


def test_all_extra_holds_every_optional_extra():
    tomllib = pytest.importorskip("tomllib")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    (spec,) = extras["all"]
    named = set(re.fullmatch(r"un2clip\[(.*)\]", spec).group(1).split(","))
    assert named == set(extras) - {"all", "dev"}, "the all extra should name every optional extra but dev"
    readme = README.read_text(encoding="utf-8")
    assert all(f"| `{name}` |" in readme for name in extras if name != "all"), "every extra has a README row"


def test_the_python_api_example_runs(tmp_path, monkeypatch, capsys):
    """Runs the README's Python block as written, on a small world like the quickstart's and the shipped tiny CLIP:
    it fails when ``load_clip`` or ``evaluate`` change their names, arguments or result keys."""
    from un2clip.world import generate_world

    generate_world(tmp_path / "runs" / "world", seed=0, n_train=0, n_val=0, pairs_per_pattern=2, n_seg=0,
                   n_zeroshot_per_class=0, n_detect=0, n_depth=0, n_pointcloud_per_class=0, n_video_per_class=0,
                   rare_rate=0.0, talk_colors=("red", "yellow", "green"), progress=False, workers=1)
    (tmp_path / "assets").symlink_to(ROOT / "assets", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    code = python_api_block(README.read_text(encoding="utf-8"))
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(code, str(README) + ":python-api", "exec"), namespace)  # noqa: S102 - the README's own example
    printed = capsys.readouterr().out
    assert re.fullmatch(r"world-MMVP \d+\.\d % over 18 pairs\n", printed), printed
    scores = namespace["scores"]
    assert scores["n_pairs"] == 18 and 0.0 <= scores["average"] <= 100.0


def test_the_block_finder_needs_the_marker():
    with pytest.raises(AssertionError, match="no ```python block"):
        python_api_block("```python\nprint(1)\n```\n")
    assert python_api_block(f"{MARKER}\n```python\nx = 1\n```\n") == "x = 1\n"


def test_make_test_runs_everything_and_test_fast_leaves_out_the_slow_tier():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    recipes = dict(re.findall(r"^([\w-]+): \$\(STAMP\)\n\t(.*)$", makefile, flags=re.M))
    assert "pytest" in recipes["test"] and "slow" not in recipes["test"], recipes["test"]  # every tier
    assert '-m "not slow"' in recipes["test-fast"], recipes.get("test-fast")
    for target in ("test", "test-fast"):  # pytest's exit 5 (nothing collected) is not a failure
        assert "$(PYTEST_OK5)" in recipes[target]
    assert re.search(r"^PYTEST_OK5 = .*-eq 5 \]; then .*exit 0", makefile, flags=re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
