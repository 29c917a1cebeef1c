"""Every shipped recipe parses into a RunConfig whose objective and options fit the real constructors."""

from pathlib import Path

import pytest

from un2clip.train.config import RunConfig, config_from_dict, load_config

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_recipe_builds(path):
    import inspect

    from un2clip.models.presets import PRESETS
    from un2clip.train.recipes import OBJECTIVES

    cfg = load_config(path)
    assert cfg.objective in OBJECTIVES
    assert cfg.preset in PRESETS
    if cfg.objective == "un2clip":
        from un2clip.objectives.un2clip import Un2ClipObjective

        params = inspect.signature(Un2ClipObjective.__init__).parameters
        assert set(cfg.objective_options) <= set(params), cfg.objective_options


def test_paper_defaults_in_openai_l14_recipe():
    cfg = load_config(Path(__file__).parent.parent / "configs" / "openai_l14.yaml")
    assert cfg.lr == pytest.approx(3e-7) and cfg.batch_size == 32 and cfg.optimizer == "adamw"


def test_unknown_key_is_refused():
    with pytest.raises(ValueError, match="unknown key"):
        config_from_dict({"learning_rate": 1e-3})


def test_round_trip_through_yaml(tmp_path):
    cfg = RunConfig(lr=3e-7, objective_options={"projector": "identity"})
    cfg.save(tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


def test_bad_values_are_refused():
    with pytest.raises(ValueError, match="precision"):
        config_from_dict({"precision": "fp8"})
    with pytest.raises(ValueError, match="lr"):
        config_from_dict({"lr": 0})


# -- one source of truth: RunConfig's fields give the training flags, their help defaults and the resume rule --

TRAINING_COMMANDS = ("pretrain", "train-decoder", "train-autoencoder", "finetune", "diva", "train-filter",
                     "train-dense")

# the shared training flags as they were before the flags were generated: (type, choices, action), parser default None
FLAGS_BEFORE = {
    "--preset": (None, None, "store"), "--clip": (None, None, "store"), "--decoder": (None, None, "store"),
    "--random-weights": (None, None, "store_true"), "--data": (None, None, "store"),
    "--image-column": (None, None, "store"), "--caption-column": (None, None, "store"),
    "--num-workers": (int, None, "store"), "--max-skip-rate": (float, None, "store"),
    "--skip-window": (int, None, "store"), "--lr": (float, None, "store"),
    "--optimizer": (None, ("adamw", "sgd"), "store"), "--weight-decay": (float, None, "store"),
    "--warmup-steps": (int, None, "store"), "--lr-schedule": (None, ("constant", "cosine", "poly"), "store"),
    "--max-grad-norm": (float, None, "store"), "--max-steps": (int, None, "store"),
    "--batch-size": (int, None, "store"), "--grad-accum": (int, None, "store"),
    "--precision": (None, ("fp32", "bf16", "fp16"), "store"), "--grad-checkpointing": (None, None, "store_true"),
    "--compile": (None, None, "store_true"), "--channels-last": (None, None, "store_true"),
    "--save-every": (int, None, "store"), "--seed": (int, None, "store"), "--output": (None, None, "store"),
}
# what each flag's help says its default is (RunConfig's defaults, written out here)
HELP_DEFAULTS = {
    "--preset": "tiny", "--clip": "the preset's", "--decoder": "the preset's", "--random-weights": "off",
    "--num-workers": "0", "--max-skip-rate": "0.5", "--skip-window": "100", "--lr": "1e-5", "--optimizer": "adamw",
    "--weight-decay": "0", "--warmup-steps": "0", "--lr-schedule": "constant", "--max-grad-norm": "1",
    "--max-steps": "200", "--batch-size": "32", "--grad-accum": "1", "--precision": "fp32",
    "--grad-checkpointing": "off", "--compile": "off", "--channels-last": "off", "--save-every": "500",
    "--keep-checkpoints": "2", "--seed": "0", "--output": "runs/finetune", "--report-to": "none",
}
RESUMABLE_FLAGS = {"--lr", "--max-steps", "--save-every", "--precision", "--num-workers", "--max-skip-rate",
                   "--skip-window", "--report-to"}


def _command_parser(name):
    import argparse

    from un2clip.cli import build_parser

    parser = build_parser()
    for part in name.split():  # "llava train": a command of a group
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[part]
    return parser


def _options(parser):
    return {a.option_strings[0]: a for a in parser._actions if a.option_strings}


@pytest.mark.parametrize("command", TRAINING_COMMANDS)
def test_generated_flags_keep_todays_names_types_choices_and_defaults(command):
    options = _options(_command_parser(command))
    for name, (kind, choices, action) in FLAGS_BEFORE.items():
        a = options[name]
        got_action = "store_true" if a.const is True and a.nargs == 0 else "store"
        assert (a.type, tuple(a.choices) if a.choices else None, got_action) == (kind, choices, action), name
        assert a.default is None, name  # a flag not given leaves the recipe's value
    args = _command_parser(command).parse_args([])
    cfg = RunConfig()  # no recipe and no flag: today's defaults
    assert (cfg.preset, cfg.lr, cfg.max_steps, cfg.batch_size, cfg.save_every, cfg.keep_checkpoints, cfg.seed,
            cfg.precision, cfg.max_grad_norm, cfg.output) == ("tiny", 1e-5, 200, 32, 500, 2, 0, "fp32", 1.0,
                                                              "runs/finetune")
    assert all(getattr(args, name[2:].replace("-", "_")) is None for name in FLAGS_BEFORE)


def test_every_field_has_a_flag_or_a_reason_why_not():
    from dataclasses import fields

    parsers = {c: _options(_command_parser(c)) for c in (*TRAINING_COMMANDS, "llava train", "train-grounding")}
    for f in fields(RunConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.metadata.get("flag") == "shared":
            assert f.metadata["help"] and f.metadata["group"], f.name
            assert all(flag in options for options in parsers.values()), f.name
        else:
            assert len(f.metadata.get("why", "")) > 10, f"RunConfig.{f.name} has no flag and says not why"
            if f.metadata.get("flag") == "command":  # some command adds its own flag
                assert any(flag in options for options in parsers.values()), f.name
    assert "--vae" in parsers["train-decoder"] and "--vae" in parsers["train-autoencoder"]
    assert "--keep-checkpoints" in parsers["finetune"]
    assert "--image-folder" in parsers["llava train"] and "--image-folder" in parsers["train-grounding"]


@pytest.mark.parametrize("command", TRAINING_COMMANDS)
def test_help_shows_each_flags_real_default(command, capsys):
    from un2clip.cli import main as cli

    options = _options(_command_parser(command))
    for name, default in HELP_DEFAULTS.items():
        assert f"(default {default}" in " ".join(options[name].help.split()), (name, options[name].help)
    with pytest.raises(SystemExit):  # and argparse prints them
        cli([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "learning rate (default 1e-5; paper: 3e-7 for ViT-L/14)" in text
    assert "gradient accumulation micro-steps per optimiser step (default 1)" in text


def test_help_default_follows_the_field():
    from dataclasses import fields

    from un2clip.train.config import flag_help

    lr = next(f for f in fields(RunConfig) if f.name == "lr")
    assert flag_help(lr) == "learning rate (default 1e-5; paper: 3e-7 for ViT-L/14)"
    grad_accum = next(f for f in fields(RunConfig) if f.name == "grad_accum")
    assert flag_help(grad_accum).endswith("(default 1)")


def test_resumable_set_is_the_fields_marked_so():
    from un2clip.train.config import RESUMABLE

    assert {"--" + k.replace("_", "-") for k in RESUMABLE} == RESUMABLE_FLAGS
    help_text = " ".join(_options(_command_parser("finetune"))["--resume"].help.split())
    assert all(flag in help_text for flag in RESUMABLE_FLAGS) and "--batch-size" not in help_text


def _resume_args(run, *flags):
    from un2clip.cli.train import _resolve_run_config

    args = _command_parser("finetune").parse_args(["--resume", str(run), *flags])
    return _resolve_run_config(args, "un2clip", {})


def test_resume_takes_resumable_flags_and_refuses_a_field_marked_otherwise(tmp_path):
    RunConfig(lr=1e-4, max_steps=4, output="elsewhere").save(tmp_path / "config.yaml")
    cfg = _resume_args(tmp_path, "--lr", "1e-3", "--max-steps", "9", "--skip-window", "7")
    assert (cfg.lr, cfg.max_steps, cfg.skip_window, cfg.output) == (1e-3, 9, 7, str(tmp_path))
    with pytest.raises(ValueError) as err:  # keep_checkpoints has a flag but is not marked resumable
        _resume_args(tmp_path, "--lr", "1e-3", "--keep-checkpoints", "5")
    message = str(err.value)
    assert "not --keep-checkpoints" in message and "--lr" not in message.split("; not ")[1]
    accepted = message.split("accepts only ")[1].split(" (and --no-progress)")[0].split(", ")
    assert set(accepted) == RESUMABLE_FLAGS


def test_a_resumed_config_that_changes_a_non_resumable_field_is_refused(tmp_path):
    from un2clip.train.recipes import _record_resume_changes

    RunConfig(keep_checkpoints=2).save(tmp_path / "config.yaml")
    with pytest.raises(ValueError, match=r"\['keep_checkpoints'\] differ"):
        _record_resume_changes(tmp_path, RunConfig(keep_checkpoints=3))


def test_choices_of_a_field_are_checked_in_a_recipe():
    with pytest.raises(ValueError, match="optimizer must be one of adamw, sgd, got 'adam'"):
        config_from_dict({"optimizer": "adam"})
    with pytest.raises(ValueError, match="lr_schedule must be one of constant, cosine"):
        config_from_dict({"lr_schedule": "linear"})
    with pytest.raises(ValueError, match="keep_checkpoints"):
        config_from_dict({"keep_checkpoints": 0})
