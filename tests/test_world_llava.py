"""`un2clip compare --llava` (issue 29): the world's LLaVA sets written into a world, the recipe's stages, the
per-attribute scores and the report's tables."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from un2clip.world.llava import LLAVA_QUICK, LlavaSettings, encoders_of, per_attribute, stage_fields


def _world(out: Path, mllm: bool) -> dict:
    from un2clip.world.evalsets import generate_world

    return generate_world(out, seed=3, n_train=12, n_val=2, pairs_per_pattern=1, n_seg=1, n_zeroshot_per_class=1,
                    n_detect=1, n_depth=1, n_pointcloud_per_class=1, n_video_per_class=1, rare_rate=0.0,
                    talk_colors=["red", "yellow", "green"], mllm=mllm, n_mllm_instruct=4, mllm_pairs_per_pattern=1,
                    n_cvbench_per_task=1, workers=1)


def test_mllm_sets_added_to_a_world_are_the_ones_generate_writes(tmp_path):
    from un2clip.world.evalsets import add_mllm_sets

    with_sets = _world(tmp_path / "a", mllm=True)
    without = _world(tmp_path / "b", mllm=False)
    assert "mllm" not in without and not (tmp_path / "b" / "mllm").exists()
    counts = add_mllm_sets(tmp_path / "b", n_instruct=4, pairs_per_pattern=1, n_cvbench_per_task=1)
    assert counts == with_sets["mllm"]
    assert json.loads((tmp_path / "b" / "world.json").read_text()) == json.loads((tmp_path / "a" / "world.json").read_text())
    files = sorted(p.relative_to(tmp_path / "a" / "mllm") for p in (tmp_path / "a" / "mllm").rglob("*") if p.is_file())
    assert any(str(f).startswith("mmvp-talk") for f in files) and any(str(f).startswith("cvbench") for f in files)
    assert files == sorted(p.relative_to(tmp_path / "b" / "mllm") for p in (tmp_path / "b" / "mllm").rglob("*")
                           if p.is_file())
    for f in files:  # byte for byte: the same streams whichever command wrote them
        assert (tmp_path / "a" / "mllm" / f).read_bytes() == (tmp_path / "b" / "mllm" / f).read_bytes(), f


def test_mllm_sets_need_the_train_split(tmp_path):
    from un2clip.world.evalsets import add_mllm_sets

    with pytest.raises(FileNotFoundError, match="not a shapes world"):
        add_mllm_sets(tmp_path)
    (tmp_path / "world.json").write_text(json.dumps({"seed": 0, "image_size": 32}))
    with pytest.raises(FileNotFoundError, match="train/captions.csv"):
        add_mllm_sets(tmp_path)


def test_per_attribute_scores_pairs_and_questions(tmp_path):
    rows = [(1, 1), (2, 1), (3, 1), (4, 0), (5, 0), (6, 0)]  # (index, correct)
    with open(tmp_path / "s.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "pair", "correct"])
        w.writerows((i, (i - 1) // 2, c) for i, c in rows)
    pairs = [{"indices": [1, 2], "attribute": "color"}, {"indices": [3, 4], "attribute": "color"},
             {"indices": [5, 6], "attribute": "count"}]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    got = per_attribute(tmp_path / "s.csv", tmp_path / "pairs.jsonl", "x")
    assert got == {"x/color": 50.0, "x/color_q": 75.0, "x/count": 0.0, "x/count_q": 0.0}


def test_separation_of_pairs_on_known_features():
    import torch

    from un2clip.world.llava import separation

    eye = torch.eye(6)
    a, far = eye[:3], eye[3:]
    assert separation(a, a.clone()) == 0.0  # each pair's images the same
    assert separation(a, far) == pytest.approx(1.0)  # every image orthogonal to every other: pairs as far as any two
    # b[i] between a[i] and far[i] (cosine 1/sqrt(2) to a[i]); other pairs orthogonal: (1 - 0.7071) / 1
    half = torch.nn.functional.normalize(a + far, dim=-1)
    assert separation(a, half) == pytest.approx(1 - 2 ** -0.5, abs=1e-6)
    # patch tokens (P, N, D): distances averaged over positions; scale of the features does not count
    tokens_a, tokens_b = torch.stack([a, a, a], 1), torch.stack([half, a, a], 1)
    # same: position 0 at 1 - 1/sqrt(2), positions 1 and 2 at 0; other pairs: orthogonal at every position
    assert separation(10 * tokens_a, tokens_b) == pytest.approx((1 - 2 ** -0.5) / 3, abs=1e-6)
    with pytest.raises(ValueError, match="two or more pairs"):
        separation(a[:1], a[:1])


def test_encoders_default_to_those_compared_and_a_misspelt_one_is_refused():
    assert encoders_of(LlavaSettings(), ["original", "un2clip", "alpha0.5", "diva"]) == ["original", "un2clip", "diva"]
    assert encoders_of(LlavaSettings(encoders=("un2clip",)), ["original", "un2clip"]) == ["un2clip"]
    with pytest.raises(ValueError, match="orignal.*not among the compared variants"):
        encoders_of(LlavaSettings(encoders=("orignal", "un2clip")), ["original", "un2clip"])


def test_stage_fields_are_the_picked_recipe():
    s = LlavaSettings()
    lm = stage_fields("lm", Path("c.csv"), 1, s, 20_000)
    assert (lm["objective"], lm["lr"], lm["batch_size"], lm["max_steps"], lm["warmup_steps"], lm["seed"]) == \
        ("llava-lm", 1e-3, 64, 625, 19, 1)  # two passes over 20,000 captions
    pt = stage_fields("pretrain", Path("p.json"), 1, s, 20_000, clip="enc", language_model=Path("lm"))
    assert (pt["lr"], pt["batch_size"], pt["max_steps"], pt["clip"], pt["objective_options"]) == \
        (1e-3, 32, 625, "enc", {"stage": "pretrain", "language_model": "lm"})
    ft = stage_fields("finetune", Path("i.json"), 1, s, 10_000, init=Path("pt"))
    assert (ft["lr"], ft["batch_size"], ft["max_steps"], ft["warmup_steps"], ft["lr_schedule"]) == \
        (2e-4, 16, 5000, 150, "cosine")
    assert stage_fields("finetune", Path("i.json"), 1, LLAVA_QUICK, 8, init=Path("pt"))["max_steps"] == 2


@pytest.mark.slow
def test_compare_stage_lm_trains_what_llava_train_trains(tmp_path):
    """The same captions, seed and budget through `un2clip llava train --stage lm` and through the compare stage's
    fields: the same config (but the output) and bit-identical weights."""
    import torch
    from safetensors.torch import load_file

    from un2clip.cli import main
    from un2clip.train.config import load_config
    from un2clip.world.stages import train_run

    data = tmp_path / "captions.csv"
    with open(data, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption"])
        w.writerows((f"{i}.png", f"a {c} circle on the left") for i, c in enumerate(["red", "blue", "green", "red"]))
    assert main(["llava", "train", "--stage", "lm", "--data", str(data), "--batch-size", "2", "--max-steps", "3",
                 "--seed", "5", "--output", str(tmp_path / "cli"), "--no-progress"]) == 0
    settings = LlavaSettings(lm_batch=2, max_steps=3)
    train_run(**stage_fields("lm", data, 5, settings, 4), output=str(tmp_path / "stage"), progress=False)
    a, b = (load_config(tmp_path / r / "config.yaml").__dict__ for r in ("cli", "stage"))
    assert {k: v for k, v in a.items() if k != "output"} == {k: v for k, v in b.items() if k != "output"}
    wa, wb = (load_file(next((tmp_path / r / "lm").glob("*.safetensors"))) for r in ("cli", "stage"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_quick_compare_trains_a_llava_per_encoder_and_reports_it(tmp_path, monkeypatch):
    from dataclasses import replace

    from tests.test_compare import _untrained_demo_models
    from un2clip.world import demo, probe
    from un2clip.world.compare import QUICK, run_compare

    monkeypatch.setattr(demo, "shipped_weights", lambda seed, weights_seed=None: tmp_path / "nothing-shipped")
    monkeypatch.setattr(probe, "world_probe", lambda model, world, **kw: {"probe/mean": 50.0})
    out = tmp_path / "cmp"
    settings = replace(QUICK, llava=replace(LLAVA_QUICK, encoders=("original", "un2clip", "alpha0.5")))
    with pytest.raises(ValueError, match="alpha0.5"):  # refused before anything is made
        run_compare(out, seeds=[0], variants=["un2clip"], settings=settings, progress=False)
    assert not out.exists()
    _untrained_demo_models(out / "seed0")
    settings = replace(QUICK, llava=LLAVA_QUICK)
    report = run_compare(out, seeds=[0], variants=["un2clip"], settings=settings, progress=False).read_text()
    assert "### World LLaVA" in report and "| Δ un2clip |" in report.split("### World LLaVA")[1]
    assert "#### Where each encoder separates the silent pairs" in report
    seed = out / "seed0"
    for name in ("original", "un2clip"):
        metrics = json.loads((seed / "eval" / f"llava_{name}.json").read_text())["metrics"]
        assert 0.0 <= metrics["llava_mmvp/pairs"] <= metrics["llava_mmvp/questions"] <= 100.0
        assert {"llava_talk/pairs", "llava_mmvp/color", "llava_cvbench/Count"} <= set(metrics)
        assert all(0.0 <= metrics[f"llava_sep/{k}"] < 2.0 for k in ("embedding", "class_token", "patch_last",
                                                                     "patch_read"))
        config = json.loads((seed / "llava" / name / "pretrain" / "recipe.json").read_text())["run"]
        assert config["objective_options"]["language_model"] == str(seed / "llava" / "lm" / "run" / "lm")
    spec = json.loads((seed / "llava" / "un2clip" / "pretrain" / "recipe.json").read_text())["run"]["clip"]
    assert spec == str(seed / "finetune")  # each LLaVA on its own encoder, one shared language model
    assert json.loads((seed / "world" / "world.json").read_text())["mllm"]["n_instruct"] == LLAVA_QUICK.n_instruct
    # a second call reuses every stage and evaluation
    stamps = {p: p.stat().st_mtime_ns for p in [*seed.glob("llava/*/*/DONE"), seed / "llava" / "lm" / "DONE",
                                                 *seed.glob("eval/llava_*.json")]}
    assert len(stamps) == 7
    run_compare(out, seeds=[0], variants=["un2clip"], settings=settings, progress=False)
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    # the un2clip encoder made again: its LLaVA is made again, the original's is kept
    (seed / "finetune" / "DONE").write_text("{}")
    run_compare(out, seeds=[0], variants=["un2clip"], settings=settings, progress=False)
    assert (seed / "llava" / "original" / "finetune" / "DONE").stat().st_mtime_ns == \
        stamps[seed / "llava" / "original" / "finetune" / "DONE"]
    assert (seed / "llava" / "un2clip" / "finetune" / "DONE").stat().st_mtime_ns != \
        stamps[seed / "llava" / "un2clip" / "finetune" / "DONE"]
