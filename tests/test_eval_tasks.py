"""The registered task is the one source of an evaluation: `un2clip eval` is generated from the registry, each
command's help is its task's description, and every flag reaches the task's evaluate by an explicit dest."""

import argparse
import inspect
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from un2clip.cli import build_parser, main
from un2clip.cli.eval import MODEL_KINDS, option_names
from un2clip.eval import TASKS, EvalTask, LazyFunction, get_task

SRC = Path(__file__).resolve().parents[1] / "src"

# the flags a per-model command reads itself (loading, naming, writing), by model kind; every other flag of the
# command is passed to evaluate or declared in the task's ``ignores``
RUNNER_FLAGS = {
    "clip": {"help", "debug", "model", "data", "output", "model_name", "dataset_name", "random_weights", "device",
             "no_progress"},
    "llava": {"help", "debug", "model", "data", "output", "model_name", "dataset_name", "device", "dtype",
              "prompt_template", "no_progress"},
    "audio": {"help", "debug", "model", "data", "output", "model_name", "dataset_name", "device", "no_progress"},
}


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return action.choices


def choice_helps(parser: argparse.ArgumentParser) -> dict[str, str]:
    """sub-command -> the help its parent's listing shows."""
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {a.dest: a.help for a in action._choices_actions}


def eval_commands() -> dict[str, argparse.ArgumentParser]:
    return subcommands(subcommands(build_parser())["eval"])


def flags(parser: argparse.ArgumentParser) -> dict[str, tuple]:
    """option string -> what the flag is (dest, default, type, choices, nargs, required)."""
    return {s: (a.dest, a.default, a.type, a.choices, a.nargs, a.required) for a in parser._actions
            for s in a.option_strings}


def options_evaluate_refuses(task: EvalTask) -> list[str]:
    """The keywords `un2clip eval` passes that ``task.evaluate`` has no parameter for."""
    params = inspect.signature(task.evaluate).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return []
    passed = option_names(task) + ["progress"] + ([task.item_csv] if task.item_csv else [])
    return [k for k in passed if k not in params]


PER_MODEL = [t for t in TASKS.values() if t.runner == "per-model"]


def test_the_eval_commands_are_the_registry(monkeypatch):
    assert list(eval_commands()) == list(TASKS)
    assert {"mmvp", "mmvp-mllm", "cvbench", "seg", "depth"} <= set(TASKS)
    # a task registered later gets its command with nothing else to edit
    monkeypatch.setitem(TASKS, "echo", EvalTask("echo", lambda model, data, progress=True: {}, ("x",), "echoes"))
    assert list(eval_commands()) == list(TASKS) and list(TASKS)[-1] == "echo"
    assert choice_helps(build_parser())["eval"] == "evaluate encoders: " + " | ".join(TASKS)


@pytest.mark.parametrize("name", list(TASKS))
def test_each_command_shows_its_tasks_description(name, monkeypatch):
    text = f"the one description of {name}, written only in its registration"
    monkeypatch.setitem(TASKS, name, replace(get_task(name), description=text))
    eval_parser = subcommands(build_parser())["eval"]
    assert subcommands(eval_parser)[name].description == text and choice_helps(eval_parser)[name] == text


def test_extras_and_item_files_are_named_in_the_help():
    commands = eval_commands()
    assert "pip install 'un2clip[detect]'" in commands["detect"].format_help()
    assert "pip install 'un2clip[video]'" in commands["video-zeroshot"].epilog
    assert ".pairs.csv of every item" in commands["mmvp"].epilog
    assert ".samples.csv of every item" in commands["cvbench"].epilog and "Extras" not in commands["cvbench"].epilog


@pytest.mark.parametrize("task", PER_MODEL, ids=lambda t: t.name)
def test_every_flag_reaches_evaluate_by_its_dest(task):
    assert options_evaluate_refuses(task) == []
    params = inspect.signature(task.evaluate).parameters
    kind = MODEL_KINDS[task.model_kind]
    for shared in task.ignores:  # declared as unused: a shared flag that evaluate really does not take
        assert shared in kind.options and shared not in params, shared
    dests = {a.dest for a in eval_commands()[task.name]._actions}
    accounted = RUNNER_FLAGS[task.model_kind] | set(option_names(task)) | set(task.ignores)
    assert dests - accounted == set()  # no flag silently dropped
    if task.check_data is not None:  # the data check gets its keywords from the same options
        wanted = list(inspect.signature(task.check_data).parameters)[1:]  # after the data
        assert set(wanted) <= set(option_names(task)), wanted


def test_a_flag_that_evaluate_does_not_take_is_caught():
    def evaluate(model, data, *, alpha: int = 1, progress: bool = True) -> dict[str, float]:
        return {}

    def two_flags(g):
        g.add_argument("--alpha", type=int)
        g.add_argument("--beta-value", type=int)

    task = EvalTask("two", evaluate, (), flags=two_flags)
    assert options_evaluate_refuses(task) == ["beta_value", "precision", "batch_size", "num_workers"]
    assert options_evaluate_refuses(replace(task, ignores=("precision", "batch_size", "num_workers"))) == \
        ["beta_value"]


def test_seg_is_registered_and_un2clip_seg_is_its_alias():
    from un2clip.eval import seg

    task = get_task("seg")
    assert task.runner == "seg" and task.headline[0] == "mIoU" and task.evaluate.resolve() is seg.evaluate
    alias, command = subcommands(build_parser())["seg"], eval_commands()["seg"]
    assert flags(alias) == flags(command) and "--benchmarks-root" in flags(alias)
    assert alias.description == command.description == task.description


def test_lazy_functions_import_on_first_use():
    f = LazyFunction("un2clip.eval.encoder.mmvp:average_definition")
    assert "average_definition" in repr(f) and list(inspect.signature(f).parameters) == ["scores"]
    assert f({"a": 1.0, "average": 1.0}).startswith("the mean of the 1 pattern")
    with pytest.raises(ValueError, match="'package.module:function'"):
        LazyFunction("un2clip.eval.encoder.mmvp.evaluate")


def test_help_and_the_registry_import_no_task_module_and_no_torch():
    code = ("import sys\nfrom un2clip.cli import main\n"
            "for argv in (['--help'], ['eval', '--help'], ['eval', 'mmvp', '--help'], ['seg', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "import un2clip.eval\nun2clip.eval.get_task('cvbench')\n"
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('un2clip.eval.')))\n")
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.splitlines()[-1] == "['un2clip.eval.registry', 'un2clip.eval.tasks']"


def _needs_a_package(data, **options):
    raise ImportError("No module named 'zzz_missing'", name="zzz_missing")


def test_a_missing_package_is_a_one_line_error_naming_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(TASKS, "needy", EvalTask("needy", lambda model, data, progress=True: {}, (),
                                                 check_data=_needs_a_package, extras=("needy",)))
    assert main(["eval", "needy", "--model", "tiny", "--data", str(tmp_path), "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("un2clip eval: error: No module named 'zzz_missing' (the needy evaluation needs: "
                   "pip install 'un2clip[needy]')")
