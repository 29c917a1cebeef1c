"""mIoU, aAcc, mAcc and the ignore label on hand-made masks with known answers."""

import math

import pytest
import torch

from un2clip.eval.seg.metrics import SegHistogram, intersect_and_union

# label / prediction of one 2 x 3 image; (1, 2) is ignored; class 3 appears in neither
LABEL = torch.tensor([[0, 0, 1], [1, 2, 255]], dtype=torch.uint8)
PRED = torch.tensor([[0, 1, 1], [2, 2, 0]])


def test_intersect_and_union_by_hand():
    inter, union, area_pred, area_label = intersect_and_union(PRED, LABEL, num_classes=4)
    assert inter.tolist() == [1, 1, 1, 0]
    assert area_pred.tolist() == [1, 2, 2, 0]  # the prediction under the ignored pixel does not count
    assert area_label.tolist() == [2, 2, 1, 0]
    assert union.tolist() == [2, 3, 2, 0]


def test_one_image_summary():
    h = SegHistogram(4)
    h.update(PRED, LABEL)
    s = h.summary(["bg", "cat", "dog", "cow"])
    assert s["IoU.bg"] == pytest.approx(50.0)
    assert s["IoU.cat"] == pytest.approx(100 / 3)
    assert s["IoU.dog"] == pytest.approx(50.0)
    assert math.isnan(s["IoU.cow"])  # absent from prediction and label: left out of the mean
    assert s["mIoU"] == pytest.approx((50 + 100 / 3 + 50) / 3)
    assert s["aAcc"] == pytest.approx(60.0)  # 3 of 5 labelled pixels
    assert s["mAcc"] == pytest.approx((50 + 50 + 100) / 3)
    assert s["n_images"] == 1


def test_histograms_are_summed_over_the_dataset_not_averaged():
    h = SegHistogram(4)
    h.update(PRED, LABEL)
    h.update(torch.tensor([[3, 3]]), torch.tensor([[3, 3]]))
    s = h.summary()
    assert s["IoU.3"] == pytest.approx(100.0)
    assert s["mIoU"] == pytest.approx((50 + 100 / 3 + 50 + 100) / 4)  # not the mean of per-image mIoUs (72.2)
    assert s["aAcc"] == pytest.approx(100 * 5 / 7)
    assert s["n_images"] == 2


def test_ignore_label_changes_nothing_whatever_is_predicted_there():
    a, b = SegHistogram(4), SegHistogram(4)
    a.update(PRED, LABEL)
    other = PRED.clone()
    other[1, 2] = 3
    b.update(other, LABEL)
    assert torch.equal(a.totals, b.totals)


def test_out_of_range_values_fall_out_of_the_histograms():
    # the label 7 is no class of 2: its pixel is left out, prediction included; the prediction 9 counts nowhere
    inter, union, area_pred, area_label = intersect_and_union(torch.tensor([[0, 9]]), torch.tensor([[7, 0]]), 2)
    assert area_label.tolist() == [1, 0] and area_pred.tolist() == [0, 0] and inter.tolist() == [0, 0]


def test_labels_outside_the_classes_are_left_out_like_ignored_and_counted():
    a, b = SegHistogram(4), SegHistogram(4)
    assert a.update(PRED, LABEL) == 0
    strange = LABEL.clone()
    strange[0, 0] = 200  # a label the class list does not know
    assert b.update(PRED, strange) == 1
    ignored = LABEL.clone()
    ignored[0, 0] = 255
    c = SegHistogram(4)
    c.update(PRED, ignored)
    assert torch.equal(b.totals, c.totals) and not torch.equal(a.totals, b.totals)
    assert (b.n_out_of_range, c.n_out_of_range, b.n_evaluated, a.n_evaluated) == (1, 0, 4, 5)


def test_everything_ignored_gives_nan_not_an_error():
    h = SegHistogram(2)
    h.update(torch.zeros(2, 2, dtype=torch.long), torch.full((2, 2), 255))
    s = h.summary()
    assert math.isnan(s["mIoU"]) and math.isnan(s["aAcc"])
    assert h.n_evaluated == 0  # evaluate() turns this into an error


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in shape"):
        intersect_and_union(torch.zeros(2, 3), torch.zeros(3, 2), 2)
