"""The two reference points of a segmentation score on hand-built masks with answers worked out by hand."""

import math

import pytest
import torch

from un2clip.eval.seg.reference import OracleGeometry, SegReferences, oracle_prediction, patch_votes

WHOLE4 = OracleGeometry(patch_size=4)  # 4 px patches, the whole image as one window, no resize


def _scores(masks, geometry=WHOLE4, num_classes=3, background=0):
    refs = SegReferences(num_classes, geometry, background=background)
    for m in masks:
        refs.update(torch.as_tensor(m, dtype=torch.uint8))
    return refs.summary()


def test_all_background_mask_scores_100_and_a_mask_of_one_other_class_scores_0():
    assert _scores([torch.zeros(8, 8)])["background_mIoU"] == pytest.approx(100.0)
    # all class 2: background IoU 0 / 64 (predicted everywhere, never labelled), class 2 0 / 64, class 1 absent
    s = _scores([torch.full((8, 8), 2)])
    assert s["background_mIoU"] == pytest.approx(0.0) and s["background_aAcc"] == pytest.approx(0.0)


def test_background_predictor_on_a_mixed_mask():
    mask = torch.zeros(8, 8)
    mask[:2] = 1  # 16 pixels of class 1, 48 of background
    s = _scores([mask])
    assert s["background_mIoU"] == pytest.approx((48 / 64 * 100 + 0.0) / 2)  # class 2 absent: left out
    assert s["background_aAcc"] == pytest.approx(75.0)


def test_without_a_background_class_the_constant_is_the_most_frequent_class():
    a, b = torch.full((4, 4), 1), torch.full((4, 4), 2)
    b[0, :2] = 1  # over both masks: class 1 on 18 pixels, class 2 on 14
    s = _scores([a, b], background=None)
    # predicting 1 everywhere: IoU_1 = 18 / 32, IoU_2 = 0 / 14; class 0 absent
    assert s["background_mIoU"] == pytest.approx((18 / 32 * 100 + 0.0) / 2)


def test_oracle_is_100_when_objects_follow_the_patch_grid():
    mask = torch.zeros(8, 12, dtype=torch.long)
    mask[:, 4:8] = 1  # bands whose edges lie on patch boundaries: no object corner inside the image
    mask[4:8, 8:12] = 2  # a block in the image's corner: its inner edges are straight lines of the grid
    mask[4:8, 0:4] = 2
    mask[4:8, 4:8] = 1
    assert torch.equal(oracle_prediction(mask, 3, WHOLE4), mask)
    s = _scores([mask])
    assert s["oracle_mIoU"] == pytest.approx(100.0) and s["oracle_aAcc"] == pytest.approx(100.0)


def test_bilinear_upsampling_takes_a_convex_corner_pixel_even_from_a_grid_aligned_block():
    # A 4 x 4 block in the top-left patch of an 8 x 8 mask, 4 px patches. Upsampled bilinearly (align_corners
    # False) the patch centre at 1.5 px weighs pixel 3 by 0.625 and the next patch 0.375, so pixel (3, 3) gets
    # 0.625² = 0.39 of the block's vote and 0.61 of background's (three patches): it goes to background.
    mask = torch.zeros(8, 8, dtype=torch.long)
    mask[:4, :4] = 1
    expected = mask.clone()
    expected[3, 3] = 0
    assert torch.equal(oracle_prediction(mask, 2, WHOLE4), expected)
    s = _scores([mask], num_classes=2)
    assert s["oracle_mIoU"] == pytest.approx((15 / 16 + 48 / 49) / 2 * 100)  # class 1: 15 of 16; background 48 / 49


def test_oracle_below_100_when_objects_straddle_patches():
    mask = torch.zeros(8, 8)
    mask[0:3, 0:3] = 1  # 9 of the 16 pixels of the top-left patch: it votes 1
    mask[5:7, 5:7] = 2  # 4 of 16 of the bottom-right patch: outvoted by background
    pred = oracle_prediction(mask, 3, WHOLE4)
    expected = torch.zeros(8, 8, dtype=torch.long)
    expected[:4, :4] = 1
    expected[3, 3] = 0  # the convex corner, as above
    assert torch.equal(pred, expected)
    # class 1: 9 right of 15 predicted; class 2: 0 of 4; background: 49 predicted (48 outside the patch and
    # (3, 3)), 51 labelled, 45 right (the 44 background pixels outside the patch and (3, 3)): 45 / 55
    s = _scores([mask])
    assert s["oracle_mIoU"] == pytest.approx((9 / 15 + 0 + 45 / 55) / 3 * 100)
    assert s["oracle_aAcc"] == pytest.approx((9 + 45) / 64 * 100)


def test_ignored_pixels_do_not_vote():
    mask = torch.zeros(4, 4)
    mask.view(-1)[:6] = 1
    mask.view(-1)[6:12] = 255  # 6 of class 1, 6 ignored, 4 background: class 1 wins among labelled pixels
    assert torch.equal(oracle_prediction(mask, 2, WHOLE4), torch.ones(4, 4, dtype=torch.long))
    all_ignored = torch.full((1, 1, 4, 4), 255.0)
    assert patch_votes(all_ignored, 2, 4).abs().sum() == 0  # a patch with no labelled pixel votes for nothing


def test_oracle_follows_the_sliding_windows_and_the_resize():
    # a 2 x 2 object aligned with the grid of 4 px patches at 16 px, but the image is read at short side 8:
    # the patches then cover 8 px of the original each, and the object (2 x 2 of 16 x 16) is outvoted
    mask = torch.zeros(16, 16)
    mask[4:8, 4:8] = 1
    resized = OracleGeometry(patch_size=4, short_side=8)
    assert _scores([mask], resized, num_classes=2)["oracle_mIoU"] == pytest.approx(240 / 256 * 100 / 2)
    # 8 px windows with stride 4 over 16 px at 4 px patches: every window's grid is aligned, so exact
    windows = OracleGeometry(patch_size=4, crop=8, stride=4)
    assert _scores([mask], windows, num_classes=2)["oracle_mIoU"] == pytest.approx(100.0)
    # a 6 px window padded to 8 (one pixel each side, centred) as ClearCLIP pads: windows start at 0, 4, 8, 10
    padded = OracleGeometry(patch_size=4, crop=6, stride=4, pad=True)
    value = _scores([mask], padded, num_classes=2)["oracle_mIoU"]
    assert 50.0 < value <= 100.0 and not math.isnan(value)


def test_a_window_smaller_than_a_patch_is_an_error():
    with pytest.raises(ValueError, match="no whole 8 px patch"):
        patch_votes(torch.zeros(1, 1, 4, 4), 2, 8)


def test_table_shows_both_references_and_one_oracle_column_per_patch_grid():
    from un2clip.eval.seg.report import format_table

    def record(model, method, miou, oracle):
        return {"model": model, "method": method, "dataset": "voc21",
                "metrics": {"mIoU": miou, "aAcc": 50.0, "background_mIoU": 3.5, "oracle_mIoU": oracle}}

    same = format_table([record("a", "clearclip", 10.0, 80.0), record("b", "clearclip", 12.0, 80.0)]).splitlines()
    assert same[0].split() == ["dataset", "method", "mIoU", "a", "mIoU", "b", "all-bg", "oracle"]
    assert same[2].split() == ["voc21", "clearclip", "10.00", "12.00", "3.50", "80.00"]
    # two patch sizes give two oracles: one column per model
    differ = format_table([record("a", "clearclip", 10.0, 80.0), record("b", "clearclip", 12.0, 90.0)]).splitlines()
    assert differ[0].split()[-4:] == ["oracle", "a", "oracle", "b"]
    assert differ[2].split()[-3:] == ["3.50", "80.00", "90.00"]
