"""eval pointcloud: PointCLIP's projection and view logits, the point readers, the world's primitives."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from un2clip.eval.downstream import pointcloud as P


def test_one_class_point_set_gives_accuracy_100():
    from un2clip.eval.core.metrics import zeroshot_metrics

    torch.manual_seed(0)
    classifier = torch.nn.functional.normalize(torch.randn(16, 2), dim=0)  # (D, C)
    views = classifier[:, 0].reshape(1, 1, -1).expand(5, 6, -1)  # five clouds, every view like class 0
    logits = P.view_logits(views, classifier)
    assert zeroshot_metrics(logits, torch.zeros(5, dtype=torch.long))["acc1"] == 1.0


def test_view_logits_are_pointclip_concatenation_up_to_a_constant():
    # PointCLIP: concatenate the six unit view features, weight them, dot with the text feature repeated per
    # view and normalised as a whole: sum_v w_v cos_v / sqrt(V) — ours is sum_v w_v cos_v times the logit scale
    torch.manual_seed(1)
    views = torch.nn.functional.normalize(torch.randn(3, 6, 8), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)  # (C, D)
    w = torch.tensor([3.0, 1, 1, 3, 1, 1])
    concat = (views * w.reshape(1, 6, 1)).reshape(3, -1)
    text_rep = torch.nn.functional.normalize(text.repeat(1, 6), dim=-1)
    reference = concat @ text_rep.T
    ours = P.view_logits(views, text.T, w.tolist(), logit_scale=1.0)
    assert torch.allclose(ours / math.sqrt(6), reference, atol=1e-5)
    with pytest.raises(ValueError, match="5 view weights for 6 views"):
        P.view_logits(views, text.T, [1.0] * 5)


def test_projection_of_a_point_before_each_camera():
    point = torch.tensor([[0.0, 0.0, 0.0]])  # the centre lands at the image centre at depth 1.6
    maps = P.project_views(point, resolution=8)
    assert maps.shape == (6, 8, 8)
    for m in maps:
        assert m[4, 4] == pytest.approx(P.CAMERA_DISTANCE) and (m > 0).sum() == 1
    two = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert P.project_views(two, resolution=8)[0, 4, 4] == pytest.approx(P.CAMERA_DISTANCE)  # harmonic mean


def test_six_views_see_six_sides():
    # a point on +x and one on +z: some views see them at different depths, none loses both
    pts = torch.tensor([[1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0]])
    maps = P.project_views(pts, resolution=32)
    assert all((m > 0).sum() >= 1 for m in maps)
    nearest = [float(m[m > 0].min()) for m in maps]
    assert min(nearest) == pytest.approx(P.CAMERA_DISTANCE - 1, abs=1e-5)  # some view has a point in front
    assert len({round(n, 3) for n in nearest}) > 1


def test_densify_fills_holes_with_the_nearest_depth():
    d = torch.zeros(5, 5)
    d[2, 2], d[2, 3] = 2.0, 1.0
    out = P.densify(d, 3)
    assert out[2, 2] == 2.0 and out[1, 2] == 1.0 and out[0, 0] == 0.0  # kept, filled with the nearer, far away
    assert torch.equal(P.densify(d, 1), d)
    assert P.depth_to_intensity(torch.tensor([0.0, 0.6, 2.6])).tolist() == pytest.approx([0.0, 1.0, 0.2])


def test_readers_off_txt_npy_and_empty(tmp_path):
    off = tmp_path / "tri.off"
    off.write_text("OFF\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 2\n")
    pts = P.read_points(off, n_points=200)
    assert pts.shape == (200, 3) and (pts[:, 2] == 0).all() and (pts[:, 0] + pts[:, 1] <= 1 + 1e-6).all()
    fused = tmp_path / "fused.off"  # ModelNet's "OFF3 1 0" header
    fused.write_text("OFF3 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 2\n")
    assert P.read_points(fused, n_points=10).shape == (10, 3)
    txt = tmp_path / "a.txt"
    txt.write_text("0.1,0.2,0.3,0,0,1\n0.4,0.5,0.6,0,0,1\n")
    assert P.read_points(txt).flatten().tolist() == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    np.save(tmp_path / "b.npy", np.ones((5000, 3), np.float32))
    assert P.read_points(tmp_path / "b.npy", n_points=1024).shape == (1024, 3)
    (tmp_path / "empty.txt").write_text("")
    assert P.read_points(tmp_path / "empty.txt") is None
    assert P.read_points(tmp_path / "nothing.npy") is None


def test_empty_point_files_are_skipped_and_counted(tmp_path, tiny_clip):
    from un2clip.world.downstream import write_pointcloud

    folder = write_pointcloud(tmp_path, seed=0, per_class=1, n_points=256)
    (folder / "cube" / "broken.txt").write_text("")
    m = P.evaluate(tiny_clip, folder, progress=False)
    assert m["n_skipped_files"] == 1 and m["n_clouds"] == 6 and m["n_classes"] == 6
    assert 0 <= m["acc1"] <= 1 and m["acc5"] >= m["acc1"]


def test_modelnet_split_folders(tmp_path):
    for c in ("flower_pot", "chair"):
        for split in ("train", "test"):
            (tmp_path / c / split).mkdir(parents=True)
            np.save(tmp_path / c / split / f"{c}_{split}.npy", np.ones((4, 3), np.float32))
    ds = P.read_pointcloud_set(tmp_path, split="test")
    assert ds.classnames == ["chair", "flower pot"] and [p.parent.name for p in ds.paths] == ["test", "test"]


def test_world_primitives_lie_on_their_surfaces():
    from un2clip.world.downstream import POINT_SHAPES, primitive_points, random_rotation

    rng = np.random.default_rng(0)
    for shape in POINT_SHAPES:
        assert primitive_points(shape, 300, rng).shape == (300, 3)
    assert np.allclose(np.linalg.norm(primitive_points("sphere", 50, rng), axis=1), 1)
    assert np.allclose(np.abs(primitive_points("cube", 50, rng)).max(axis=1), 1)
    torus = primitive_points("torus", 50, rng)
    ring = np.hypot(torus[:, 0], torus[:, 1])
    assert np.allclose(np.hypot(ring - 1, torus[:, 2]), 0.35)
    r = random_rotation(rng)
    assert np.allclose(r @ r.T, np.eye(3), atol=1e-8) and np.linalg.det(r) == pytest.approx(1)


# -- issue 27 (PointCLIP's defaults) and issue 32 (bad input) ---------------------------------------------


def test_projection_takes_the_row_from_x_and_rounds_as_pointclip():
    # one camera looking down +z (no rotation), 128 px: r = (x / z + 1) * 64, c = (y / z + 1) * 64, z = 0 + 1.6;
    # PointCLIP's pixel is (ceil(r - 0.5), ceil(c - 0.5)); the cloud is asymmetric so a transpose shows
    pts = torch.tensor([[0.5, 0.0, 0.0],  # r = 84, c = 64 -> (84, 64)
                        [0.515, -0.25, 0.0],  # r = 84.6 -> 85 (a floor gives 84), c = 54 -> (85, 54)
                        [-0.8, 0.3, 0.0]])  # r = 32, c = 76 -> (32, 76)
    depth = P.project_views(pts, resolution=128, views=((0.0, 0.0, 0.0),))[0]
    assert sorted(map(tuple, (depth > 0).nonzero().tolist())) == [(32, 76), (84, 64), (85, 54)]
    assert depth[84, 64] == pytest.approx(1.6) and depth[85, 54] == pytest.approx(1.6)


def test_the_first_points_of_a_long_cloud_are_read_not_a_random_draw(tmp_path):
    cloud = np.arange(6000, dtype=np.float64).reshape(2000, 3)
    np.save(tmp_path / "long.npy", cloud)
    assert P.read_points(tmp_path / "long.npy").numpy().tolist() == cloud[:1024].tolist()  # PointCLIP: impath[:1024]
    drawn = P.read_points(tmp_path / "long.npy", subset="random").numpy()
    assert drawn.shape == (1024, 3) and drawn.tolist() != cloud[:1024].tolist()


def test_default_views_are_the_raw_sparse_depth_maps_upsampled_with_align_corners():
    from types import SimpleNamespace

    from un2clip.models.clip import ImageProcessing

    rng = np.random.default_rng(0)
    pts = torch.from_numpy(rng.normal(size=(300, 3)) * np.array([1.0, 0.4, 0.2]))
    same_size = SimpleNamespace(processing=ImageProcessing(size=P.RESOLUTION))
    x = P.view_inputs(pts, same_size)  # at the map's own size the upsampling is the identity
    raw = P.project_views(P.normalize_points(pts))
    assert torch.allclose(x, raw[:, None].expand(-1, 3, -1, -1), atol=1e-6)  # no densify, no intensity, no norm
    # 2 x 2 -> 3 x 3: the corners keep the map's corner values (align_corners=True)
    big = P.view_images(torch.tensor([[[1.0, 2.0], [3.0, 4.0]]]), 3)
    assert big[0, 0].flatten().tolist() == pytest.approx([1.0, 1.5, 2.0, 2.0, 2.5, 3.0, 3.0, 3.5, 4.0])


def test_huge_coordinates_do_not_collapse_the_cloud():
    pts = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.5, 0.0]])
    for scale in (1e20, 1e30):  # a float32 norm overflows past ~1.8e19
        huge = P.normalize_points(pts * scale)
        assert torch.isfinite(huge).all() and torch.allclose(huge, P.normalize_points(pts), atol=1e-6)
    assert float(P.normalize_points(pts).norm(dim=1).max()) == pytest.approx(1.0)


def test_view_weights_all_zero_and_bad_numeric_options_are_refused(tmp_path, capsys):
    from un2clip.cli import main

    views = torch.nn.functional.normalize(torch.randn(2, 6, 4), dim=-1)
    with pytest.raises(ValueError, match="all 0"):
        P.view_logits(views, torch.eye(4, 3), [0.0] * 6)
    with pytest.raises(ValueError, match="odd"):
        P.densify(torch.zeros(8, 8), 2)  # an even window used to fail on a reshape
    with pytest.raises(ValueError, match="n_points must be >= 1"):
        P.read_points(tmp_path / "a.npy", n_points=0)
    base = ["eval", "pointcloud", "--model", "tiny", "--data", str(tmp_path), "--output", str(tmp_path / "o")]
    for extra, message in ((["--view-weights", "0", "0", "0", "0", "0", "0"], "all 0"),
                           (["--densify-size", "2"], "odd"), (["--densify-size", "-1"], ">= 0"),
                           (["--n-points", "0"], ">= 1"), (["--view-weights", "1", "1", "nan", "1", "1", "1"],
                                                           "finite")):
        with pytest.raises(SystemExit) as err:
            main(base + extra)
        assert err.value.code == 2 and message in capsys.readouterr().err, extra


def test_skipped_point_files_are_named_on_the_console(tmp_path, tiny_clip, capsys):
    from un2clip.world.downstream import write_pointcloud

    folder = write_pointcloud(tmp_path, seed=0, per_class=1, n_points=64)
    for k in range(5):
        (folder / "cube" / f"broken{k}.txt").write_text("")
    m = P.evaluate(tiny_clip, folder, progress=False)
    err = capsys.readouterr().err
    assert m["n_skipped_files"] == 5
    assert "skipped 5 point files" in err and "broken0.txt" in err and "and 2 more" in err


def test_modelnet40_hdf5_release_is_read_as_pointclip_reads_it(tmp_path, tiny_clip):
    h5py = pytest.importorskip("h5py")
    (tmp_path / "shape_names.txt").write_text("airplane\nflower_pot\nchair\n")
    rng = np.random.default_rng(0)
    clouds = rng.uniform(-0.5, 0.5, (5, 2048, 3)).astype(np.float32)
    for k, rows in enumerate(((0, 1, 2), (3, 4))):
        with h5py.File(tmp_path / f"ply_data_test{k}.h5", "w") as f:
            f["data"] = clouds[list(rows)]
            f["label"] = np.array([[2], [0], [1], [1], [0]], dtype=np.uint8)[list(rows)]
    # PointCLIP's list names the files under its own data/ folder: found by name in DIR
    (tmp_path / "test_files.txt").write_text("data/modelnet40_ply_hdf5_2048/ply_data_test0.h5\n"
                                             "data/modelnet40_ply_hdf5_2048/ply_data_test1.h5\n")
    ds = P.read_pointcloud_set(tmp_path)
    assert ds.classnames == ["airplane", "flower pot", "chair"] and ds.labels == [2, 0, 1, 1, 0]
    assert ds.rows == [0, 1, 2, 0, 1] and ds.paths[3].name == "ply_data_test1.h5"
    first = P.read_h5_cloud(ds.paths[3], ds.rows[3])  # cloud 3: the first 1,024 of its 2,048 points
    assert first.numpy().tolist() == clouds[3, :1024].astype(np.float64).tolist()
    m = P.evaluate(tiny_clip, tmp_path, progress=False)
    assert m["n_clouds"] == 5 and m["n_classes"] == 3 and m["n_skipped_files"] == 0
    (tmp_path / "test_files.txt").write_text("ply_data_test9.h5\n")
    with pytest.raises(FileNotFoundError, match="ply_data_test9.h5"):
        P.read_pointcloud_set(tmp_path)
