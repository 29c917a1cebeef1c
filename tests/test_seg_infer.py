"""Text classifier, sliding windows, class probabilities and background rules."""

import pytest
import torch
from torch.nn import functional as F

from un2clip.eval.seg import segment_image
from un2clip.eval.seg.heads import dense_features
from un2clip.eval.seg.infer import (
    TextClassifier,
    class_probabilities,
    imagenet_templates,
    padding_to_multiple,
    pamr,
    predict_classes,
    prepare_image,
    resized_shape,
    slide_logits,
    text_classifier,
    window_boxes,
    window_logits,
)
from un2clip.eval.seg.presets import resolve_settings


def test_imagenet_templates():
    templates = imagenet_templates()
    assert len(templates) == 80 and all("{c}" in t for t in templates)


def test_text_classifier_averages_normalised_template_embeddings(tiny_clip):
    templates = ["a photo of a {c}.", "a {c}."]
    clf = text_classifier(tiny_clip, [["circle", "round"], ["square"]], templates)
    assert clf.query_class.tolist() == [0, 0, 1] and clf.num_classes == 2
    with torch.no_grad():
        for q, name in enumerate(["circle", "round", "square"]):
            emb = F.normalize(tiny_clip.encode_text([t.replace("{c}", name) for t in templates]), dim=-1)
            torch.testing.assert_close(clf.queries[q], F.normalize(emb.mean(0), dim=0), atol=1e-5, rtol=0)


def test_text_classifier_default_uses_the_80_templates(tiny_clip):
    clf = text_classifier(tiny_clip, [["circle"]])
    with torch.no_grad():
        emb = F.normalize(tiny_clip.encode_text([t.replace("{c}", "circle") for t in imagenet_templates()]), dim=-1)
    torch.testing.assert_close(clf.queries[0], F.normalize(emb.mean(0), dim=0), atol=1e-5, rtol=0)


def test_text_classifier_refuses_a_class_without_names_and_no_templates(tiny_clip):
    for classes in ([["circle"], []], [[], ["square"]], []):
        with pytest.raises(ValueError, match="every class needs at least one name"):
            text_classifier(tiny_clip, classes, ["a {c}."])
    with pytest.raises(ValueError, match="no prompt templates"):
        text_classifier(tiny_clip, [["circle"]], [])


def test_window_boxes_follow_mmsegmentation():
    assert window_boxes(336, 500, 224, 112) == [
        (y1, y2, x1, x2) for y1, y2 in [(0, 224), (112, 336)]
        for x1, x2 in [(0, 224), (112, 336), (224, 448), (276, 500)]]
    assert window_boxes(100, 80, 224, 112) == [(0, 100, 0, 80)]  # a crop larger than the image: the image


def test_overlapping_windows_are_averaged():
    image = torch.zeros(1, 3, 4, 6)
    calls = iter([1.0, 3.0])

    def constant(crops):  # window i returns a constant map
        return torch.stack([torch.full((1, *c.shape[-2:]), next(calls)) for c in crops])

    out = slide_logits(constant, image, 1, crop=4, stride=2, batch_size=1)  # windows x 0..4 and 2..6
    assert out[0, 0].tolist() == [1.0, 1.0, 2.0, 2.0, 3.0, 3.0]
    assert torch.equal(out[0], out[0, :1].expand(4, 6))


def test_windows_land_where_they_were_cut():
    ys, xs = torch.meshgrid(torch.arange(7.0), torch.arange(11.0), indexing="ij")
    image = torch.stack([ys, xs, ys * 11 + xs])[None]  # each pixel knows where it is
    out = slide_logits(lambda c: c.clone(), image, 3, crop=4, stride=3, batch_size=3)
    torch.testing.assert_close(out, image[0])


def test_crop_covering_the_image_equals_whole_image_inference(tiny_clip):
    torch.manual_seed(0)
    image = torch.randn(1, 3, 40, 48)
    queries = F.normalize(torch.randn(3, tiny_clip.embed_dim), dim=-1)

    def fn(crops):
        return window_logits(tiny_clip, crops, queries, "sclip")

    with torch.no_grad():
        whole = slide_logits(fn, image, 3, crop=0, stride=1)
        one_window = slide_logits(fn, image, 3, crop=64, stride=32)
        feats = dense_features(tiny_clip, image, "sclip")  # 40 x 48 is a multiple of the patch: no padding
    torch.testing.assert_close(one_window, whole)
    direct = F.interpolate(torch.einsum("bhwd,qd->bqhw", feats, queries), size=(40, 48), mode="bilinear",
                           align_corners=False)[0]
    torch.testing.assert_close(whole, direct, atol=1e-5, rtol=0)


def test_windows_are_padded_to_the_patch_size(tiny_clip):
    assert padding_to_multiple(30, 37, 8) == (1, 2, 1, 1)
    queries = F.normalize(torch.randn(2, tiny_clip.embed_dim), dim=-1)
    crops = torch.randn(2, 3, 30, 37)
    with torch.no_grad():
        out = window_logits(tiny_clip, crops, queries, "clearclip", pad=True)
        padded = F.pad(crops, (1, 2, 1, 1))  # zero padding to 32 x 40, centred, as ClearCLIP pads
        full = torch.einsum("bhwd,qd->bqhw", dense_features(tiny_clip, padded, "clearclip"), queries)
        full = F.interpolate(full, size=(32, 40), mode="bilinear", align_corners=False)
    assert out.shape == (2, 2, 30, 37)
    torch.testing.assert_close(out, full[:, :, 1:31, 1:38], atol=1e-5, rtol=0)


def _unpadded_logits(model, image, queries, method):
    """SCLIP's / NACLIP's forward_feature: the conv's h // p x w // p grid, its logits stretched over the image."""
    h, w = image.shape[-2:]
    p = model.patch_size
    feats = dense_features(model, image[..., :h // p * p, :w // p * p], method)
    logits = torch.einsum("bhwd,qd->bqhw", feats, queries)
    return F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)


def test_whole_image_is_not_padded(tiny_clip):
    """NACLIP's whole-image inference on a size that is not a multiple of the patch: no padding."""
    torch.manual_seed(5)
    image = torch.randn(1, 3, 30, 37)  # 3 x 4 whole patches of 8
    queries = F.normalize(torch.randn(3, tiny_clip.embed_dim), dim=-1)
    with torch.no_grad():
        want = _unpadded_logits(tiny_clip, image, queries, "naclip")[0]
        got = slide_logits(lambda c: window_logits(tiny_clip, c, queries, "naclip"), image, 3, crop=0, stride=1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # through segment_image: a preset that pads its windows (ClearCLIP's) still runs the whole image unpadded
    clf = TextClassifier(queries, torch.arange(3), 3)
    pixels = torch.randint(0, 256, (3, 30, 37), dtype=torch.uint8)
    cfg = resolve_settings("naclip", "voc20", short_side=0, pad_windows=True, pamr_steps=0)
    assert cfg.crop == 0
    proc = tiny_clip.processing
    with torch.no_grad():
        pred = segment_image(tiny_clip, pixels, clf, method="naclip", settings=cfg)
        x = prepare_image(pixels, 0, proc.mean, proc.std)
        want = (_unpadded_logits(tiny_clip, x, queries, "naclip")[0] * cfg.logit_scale).softmax(0).argmax(0)
    assert torch.equal(pred, want)


def test_resize_like_mmsegmentation():
    assert resized_shape(375, 500, 336) == (336, 448)
    assert resized_shape(100, 5000, 336) == (41, 2048)  # the long side caps the scale
    assert resized_shape(20, 30, 0) == (20, 30)
    pixels = torch.randint(0, 256, (3, 20, 30), dtype=torch.uint8)
    x = prepare_image(pixels, 10, (0.5,) * 3, (0.25,) * 3)
    assert x.shape == (1, 3, 10, 15)
    same = prepare_image(pixels, 0, (0.5,) * 3, (0.25,) * 3)
    torch.testing.assert_close(same[0], (pixels.float() / 255 - 0.5) / 0.25)


@pytest.mark.parametrize("size, short", [((37, 53), 24), ((31, 47), 64), ((375, 500), 336)])
def test_resize_is_opencv_bilinear_on_uint8_as_mmcv(size, short):
    """mmcv's imrescale: cv2.resize(uint8 HWC, (w, h), INTER_LINEAR), then the model's mean/std."""
    import cv2

    g = torch.Generator().manual_seed(6)
    pixels = torch.randint(0, 256, (3, *size), dtype=torch.uint8, generator=g)
    h, w = resized_shape(*size, short)
    want = cv2.resize(pixels.permute(1, 2, 0).numpy().copy(), (w, h), interpolation=cv2.INTER_LINEAR)
    want = torch.from_numpy(want).permute(2, 0, 1)
    mean, std = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)
    x = prepare_image(pixels, short, mean, std)[0]
    m, s = torch.tensor(mean).view(3, 1, 1) * 255, torch.tensor(std).view(3, 1, 1) * 255
    torch.testing.assert_close(x, (want.float() - m) / s, atol=1e-5, rtol=0)
    from un2clip.eval.seg.infer import resize_uint8

    assert torch.equal(resize_uint8(pixels, (h, w)), want)


def test_class_probability_is_the_max_over_its_names():
    logits = torch.tensor([0.2, 0.1, 0.3]).view(3, 1, 1)  # names: class 0 twice, class 1 once
    probs = class_probabilities(logits, torch.tensor([0, 0, 1]), 2, logit_scale=10.0)
    softmax = torch.softmax(torch.tensor([2.0, 1.0, 3.0]), 0)
    torch.testing.assert_close(probs[:, 0, 0], torch.stack([softmax[:2].max(), softmax[2]]))


def test_background_threshold():
    probs = torch.tensor([[0.1, 0.2], [0.6, 0.3], [0.3, 0.5]]).view(3, 1, 2)  # pixel 0 -> class 1 at 0.6
    assert predict_classes(probs).tolist() == [[1, 2]]
    assert predict_classes(probs, prob_threshold=0.55, background=0).tolist() == [[1, 0]]
    with pytest.raises(ValueError, match="background"):
        predict_classes(probs, prob_threshold=0.5)


def test_background_without_a_query_is_decided_by_the_threshold_alone(tiny_clip, monkeypatch):
    import un2clip.eval.seg as seg

    # queries: background (0), class 1, class 2. The background name scores highest everywhere, as an untrained
    # word can; class 1 leads the left half, class 2 the right, and the last column is a tie of 1 and 2
    def logits(model, crops, queries, method, **kw):
        assert queries.shape[0] == len(seen_queries[-1])
        out = torch.zeros(crops.shape[0], len(queries), crops.shape[-2], crops.shape[-1])
        rows = {int(c): r for r, c in enumerate(seen_queries[-1])}
        if 0 in rows:
            out[:, rows[0]] = 0.9
        out[:, rows[1], :, :16], out[:, rows[2], :, 16:] = 0.5, 0.5
        out[:, rows[1], :, 31], out[:, rows[2], :, 31] = 0.5, 0.5
        return out

    seen_queries = []
    clf = TextClassifier(torch.eye(3, tiny_clip.embed_dim), torch.tensor([0, 1, 2]), 3)
    monkeypatch.setattr(seg, "window_logits", lambda *a, **k: logits(*a, **k))
    monkeypatch.setattr(TextClassifier, "without_class", _recording(TextClassifier.without_class, seen_queries))
    pixels = torch.zeros(3, 32, 32, dtype=torch.uint8)
    with_query = resolve_settings("vanilla", "generic", short_side=0, crop=0, logit_scale=40.0, prob_threshold=0.6)
    seen_queries.append(clf.query_class)
    assert int(segment_image(tiny_clip, pixels, clf, method="vanilla", settings=with_query, background=0).max()) == 0
    alone = resolve_settings("vanilla", "generic", short_side=0, crop=0, logit_scale=40.0, prob_threshold=0.6,
                             background_query=False)
    pred = segment_image(tiny_clip, pixels, clf, method="vanilla", settings=alone, background=0)
    assert seen_queries[-1].tolist() == [1, 2]  # the background name left out of the softmax
    assert (pred[:, :16] == 1).all() and (pred[:, 16:31] == 2).all()
    assert (pred[:, 31] == 0).all()  # a tie: top probability 0.5 under the threshold
    with pytest.raises(ValueError, match="threshold"):
        resolve_settings("vanilla", "generic", background_query=False)
    with pytest.raises(ValueError, match="background class"):
        segment_image(tiny_clip, pixels, clf, method="vanilla", settings=alone, background=None)
    empty = TextClassifier(torch.eye(1, tiny_clip.embed_dim), torch.tensor([0]), 2)
    with pytest.raises(ValueError, match="only class"):
        empty.without_class(0)


def _recording(fn, seen):
    def wrapped(self, c):
        out = fn(self, c)
        seen.append(out.query_class)
        return out
    return wrapped


def test_area_threshold_drops_small_classes():
    probs = torch.zeros(3, 1, 10)
    probs[1, 0, :9] = 0.9  # class 1 wins 9 pixels, class 2 one pixel
    probs[2, 0, 9] = 0.9
    probs[0] = 0.05
    assert predict_classes(probs, area_threshold=0.1, background=0)[0].tolist() == [1] * 9 + [0]
    assert predict_classes(probs, area_threshold=0.05, background=0)[0].tolist() == [1] * 9 + [2]


def test_segment_image_returns_a_class_map(tiny_clip):
    clf = TextClassifier(F.normalize(torch.randn(4, tiny_clip.embed_dim), dim=-1), torch.tensor([0, 1, 1, 2]), 3)
    pixels = torch.randint(0, 256, (3, 30, 50), dtype=torch.uint8)
    cfg = resolve_settings("naclip", "generic", short_side=32, crop=32, stride=16)
    with torch.no_grad():
        pred = segment_image(tiny_clip, pixels, clf, method="naclip", settings=cfg)
    assert pred.shape == (30, 50) and pred.dtype == torch.long and int(pred.max()) < 3


def test_presets_and_overrides():
    assert resolve_settings("clearclip", "voc21").prob_threshold == 0.5
    assert resolve_settings("clearclip", "voc21").crop == 448
    assert resolve_settings("sclip", "cityscapes").short_side == 560
    assert resolve_settings("sclip", "voc21").area_threshold == 0.1
    assert resolve_settings("naclip", "coco_object", prob_threshold=0.3).prob_threshold == 0.3
    assert resolve_settings("vanilla", "ade20k").crop == 224
    assert resolve_settings("sclip", "voc21").pamr_steps == 0 and resolve_settings("sclip", pamr_steps=10).pamr_steps == 10
    assert resolve_settings("naclip", "voc21", pamr_steps=0).pamr_steps == 0
    assert resolve_settings("naclip", pamr_dilations=[1, 2]).pamr_dilations == (1, 2)
    with pytest.raises(ValueError, match="pamr_dilations"):
        resolve_settings("naclip", pamr_dilations=(0, 8))
    with pytest.raises(ValueError, match="class_names"):
        resolve_settings("naclip", class_names="gem")
    with pytest.raises(ValueError, match="pamr_steps"):
        resolve_settings("naclip", pamr_steps=-1)
    with pytest.raises(ValueError, match="unknown setting"):
        resolve_settings("sclip", "voc21", window=3)
    with pytest.raises(ValueError, match="unknown segmentation method"):
        resolve_settings("gem", "voc21")


def _pamr_by_pixel(image, logits, steps, dilations):
    """PAMR written pixel by pixel from its definition (one image; clamped reads = replicated edges)."""
    _, h, w = image.shape
    at = lambda t, y, x: t[:, min(max(y, 0), h - 1), min(max(x, 0), w - 1)]  # noqa: E731
    ring = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    offsets = [(dy * d, dx * d) for d in dilations for dy, dx in ring]
    weights = torch.empty(len(offsets), h, w, dtype=torch.float64)
    for y in range(h):
        for x in range(w):
            windows = [at(image, y + dy * d, x + dx * d) for d in dilations for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
            spread = torch.stack(windows, dim=1).std(dim=1)  # per channel, all dilations' 3 x 3 windows
            scores = [(-(at(image, y + oy, x + ox) - image[:, y, x]).abs() / (1e-8 + 0.1 * spread)).mean()
                      for oy, ox in offsets]
            weights[:, y, x] = torch.stack(scores).softmax(0)
    out = logits.clone()
    for _ in range(steps):
        new = torch.zeros_like(out)
        for y in range(h):
            for x in range(w):
                new[:, y, x] = sum(weights[k, y, x] * at(out, y + oy, x + ox) for k, (oy, ox) in enumerate(offsets))
        out = new
    return out


def test_pamr_matches_its_pixel_by_pixel_definition():
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, 7, 9, generator=g, dtype=torch.float64)
    logits = torch.randn(4, 7, 9, generator=g, dtype=torch.float64)
    got = pamr(image[None], logits[None], steps=3, dilations=(1, 2, 4))[0]
    torch.testing.assert_close(got, _pamr_by_pixel(image, logits, 3, (1, 2, 4)), rtol=1e-4, atol=1e-5)


def test_pamr_snaps_a_blurred_boundary_to_the_colour_edge():
    # left half red, right half blue; the logits put the boundary 4 pixels too far left, and blur it
    image = torch.zeros(1, 3, 32, 32)
    image[:, 0, :, :16], image[:, 2, :, 16:] = 1.0, 1.0
    image += 0.01 * torch.randn(image.shape, generator=torch.Generator().manual_seed(1))
    ramp = ((11.5 - torch.arange(32.0)) / 4).clamp(-1, 1)[None, :].expand(32, 32)
    logits = torch.stack([ramp, -ramp])[None]  # (1, 2, 32, 32)
    truth = torch.zeros(32, 32, dtype=torch.long)
    truth[:, 16:] = 1
    before = (logits[0].argmax(0) == truth).float().mean()
    after = (pamr(image, logits, steps=10)[0].argmax(0) == truth).float().mean()
    assert before < 0.95 and after > 0.99
    assert torch.equal(pamr(image, logits, steps=0), logits)  # 0 steps: off
    # a flat image gives equal weights: a constant map stays the same
    flat = torch.full((1, 2, 16, 16), 0.3)
    torch.testing.assert_close(pamr(torch.ones(1, 3, 16, 16), flat, steps=2), flat)


# every preset value below is copied from the reference repo's configs/cfg_<dataset>.py and segmentor defaults
SCLIP_CFG = {  # clip_segmentor.py: logit_scale=40, slide 224 / 112, pamr_steps=0, pamr_stride=(8, 16)
    "voc21": dict(short_side=336, crop=224, stride=112, logit_scale=65.0, prob_threshold=0.1, area_threshold=0.1),
    "voc20": dict(short_side=336, crop=224, stride=112, logit_scale=40.0, prob_threshold=0.0, area_threshold=0.0),
    "context60": dict(short_side=336, crop=224, logit_scale=50.0, prob_threshold=0.1),
    "coco_object": dict(short_side=336, crop=224, logit_scale=50.0, prob_threshold=0.1),
    "coco_stuff": dict(short_side=448, crop=224, logit_scale=40.0),
    "cityscapes": dict(short_side=560, crop=224, logit_scale=40.0),
    "ade20k": dict(short_side=336, crop=224, logit_scale=40.0),
}
NACLIP_CFG = {  # naclip.py: logit_scale=40, slide 224 / 112, pamr_steps=10 (README: --pamr on), pamr_stride=(8, 16)
    "voc21": dict(short_side=336, crop=0, logit_scale=40.0, prob_threshold=0.1, pamr_steps=10),
    "voc20": dict(short_side=336, crop=0, prob_threshold=0.0, pamr_steps=10),
    "context60": dict(short_side=336, crop=224, stride=112, prob_threshold=0.1, pamr_steps=10),
    "context59": dict(short_side=336, crop=224, stride=112, prob_threshold=0.0, pamr_steps=10),
    "coco_object": dict(short_side=336, crop=224, prob_threshold=0.1, pamr_steps=10),
    "coco_stuff": dict(short_side=336, crop=224, stride=112, pamr_steps=10),
    "cityscapes": dict(short_side=560, crop=224, pamr_steps=10),
    "ade20k": dict(short_side=336, crop=224, pamr_steps=10),
}
CLEARCLIP_CFG = {  # clearclip_segmentor.py: logit_scale=50, slide 448 / 224, windows padded to the patch
    "voc21": dict(short_side=448, crop=448, stride=224, logit_scale=50.0, prob_threshold=0.5),
    "voc20": dict(short_side=448, crop=448, stride=224, prob_threshold=0.0),
    "context60": dict(short_side=448, prob_threshold=0.15),
    "coco_object": dict(short_side=448, prob_threshold=0.4),
    "coco_stuff": dict(short_side=448, crop=448),
    "cityscapes": dict(short_side=448, crop=224, stride=224),
    "ade20k": dict(short_side=448, crop=448),
}


@pytest.mark.parametrize("method, table, common", [
    ("sclip", SCLIP_CFG, dict(pamr_steps=0, pamr_dilations=(8, 16), pad_windows=False, class_names="sclip")),
    ("naclip", NACLIP_CFG, dict(logit_scale=40.0, gaussian_std=5.0, pamr_dilations=(8, 16), pad_windows=False,
                                class_names="sclip")),
    ("clearclip", CLEARCLIP_CFG, dict(logit_scale=50.0, pamr_steps=0, pad_windows=True, class_names="clearclip")),
])
def test_presets_are_the_reference_configs(method, table, common):
    for dataset, values in table.items():
        cfg = resolve_settings(method, dataset)
        for key, want in {**common, **values}.items():
            assert getattr(cfg, key) == want, (method, dataset, key)


def test_precision_auto_is_fp16_on_cuda_and_fp32_on_cpu():
    from un2clip.eval.seg.infer import resolve_precision

    assert resolve_precision(torch.device("cpu"), "auto") == "fp32"
    assert resolve_precision(torch.device("cuda"), "auto") == "fp16"  # clip.load's half weights, ClearCLIP's fp16
    assert resolve_precision(torch.device("cuda"), "fp32") == "fp32"
    assert resolve_precision(torch.device("cpu"), "bf16") == "bf16"
    with pytest.raises(ValueError, match="precision"):
        resolve_precision(torch.device("cpu"), "fp8")


def test_pamr_defaults_to_the_references_dilations():
    """SCLIP and NACLIP build PAMR(10, dilations=(8, 16)); on a map larger than the dilations."""
    g = torch.Generator().manual_seed(7)
    image = torch.rand(3, 19, 23, generator=g, dtype=torch.float64)
    logits = torch.randn(3, 19, 23, generator=g, dtype=torch.float64)
    got = pamr(image[None], logits[None], steps=2)[0]
    torch.testing.assert_close(got, _pamr_by_pixel(image, logits, 2, (8, 16)), rtol=1e-4, atol=1e-5)
    assert resolve_settings("sclip").pamr_dilations == (8, 16)
