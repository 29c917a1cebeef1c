"""Mutation testing of one module against the tests that exercise it (an AST mutator, 2-core friendly).

Each mutant is the module with ONE small change; the chosen tests run against it (``-x``, in a process
forked from one that already imported the heavy third-party libraries, so a mutant costs the tests, not a
Python + torch start). A mutant is *killed* when a test fails, *survives* when they all pass, and counts
as killed on a *timeout* (it hung or looped: the tests noticed a change). The score is
killed / (mutants - equivalent), with the equivalent mutants listed below by key, each with its reason.

Each mutant runs only the tests that execute its lines (recorded per test on the unmutated module; a
change to a line that runs at import runs them all); a mutant no test executes survives without running.

Operators (one at a time): ``+ -``, ``* /``, ``// -> *``, ``% -> //``, ``** -> *`` (also in ``+=`` ...);
comparisons ``< <=``, ``> >=``, ``== !=``, ``is / is not``, ``in / not in``; integer and float constants
± 1; ``True / False``; ``and / or``; dropping ``not`` and unary minus; ``min <-> max``; a call with
positional arguments replaced by its first argument (``abs(x) -> x``); removing a statement that is a
call, an augmented assignment or a ``raise``. Not mutated: strings, docstrings, annotations, the message
inside a ``raise``, ``if TYPE_CHECKING`` blocks, lines marked ``# pragma: no mutate``.

Usage (from the repository root, on the shared machine with ``nice``)::

    nice -n 10 python benchmarks/mutation.py src/un2clip/curate/rules.py tests/test_curate.py -k align
    nice -n 10 python benchmarks/mutation.py --all          # the six core modules, table for the README

``--list`` prints the mutants without running them; ``--show KEY`` prints one mutant's diff. Options go
before the module (what follows the module is passed to pytest).

Sampled runs, for modules too large to run whole on a shared machine: ``--sample N --seed S`` runs a
uniform random sample of N of the module's mutants (of those ``--within`` / ``--only`` leave), drawn with
``random.Random(S)``, and reports killed / (sampled - equivalent) with its 95 % Wilson score interval::

    nice -n 10 python benchmarks/mutation.py --sample 50 --seed 1 src/un2clip/eval/downstream/depth.py
"""

from __future__ import annotations

import argparse
import ast
import copy
import difflib
import importlib.abc
import importlib.util
import json
import math
import os
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The core modules, each with the test selection that runs against its mutants (the module's own tests,
# kept small: the CPU is shared). A selection is pytest arguments.
CORE = {
    "src/un2clip/objectives/un2clip.py": ["tests/test_un2clip_objective.py"],
    "src/un2clip/eval/encoder/mmvp.py": ["tests/test_eval_data.py", "-k", "mmvp or published"],
    "src/un2clip/eval/core/metrics.py": ["tests/test_eval_metrics.py"],
    "src/un2clip/curate/rules.py": ["tests/test_curate.py", "-k",
                                    "(align or balanc or histogram or top_fraction) and not score_filter"],
    "src/un2clip/eval/seg/metrics.py": ["tests/test_seg_metrics.py"],
    "src/un2clip/eval/downstream/depth.py": ["tests/test_depth.py"],
}

# Equivalent mutants: changes that no test can observe because the program computes the same thing.
# Keyed by module, then by the mutant's key (``function: original -> mutated``, as --list prints it).
EQUIVALENT: dict[str, dict[str, str]] = {
    "src/un2clip/curate/rules.py": {
        "balance_probabilities: np.asarray(counts, dtype=np.float64) -> counts":
            "np.maximum turns a list or an integer array into float64 itself; t / that is the same array",
        "balance_keep: bool((rng.random(len(ids)) < probabilities[np.asarray(ids, dtype=np.int64)]).any()) -> "
        "(rng.random(len(ids)) < probabilities[np.asarray(ids, dtype=np.int64)]).any()":
            "a numpy bool stored into a bool array is the same value",
        "balance_keep: rng.random(len(ids)) < probabilities[np.asarray(ids, dtype=np.int64)] -> "
        "rng.random(len(ids)) <= probabilities[np.asarray(ids, dtype=np.int64)]":
            "differs only when a uniform draw in [0, 1) equals the probability exactly (about 2^-53 per draw)",
        "top_fraction: int(round(fraction * len(scores))) -> round(fraction * len(scores))":
            "round() of a float already returns an int",
        "count_histogram: int(c) -> c": "counts are whole numbers; int() changes only their type, not a comparison",
        "count_histogram: 0 -> -1": "max(values, default=-1) of no values: top = -1 takes the same `else 0` branch",
        "count_histogram: 0 -> -1 #4": "`else -1` decades: range(-1) is as empty as range(0)",
    },
    "src/un2clip/eval/seg/metrics.py": {
        "SegHistogram.per_class_iou: 1 -> 0 #2":
            "clamp(min=0) only changes the branch torch.where discards (empty unions, NaN either way)",
        "SegHistogram.summary: 1 -> 0":
            "clamp(min=0) only changes the branch torch.where discards (classes without labels, NaN either way)",
        "SegHistogram.summary: bool((~iou.isnan()).any()) -> (~iou.isnan()).any()":
            "a one-element bool tensor as the condition of `if ... else` is read as the same bool",
        "SegHistogram.summary: bool((~acc.isnan()).any()) -> (~acc.isnan()).any()":
            "a one-element bool tensor as the condition of `if ... else` is read as the same bool",
        "SegHistogram.summary: list(class_names) -> class_names":
            "any Sequence has len() and iterates the same; the list() is a copy",
        "SegHistogram.summary: str(c) -> c": "the names go into f'IoU.{name}', which formats an int as str() does",
    },
    "src/un2clip/eval/core/metrics.py": {
        "_with_areas: float(a['bbox'][3]) -> a['bbox'][3]": "float(w) * h is the same float whether h is an int or not",
    },
    "src/un2clip/eval/seg/infer.py": {
        "text_classifier: -1 -> 1": "the text embeddings are (b, D): normalising over dim 1 is over dim -1",
        "resize_uint8: 2 -> 1": "the same-size shortcut is then never taken, and cv2's INTER_LINEAR resize to the "
                                "same size returns the same pixels",
        "_neighbours: abs(dx) -> dx": "every offset set passed (the 8-ring times a dilation d) has dx = +d, so the "
                                      "padding max(|dy|, dx) is d either way",
    },
    "src/un2clip/eval/seg/heads.py": {
        "gaussian_bias: -1 -> 1": "torch.stack of 1-D tensors along dim 1 is along dim -1",
    },
    "src/un2clip/eval/encoder/mmvp.py": {
        "mmvp_logits: 32 -> 33": "the batch size groups the images and texts; each embedding is computed alone",
        "mmvp_logits: 0 -> 1": "one data-loader worker process reads the same images in the same order as none",
    },
    "src/un2clip/objectives/un2clip.py": {
        "anchor_distance: -1 -> 1": "cosine_similarity over dim 1 of (B, D) embeddings is dim -1",
        "FrozenImageTower.forward: -1 -> 1": "HF's interpolate_pos_encoding returns the position embeddings "
                                             "unchanged at the native square size, so asking for it always is the same",
        "FrozenImageTower.forward: 1 -> 2": "shape[-2] of the square CLIP input is shape[-1]",
        "FrozenImageTower.forward: 1 -> 0": "as '-1 -> 1': interpolating at the native size changes nothing",
        "two_views: T.to_rgb(record.image) -> record.image":
            "the CLIP processing and decoder_view convert to RGB with the same to_rgb themselves",
        "Un2ClipObjective.__init__: int(max_timestep) -> max_timestep":
            "max_timestep is an int (the CLI's type=int, the recipe's int field); int() returns it unchanged",
        "Un2ClipObjective.__init__: float(anchor_weight) -> anchor_weight":
            "an int or float weight multiplies the anchor term to the same float loss",
        "Un2ClipObjective.forward: -1 -> 1 #2": "the embeddings are (B, D): a norm over dim 1 is over dim -1",
        "Un2ClipObjective.save_outputs: has_lora(clip.vision_model) -> clip.vision_model":
            "an image tower (an nn.Module, no __len__) is always true: without adapters the mutant saves a deep "
            "copy, which merge_lora returns unchanged, so the same files are written",
        "Un2ClipObjective.save_outputs: str(Path(folder) / 'projector.safetensors') -> "
        "Path(folder) / 'projector.safetensors'": "safetensors' save_file takes a str or an os.PathLike alike",
    },
    "src/un2clip/eval/downstream/depth.py": {
        "depthclip_input: T.to_rgb(image) -> image": "T.pil_to_tensor converts with the same to_rgb itself",
        "score_mask: tuple(gt.shape) -> gt.shape": "a torch.Size is a tuple: == with a tuple gives the same answer",
        "evaluate: tuple(gt.shape) -> gt.shape #2": "a torch.Size is a tuple: != with a tuple gives the same answer",
    },
}

BINOPS = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Mult,
          ast.Mod: ast.FloorDiv, ast.Pow: ast.Mult}
CMPOPS = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
          ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In}


@dataclass
class Mutant:
    index: int  # position of the mutated node in the module's walk
    op: int  # which of that node's mutations
    line: int
    end_line: int
    key: str  # "qualname: original -> mutated", unique within the module
    status: str = "pending"  # killed | survived | timeout | equivalent | pending
    seconds: float = 0.0
    uncovered: bool = False  # survived without running: no test executes its lines


def _skipped_nodes(tree: ast.Module, lines: list[str]) -> set[int]:
    """ids of the nodes never mutated: docstrings, annotations, raise messages, TYPE_CHECKING blocks, pragmas."""
    skip: set[int] = set()

    def all_of(node: ast.AST | None) -> None:
        if node is not None:
            skip.update(id(n) for n in ast.walk(node))

    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and body:
            first = body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(
                    first.value.value, str):
                all_of(first)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            all_of(node.returns)
            for a in node.args.args + node.args.kwonlyargs + node.args.posonlyargs + [node.args.vararg,
                                                                                     node.args.kwarg]:
                if a is not None:
                    all_of(a.annotation)
        if isinstance(node, ast.AnnAssign):
            all_of(node.annotation)
        if isinstance(node, ast.Raise):
            all_of(node.exc)
            all_of(node.cause)
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            all_of(node)
        if isinstance(node, (ast.ImportFrom, ast.Import)):
            all_of(node)
        for decorator in getattr(node, "decorator_list", []):
            all_of(decorator)
        line = getattr(node, "lineno", None)
        if line is not None and "pragma: no mutate" in lines[line - 1]:
            all_of(node)
    return skip


def _mutations(node: ast.AST, statement_call: bool = False) -> list[ast.AST | None]:
    """The replacements of ``node`` (None: remove the statement); ``statement_call``: a call that is a statement."""
    out: list[ast.AST | None] = []
    if isinstance(node, (ast.BinOp, ast.AugAssign)) and type(node.op) in BINOPS:
        new = copy.copy(node)
        new.op = BINOPS[type(node.op)]()
        out.append(new)
    if isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            if type(op) in CMPOPS:
                new = copy.copy(node)
                new.ops = list(node.ops)
                new.ops[i] = CMPOPS[type(op)]()
                out.append(new)
    if isinstance(node, ast.Constant):
        v = node.value
        if isinstance(v, bool):
            out.append(ast.Constant(not v))
        elif isinstance(v, (int, float)):
            out += [ast.Constant(v + 1), ast.Constant(v - 1)]
    if isinstance(node, ast.BoolOp):
        out.append(ast.BoolOp(ast.Or() if isinstance(node.op, ast.And) else ast.And(), node.values))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub, ast.Invert)):
        out.append(node.operand)
    if isinstance(node, ast.Call):
        if isinstance(node.func, ast.Name) and node.func.id in ("min", "max"):
            new = copy.copy(node)
            new.func = ast.Name("max" if node.func.id == "min" else "min", ast.Load())
            out.append(new)
        if node.args and not isinstance(node.args[0], ast.Starred) and not statement_call:
            out.append(node.args[0])
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
        out.append(None)
    if isinstance(node, (ast.AugAssign, ast.Raise)):
        out.append(None)
    return out


class _Walker(ast.NodeTransformer):
    """Pre-order walk numbering every node; lists the mutations, or applies one (``target``)."""

    def __init__(self, skip: set[int], target: tuple[int, int] | None = None):
        self.skip, self.target, self.counter = skip, target, 0
        self.found: list[tuple[int, int, int, int, str]] = []  # (index, op, line, end line, key)
        self.scope: list[str] = []
        self.statement_calls: set[int] = set()

    def visit(self, node: ast.AST):
        index = self.counter
        self.counter += 1
        options = [] if id(node) in self.skip else _mutations(node, id(node) in self.statement_calls)
        if isinstance(node, ast.Expr):
            self.statement_calls.add(id(node.value))
        if self.target is not None and self.target[0] == index:
            new = options[self.target[1]]
            return ast.Pass() if new is None else new
        for op, new in enumerate(options):
            before = ast.unparse(node).splitlines()[0]
            after = "<removed>" if new is None else ast.unparse(new).splitlines()[0]
            where = ".".join(self.scope) or "<module>"
            self.found.append((index, op, getattr(node, "lineno", 0), getattr(node, "end_lineno", 0) or 0,
                               f"{where}: {before} -> {after}"))
        named = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        if named:
            self.scope.append(node.name)
        result = self.generic_visit(node)
        if named:
            self.scope.pop()
        return result


def list_mutants(source: str) -> list[Mutant]:
    tree = ast.parse(source)
    walker = _Walker(_skipped_nodes(tree, source.splitlines()))
    walker.visit(tree)
    mutants, seen = [], {}
    for index, op, line, end_line, key in walker.found:
        seen[key] = seen.get(key, 0) + 1
        mutants.append(Mutant(index, op, line, end_line, key if seen[key] == 1 else f"{key} #{seen[key]}"))
    return mutants


def mutated_source(source: str, mutant: Mutant) -> str:
    tree = ast.parse(source)
    new = _Walker(_skipped_nodes(tree, source.splitlines()), (mutant.index, mutant.op)).visit(tree)
    return ast.unparse(ast.fix_missing_locations(new))


# -- running -----------------------------------------------------------------------------------------------


class _MutantFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves one module's import from mutated source (with the real file name in tracebacks)."""

    def __init__(self, name: str, path: Path, source: str):
        self.name, self.path, self.source = name, path, source

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        return importlib.util.spec_from_loader(fullname, self, origin=str(self.path))

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        module.__file__ = str(self.path)
        exec(compile(self.source, str(self.path), "exec"), module.__dict__)


def _module_name(path: Path) -> str:
    rel = path.resolve().relative_to(ROOT / "src").with_suffix("")
    return ".".join(rel.parts)


class _OneThread:
    """Torch on one thread in every run (a conftest may ask for more): on a shared, loaded machine several
    threads per process spin against each other and slow the tests tenfold."""

    def pytest_sessionstart(self, session):
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(1)


class _TestCoverage:
    """A pytest plugin and line tracer: which lines of one file each test runs (``""``: at import/collection)."""

    def __init__(self, target: str):
        self.target, self.current = target, ""
        self.lines: dict[str, set[int]] = {"": set()}

    def pytest_runtest_logstart(self, nodeid, location):
        self.current = nodeid
        self.lines.setdefault(nodeid, set())

    def pytest_runtest_logfinish(self, nodeid, location):
        self.current = "<between tests>"
        self.lines.setdefault(self.current, set())

    def tracer(self, frame, event, arg):
        if frame.f_code.co_filename != self.target:
            return None
        # module and class bodies (code without CO_OPTIMIZED) run at import, whichever test first imports them
        lines = self.lines[self.current if frame.f_code.co_flags & 0x1 else ""]

        def local(frame, event, arg):
            lines.add(frame.f_lineno)
            return local

        lines.add(frame.f_lineno)
        return local


def _run_child(name: str, path: Path, source: str | None, pytest_args: list[str], log: Path) -> int:
    """In a forked child: serve the (mutated) module, run pytest quietly, exit with its code.

    Unmutated (``source`` None), it also writes, next to the log, the lines of the module each test runs
    (json) and the modules imported.
    """
    fd = os.open(str(log), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    plugins: list = [_OneThread()]
    if source is not None:
        sys.meta_path.insert(0, _MutantFinder(name, path, source))
    else:
        coverage = _TestCoverage(str(path))
        plugins.append(coverage)
        sys.settrace(coverage.tracer)
    import pytest

    flags = ["-q", "-p", "no:cacheprovider", "-W", "ignore"] + (["-x"] if source is not None else [])
    code = pytest.main([*flags, *pytest_args], plugins=plugins)
    sys.settrace(None)
    if source is None:
        log.with_suffix(".lines").write_text(json.dumps({k: sorted(v) for k, v in coverage.lines.items()}))
        log.with_suffix(".modules").write_text("\n".join(sorted(sys.modules)))
    sys.stdout.flush()
    sys.stderr.flush()
    return int(code)


def run_one(name: str, path: Path, source: str | None, pytest_args: list[str], timeout: float,
            log: Path) -> tuple[str, float, int]:
    """Fork, run the tests against ``source`` (None: the module as it is); (status, seconds, exit code)."""
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:  # child
        code = 3
        try:
            code = _run_child(name, path, source, pytest_args, log)
        finally:
            os._exit(code)
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() - start > timeout:
            os.kill(pid, signal.SIGKILL)  # our own child, by its id
            os.waitpid(pid, 0)
            return "timeout", time.monotonic() - start, -9
        time.sleep(0.05)
    code = os.waitstatus_to_exitcode(status)
    return ("survived" if code == 0 else "killed"), time.monotonic() - start, code


def _preload(listing: Path) -> None:
    """Import, in this parent, the third-party modules the tests used, so that every forked child has them."""
    for mod in listing.read_text().split():
        top = mod.split(".")[0]
        if top in ("un2clip", "tests", "conftest", "__main__") or mod.startswith("test_") or mod in sys.modules:
            continue
        try:
            __import__(mod)
        except Exception:  # noqa: BLE001 - a module that needs its parent's state is simply imported later
            pass


def wilson_interval(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (95 % for the default z); (nan, nan) for no trials."""
    if trials <= 0:
        return float("nan"), float("nan")
    if not 0 <= successes <= trials:
        raise ValueError(f"successes must be in [0, {trials}], got {successes}")
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z / (1 + z * z / trials) * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    return max(0.0, centre - half), min(1.0, centre + half)


def sample_mutants(mutants: list[Mutant], size: int, seed: int) -> list[Mutant]:
    """A uniform random sample (without replacement) of ``size`` mutants, drawn by ``random.Random(seed)``,
    in source order; all of them when there are no more than ``size``."""
    if size < 1:
        raise ValueError(f"the sample size must be >= 1, got {size}")
    if size >= len(mutants):
        return list(mutants)
    chosen = set(random.Random(seed).sample(range(len(mutants)), size))
    return [m for i, m in enumerate(mutants) if i in chosen]


def _summary(rel: str, pytest_args: list[str], base_s: float, mutants: list[Mutant],
             sampling: dict | None = None) -> dict:
    counts = {s: sum(m.status == s for m in mutants) for s in ("killed", "timeout", "survived", "equivalent")}
    counts["mutants"] = sum(m.status != "pending" for m in mutants)
    denominator = counts["mutants"] - counts["equivalent"]
    killed = counts["killed"] + counts["timeout"]
    score = 100.0 * killed / denominator if denominator else float("nan")
    low, high = wilson_interval(killed, denominator)
    return {"module": rel, "tests": pytest_args, "test_seconds": round(base_s, 2), **counts,
            "score": round(score, 1), "wilson95": [round(100 * low, 1), round(100 * high, 1)],
            "total_mutants": len(mutants), **(sampling or {}), "mutants_detail": [asdict(m) for m in mutants]}


def run_module(module: str, pytest_args: list[str], *, only: list[str] | None = None,
               within: list[str] | None = None, workdir: Path, progress: bool = True,
               partial: Path | None = None, sample: int | None = None, seed: int = 0) -> dict:
    path = (ROOT / module).resolve()
    rel = str(path.relative_to(ROOT))
    source = path.read_text()
    name = _module_name(path)
    mutants = list_mutants(source)
    equivalent = EQUIVALENT.get(rel, {})
    unknown = sorted(set(equivalent) - {m.key for m in mutants})
    if unknown:
        print(f"warning: {len(unknown)} listed equivalent mutant(s) of {rel} no longer exist: {unknown}",
              file=sys.stderr)
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / (name + ".log")
    status, base_s, code = run_one(name, path, None, pytest_args, 3600, log)  # with the line tracer
    if status != "survived":
        raise SystemExit(f"the tests fail on the unmutated {rel} (exit {code}); see {log}")
    per_test = {k: set(v) for k, v in json.loads(log.with_suffix(".lines").read_text()).items()}
    at_import = per_test.pop("", set()) | per_test.pop("<between tests>", set())
    for node in ast.walk(ast.parse(source)):  # a def's header (defaults, decorators) runs when its def line does
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.lineno in at_import:
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            at_import |= set(range(first, node.body[0].lineno))
    _preload(log.with_suffix(".modules"))
    _, base_s, _ = run_one(name, path, source, pytest_args, 3600, log)  # timed, without the tracer
    timeout = 3 * base_s + 10
    chosen = [m for m in mutants if (only is None or m.key in only) and (
        within is None or any(m.key.startswith(f"{name}: ") or m.key.startswith(f"{name}.") for name in within))]
    sampling = None
    if sample is not None:
        sampling = {"sample": sample, "seed": seed, "population": len(chosen)}
        chosen = sample_mutants(chosen, sample, seed)
    if progress:
        what = f", a sample of {len(chosen)} (seed {seed})" if sample is not None else ""
        print(f"{rel}: {len(mutants)} mutants{what}, tests take {base_s:.1f} s, timeout {timeout:.0f} s", flush=True)
    for m in chosen:
        if partial is not None:  # what has run so far, for a run stopped early
            partial.write_text(json.dumps([_summary(rel, pytest_args, base_s, mutants, sampling)], indent=1) + "\n")
        if m.key in equivalent:
            m.status = "equivalent"
            continue
        lines = set(range(m.line, m.end_line + 1))
        if lines & at_import:  # runs when the module is imported: every test may see it
            selection = pytest_args
        else:  # only the tests that run these lines can see the change
            selection = [test for test, seen in per_test.items() if seen & lines]
        if not selection:  # no test runs this code: it cannot be killed
            m.status = "survived"
            m.uncovered = True
            if progress:
                print(f"  survived  line {m.line} (not run by the tests): {m.key}", flush=True)
            continue
        m.status, m.seconds, _ = run_one(name, path, mutated_source(source, m), selection, timeout, log)
        if progress and m.status == "survived":
            print(f"  survived  line {m.line}: {m.key}", flush=True)
    return _summary(rel, pytest_args, base_s, mutants, sampling)


def rescore(result: dict) -> dict:
    """A finished run's result (as --json writes it) with its survivors now listed in EQUIVALENT excluded."""
    equivalent = EQUIVALENT.get(result["module"], {})
    mutants = [Mutant(**m) for m in result["mutants_detail"]]
    for m in mutants:
        if m.status == "survived" and m.key in equivalent:
            m.status = "equivalent"
    sampling = {k: result[k] for k in ("sample", "seed", "population") if k in result}
    return _summary(result["module"], result["tests"], result["test_seconds"], mutants, sampling or None)


def merge_results(runs: list[list[dict]]) -> list[dict]:
    """Results of several runs, one per module: a later run's finished mutants replace the earlier run's (same key);
    the test selections are listed together, the first run's sampling kept."""
    merged: dict[str, dict] = {}
    for run in runs:
        for result in run:
            base = merged.get(result["module"])
            if base is None:
                merged[result["module"]] = copy.deepcopy(result)
                continue
            later = {m["key"]: m for m in result["mutants_detail"] if m["status"] != "pending"}
            base["mutants_detail"] = [later.get(m["key"], m) for m in base["mutants_detail"]]
            base["tests"] = base["tests"] + ["+"] + result["tests"]
    return list(merged.values())


def _table(results: list[dict]) -> str:
    rows = ["| module | run / mutants | killed (timeouts) | survived | equivalent excluded | score [95 % Wilson] |",
            "|---|---|---|---|---|---|"]
    for r in results:
        run = f"{r['mutants']} / {r['total_mutants']}"
        if "sample" in r:
            run += f" (sample of {r['population']}, seed {r['seed']})"
        low, high = r["wilson95"]
        rows.append(f"| {r['module'].removeprefix('src/un2clip/')} | {run} | "
                    f"{r['killed'] + r['timeout']} ({r['timeout']}) | {r['survived']} | {r['equivalent']} | "
                    f"{r['score']:.1f} % [{low:.1f}, {high:.1f}] |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("module", nargs="?", help="module file to mutate, e.g. src/un2clip/curate/rules.py")
    parser.add_argument("pytest_args", nargs=argparse.REMAINDER,
                        help="test files and pytest options run against each mutant (default: the module's "
                             "selection in CORE)")
    parser.add_argument("--all", action="store_true", help="run the six core modules with their selections")
    parser.add_argument("--list", action="store_true", help="print the mutants (keys) and exit, running nothing")
    parser.add_argument("--show", metavar="KEY", help="print the diff of the mutant with this key and exit")
    parser.add_argument("--only", metavar="KEY", action="append",
                        help="run only the mutant(s) with this key (repeatable)")
    parser.add_argument("--within", metavar="NAME", action="append",
                        help="mutate only inside this top-level function or class (repeatable)")
    parser.add_argument("--rescore", type=Path, metavar="JSON", nargs="+",
                        help="print the table of finished runs' --json files with the current list of equivalent "
                             "mutants (survivors found equivalent after the run), running nothing; a later file's "
                             "mutants of the same module replace the earlier's (a rerun of survivors with --only)")
    parser.add_argument("--sample", type=int, metavar="N",
                        help="run a uniform random sample of N of the mutants (default: all of them)")
    parser.add_argument("--seed", type=int, default=0, help="seed of --sample's draw (default: 0)")
    parser.add_argument("--json", type=Path, help="also write the results (every mutant's status) to this file "
                                                 "(updated after every mutant while the run goes on)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp") / f"un2clip-mutation-{os.getpid()}",
                        help="folder for the test logs (default: /tmp/un2clip-mutation-<pid>)")
    args = parser.parse_args(argv)
    if args.rescore:
        print(_table([rescore(r) for r in merge_results([json.loads(p.read_text()) for p in args.rescore])]))
        return 0
    os.chdir(ROOT)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.path.insert(0, str(ROOT / "src"))
    sys.path.insert(0, str(ROOT))
    modules = list(CORE) if args.all else [args.module]
    if modules == [None]:
        parser.error("name a module or --all")
    if args.sample is not None and args.sample < 1:
        parser.error(f"--sample must be >= 1, got {args.sample}")
    if args.list or args.show:
        for module in modules:
            source = (ROOT / module).read_text()
            equivalent = EQUIVALENT.get(str(module), {})
            for m in list_mutants(source):
                if args.show and m.key == args.show:
                    diff = difflib.unified_diff(ast.unparse(ast.parse(source)).splitlines(),
                                                mutated_source(source, m).splitlines(), lineterm="", n=2)
                    print("\n".join(diff))
                elif args.list:
                    print(f"{module}:{m.line}: {m.key}" + ("   [equivalent]" if m.key in equivalent else ""))
        return 0
    results = []
    for module in modules:
        pytest_args = args.pytest_args or CORE.get(module)
        if not pytest_args:
            parser.error(f"no test selection for {module}: name the test files")
        results.append(run_module(module, pytest_args, only=args.only, within=args.within, workdir=args.workdir,
                                  partial=args.json, sample=args.sample, seed=args.seed))
        print(_table(results[-1:]), flush=True)
    if len(results) > 1:
        print(_table(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
