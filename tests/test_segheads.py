"""`compare --seg-heads`: every training-free head, without and with PAMR, on every variant (issue 28)."""

import math

import pytest

from un2clip.world import compare, segheads


def test_each_head_runs_without_and_with_pamr_on_both_sets(monkeypatch, tmp_path):
    from un2clip.eval import seg
    from un2clip.world.report import SEG_SETTINGS

    calls = []

    class Data:
        classes, templates = [["background"], ["circle"]], ["a {}."]

    def fake_evaluate(model, data, *, method, **kw):
        calls.append((data.folder, method, kw["pamr_steps"], kw["pamr_dilations"],
                      {k: kw[k] for k in SEG_SETTINGS}, kw.get("background_query", True)))
        return {"mIoU": 10.0 * len(calls), "background_mIoU": 12.5, "oracle_mIoU": 65.0}

    def fake_load(root, max_images=None):
        data = Data()
        data.folder = root.name
        return data

    monkeypatch.setattr("un2clip.load.load_clip", lambda spec: object())
    monkeypatch.setattr(seg, "load_dataset", fake_load)
    monkeypatch.setattr(seg, "text_classifier", lambda model, classes, templates: "classifier")
    monkeypatch.setattr(seg, "evaluate", fake_evaluate)
    settings = segheads.SegHeadSettings(heads=("maskclip", "naclip"), pamr_steps=7, pamr_dilations=(1, 3))
    out = segheads.head_scores("tiny", tmp_path, settings, progress=False)
    # NACLIP's preset has PAMR on: its plain run must turn it off, and its +pamr run use the settings' rings
    assert [c[:4] for c in calls] == [(f, h, p, (1, 3)) for f in ("seg", "seg-color") for h in ("maskclip", "naclip")
                                      for p in (0, 7)]
    # the shape set as the report runs it; the colour set: background by each head's own threshold alone
    assert all(c[4] == SEG_SETTINGS and c[5] for c in calls[:4])
    colour = {**SEG_SETTINGS, "prob_threshold": segheads.COLOR_THRESHOLDS["maskclip"]}
    assert calls[4][4] == colour and not calls[4][5]
    assert calls[6][4]["prob_threshold"] == segheads.COLOR_THRESHOLDS["naclip"] and not calls[6][5]
    assert out == {"seg_heads/maskclip": 10.0, "seg_heads/maskclip+pamr": 20.0, "seg_heads/naclip": 30.0,
                   "seg_heads/naclip+pamr": 40.0, "seg_heads/background_mIoU": 12.5, "seg_heads/oracle_mIoU": 65.0,
                   "segcolor_heads/maskclip": 50.0, "segcolor_heads/maskclip+pamr": 60.0,
                   "segcolor_heads/naclip": 70.0, "segcolor_heads/naclip+pamr": 80.0,
                   "segcolor_heads/background_mIoU": 12.5, "segcolor_heads/oracle_mIoU": 65.0}


def test_colour_set_has_the_scenes_of_the_shape_set_labelled_by_colour(tmp_path):
    import json

    import numpy as np
    from PIL import Image

    from un2clip.world.evalsets import generate_world, write_seg_color
    from un2clip.world.scenes import COLORS

    generate_world(tmp_path, seed=3, n_train=2, n_val=1, pairs_per_pattern=1, n_seg=6, n_zeroshot_per_class=1,
                   n_detect=0, n_depth=0, n_pointcloud_per_class=0, n_video_per_class=0, progress=False)
    folder = write_seg_color(tmp_path, 3, 6)
    colours = list(COLORS)
    names = (folder / "classes.txt").read_text().splitlines()
    assert names[0] == "background" and names[1].split(", ")[0] == f"{colours[0]} circle" and len(names) == 7
    records = [json.loads(x) for x in (tmp_path / "seg" / "attributes.jsonl").read_text().splitlines()]
    for r in records:
        shape_image = np.array(Image.open(tmp_path / "seg" / r["image"]))
        assert np.array_equal(np.array(Image.open(folder / r["image"])), shape_image)
        by_shape = np.array(Image.open(tmp_path / "seg" / r["mask"]))
        by_colour = np.array(Image.open(folder / r["mask"]))
        assert np.array_equal(by_shape == 0, by_colour == 0)  # the same object pixels
        present = {colours.index(o["color"]) + 1 for o in r["objects"]}
        assert set(np.unique(by_colour)) - {0} <= present and set(np.unique(by_colour)) - {0}


@pytest.mark.slow
def test_seg_head_results_on_a_world_are_cached_per_model(tmp_path, monkeypatch):
    from un2clip.world.evalsets import generate_world
    from un2clip.world.stages import mark_done

    world = tmp_path / "seed0" / "world"
    generate_world(world, seed=0, n_train=4, n_val=2, pairs_per_pattern=1, n_seg=3, n_zeroshot_per_class=1,
                   n_detect=0, n_depth=0, n_pointcloud_per_class=0, n_video_per_class=0, progress=False)
    mark_done(world, 0.0)
    settings = segheads.SegHeadSettings(heads=("vanilla",))
    out = segheads.seg_head_results(tmp_path / "seed0", {"a": "tiny", "b": "tiny"}, settings=settings, progress=False)
    assert set(out) == {"a", "b"} and out["a"] == out["b"]  # the same model twice
    m = out["a"]
    assert set(m) == {f"{p}/{k}" for p in ("seg_heads", "segcolor_heads") for k in (
        "vanilla", "vanilla+pamr", "background_mIoU", "oracle_mIoU")}
    assert (tmp_path / "seed0" / "world" / "seg-color" / "classes.txt").is_file()  # written on demand
    assert all(0.0 <= v <= 100.0 and math.isfinite(v) for v in m.values())
    # cached: a second call computes nothing
    monkeypatch.setattr(segheads, "head_scores", lambda *a, **k: pytest.fail("recomputed a cached model"))
    assert segheads.seg_head_results(tmp_path / "seed0", {"a": "tiny"}, settings=settings, progress=False)["a"] == m
    # other settings: made again
    with pytest.raises(pytest.fail.Exception, match="recomputed"):
        segheads.seg_head_results(tmp_path / "seed0", {"a": "tiny"}, settings=segheads.SegHeadSettings(
            heads=("vanilla",), pamr_steps=5), progress=False)


def test_report_table_has_every_head_the_paired_change_and_both_references():
    def m(v, p):
        return {"seg_heads/clearclip": v, "seg_heads/clearclip+pamr": p, "seg_heads/background_mIoU": 12.0,
                "seg_heads/oracle_mIoU": 65.0}

    per_seed = {0: {"original": m(10.0, 11.0), "un2clip": m(14.0, 12.0), "diva": {"mmvp/average": 1.0}},
                1: {"original": m(20.0, 21.0), "un2clip": m(22.0, 25.0), "diva": {"mmvp/average": 1.0}}}
    lines = compare.seg_head_lines(per_seed)
    table = "\n".join(lines)
    assert "| model | clearclip | clearclip+pamr |" in table
    assert "| original | 15.0 ± 7.1 | 16.0 ± 7.1 |" in table
    assert "| Δ un2clip | +3.0 ± 1.4 | +2.5 ± 2.1 |" in table  # paired: (+4, +2) and (+1, +4)
    assert "| *all-background* | 12.0 ± 0.0 | 12.0 ± 0.0 |" in table
    assert "| *patch oracle* | 65.0 ± 0.0 | 65.0 ± 0.0 |" in table
    assert "diva" not in table  # a variant without the metrics has no row
    assert compare.seg_head_lines({0: {"original": {"mmvp/average": 1.0}}}) == []


@pytest.mark.slow
def test_compare_seg_heads_scores_every_variant_and_reports_the_table(tmp_path, monkeypatch, tiny_clip):
    import json

    from tests.test_lseg import _stub_demo
    from un2clip.cli import main
    from un2clip.world.evalsets import generate_world
    from un2clip.world.stages import mark_done

    out = tmp_path / "cmp"
    seed_dir = out / "seed0"
    _stub_demo(tmp_path, monkeypatch, tiny_clip, seed_dir)
    generate_world(seed_dir / "world", seed=0, n_train=4, n_val=2, pairs_per_pattern=1, n_seg=2,
                   n_zeroshot_per_class=1, n_detect=0, n_depth=0, n_pointcloud_per_class=0, n_video_per_class=0,
                   progress=False)
    mark_done(seed_dir / "world", 0.0)
    assert main(["compare", "--quick", "--seg-heads", "--seeds", "0", "--variants", "original", "un2clip",
                 "--output", str(out), "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())["per_seed"]["0"]
    for name in ("original", "un2clip"):
        for p in ("seg_heads", "segcolor_heads"):
            assert {k for k in results[name] if k.startswith(f"{p}/")} == {
                f"{p}/{h}{s}" for h in segheads.SEG_HEADS_QUICK.heads for s in ("", "+pamr")} | {
                f"{p}/background_mIoU", f"{p}/oracle_mIoU"}
    report = (out / "report.md").read_text()
    assert "| model | vanilla | vanilla+pamr | clearclip | clearclip+pamr |" in report
    assert report.count("| model | vanilla | vanilla+pamr | clearclip | clearclip+pamr |") == 2  # shape, colour
    assert "labelled by colour" in report
    assert "| *patch oracle* |" in report and "| Δ un2clip | +0.0 | +0.0 | +0.0 | +0.0 |" in report


def test_world_generate_seg_color_flag_writes_the_colour_set(tmp_path, capsys):
    from un2clip.cli import main

    args = ["world", "generate", str(tmp_path / "w"), "--seed", "2", "--n-train", "4", "--n-val", "2",
            "--pairs-per-pattern", "1", "--n-seg", "3"]
    assert main(args) == 0 and not (tmp_path / "w" / "seg-color").exists()
    assert main([*args, "--seg-color", "--overwrite"]) == 0
    assert len(list((tmp_path / "w" / "seg-color" / "masks").glob("*.png"))) == 3
    # nothing to label: refused in one line, before anything is written
    assert main([*args[:-2], "--n-seg", "0", "--seg-color", "--overwrite"]) == 2
    assert "--n-seg" in capsys.readouterr().err
