"""`compare --seg-heads`: every training-free head, without and with PAMR, on every variant (issue 28)."""

import math

import pytest

from un2clip.world import compare, segheads


def test_each_head_runs_once_without_and_once_with_pamr_on_the_report_geometry(monkeypatch, tmp_path):
    from un2clip.eval import seg
    from un2clip.world.report import SEG_SETTINGS

    calls = []

    class Data:
        classes, templates = [["background"], ["circle"]], ["a {}."]

    def fake_evaluate(model, data, *, method, **kw):
        calls.append((method, kw["pamr_steps"], kw["pamr_dilations"], {k: kw[k] for k in SEG_SETTINGS}))
        return {"mIoU": 10.0 * len(calls), "background_mIoU": 12.5, "oracle_mIoU": 65.0}

    monkeypatch.setattr("un2clip.load.load_clip", lambda spec: object())
    monkeypatch.setattr(seg, "load_dataset", lambda root, max_images=None: Data())
    monkeypatch.setattr(seg, "text_classifier", lambda model, classes, templates: "classifier")
    monkeypatch.setattr(seg, "evaluate", fake_evaluate)
    settings = segheads.SegHeadSettings(heads=("maskclip", "naclip"), pamr_steps=7, pamr_dilations=(1, 3))
    out = segheads.head_scores("tiny", tmp_path, settings, progress=False)
    # NACLIP's preset has PAMR on: its plain run must turn it off, and its +pamr run use the settings' rings
    assert [c[:3] for c in calls] == [("maskclip", 0, (1, 3)), ("maskclip", 7, (1, 3)), ("naclip", 0, (1, 3)),
                                      ("naclip", 7, (1, 3))]
    assert all(c[3] == SEG_SETTINGS for c in calls)
    assert out == {"seg_heads/maskclip": 10.0, "seg_heads/maskclip+pamr": 20.0, "seg_heads/naclip": 30.0,
                   "seg_heads/naclip+pamr": 40.0, "seg_heads/background_mIoU": 12.5, "seg_heads/oracle_mIoU": 65.0}


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
    assert set(m) == {"seg_heads/vanilla", "seg_heads/vanilla+pamr", "seg_heads/background_mIoU",
                      "seg_heads/oracle_mIoU"}
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
        assert {k for k in results[name] if k.startswith("seg_heads/")} == {
            f"seg_heads/{h}{s}" for h in segheads.SEG_HEADS_QUICK.heads for s in ("", "+pamr")} | {
            "seg_heads/background_mIoU", "seg_heads/oracle_mIoU"}
    report = (out / "report.md").read_text()
    assert "| model | vanilla | vanilla+pamr | clearclip | clearclip+pamr |" in report
    assert "| *patch oracle* |" in report and "| Δ un2clip | +0.0 | +0.0 | +0.0 | +0.0 |" in report
