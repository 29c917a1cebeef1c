"""`un2clip seg` end to end on the tiny CLIP: every method, a generic and a VOC dataset, all benchmarks at once."""

import json

import numpy as np
import pytest

from tests.test_seg_data import make_ade, make_generic, make_voc
from un2clip.cli import main
from un2clip.eval.seg.heads import METHODS

FAST = ["--short-side", "32", "--crop", "32", "--stride", "16", "--num-workers", "0", "--no-progress"]


@pytest.fixture
def templates(tmp_path):
    path = tmp_path / "templates.txt"
    path.write_text("a photo of a {c}.\na {c}.\n")
    return str(path)


def _results(out):
    return {(r["method"], r["dataset"]): r for r in (json.loads(p.read_text()) for p in sorted(out.glob("*.json")))}


def test_every_method_on_a_generic_dataset(tmp_path, capsys):
    data = make_generic(tmp_path / "world_seg", n=3, h=36, w=52)
    (data / "templates.txt").write_text("a drawing of a {}.\n")  # the folder's own templates, as the world writes
    out = tmp_path / "out"
    assert main(["seg", "--method", *METHODS, "--model", "tiny", "--data", str(data), "--output", str(out),
                 "--prob-threshold", "0.2", "--pamr-steps", "2", *FAST]) == 0
    results = _results(out)
    assert set(results) == {(m, "generic") for m in METHODS}
    for (method, _), r in results.items():
        assert r["format"] == "un2clip-eval-result/1" and r["task"] == f"seg/{method}" and r["model"] == "tiny"
        assert 0 <= r["metrics"]["mIoU"] <= 100 and 0 <= r["metrics"]["aAcc"] <= 100
        assert r["metrics"]["n_images"] == 3 and r["metrics"]["n_skipped"] == 0
        assert set(r["per_class_iou"]) == {"background", "circle", "square"}
        assert r["options"]["crop"] == 32 and r["options"]["prob_threshold"] == 0.2 and r["options"]["pamr_steps"] == 2
        assert r["options"]["classes"][1] == ["circle", "round"]
        assert r["options"]["templates"] == ["a drawing of a {}."]
    table = capsys.readouterr().out
    for method in METHODS:
        assert f"generic  {method}" in table
    assert "mIoU" in table and "aAcc" in table and "mean" in table


def test_every_method_on_a_voc_dataset_with_presets(tmp_path, templates, capsys):
    data = make_voc(tmp_path / "VOCdevkit" / "VOC2012", h=40, w=56)
    out = tmp_path / "out"
    assert main(["seg", "--method", *METHODS, "--model", "tiny", "--model-name", "tiny-clip", "--data", str(data),
                 "--dataset", "voc21", "--output", str(out), "--templates", templates, *FAST]) == 0
    results = _results(out)
    assert set(results) == {(m, "voc21") for m in METHODS}
    assert results[("clearclip", "voc21")]["options"]["prob_threshold"] == 0.5  # the preset, not overridden
    assert results[("sclip", "voc21")]["options"]["area_threshold"] == 0.1
    assert results[("vanilla", "voc21")]["options"]["logit_scale"] == 65.0
    r = results[("naclip", "voc21")]
    assert r["model"] == "tiny-clip" and len(r["per_class_iou"]) == 21 and "background" in r["per_class_iou"]
    assert r["metrics"]["n_images"] == 2
    assert "voc21    naclip" in capsys.readouterr().out
    # each method's own repo's class names: ClearCLIP's single names, SCLIP's synonym sets for the others
    assert results[("clearclip", "voc21")]["options"]["classes"][15] == ["person"]
    assert results[("clearclip", "voc21")]["options"]["class_names"] == "clearclip"
    assert len(results[("sclip", "voc21")]["options"]["classes"][15]) > 1
    assert results[("naclip", "voc21")]["options"]["pamr_dilations"] == [8, 16]
    for r in results.values():  # the precision used, not the request; every run here is on the CPU
        assert r["options"]["precision"] == "fp32" and r["options"]["precision_requested"] == "auto"


def test_reference_settings_are_one_flag_away(tmp_path, templates):
    data = make_voc(tmp_path / "VOCdevkit" / "VOC2012", h=40, w=56)
    out = tmp_path / "out"
    assert main(["seg", "--method", "clearclip", "naclip", "--model", "tiny", "--data", str(data),
                 "--dataset", "voc21", "--output", str(out), "--templates", templates, "--class-names", "sclip",
                 "--pamr-dilations", "1", "2", "--no-pad-windows", "--precision", "fp32", *FAST]) == 0
    results = _results(out)
    for method in ("clearclip", "naclip"):
        opts = results[(method, "voc21")]["options"]
        assert opts["class_names"] == "sclip" and len(opts["classes"][15]) > 1
        assert opts["pamr_dilations"] == [1, 2] and opts["pad_windows"] is False and opts["precision"] == "fp32"


def test_benchmarks_root_runs_several_benchmarks_in_one_table(tmp_path, templates, capsys):
    root = tmp_path / "data"
    make_voc(root / "VOCdevkit" / "VOC2012")
    make_ade(root / "ade" / "ADEChallengeData2016")
    out = tmp_path / "out"
    assert main(["seg", "--method", "clearclip", "--model", "tiny", "--benchmarks-root", str(root),
                 "--datasets", "voc21", "voc20", "ade20k", "--output", str(out), "--templates", templates,
                 *FAST]) == 0
    assert set(_results(out)) == {("clearclip", d) for d in ("voc21", "voc20", "ade20k")}
    table = capsys.readouterr().out.splitlines()
    rows = [line.split()[0] for line in table if line.split() and line.split()[0] in ("voc21", "voc20", "ade20k")]
    assert rows == ["voc21", "voc20", "ade20k"]


def test_missing_benchmarks_are_named_before_any_work(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    assert main(["seg", "--method", "sclip", "--model", "tiny", "--benchmarks-root", str(tmp_path / "data"),
                 "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "VOCdevkit/VOC2012" in err and "ade/ADEChallengeData2016" in err and "cityscapes" in err


def test_user_errors_are_one_line(tmp_path, capsys):
    data = make_generic(tmp_path / "g", classes=("cat", "dog"))
    assert main(["seg", "--method", "gem", "--model", "tiny", "--data", str(data), "--output", str(tmp_path)]) == 2
    assert "unknown segmentation method" in capsys.readouterr().err
    assert main(["seg", "--method", "sclip", "--model", "tiny", "--data", str(data), "--output", str(tmp_path),
                 "--prob-threshold", "0.3"]) == 2
    assert "no background class" in capsys.readouterr().err


def test_eval_seg_is_the_same_command(tmp_path):
    data = make_generic(tmp_path / "g", n=2, h=32, w=40)
    args = ["--method", "clearclip", "--model", "tiny", "--data", str(data), *FAST]
    assert main(["seg", *args, "--output", str(tmp_path / "a")]) == 0
    assert main(["eval", "seg", *args, "--output", str(tmp_path / "b")]) == 0
    a, b = _results(tmp_path / "a"), _results(tmp_path / "b")
    assert a.keys() == b.keys() == {("clearclip", "generic")}
    assert a[("clearclip", "generic")]["metrics"] == b[("clearclip", "generic")]["metrics"]


# -- masks that cannot be scored as they are (issue 19) --------------------------------------------------------


def _seg(data, out, *extra):
    return main(["seg", "--method", "clearclip", "--model", "tiny", "--data", str(data), "--output", str(out),
                 *FAST, *extra])


def test_a_mask_of_another_size_is_an_error_naming_the_pair_or_resized(tmp_path, capsys, tiny_clip):
    from tests.test_seg_data import save_label

    data = make_generic(tmp_path / "g", n=2, h=24, w=32)
    save_label(data / "masks" / "001.png", np.ones((12, 16)))  # half the image's size
    assert _seg(data, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "001.png is 16x12 but its image" in err and "images/001.png is 32x24" in err and "--resize-masks" in err
    assert not list((tmp_path / "out").glob("*.json"))
    from un2clip.eval.seg import evaluate

    with pytest.raises(ValueError, match="001.png is 16x12 but its image"):  # the library checks each pair too
        evaluate(tiny_clip, data, method="clearclip", short_side=32, crop=32, stride=16, num_workers=0,
                 progress=False)
    assert _seg(data, tmp_path / "out", "--resize-masks") == 0
    record = json.loads(next((tmp_path / "out").glob("*.json")).read_text())
    assert record["options"]["resize_masks"] is True and record["metrics"]["n_images"] == 2


def test_labels_outside_the_classes_are_ignored_with_a_counted_warning(tmp_path, caplog):
    import logging

    from tests.test_seg_data import save_label

    data = make_generic(tmp_path / "g", n=2, h=24, w=32)
    label = np.zeros((24, 32))
    label[:5, :4] = 9  # 20 pixels of a class the three-class list does not have
    save_label(data / "masks" / "000.png", label)
    with caplog.at_level(logging.WARNING, logger="un2clip.eval.seg"):
        assert _seg(data, tmp_path / "out") == 0
    (message,) = [r.getMessage() for r in caplog.records if r.name == "un2clip.eval.seg"]
    assert "20 pixel(s) in 1 of 2 mask(s)" in message and "outside the 3 classes (0..2)" in message
    assert "masks/000.png" in message
    record = json.loads(next((tmp_path / "out").glob("*.json")).read_text())
    assert record["metrics"]["n_out_of_range"] == 20


@pytest.mark.parametrize("value", [255, 7])
def test_masks_with_nothing_to_evaluate_are_an_error_not_nan(tmp_path, capsys, value):
    from tests.test_seg_data import save_label

    data = make_generic(tmp_path / "g", n=2, h=24, w=32)
    for i in range(2):
        save_label(data / "masks" / f"{i:03d}.png", np.full((24, 32), value))
    assert _seg(data, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "no pixel of the 2 mask(s)" in err and "can be evaluated" in err
    assert ("outside the 3 classes" in err) == (value == 7)
