"""The demo pipeline end to end, a few steps per stage: every stage runs and the report is written."""

import json

import pytest

from un2clip.world.demo import QUICK, run_demo


@pytest.mark.slow
def test_quick_demo_runs_every_stage_and_caches(tmp_path):
    out = tmp_path / "demo"
    report = run_demo(out, seed=0, from_scratch=True, settings=QUICK, progress=False)
    text = report.read_text()
    assert "| original |" in text and "| un2clip |" in text
    assert (out / "eval" / "reconstructions.png").exists()
    for stage in ("world", "clip", "decoder", "finetune"):
        assert (out / stage / "DONE").exists(), stage
    before = json.loads((out / "eval" / "original.json").read_text())["metrics"]
    assert 0.0 <= before["mmvp/average"] <= 100.0 and before["mmvp/n_pairs"] == 9 * QUICK.pairs_per_pattern
    # the segmentation score's two references; every table with a chance level shows it under the models
    assert 0.0 <= before["seg_reference/background_mIoU"] <= before["seg_reference/oracle_mIoU"] <= 100.0
    summary = text.split("## Summary")[1].split("## ")[0]
    chance = next(line for line in summary.splitlines() if line.startswith("| *chance* |")).split(" | ")
    head = next(line for line in summary.splitlines() if line.startswith("| model |")).split(" | ")
    assert chance[head.index("world-MMVP avg")] == "25.0"
    assert chance[head.index("zero-shot shape")] == "16.7"  # six shapes
    assert chance[head.index("ClearCLIP mIoU")] == f"{before['seg_reference/background_mIoU']:.1f}"
    assert "| *patch oracle* |" in summary
    # point clouds and video sit at chance by construction in this world: neither evaluated nor reported
    assert not any(k.startswith(("pointcloud/", "video_")) for k in before)
    assert "point clouds" not in text.split("*Chance*")[0].lower() and "Text-video" not in text
    # a second run reuses every stage: the finetune run directory is not rewritten
    stamp = (out / "finetune" / "metrics.jsonl").stat().st_mtime_ns
    run_demo(out, seed=0, from_scratch=True, settings=QUICK, progress=False)
    assert (out / "finetune" / "metrics.jsonl").stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_weights_seed_starts_from_shipped_weights_and_source_change_redoes_downstream(tmp_path):
    import filecmp

    import pytest

    from un2clip.world.demo import ASSETS

    out = tmp_path / "demo"
    with pytest.raises(ValueError, match="from-scratch"):
        run_demo(out, seed=3, weights_seed=0, from_scratch=True, settings=QUICK, progress=False)
    with pytest.raises(FileNotFoundError, match="seed99"):
        run_demo(out, seed=3, weights_seed=99, settings=QUICK, progress=False)
    run_demo(out, seed=3, weights_seed=0, settings=QUICK, progress=False)
    assert json.loads((out / "clip" / "recipe.json").read_text()) == {"source": "shipped seed0"}
    assert filecmp.cmp(out / "clip" / "clip" / "model.safetensors", ASSETS / "seed0" / "clip" / "model.safetensors",
                       shallow=False)
    assert json.loads((out / "world" / "world.json").read_text())["seed"] == 3
    stamp = (out / "finetune" / "metrics.jsonl").stat().st_mtime_ns
    # seed 3 has no shipped weights: without --weights-seed both models are trained, and the fine-tune redone
    run_demo(out, seed=3, settings=QUICK, progress=False)
    assert json.loads((out / "clip" / "recipe.json").read_text()) == {"source": "pretrain"}
    assert json.loads((out / "decoder" / "recipe.json").read_text()) == {"source": "train-decoder"}
    assert (out / "finetune" / "metrics.jsonl").stat().st_mtime_ns != stamp


@pytest.mark.slow
def test_weights_folder_and_a_context_transfer_world(tmp_path):
    from dataclasses import replace

    import pytest

    from un2clip.world.demo import ASSETS, _world_stage, start_weights

    with pytest.raises(FileNotFoundError, match="--weights"):
        start_weights(2, None, tmp_path / "empty", from_scratch=False)
    with pytest.raises(ValueError, match="pass one"):
        start_weights(2, 0, ASSETS / "seed0", from_scratch=False)
    with pytest.raises(ValueError, match="from-scratch"):
        start_weights(2, None, ASSETS / "seed0", from_scratch=True)
    assert start_weights(2, None, ASSETS / "seed0", from_scratch=False) == ASSETS / "seed0"
    # {seed} in --weights: each world seed its own folder (seed 0's exists, seed 2's does not)
    template = str(ASSETS / "seed{seed}")
    assert start_weights(0, None, template, from_scratch=False) == ASSETS / "seed0"
    with pytest.raises(FileNotFoundError, match=r"seed2"):
        start_weights(2, None, template, from_scratch=False)
    with pytest.raises(ValueError, match=r"only placeholder"):
        start_weights(0, None, str(ASSETS / "seed{world}"), from_scratch=False)
    from un2clip.world.compare import weights_note

    twice = tmp_path / "w" / "s{seed}"
    for s in (0, 1):
        (tmp_path / "w" / f"s{s}" / "decoder" / "unet").mkdir(parents=True)  # what --weights checks for
        (tmp_path / "w" / f"s{s}" / "clip").mkdir()
        (tmp_path / "w" / f"s{s}" / "clip" / "config.json").write_text("{}")
    assert "its own pre-trained" in weights_note([0, 1], None, str(twice))
    one = weights_note([0], None, str(twice))  # a per-seed run of a templated folder: the seed's own models
    assert "its own pre-trained" in one and "every seed started from" not in one
    assert "not of pre-training" in weights_note([0, 1], None, ASSETS / "seed0")
    assert "seed 0" in weights_note([1, 2], 0, None) and weights_note([0, 1], None, None) is None
    out = tmp_path / "demo"
    ctx, plain = QUICK, replace(QUICK, rare_rate=0.03, talk_colors=())  # the demo's world is a context-transfer one
    assert (ctx.rare_rate, ctx.talk_colors) == (0.0, ("red", "yellow", "green"))
    world = _world_stage(out, 2, ctx, fresh=False, progress=False)
    record = json.loads((world / "world.json").read_text())
    assert record["talk_colors"] == ["red", "yellow", "green"] and record["mmvp_colors"] == ["cyan", "blue", "purple"]
    assert _world_stage(out, 2, ctx, fresh=False, progress=False) == world  # the same words: reused
    # the cached world has other words than asked: refused, not silently reused
    with pytest.raises(ValueError, match="--fresh"):
        _world_stage(out, 2, plain, fresh=False, progress=False)
    _world_stage(out, 2, plain, fresh=True, progress=False)
    assert "talk_colors" not in json.loads((world / "world.json").read_text())


def test_demo_and_compare_options_change_only_what_is_given():
    from un2clip.cli import build_parser
    from un2clip.cli.world import _world_settings
    from un2clip.world.demo import DemoSettings

    parser = build_parser()
    default = _world_settings(parser.parse_args(["demo"]), DemoSettings())
    assert default == DemoSettings()
    plain = _world_settings(parser.parse_args(["compare", "--talk-colors", "--rare-rate", "0.03"]), DemoSettings())
    assert (plain.talk_colors, plain.rare_rate, plain.talk_rate) == ((), 0.03, 0.5)
    other = _world_settings(parser.parse_args(["demo", "--talk-colors", "blue", "cyan", "--talk-rate", "0.2"]),
                            DemoSettings())
    assert (other.talk_colors, other.talk_rate, other.rare_rate) == (("blue", "cyan"), 0.2, 0.0)
