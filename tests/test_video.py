"""eval video-retrieval / video-zeroshot: frame sampling, pooling and ranks on hand-built inputs, the readers,
bad videos, a real decoded video (when PyAV is installed), the world's motion clips, the CLI."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from un2clip.eval.core.metrics import (
    retrieval_metrics,
    retrieval_rank_metrics,
    retrieval_ranks,
    zeroshot_metrics,
)
from un2clip.eval.downstream import video as V


def _frames(folder, images, names=None):
    folder.mkdir(parents=True, exist_ok=True)
    for k, image in enumerate(images):
        image.save(folder / (names[k] if names else f"{k:03d}.png"))
    return folder


def _noise(rng, size=24):
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def _table(path, rows, header=("video_id", "caption")):
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return path


# -- pure --------------------------------------------------------------------------------------------------


def test_frame_sampling_is_clip4clips_linspace_and_actionclips_segment_middles():
    for n, k in ((100, 12), (13, 12), (37, 8), (1000, 5)):
        assert V.sample_frame_indices(n, k, "uniform") == np.linspace(0, n - 1, num=k, dtype=int).tolist()
    assert V.sample_frame_indices(100, 12, "uniform") == [0, 9, 18, 27, 36, 45, 54, 63, 72, 81, 90, 99]
    assert V.sample_frame_indices(5, 12, "uniform") == [0, 1, 2, 3, 4]  # every frame of a short video
    assert V.sample_frame_indices(16, 8, "segments") == [0, 2, 4, 6, 8, 10, 12, 14]  # int(2i + 0.5)
    assert V.sample_frame_indices(32, 4, "segments") == [3, 11, 19, 27]  # middles of 8-frame segments
    assert V.sample_frame_indices(5, 8, "segments") == [0, 0, 1, 1, 2, 3, 3, 4]  # i * n // k: frames repeat
    with pytest.raises(ValueError, match="unknown frame sampling"):
        V.sample_frame_indices(5, 2, "random")


def test_mean_pooling_order_against_a_hand_computation():
    frames = torch.tensor([[[3.0, 4.0], [1.0, 0.0], [100.0, -7.0]]])  # (1 video, 3 frames, D=2); frame 3 is padding
    mask = torch.tensor([[True, True, False]])
    # CLIP4Clip: normalise frames -> (0.6, 0.8), (1, 0); mean (0.8, 0.4); normalise -> (2, 1) / sqrt(5)
    assert V.pool_frames(frames, mask).tolist()[0] == pytest.approx([2 / 5**0.5, 1 / 5**0.5])
    # ActionCLIP: mean of the raw frames (2, 2), normalised -> (1, 1) / sqrt(2)
    assert V.pool_frames(frames, mask, normalize_frames=False).tolist()[0] == pytest.approx([2**-0.5, 2**-0.5])
    same = torch.tensor([[[0.3, -0.4, 1.2]] * 4])  # four copies of one frame: the frame itself, normalised
    assert torch.allclose(V.pool_frames(same)[0], torch.nn.functional.normalize(same[0, 0], dim=0))


def test_ranks_of_a_perfect_embedding_and_of_a_hand_built_one():
    scores = torch.eye(5) + 0.01 * torch.arange(5.0)  # each caption's own video best
    caption_video = torch.arange(5)
    m = retrieval_rank_metrics(scores, caption_video, "video")
    assert m == {"text_to_video_median_rank": 1.0, "text_to_video_mean_rank": 1.0,
                 "video_to_text_median_rank": 1.0, "video_to_text_mean_rank": 1.0}
    assert retrieval_metrics(scores, caption_video)["text_to_image_recall@1"] == 1.0
    # three captions, two videos; caption 0 and 1 belong to video 0, caption 2 to video 1
    s = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.7, 0.3]])
    m = retrieval_rank_metrics(s, torch.tensor([0, 0, 1]), "video")
    assert (m["text_to_video_median_rank"], m["text_to_video_mean_rank"]) == (2.0, pytest.approx(5 / 3))
    # video 0: its captions score 0.1 and 0.8 among (0.1, 0.8, 0.7): best rank 1; video 1: 0.3 among
    # (0.9, 0.2, 0.3): rank 2; median of (1, 2) is 1.5 as numpy.median gives
    assert (m["video_to_text_median_rank"], m["video_to_text_mean_rank"]) == (1.5, 1.5)
    ties = retrieval_ranks(torch.tensor([[0.5, 0.5, 0.1]]), torch.tensor([[False, True, False]]))
    assert ties.tolist() == [2]  # the one tie rule: a tied wrong candidate ranks before the query's answer


def test_a_classifier_right_on_every_clip_scores_100_and_acc5_is_at_least_acc1():
    torch.manual_seed(0)
    classes = torch.nn.functional.normalize(torch.randn(6, 16), dim=-1)  # (C, D)
    labels = torch.arange(6).repeat(3)  # 18 clips
    frames = classes[labels].unsqueeze(1) + 0.05 * torch.randn(18, 8, 16)  # 8 noisy frames of each clip's class
    logits = 100 * V.pool_frames(frames) @ classes.T
    assert zeroshot_metrics(logits, labels)["acc1"] == 1.0
    wrong = zeroshot_metrics(-logits, labels)  # every clip's class ranked last: acc1 0, acc5 0 of 6 classes too
    assert wrong["acc1"] == 0.0 and wrong["acc5"] == 0.0
    random = zeroshot_metrics(torch.randn(18, 6), labels)
    assert random["acc5"] >= random["acc1"]


def test_frame_folders_read_in_natural_order(tmp_path):
    shades = {"f10.png": 10, "f2.png": 2, "f1.png": 1, "f33.png": 33, "notes.txt": None}
    folder = tmp_path / "clip"
    folder.mkdir()
    for name, shade in shades.items():
        if shade is None:
            (folder / name).write_text("not a frame")
        else:
            Image.new("RGB", (8, 8), (shade, 0, 0)).save(folder / name)
    assert [p.name for p in V.frame_files(folder)] == ["f1.png", "f2.png", "f10.png", "f33.png"]
    frames = V.read_video_frames(folder, 12)
    assert [im.getpixel((0, 0))[0] for im in frames] == [1, 2, 10, 33]


# -- readers and bad input ----------------------------------------------------------------------------------


def test_caption_table_with_several_captions_per_video(tmp_path):
    rng = np.random.default_rng(0)
    videos = tmp_path / "videos"
    _frames(videos / "video7", [_noise(rng)])
    _frames(videos / "video8", [_noise(rng)])
    (videos / "video9.mp4").write_bytes(b"\x00" * 10)  # named by its stem
    _table(tmp_path / "captions.csv", [("video7", "a dog runs"), ("video9", "a cat"), ("video7", "a dog plays"),
                                       ("video8", "a bird"), ("video9.mp4", "a cat sits")])
    ds = V.read_video_captions(tmp_path)
    assert ds.ids == ["video7", "video9", "video8", "video9.mp4"]
    assert ds.captions == [["a dog runs", "a dog plays"], ["a cat"], ["a bird"], ["a cat sits"]]
    assert ds.videos[1] == ds.videos[3] == videos / "video9.mp4"
    _table(tmp_path / "msrvtt.csv", [("x", "video7", "a dog")], header=("key", "vid_key", "sentence"))
    assert V.read_video_captions(tmp_path / "msrvtt.csv", video_column="vid_key").ids == ["video7"]


def test_a_caption_for_an_unknown_video_is_an_error_naming_the_row(tmp_path):
    _frames(tmp_path / "videos" / "a", [Image.new("RGB", (8, 8))])
    _table(tmp_path / "captions.csv", [("a", "one"), ("b", "two")])
    with pytest.raises(ValueError, match=r"captions.csv:3: video 'b' is neither a frame folder nor a video file"):
        V.read_video_captions(tmp_path)


def test_class_folders_with_split_classnames_and_templates(tmp_path):
    for cls in ("air_drumming", "abseiling"):
        for k in range(2):
            _frames(tmp_path / "val" / cls / f"clip{k}", [Image.new("RGB", (8, 8))])
    (tmp_path / "val" / "abseiling" / "clip9.avi").write_bytes(b"")
    (tmp_path / "val" / "empty_class").mkdir()
    ds = V.read_video_classes(tmp_path, split="val")
    assert ds.classnames == ["abseiling", "air drumming"] and ds.labels == [0, 0, 0, 1, 1]
    assert [p.name for p in ds.videos[:3]] == ["clip0", "clip1", "clip9.avi"]
    assert ds.templates == list(V.ACTION_TEMPLATES) and len(ds.templates) == 16
    (tmp_path / "classnames.txt").write_text("abseiling\nplaying air drums\nnothing\n")
    (tmp_path / "templates.txt").write_text("a video of {}.\n")
    ds = V.read_video_classes(tmp_path, split="val")
    assert ds.classnames == ["abseiling", "playing air drums"] and ds.templates == ["a video of {}."]
    with pytest.raises(ValueError, match="needs two or more"):
        V.read_video_classes(tmp_path / "val" / "abseiling")


def test_bad_videos_are_errors_naming_the_file_or_skipped_and_counted(tmp_path, tiny_clip, monkeypatch):
    rng = np.random.default_rng(1)
    root = tmp_path / "actions"
    for cls in ("waving", "jumping"):
        _frames(root / cls / "good", [_noise(rng), _noise(rng)])
    (root / "jumping" / "empty").mkdir()
    with pytest.raises(V.BadVideo, match=r"empty is a frame folder without frames"):
        V.evaluate_zeroshot(tiny_clip, root, progress=False)
    m = V.evaluate_zeroshot(tiny_clip, root, progress=False, skip_bad=True)
    assert m["n_skipped_videos"] == 1 and m["n_videos"] == 2 and m["n_classes"] == 2 and m["n_templates"] == 16
    (root / "jumping" / "empty").rmdir()
    (root / "waving" / "broken.mp4").write_bytes(np.random.default_rng(2).bytes(4096))
    if V.has_av():
        with pytest.raises(V.BadVideo, match=r"broken.mp4 does not decode as a video"):
            V.evaluate_zeroshot(tiny_clip, root, progress=False)
        assert V.evaluate_zeroshot(tiny_clip, root, progress=False, skip_bad=True)["n_skipped_videos"] == 1
    monkeypatch.setattr(V, "has_av", lambda: False)
    monkeypatch.setitem(__import__("sys").modules, "av", None)  # as if PyAV were not installed
    with pytest.raises(ImportError, match=r"broken.mp4 is a video file: decoding it needs PyAV: .*un2clip\[video\]"):
        V.read_video_classes(root)


def test_a_video_written_by_pyav_decodes_to_the_sampled_frames(tmp_path):
    av = pytest.importorskip("av")
    path = tmp_path / "ramp.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        for k in range(20):  # frame k is a flat grey of 10 k + 20: its index can be read back
            image = np.full((32, 32, 3), 10 * k + 20, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    frames = V.read_video_frames(path, 4, "uniform")  # linspace(0, 19, 4) -> 0, 6, 12, 19
    grey = [float(np.asarray(f, dtype=float).mean()) for f in frames]
    assert grey == pytest.approx([20, 80, 140, 210], abs=6)
    segments = V.read_video_frames(path, 4, "segments")  # middles of 5-frame segments: 2, 7, 12, 17
    assert [float(np.asarray(f, dtype=float).mean()) for f in segments] == pytest.approx([40, 90, 140, 190], abs=6)


# -- models ------------------------------------------------------------------------------------------------


def test_identical_frames_in_every_video_give_image_retrieval(tmp_path, tiny_clip):
    from un2clip.eval.encoder import retrieval

    rng = np.random.default_rng(3)
    images = [_noise(rng, 32) for _ in range(6)]
    words = ["red", "blue", "green", "cyan", "purple", "yellow"]
    rows_v, rows_i = [], []
    for k, image in enumerate(images):
        _frames(tmp_path / "videos" / f"v{k}", [image] * 5)  # five copies of one frame
        image.save(tmp_path / f"{k}.png")
        caps = [f"a {words[k]} circle", f"a {words[(k + 1) % 6]} square"][: 1 + k % 2]
        rows_v += [(f"v{k}", c) for c in caps]
        rows_i += [(f"{k}.png", c) for c in caps]
    _table(tmp_path / "captions.csv", rows_v)
    _table(tmp_path / "images.csv", rows_i, header=("image", "caption"))
    # video->text ranked among all captions, as image retrieval ranks them; captions short of CLIP4Clip's 32 tokens
    vid = V.evaluate_retrieval(tiny_clip, tmp_path, progress=False, batch_size=4, video_to_text="captions")
    img = retrieval.evaluate(tiny_clip, tmp_path / "images.csv", progress=False)
    for key, value in img.items():
        if "recall" in key:
            assert vid[key.replace("image_to_text", "video_to_caption").replace("image", "video")] == value
    assert vid["n_videos"] == 6 and vid["n_captions"] == 9 and vid["n_skipped_videos"] == 0
    assert 1 <= vid["text_to_video_median_rank"] <= 6 and 1 <= vid["video_to_caption_mean_rank"] <= 9
    pooled = V.embed_videos(tiny_clip, [tmp_path / "videos" / f"v{k}" for k in range(6)], frames=12,
                            sampling="uniform", normalize_frames=True, progress=False).embeds
    single = torch.stack([tiny_clip.encode_image(tiny_clip.processing(im)[None]).detach()[0] for im in images])
    assert torch.allclose(pooled, torch.nn.functional.normalize(single.float(), dim=-1), atol=1e-5)


def test_world_motion_clips(tmp_path, tiny_clip):
    from dataclasses import replace

    from un2clip.world.downstream import MOTIONS, render_frame, write_video
    from un2clip.world.scenes import WorldObject

    folder = write_video(tmp_path, seed=0, per_class=1)
    again = write_video(tmp_path / "again", seed=0, per_class=1)
    assert (folder / "clips.jsonl").read_bytes() == (again / "clips.jsonl").read_bytes()
    records = [json.loads(line) for line in (folder / "clips.jsonl").read_text().splitlines()]
    assert [r["motion"] for r in records] == list(MOTIONS)
    assert {r["shape"] for r in records if r["motion"].startswith("turning")} == {"arrow"}

    def centre(path):  # (x, y) of the coloured pixels
        a = np.asarray(Image.open(path), dtype=float)
        ys, xs = np.nonzero(a.max(axis=2) - a.min(axis=2) > 60)
        return xs.mean(), ys.mean()

    for r in records:
        frames = V.frame_files(folder / "retrieval" / "videos" / r["video_id"])
        assert len(frames) == 8
        (x0, y0), (x1, y1) = centre(frames[0]), centre(frames[-1])
        moved = {"moving leftward": x0 - x1, "moving rightward": x1 - x0, "moving upward": y0 - y1,
                 "moving downward": y1 - y0}
        if r["motion"] in moved:
            assert moved[r["motion"]] > 5  # pixels, of a 32-px frame
        else:  # an up-pointing arrow turned a quarter: the last frame is the arrow drawn pointing right (clockwise)
            last = np.asarray(Image.open(frames[-1]), dtype=float)
            obj = WorldObject("arrow", r["color"], size="small", x=r["start"][0], y=r["start"][1])
            dist = {o: np.abs(last - np.asarray(render_frame(replace(obj, orientation=o), 0, r["noise_seed"]),
                                                dtype=float)).mean() for o in ("right", "left", "up")}
            assert min(dist, key=dist.get) == ("right" if r["motion"] == "turning clockwise" else "left")
    rows = list(csv.reader(open(folder / "retrieval" / "captions.csv")))
    assert rows[0] == ["video_id", "caption"] and len(rows) == 13 and rows[1][1].endswith(MOTIONS[0])
    m = V.evaluate_zeroshot(tiny_clip, folder / "actions", progress=False)
    assert m["n_videos"] == 6 and m["n_classes"] == 6 and m["acc5"] >= m["acc1"]


def test_cli_writes_both_video_results(tmp_path):
    from un2clip.cli import main
    from un2clip.world.downstream import write_video

    folder = write_video(tmp_path, seed=1, per_class=1)
    out = tmp_path / "out"
    for task, data in (("video-retrieval", folder / "retrieval"), ("video-zeroshot", folder / "actions")):
        assert main(["eval", task, "--model", "tiny", "--random-weights", "--data", str(data), "--output", str(out),
                     "--device", "cpu", "--no-progress", "--frames", "4"]) == 0
    ret = json.loads((out / "tiny__video-retrieval__retrieval.json").read_text())
    assert ret["options"]["frames"] == 4 and ret["metrics"]["n_captions"] == 12
    assert set(ret["metrics"]) >= {"text_to_video_recall@1", "video_to_text_recall@10", "text_to_video_median_rank"}
    zs = json.loads((out / "tiny__video-zeroshot__actions.json").read_text())
    assert zs["metrics"]["n_videos"] == 6 and 0 <= zs["metrics"]["acc1"] <= zs["metrics"]["acc5"] <= 1


# -- issue 27 (CLIP4Clip's defaults) and issue 32 (skipped videos named) -------------------------------------


def test_frames_are_taken_at_one_a_second_before_the_uniform_pick():
    # 300 frames at 30 fps: CLIP4Clip reads frames 0, 30, ..., 270 (ten seconds), then keeps all ten of its 12
    assert V.fps_frame_indices(300, 30.0) == list(range(0, 300, 30))
    assert V.fps_frame_indices(301, 29.97) == list(range(0, 301, 29))  # fps truncated to 29, as int() does
    assert V.fps_frame_indices(10, 5.0, rate=2) == [0, 2, 5, 7]  # offsets 0 and 5 // 2 within each second
    assert V.fps_frame_indices(7, 30.0, rate=0) == list(range(7))


def test_a_video_file_is_thinned_to_one_frame_a_second(tmp_path):
    av = pytest.importorskip("av")
    path = tmp_path / "ramp.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        for k in range(35):  # frame k is a flat grey of 6 k + 20
            image = np.full((32, 32, 3), 6 * k + 20, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    frames = V.read_video_frames(path, 12, "uniform", extract_fps=1)  # 10 fps: frames 0, 10, 20, 30
    assert [float(np.asarray(f, dtype=float).mean()) for f in frames] == pytest.approx([20, 80, 140, 200], abs=6)
    assert len(V.read_video_frames(path, 12, "uniform")) == 12  # every frame a candidate: 12 of 35


def test_captions_are_cut_at_32_tokens(tiny_clip):
    import inspect

    # CLIP4Clip's max_words: 32 tokens with the start and end ones; the tiny CLIP's own context is 32, so the cut is
    # shown at 8: start + 6 words + end, and what follows the sixth word no longer counts
    a, b = "red red red red red red circle", "red red red red red red square"
    before = tiny_clip.meta.context_length
    with V.context_length(tiny_clip, 8):
        cut = tiny_clip.encode_text([a, b]).detach()
    whole = tiny_clip.encode_text([a, b]).detach()
    assert torch.allclose(cut[0], cut[1], atol=1e-6) and not torch.allclose(whole[0], whole[1], atol=1e-4)
    assert tiny_clip.meta.context_length == before  # restored
    assert inspect.signature(V.evaluate_retrieval).parameters["caption_tokens"].default == 32


def test_video_to_text_ranks_each_videos_best_caption_among_the_videos():
    # five captions, three videos; captions 0-2 describe video 0, caption 3 video 1, caption 4 video 2
    scores = torch.tensor([[0.2, 0.9, 0.0], [0.1, 0.8, 0.0], [0.3, 0.7, 0.0], [0.0, 0.6, 0.0], [0.0, 0.1, 0.5]])
    caption_video = torch.tensor([0, 0, 0, 1, 2])
    c4c = V.video_retrieval_metrics(scores, caption_video, ks=(1, 2))
    # video 1: best captions per video are 0.9 (video 0's), 0.6 (its own), 0.1: rank 2 among the 3 videos;
    # among all five captions, its own (0.6) comes after three of video 0: rank 4
    # videos 0 and 2 find their own caption first either way: ranks (1, 2, 1) against (1, 4, 1)
    assert c4c["video_to_text_recall@1"] == pytest.approx(2 / 3) and c4c["video_to_text_recall@2"] == 1.0
    assert (c4c["video_to_text_median_rank"], c4c["video_to_text_mean_rank"]) == (1.0, pytest.approx(4 / 3))
    ours = V.video_retrieval_metrics(scores, caption_video, ks=(1, 2), video_to_text="captions")
    assert ours["video_to_caption_recall@2"] == pytest.approx(2 / 3)
    assert (ours["video_to_caption_median_rank"], ours["video_to_caption_mean_rank"]) == (1.0, 2.0)
    assert "video_to_text_recall@1" not in ours and ours["text_to_video_recall@1"] == c4c["text_to_video_recall@1"]


def test_skipped_videos_are_named_on_the_console(tmp_path, tiny_clip, capsys):
    rng = np.random.default_rng(0)
    for k in range(2):
        _frames(tmp_path / "videos" / f"v{k}", [_noise(rng)] * 2)
    (tmp_path / "videos" / "empty").mkdir()
    _table(tmp_path / "captions.csv", [("v0", "a"), ("v1", "b"), ("empty", "c")])
    m = V.evaluate_retrieval(tiny_clip, tmp_path, progress=False, skip_bad=True)
    err = capsys.readouterr().err
    assert m["n_skipped_videos"] == 1 and "skipped 1 videos" in err and "empty is a frame folder" in err
