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
