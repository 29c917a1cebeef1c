"""eval depth: DepthCLIP's bins and metrics on hand-built inputs, the readers, the world's depth set."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from un2clip.eval.downstream import depth as Dp


def test_a_depth_equal_to_the_truth_scores_perfectly():
    gt = torch.rand(5, 7) * 3 + 0.5
    m = Dp.depth_metrics(gt.clone(), gt)
    assert m["delta1"] == 1.0 and m["delta3"] == 1.0
    assert m["abs_rel"] == 0.0 and m["rmse"] == 0.0 and m["log10"] == 0.0


def test_metrics_of_a_known_error():
    gt = torch.tensor([[1.0, 2.0], [4.0, 0.0]])  # the zero is "no measurement"
    pred = torch.tensor([[2.0, 2.0], [4.0, 9.0]])
    m = Dp.depth_metrics(pred, gt)
    assert m["delta1"] == pytest.approx(2 / 3) and m["delta3"] == pytest.approx(2 / 3)  # ratio 2 > 1.25^3
    assert m["abs_rel"] == pytest.approx(1 / 3)
    assert m["rmse"] == pytest.approx(math.sqrt(1 / 3))
    assert m["log10"] == pytest.approx(math.log10(2) / 3)


def test_depthclip_depth_is_the_softmax_weighted_bin():
    words = torch.eye(7, 8)  # seven orthogonal unit word embeddings in 8 dims
    one_word = words[2]  # a patch equal to "close": essentially all weight on bin 2
    assert float(Dp.depthclip_depth(one_word, words)) == pytest.approx(Dp.BIN_DEPTHS[2], abs=1e-4)
    between = torch.nn.functional.normalize(words[0] + words[6], dim=0)  # equally like "giant" and "unseen"
    assert float(Dp.depthclip_depth(between, words)) == pytest.approx((1.0 + 3.0) / 2, abs=1e-4)
    far = torch.zeros(8)
    far[7] = 1.0  # like no word: uniform softmax -> mean of the bins
    assert float(Dp.depthclip_depth(far, words)) == pytest.approx(sum(Dp.BIN_DEPTHS) / 7, abs=1e-5)


def test_depthclip_depth_matches_the_reference_formula():
    # DepthCLIP's monoclip.py: logits = 100 * img @ text, / temperature, softmax over bins, sum of softmax * bins
    torch.manual_seed(0)
    patches = torch.nn.functional.normalize(torch.randn(2, 3, 4, 16), dim=-1)
    words = torch.nn.functional.normalize(torch.randn(7, 16), dim=-1)
    logits = 100.0 * torch.einsum("bhwd,kd->bkhw", patches, words) / 0.1
    reference = (logits.softmax(dim=1) * torch.tensor(Dp.BIN_DEPTHS).reshape(1, 7, 1, 1)).sum(1)
    assert torch.allclose(Dp.depthclip_depth(patches, words), reference, atol=1e-5)


def write_pair(folder, name, size=(24, 16), depth_size=None, value=1500):
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "depths").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (30, 90, 200)).save(folder / "images" / f"{name}.jpg")
    w, h = depth_size or size
    Image.fromarray(np.full((h, w), value, dtype=np.uint16)).save(folder / "depths" / f"{name}.png")


def test_reader_layouts_and_16_bit_depth(tmp_path):
    write_pair(tmp_path / "a", "0001")
    ds = Dp.read_depth_set(tmp_path / "a")
    assert ds.depth_scale == 1000.0 and len(ds.pairs) == 1
    assert Dp.read_depth_png(ds.pairs[0][1], ds.depth_scale).unique().tolist() == [1.5]
    bts = tmp_path / "bts" / "bathroom"
    bts.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(bts / "rgb_00045.jpg")
    Image.fromarray(np.ones((8, 8), dtype=np.uint16)).save(bts / "sync_depth_00045.png")
    assert [p[1].name for p in Dp.read_depth_set(tmp_path / "bts").pairs] == ["sync_depth_00045.png"]


def test_a_depth_png_of_another_size_is_an_error_naming_both_files(tmp_path, tiny_clip):
    write_pair(tmp_path, "0001", size=(24, 16), depth_size=(20, 16))
    with pytest.raises(ValueError, match=r"depths/0001\.png is 20x16 but its image .*0001\.jpg is 24x16"):
        Dp.evaluate(tiny_clip, tmp_path, progress=False)


def test_an_image_without_depth_is_an_error(tmp_path):
    write_pair(tmp_path, "0001")
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "0002.png")
    with pytest.raises(FileNotFoundError, match=r"0002\.png has no depth map"):
        Dp.read_depth_set(tmp_path)


def test_model_input_keeps_the_aspect_on_the_patch_grid(tiny_clip):
    x = Dp.model_input(Image.new("RGB", (64, 48)), tiny_clip, short_side=32)
    assert tuple(x.shape) == (1, 3, 32, 40)  # 48 -> 32, 64 -> 42.7 -> 40 (a multiple of the 8 px patch)
    assert tiny_clip.image_tokens(x).shape[1] == 4 * 5


def test_world_depth_set_and_evaluate(tmp_path, tiny_clip):
    from un2clip.world.downstream import DEPTH_WALL, depth_scene, render_depth, write_depth

    rng = np.random.default_rng(0)
    scene, depths = depth_scene(rng)
    image, depth = render_depth(scene, depths)
    assert image.size == (64, 64) and depth.shape == (64, 64)
    allowed = np.array([DEPTH_WALL, *depths])
    assert all(np.isclose(v, allowed, atol=1e-6).any() for v in np.unique(depth))
    near, far = render_depth(scene, tuple(1.0 for _ in depths))[1], render_depth(scene, tuple(2.5 for _ in depths))[1]
    assert (near < DEPTH_WALL).sum() > 2 * (far < DEPTH_WALL).sum()  # nearer objects are drawn larger
    folder = write_depth(tmp_path, seed=1, n=2)
    m = Dp.evaluate(tiny_clip, folder, progress=False)
    assert m["n_images"] == 2 and 0 <= m["delta1"] <= 1 and m["rmse"] > 0


# -- issue 27 (DepthCLIP's defaults) and issue 32 (bad input) ----------------------------------------------


class WordModel:
    """A stand-in CLIP: the seven distance words are one-hot text embeddings; the patch in grid column j is the
    word ``column_words[j]``. It records every image input it is given."""

    patch_size = 16
    image_size = 32
    device = torch.device("cpu")

    def __init__(self, column_words=(2,)):
        from un2clip.models.clip import ImageProcessing

        self.processing = ImageProcessing(size=32)
        self.column_words = column_words
        self.inputs = []

    def eval(self):
        return self

    def encode_text(self, texts):
        return torch.stack([torch.eye(8)[[w in t for w in Dp.DEPTH_WORDS].index(True) if t.endswith(
            tuple(Dp.DEPTH_WORDS)) else 7] for t in texts])

    def image_tokens(self, x):
        self.inputs.append(x.clone())
        h, w = x.shape[-2] // 16, x.shape[-1] // 16
        words = [self.column_words[min(j, len(self.column_words) - 1)] for j in range(w)]
        return torch.eye(8)[torch.tensor(words)].repeat(h, 1)[None]  # (1, h * w, 8), row-major


def test_encode_text_of_the_stand_in_picks_each_word():
    texts = [Dp.DEPTH_TEMPLATE.format(w) for w in Dp.DEPTH_WORDS]
    assert WordModel().encode_text(texts).argmax(dim=1).tolist() == list(range(7))


def test_a_nyu_frame_is_fed_as_depthclips_416x544_crop_with_imagenet_statistics_and_its_flip(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    (tmp_path / "images").mkdir()
    (tmp_path / "depths").mkdir()
    Image.fromarray(pixels).save(tmp_path / "images" / "f.png")
    Image.fromarray(np.full((480, 640), 2000, dtype=np.uint16)).save(tmp_path / "depths" / "f.png")
    model = WordModel(column_words=(2,))  # every patch says "close": 2.0 m, the truth
    m = Dp.evaluate(model, tmp_path, progress=False)
    fed, flipped = model.inputs
    assert tuple(fed.shape) == (1, 3, 416, 544)  # native resolution, no resize
    crop = torch.from_numpy(pixels[56:472, 60:604].astype(np.float32) / 255).permute(2, 0, 1)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(fed[0], (crop - mean[:, None, None]) / std[:, None, None], atol=1e-5)
    assert torch.equal(flipped, fed.flip(-1))  # test-time flip
    assert m["delta1"] == 1.0 and m["abs_rel"] == pytest.approx(0.0, abs=1e-4)


def test_prediction_covers_the_crop_only_and_flip_averages_mirrored_columns():
    model = WordModel(column_words=(0, 3, 6))  # grid columns say 1.0, 2.25, 3.0 m
    image = Image.new("RGB", (48, 16))
    x, region = Dp.depthclip_input(image, 16)
    assert region == (0, 16, 0, 48)  # not a NYU frame: fed whole
    plain = Dp.grid_depth(model, x, torch.eye(8)[:7])
    both = Dp.grid_depth(model, x, torch.eye(8)[:7], flip=True)
    assert plain[0, 0].tolist() == pytest.approx([1.0, 2.25, 3.0], abs=1e-4)
    assert both[0, 0].tolist() == pytest.approx([2.0, 2.25, 2.0], abs=1e-4)  # (1 + 3) / 2 at both ends
    nyu = Dp.predict_depth(WordModel(), Image.new("RGB", (640, 480)), torch.eye(8)[:7], (480, 640), short_side=32,
                           input="depthclip")
    assert float(nyu[:56].abs().sum()) == 0 and float(nyu[:, 604:].abs().sum()) == 0
    assert torch.allclose(nyu[56:472, 60:604], torch.full((416, 544), 2.0), atol=1e-4)


def test_upsampling_aligns_corners_as_depthclip():
    up = Dp.upsample(torch.tensor([[[1.0, 2.0], [3.0, 4.0]]]), (3, 3))
    assert up.flatten().tolist() == pytest.approx([1.0, 1.5, 2.0, 2.0, 2.5, 3.0, 3.0, 3.5, 4.0])
    row = torch.tensor([[[1.0, 2.0]]])  # 2 -> 4 columns: aligned corners step by 1/3, unaligned by 1/4 inside
    assert Dp.upsample(row, (1, 4))[0].tolist() == pytest.approx([1.0, 4 / 3, 5 / 3, 2.0])
    assert Dp.upsample(row, (1, 4), align_corners=False)[0].tolist() == pytest.approx([1.0, 1.25, 1.75, 2.0])


def test_sq_rel_rmse_log_and_silog_as_bts_and_adabins():
    gt = torch.tensor([1.0, 2.0, 4.0])
    m = Dp.depth_metrics(torch.tensor([2.0, 2.0, 2.0]), gt)
    ln2 = math.log(2)
    assert m["sq_rel"] == pytest.approx(2 / 3)  # (1 / 1 + 0 + 4 / 4) / 3
    assert m["rmse_log"] == pytest.approx(ln2 * math.sqrt(2 / 3))  # e = (ln 2, 0, -ln 2)
    assert m["silog"] == pytest.approx(100 * ln2 * math.sqrt(2 / 3))  # mean(e) = 0
    shifted = Dp.depth_metrics(gt * 3, gt)  # a pure scale error: silog is scale-invariant
    assert shifted["silog"] == pytest.approx(0.0, abs=1e-6) and shifted["rmse_log"] == pytest.approx(math.log(3))


def test_eigen_crop_on_a_frame_that_is_not_640x480_is_an_error_naming_it(tmp_path):
    write_pair(tmp_path, "0001", size=(64, 64))
    with pytest.raises(ValueError, match=r"depths/0001\.png is 64x64.*640x480"):
        Dp.evaluate(WordModel(), tmp_path, eigen_crop=True, progress=False)
    assert Dp.evaluate(WordModel(), tmp_path, progress=False)["n_images"] == 1  # auto: scored whole


def test_an_8_bit_depth_png_is_refused_naming_the_file(tmp_path):
    write_pair(tmp_path, "0001")
    Image.fromarray(np.full((16, 24), 150, dtype=np.uint8)).save(tmp_path / "depths" / "0001.png")
    with pytest.raises(ValueError, match=r"0001\.png is 8-bit; expected a 16-bit PNG"):
        Dp.read_depth_png(tmp_path / "depths" / "0001.png", 1000.0)


def test_a_non_numeric_depth_scale_file_is_named(tmp_path):
    write_pair(tmp_path, "0001")
    (tmp_path / "depth_scale.txt").write_text("millimetres\n")
    with pytest.raises(ValueError, match=r"depth_scale\.txt must hold one number.*'millimetres'"):
        Dp.read_depth_set(tmp_path)
    (tmp_path / "depth_scale.txt").write_text("-5")
    with pytest.raises(ValueError, match=r"depth_scale\.txt must hold a positive number"):
        Dp.read_depth_set(tmp_path)


def test_unreadable_images_are_named_on_the_console(tmp_path, capsys):
    write_pair(tmp_path, "0001")
    write_pair(tmp_path, "0002")
    (tmp_path / "images" / "0002.jpg").write_bytes(b"not an image")
    m = Dp.evaluate(WordModel(), tmp_path, progress=False)
    assert m["n_skipped_images"] == 1
    err = capsys.readouterr().err
    assert "skipped 1 images" in err and "0002.jpg" in err


# -- issue 36: DepthCLIP's constants written out, every switch and boundary pinned ------------------------------


def test_depthclip_constants_written_out():
    assert Dp.BIN_DEPTHS == (1.00, 1.50, 2.00, 2.25, 2.50, 2.75, 3.00)
    assert Dp.DEPTH_WORDS == ("giant", "extremely close", "close", "not in distance", "a little remote", "far",
                              "unseen")
    assert Dp.DEPTH_TEMPLATE.format("far") == "This object is far" and Dp.TEMPERATURE == 0.1
    assert Dp.EIGEN_CROP == (45, 471, 46, 601) and Dp.DEPTHCLIP_CROP == (56, 472, 60, 604)
    assert Dp.NYU_SIZE == (480, 640)
    assert Dp.IMAGENET_MEAN == (0.485, 0.456, 0.406) and Dp.IMAGENET_STD == (0.229, 0.224, 0.225)
    words = torch.eye(7, 8)
    assert Dp.depthclip_depth(words, words).tolist() == pytest.approx([1.0, 1.5, 2.0, 2.25, 2.5, 2.75, 3.0], abs=1e-4)


def test_depthclip_temperature_on_a_patch_between_two_words():
    words = torch.eye(7, 8)
    patch = torch.tensor([0.1, 0.101, 0, 0, 0, 0, 0, 0])
    patch[7] = math.sqrt(1 - 0.1**2 - 0.101**2)
    # logits 100 * cos / 0.1: 100 and 101 for "giant" (1.0 m) and "extremely close" (1.5 m), 0 for the others
    want = (1.0 + 1.5 * math.e) / (1 + math.e)
    assert float(Dp.depthclip_depth(patch, words)) == pytest.approx(want, abs=2e-3)
    assert float(Dp.depthclip_depth(patch, words, temperature=1.0)) == pytest.approx(
        float((torch.softmax(100 * words @ patch, 0) * torch.tensor(Dp.BIN_DEPTHS)).sum()), abs=1e-5)


def test_score_mask_eigen_crop_edges_and_modes(tmp_path):
    gt = torch.ones(480, 640)
    mask = Dp.score_mask(gt, min_depth=1e-3, max_depth=10.0, eigen_crop="auto", where=tmp_path)
    assert int(mask.sum()) == 426 * 555  # rows 45-470, columns 46-600
    assert mask[45, 46] and mask[470, 600] and not mask[44, 46] and not mask[471, 46]
    assert not mask[45, 45] and not mask[45, 601]
    assert torch.equal(Dp.score_mask(gt, min_depth=1e-3, max_depth=10.0, eigen_crop="on", where=tmp_path), mask)
    assert bool(Dp.score_mask(gt, min_depth=1e-3, max_depth=10.0, eigen_crop="off", where=tmp_path).all())
    small = torch.tensor([[0.5, 1.0, 2.0, 3.0]])  # (min, max) is open at both ends
    assert Dp.score_mask(small, min_depth=1.0, max_depth=3.0, eigen_crop="auto", where=tmp_path).tolist() == [
        [False, False, True, False]]
    with pytest.raises(ValueError, match="unknown eigen_crop 'yes'"):
        Dp.score_mask(small, min_depth=1.0, max_depth=3.0, eigen_crop="yes", where=tmp_path)


def test_input_crop_and_depthclip_input_sizes():
    assert Dp.input_crop(480, 640) == (56, 472, 60, 604)
    assert Dp.input_crop(640, 480) == (0, 640, 0, 480) and Dp.input_crop(20, 50) == (0, 20, 0, 50)
    x, region = Dp.depthclip_input(Image.new("RGB", (50, 20)), 16)
    assert tuple(x.shape) == (1, 3, 16, 48) and region == (0, 20, 0, 50)  # cut down to whole patches
    x, _ = Dp.depthclip_input(Image.new("RGB", (16, 16), (255, 255, 255)), 16)  # one patch exactly
    assert torch.allclose(x[0, :, 0, 0], (1 - torch.tensor(Dp.IMAGENET_MEAN)) / torch.tensor(Dp.IMAGENET_STD))
    for size in ((15, 16), (16, 15)):
        with pytest.raises(ValueError, match="smaller than one 16-pixel patch"):
            Dp.depthclip_input(Image.new("RGB", size), 16)


def test_predict_depth_defaults_and_refusals():
    image, words = Image.new("RGB", (64, 32)), torch.eye(8)[:7]
    model = WordModel(column_words=(0, 6))
    out = Dp.predict_depth(model, image, words, (32, 64), short_side=32)  # default: resize, no flip, unaligned
    assert tuple(model.inputs[0].shape) == (1, 3, 32, 64) and len(model.inputs) == 1
    grid = torch.tensor([[[1.0, 3.0, 3.0, 3.0]]]).expand(1, 2, 4)  # columns: word 0, then word 6
    torch.testing.assert_close(out, Dp.upsample(grid, (32, 64), align_corners=False), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="unknown depth input 'crop'"):
        Dp.predict_depth(model, image, words, (32, 64), short_side=32, input="crop")
    with pytest.raises(ValueError, match="predicts at the image's size 32x64, asked \\(16, 32\\)"):
        Dp.predict_depth(model, image, words, (16, 32), short_side=32, input="depthclip")


def _two_column_set(folder, value=2000):
    (folder / "images").mkdir(parents=True)
    (folder / "depths").mkdir()
    Image.new("RGB", (64, 32)).save(folder / "images" / "a.png")
    Image.fromarray(np.full((32, 64), value, dtype=np.uint16)).save(folder / "depths" / "a.png")
    return folder


def test_evaluate_defaults_are_depthclips_and_each_switch_changes_the_result(tmp_path):
    folder = _two_column_set(tmp_path / "set")

    def run(**kw):
        model = WordModel(column_words=(0, 6, 3, 2))  # 1.0, 3.0, 2.25, 2.0 m across the four grid columns
        m = Dp.evaluate(model, folder, progress=False, **kw)
        run.first = model.inputs[0]
        return m, [tuple(x.shape) for x in model.inputs]

    default, shapes = run()
    assert shapes == [(1, 3, 32, 64), (1, 3, 32, 64)]  # native size, then its flip
    black = -torch.tensor(Dp.IMAGENET_MEAN) / torch.tensor(Dp.IMAGENET_STD)  # a black frame, ImageNet statistics
    assert torch.allclose(run.first[0, :, 0, 0], black)
    explicit, _ = run(input="depthclip", flip=True, align_corners=True, eigen_crop="auto")
    assert default == explicit
    assert run(flip=False)[0] != default and run(align_corners=False)[0] != default
    _, shapes = run(input="resize")
    assert shapes == [(1, 3, 32, 64), (1, 3, 32, 64)]  # resize flips too by default
    assert not torch.allclose(run.first[0, :, 0, 0], black)  # CLIP's statistics
    _, shapes = run(input="resize", short_side=64)
    assert shapes[0] == (1, 3, 64, 128)  # the short side asked for, not the model's 32
    assert default["n_images"] == 1 and default["n_skipped_images"] == 0
    assert run(eigen_crop=False)[0] == default  # a 64 x 32 frame has no Eigen crop either way


def test_evaluate_depth_range_and_refusals(tmp_path):
    far = _two_column_set(tmp_path / "far", value=12000)  # 12 m: beyond the default 10 m
    with pytest.raises(ValueError, match="has no pixel within \\(0.001, 10.0\\) m"):
        Dp.evaluate(WordModel(), far, progress=False)
    assert Dp.evaluate(WordModel(column_words=(6,)), far, progress=False, max_depth=20.0)["abs_rel"] == \
        pytest.approx(9 / 12, abs=1e-4)  # every patch says 3 m
    near = _two_column_set(tmp_path / "near", value=2000)
    clamped = Dp.evaluate(WordModel(column_words=(6,)), near, progress=False, max_depth=2.5)
    assert clamped["abs_rel"] == pytest.approx(0.25, abs=1e-4)  # 3 m clamped to the 2.5 m maximum
    for kw, words in [({"min_depth": 0.0}, "need 0 < min_depth < max_depth"),
                      ({"min_depth": 2.0, "max_depth": 2.0}, "need 0 < min_depth < max_depth"),
                      ({"max_depth": math.inf}, "need 0 < min_depth < max_depth"),
                      ({"eigen_crop": "yes"}, "eigen_crop must be one of"),
                      ({"input": "crop"}, "input one of")]:
        with pytest.raises(ValueError, match=words):
            Dp.evaluate(WordModel(), near, progress=False, **kw)


def test_reader_scale_hidden_files_and_bad_folders(tmp_path):
    write_pair(tmp_path / "a", "0001")
    (tmp_path / "a" / "depth_scale.txt").write_text(" 256 \n")
    assert Dp.read_depth_set(tmp_path / "a").depth_scale == 256.0
    assert Dp.read_depth_set(tmp_path / "a", depth_scale=5000).depth_scale == 5000.0
    for bad in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match="depth scale must be a positive number"):
            Dp.read_depth_set(tmp_path / "a", depth_scale=bad)
    for text in ("0", "inf"):
        (tmp_path / "a" / "depth_scale.txt").write_text(text)
        with pytest.raises(ValueError, match="must hold a positive number"):
            Dp.read_depth_set(tmp_path / "a")
    (tmp_path / "a" / "depth_scale.txt").unlink()
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "images" / ".hidden.png")  # no depth, but hidden: ignored
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "images" / "0002.JPG")
    Image.fromarray(np.ones((8, 8), dtype=np.uint16)).save(tmp_path / "a" / "depths" / "0002.png")
    assert [p[0].name for p in Dp.read_depth_set(tmp_path / "a").pairs] == ["0001.jpg", "0002.JPG"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no image \\+ depth pairs"):
        Dp.read_depth_set(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        Dp.read_depth_set(tmp_path / "missing")
    bts = tmp_path / "bts" / "kitchen"
    bts.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(bts / "rgb_00007.jpg")
    with pytest.raises(FileNotFoundError, match="rgb_00007\\.jpg has no depth map .*sync_depth_00007\\.png"):
        Dp.read_depth_set(tmp_path / "bts")


def test_depth_png_channels_and_one_bit_are_refused(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="has 3 channels"):
        Dp.read_depth_png(tmp_path / "rgb.png", 1000.0)
    Image.new("1", (4, 4)).save(tmp_path / "bits.png")
    with pytest.raises(ValueError, match="is 1-bit"):
        Dp.read_depth_png(tmp_path / "bits.png", 1000.0)
    (tmp_path / "junk.png").write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk\\.png cannot be read"):
        Dp.read_depth_png(tmp_path / "junk.png", 1000.0)
    Image.fromarray(np.array([[500, 2500]], dtype=np.uint16)).save(tmp_path / "d.png")
    assert Dp.read_depth_png(tmp_path / "d.png", 1000.0).tolist() == [[0.5, 2.5]]


def test_evaluate_with_no_readable_image_says_so(tmp_path):
    write_pair(tmp_path, "0001")
    (tmp_path / "images" / "0001.jpg").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="none of the 1 images of .* could be read"):
        Dp.evaluate(WordModel(), tmp_path, progress=False)


class ScaledTokenModel(WordModel):
    """Every patch token is 3 x (e_2 + 1.001 e_3): not unit length, between the words "close" and "not in distance"."""

    def image_tokens(self, x):
        self.inputs.append(x.clone())
        n = (x.shape[-2] // 16) * (x.shape[-1] // 16)
        token = torch.zeros(8)
        token[2], token[3] = 3.0, 3.003
        return token.repeat(n, 1)[None]  # (1, n, 8)


def test_grid_depth_normalises_each_patch_token_before_the_words():
    x = torch.zeros(1, 3, 16, 32)  # a 1 x 2 grid: two tokens
    got = Dp.grid_depth(ScaledTokenModel(), x, torch.eye(8)[:7])
    # unit token (a, 1.001 a), a = 1 / sqrt(1 + 1.001^2): logits 100 / 0.1 x (a, 1.001 a) on "close" (2.00 m) and
    # "not in distance" (2.25 m), 0 elsewhere (weight ~e^-700)
    a = 1 / math.sqrt(1 + 1.001**2)
    w = 1 / (1 + math.exp(1000 * (a - 1.001 * a)))
    assert got.shape == (1, 1, 2)
    assert got.flatten().tolist() == pytest.approx([2.0 * (1 - w) + 2.25 * w] * 2, abs=2e-5)  # float32 logits



def test_evaluate_asks_the_text_tower_for_depthclips_sentences(tmp_path):
    write_pair(tmp_path, "a", size=(32, 16))
    model, seen = WordModel(), []
    encode = model.encode_text
    model.encode_text = lambda texts: (seen.extend(texts), encode(texts))[1]
    Dp.evaluate(model, tmp_path, progress=False)
    assert seen == ["This object is giant", "This object is extremely close", "This object is close",
                    "This object is not in distance", "This object is a little remote", "This object is far",
                    "This object is unseen"]
