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


# -- boundaries pinned by hand-counted histograms (issue 36) ---------------------------------------------------


def test_label_equal_to_num_classes_is_outside_and_the_last_class_inside():
    # C = 3: label 2 is the last class, label 3 (== C) lies outside and is left out with the prediction there
    got = intersect_and_union(torch.tensor([[2, 2, 0]]), torch.tensor([[2, 3, 0]]), 3)
    assert got.tolist() == [[1, 0, 1], [1, 0, 1], [1, 0, 1], [1, 0, 1]]
    # a prediction equal to C, or negative, falls out of the histograms (no error, no extra bin)
    got = intersect_and_union(torch.tensor([[3, -1, 1]]), torch.tensor([[0, 1, 1]]), 3)
    assert got.tolist() == [[0, 1, 0], [1, 2, 0], [0, 1, 0], [1, 2, 0]]
    # a negative label is outside too; the ignore index is ignored
    got = intersect_and_union(torch.tensor([[0, 0, 1]]), torch.tensor([[-1, 7, 1]]), 3, ignore_index=7)
    assert got.tolist() == [[0, 1, 0], [0, 1, 0], [0, 1, 0], [0, 1, 0]]


def test_two_images_known_summary():
    h = SegHistogram(3)
    # image A: pairs (label, pred) kept: (0,0) (0,0) (0,1) (1,1); the 255 is ignored, the 3 is outside
    outside = h.update(torch.tensor([[0, 0, 1], [1, 2, 2]]), torch.tensor([[0, 0, 0], [1, 255, 3]]))
    assert outside == 1 and type(outside) is int
    # image B: (2,2) (2,0) (2,5): the prediction 5 is no class, so the predicted areas sum to 6, the labelled to 7
    assert h.update(torch.tensor([[2, 0, 5]]), torch.tensor([[2, 2, 2]])) == 0
    assert h.totals.tolist() == [[2, 1, 1], [4, 2, 3], [3, 2, 1], [3, 1, 3]]  # inter, union, pred, label
    assert (h.n_images, h.n_out_of_range, h.n_evaluated) == (2, 1, 7) and type(h.n_evaluated) is int
    s = h.summary(["a", "b", "c"])
    assert s["IoU.a"] == pytest.approx(50.0) and s["IoU.b"] == pytest.approx(50.0)
    assert s["IoU.c"] == pytest.approx(100 / 3)
    assert s["mIoU"] == pytest.approx((50 + 50 + 100 / 3) / 3)
    assert s["aAcc"] == pytest.approx(400 / 7)  # of the 7 labelled pixels, not the 6 predicted ones
    assert s["mAcc"] == pytest.approx((200 / 3 + 100 + 100 / 3) / 3)
    assert s["n_images"] == 2.0
    assert all(type(v) is float for v in s.values())
    assert list(s) == ["mIoU", "aAcc", "mAcc", "n_images", "IoU.a", "IoU.b", "IoU.c"]


def test_one_labelled_pixel_and_unions_of_one():
    h = SegHistogram(2)
    h.update(torch.tensor([[1]]), torch.tensor([[1]]))
    s = h.summary()
    assert s["aAcc"] == 100.0 and s["IoU.1"] == 100.0 and math.isnan(s["IoU.0"])
    h.update(torch.tensor([[0]]), torch.tensor([[0]]))
    assert h.per_class_iou().tolist() == [100.0, 100.0]


def test_the_default_ignore_index_is_255():
    # with 256 classes, 255 is no longer outside the classes: only the ignore index keeps it out
    got = intersect_and_union(torch.tensor([[255, 254]]), torch.tensor([[255, 254]]), 256)
    assert got[3, 254] == 1 and got[3, 255] == 0 and got[0].sum() == 1


def test_a_predicted_but_unlabelled_class_counts_in_miou_not_in_macc():
    h = SegHistogram(3)
    h.update(torch.tensor([[0, 1]]), torch.tensor([[0, 0]]))  # class 1 only predicted, class 2 absent
    s = h.summary()
    assert s["IoU.0"] == pytest.approx(50.0) and s["IoU.1"] == 0.0 and math.isnan(s["IoU.2"])
    assert s["mIoU"] == pytest.approx(25.0)  # classes 0 and 1 (non-empty union); 2 left out
    assert s["mAcc"] == pytest.approx(50.0)  # class 0 only (labelled pixels)
    assert s["aAcc"] == pytest.approx(50.0)
    with pytest.raises(ValueError, match="2 class names for 3 classes"):
        h.summary(["x", "y"])


def test_out_of_range_count_accumulates_and_leaves_the_ignore_index_alone():
    h = SegHistogram(2, ignore_index=9)
    assert h.update(torch.tensor([[0, 0, 0, 5]]), torch.tensor([[9, 2, -3, 1]])) == 2
    assert h.update(torch.zeros(1, 2, dtype=torch.long), torch.tensor([[2, 0]])) == 1
    assert (h.n_out_of_range, h.n_evaluated, h.n_images) == (3, 2, 2)  # labelled pixels, one predicted as no class
