"""Training data: sources (folder, CSV/TSV, webdataset tars), bad-image skipping, resumable order."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from un2clip.data import open_source
from un2clip.data import transforms as T
from un2clip.data.loader import (
    ResumableSampler,
    TransformedDataset,
    collate_skip_bad,
    epoch_permutation,
    make_loader,
    sample_rng,
)
from un2clip.data.shards import WebDatasetSource, expand_braces
from un2clip.data.sources import ImageFolderSource, Record, TableSource, column_index, is_image_name

# ----------------------------------------------------------------------------- fixtures


def _image(seed: int, size=(12, 8), mode="RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(array, "RGB").convert(mode)


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def _truncated_png(seed: int) -> bytes:
    data = _encoded(_image(seed, (32, 32)), "PNG")
    return data[: len(data) // 2]


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "images"
    (root / "a" / "b").mkdir(parents=True)
    (root / ".cache").mkdir()
    _image(1).save(root / "one.png")
    _image(2, (8, 12)).save(root / "a" / "two.jpg")
    (root / "a" / "two.txt").write_text("a caption for two\n")
    _image(3, mode="L").save(root / "a" / "b" / "three.JPG")
    _image(4, mode="RGBA").save(root / "a" / "b" / "four.webp")
    (root / "corrupt.jpg").write_bytes(np.random.default_rng(0).bytes(300))
    (root / "truncated.png").write_bytes(_truncated_png(5))
    (root / "zero.jpg").write_bytes(b"")
    (root / "notes.md").write_text("not an image")
    _image(6).save(root / ".hidden.png")
    _image(7).save(root / ".cache" / "skip.png")
    return root


FOLDER_KEYS = ["a/b/four.webp", "a/b/three.JPG", "a/two.jpg", "corrupt.jpg", "one.png", "truncated.png", "zero.jpg"]
FOLDER_BAD = {"corrupt.jpg", "truncated.png", "zero.jpg"}


def _write_shard(path, samples):
    """samples: list of (key, {ext: bytes})."""
    with tarfile.open(path, "w") as tf:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                info.mtime = 1.7e9 + 0.5  # a float mtime makes tarfile write a pax header per member
                tf.addfile(info, io.BytesIO(data))


@pytest.fixture
def shards(tmp_path):
    root = tmp_path / "shards"
    root.mkdir()
    jpg = lambda s: _encoded(_image(s), "JPEG")  # noqa: E731
    _write_shard(root / "00000.tar", [
        (f"{k:09d}", {"jpg": jpg(k), "txt": f"caption {k}".encode(), "json": b"{}"}) for k in range(4)
    ])
    _write_shard(root / "00001.tar", [
        ("000000004", {"jpg": jpg(4), "txt": b"caption 4", "mask.png": _encoded(_image(9), "PNG")}),
        ("000000005", {"jpg": np.random.default_rng(1).bytes(200), "txt": b"corrupt"}),
        ("000000006", {"txt": b"no image here"}),
        ("000000007", {"png": _encoded(_image(7), "PNG")}),
        ("v1.0/000000008", {"webp": _encoded(_image(8), "WEBP"), "txt": b"in a folder"}),
    ])
    (root / "00001_stats.json").write_text("{}")
    return root


SHARD_KEYS = ["000000000", "000000001", "000000002", "000000003", "000000004", "000000005", "000000007",
              "v1.0/000000008"]


def _transform(record: Record, rng) -> dict[str, torch.Tensor]:
    image = record.image.crop(T.random_square_box(record.image.width, record.image.height, rng))
    return {"pixels": T.decoder_view(image, 4), "draw": torch.tensor(rng.random(), dtype=torch.float64)}


def _keys(source):
    return [source.key(i) for i in range(len(source))]


# ----------------------------------------------------------------------------- sources


def test_folder_counts_captions_and_bad_images(folder):
    source = open_source(str(folder))
    assert isinstance(source, ImageFolderSource) and source.kind == "folder"
    assert _keys(source) == FOLDER_KEYS
    bad, captions = set(), {}
    for i in range(len(source)):
        record = source.load(i)
        if record is None:
            bad.add(source.key(i))
            continue
        assert record.image.mode == "RGB" and record.key == source.key(i)
        captions[record.key] = record.text
    assert bad == FOLDER_BAD
    assert captions == {"a/b/four.webp": None, "a/b/three.JPG": None, "a/two.jpg": "a caption for two",
                        "one.png": None}
    assert source.load(FOLDER_KEYS.index("a/two.jpg")).image.size == (8, 12)
    with pytest.raises(IndexError):
        source.load(len(source))


def test_decompression_bomb_is_a_bad_image(folder, monkeypatch):
    source = open_source(folder)
    i = FOLDER_KEYS.index("one.png")
    assert source.load(i) is not None
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # 12x8 > 2x10 pixels -> DecompressionBombError
    assert source.load(i) is None


def test_csv_and_tsv_tables(tmp_path, folder):
    csv_dir = tmp_path / "meta"
    csv_dir.mkdir()
    (csv_dir / "train.csv").write_text(
        "id,image,caption\n"
        "1,../images/one.png,\"a caption, with a comma\"\n"
        f"2,{folder / 'a' / 'two.jpg'},second\n"
        "3,../images/missing.png,gone\n"
        "4,,empty path\n"
        "5,../images/corrupt.jpg,bad\n")
    source = open_source(csv_dir / "train.csv")
    assert isinstance(source, TableSource) and len(source) == 4 and source.n_skipped == 1
    assert source.image_column == "image" and source.caption_column == "caption"
    assert source.load(0).text == "a caption, with a comma"
    assert source.load(1).text == "second" and source.load(1).image.size == (8, 12)
    assert source.load(2) is None and source.load(3) is None  # missing file, corrupt file

    (tmp_path / "train.tsv").write_text("Title\tFilePath\nthree\timages/a/b/three.JPG\nfour\timages/a/b/four.webp\n")
    tsv = open_source(tmp_path / "train.tsv")
    assert [tsv.load(i).text for i in range(2)] == ["three", "four"]  # columns matched in any case

    only = open_source(tmp_path / "train.tsv", image_column="FilePath", caption_column="Title")
    assert only.load(0).text == "three"
    nocap = tmp_path / "nocap.csv"
    nocap.write_text("path\nimages/one.png\n")
    assert open_source(nocap).load(0).text is None


def test_image_names_the_readers_take():
    assert [n for n in ["a.JPG", "b.jpeg", "c.png", "d.webp", "e.bmp", "f.gif", "g.tif", "h.txt", ".i.jpg", "jpg",
                        "j.jpg.txt"] if is_image_name(n)] == ["a.JPG", "b.jpeg", "c.png", "d.webp", "e.bmp", "f.gif"]


def test_column_index_finds_the_named_or_first_default_column():
    header = [" Video_ID ", "Sentence", "caption"]
    assert column_index(header, None, ("video_id", "id"), what="video-id", path="t.csv", layout="L") == 0
    assert column_index(header, None, ("text", "caption", "sentence"), what="caption", path="t.csv", layout="L") == 2
    assert column_index(header, "sentence", ("caption",), what="caption", path="t.csv", layout="L") == 1
    with pytest.raises(ValueError, match=r"^t.csv has no caption column \(looked for words; columns:  Video_ID , "
                                         r"Sentence, caption\); L$"):
        column_index(header, "words", ("caption",), what="caption", path="t.csv", layout="L")


def test_table_errors_name_file_columns_and_accepted(tmp_path):
    bad = tmp_path / "urls.csv"
    bad.write_text("url,caption\nhttp://example.invalid/x.jpg,hi\n")
    with pytest.raises(ValueError) as err:
        open_source(bad)
    msg = str(err.value)
    assert str(bad) in msg and "'url'" in msg and "'caption'" in msg and "filepath" in msg and "image_path" in msg
    with pytest.raises(ValueError, match="columns found"):
        open_source(bad, caption_column="caption", image_column="picture")
    with pytest.raises(ValueError, match="no caption column 'words'"):
        open_source(bad, image_column="url", caption_column="words")
    with pytest.raises(ValueError, match="URLs"):
        open_source(bad, image_column="url")
    header_only = tmp_path / "empty.csv"
    header_only.write_text("image,caption\n")
    with pytest.raises(ValueError, match="no rows"):
        open_source(header_only)


def test_missing_path_empty_folder_and_unknown_type(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as err:
        open_source(str(missing))
    assert str(missing) in str(err.value) and "accepted layouts" in str(err.value)
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match="no images found"):
        open_source(tmp_path / "empty")
    (tmp_path / "data.parquet").write_bytes(b"PAR1")
    with pytest.raises(ValueError, match="unknown file type"):
        open_source(tmp_path / "data.parquet")
    (tmp_path / "shards.tar.gz").write_bytes(b"\x1f\x8b")
    with pytest.raises(ValueError, match="compressed tar"):
        open_source(tmp_path / "shards.tar.gz")


def test_expand_braces():
    assert expand_braces("s/{00000..00002}.tar") == ["s/00000.tar", "s/00001.tar", "s/00002.tar"]
    assert expand_braces("{8..10}") == ["8", "9", "10"]
    assert expand_braces("{a,b}-{0..1}") == ["a-0", "a-1", "b-0", "b-1"]
    assert expand_braces("x{a,{b,c}}y") == ["xay", "xby", "xcy"]
    assert expand_braces("plain.tar") == ["plain.tar"]


def test_webdataset_pattern_folder_and_single(shards):
    via_pattern = open_source(str(shards / "{00000..00001}.tar"))
    via_folder = open_source(shards)
    via_list = open_source(f"{shards / '00000.tar'}::{shards / '00001.tar'}")
    for source in (via_pattern, via_folder, via_list):
        assert isinstance(source, WebDatasetSource) and source.kind == "webdataset"
        assert _keys(source) == SHARD_KEYS
        assert source.n_skipped == 1  # the key with a caption but no image
    records = [via_pattern.load(i) for i in range(len(via_pattern))]
    assert [r is None for r in records] == [False] * 5 + [True, False, False]
    assert [r.text for r in records[:5]] == [f"caption {k}" for k in range(5)]
    assert records[4].image.size == (12, 8)  # the jpg, not the "mask.png" member of the same key
    assert records[6].text is None and records[6].image.mode == "RGB"
    assert records[7].text == "in a folder" and records[7].key == "v1.0/000000008"
    assert np.array_equal(np.asarray(records[2].image), np.asarray(Image.open(io.BytesIO(
        _encoded(_image(2), "JPEG"))).convert("RGB")))
    single = open_source(shards / "00001.tar")
    assert _keys(single) == ["000000004", "000000005", "000000007", "v1.0/000000008"]
    # member extensions can be chosen: png only
    png_only = open_source(shards, image_column="png")
    assert _keys(png_only) == ["000000007"]


def test_webdataset_missing_shard_and_damaged_shard(shards, tmp_path):
    with pytest.raises(FileNotFoundError, match="00002.tar"):
        open_source(str(shards / "{00000..00002}.tar"))
    data = (shards / "00000.tar").read_bytes()
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / "00000.tar").write_bytes(data[: len(data) // 2])  # truncated mid-shard: keep what is whole
    (cut / "00001.tar").write_bytes(b"")  # zero-byte shard: skipped
    source = open_source(cut)
    assert 0 < len(source) < 4
    assert all(source.load(i) is not None for i in range(len(source) - 1))
    (cut / "00000.tar").write_bytes(b"")
    with pytest.raises(ValueError, match="no samples"):
        open_source(cut)


def test_shard_index_cache(shards, tmp_path, monkeypatch):
    from un2clip.data import shards as shard_io

    monkeypatch.setattr(shard_io, "INDEX_CACHE_MIN_MEMBERS", 0)
    monkeypatch.setenv("UN2CLIP_CACHE_DIR", str(tmp_path / "cache"))
    first = open_source(shards)
    cached = sorted((tmp_path / "cache" / "tar-index").glob("*.npz"))
    assert len(cached) == 2

    def no_scan(*args, **kwargs):
        raise AssertionError("the cached index should have been used")

    monkeypatch.setattr(shard_io, "_scan_tar", no_scan)
    second = open_source(shards)
    assert _keys(second) == _keys(first) == SHARD_KEYS
    assert second.load(7).text == "in a folder"
    cached[0].write_bytes(b"garbage")  # a damaged cache entry is rebuilt (here: by tarfile)
    monkeypatch.setattr(shard_io, "_scan_tar", lambda path, size: shard_io._scan_tar_with_tarfile(path))
    assert _keys(open_source(shards)) == SHARD_KEYS
    monkeypatch.setenv("UN2CLIP_CACHE_DIR", "off")
    assert shard_io.index_cache_dir() is None


def test_tar_handles_reopen_after_fork_and_pickle(shards):
    import pickle

    source = open_source(shards)
    first = np.asarray(source.load(0).image)  # opens a handle in this process before the workers fork
    clone = pickle.loads(pickle.dumps(source))
    assert np.array_equal(np.asarray(clone.load(0).image), first)
    serial = list(make_loader(source, _transform, batch_size=2, seed=3, num_samples=16))
    parallel = list(make_loader(source, _transform, batch_size=2, seed=3, num_samples=16, num_workers=2))
    assert len(serial) == len(parallel) == 8
    for a, b in zip(serial, parallel):
        _assert_batches_equal(a, b)
    source.close()


def _child_reads(source, queue):
    parent_files = list(source._handles.values())
    record = source.load(1)
    queue.put((record.key, all(f not in parent_files for f in source._handles.values()), len(source._handles)))


def test_tar_handles_are_per_process(shards):
    import multiprocessing

    source = open_source(shards)
    source.load(0)
    assert len(source._handles) == 1
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_reads, args=(source, queue))
    child.start()
    key, fresh, n_open = queue.get(timeout=30)
    child.join(30)
    assert key == SHARD_KEYS[1] and fresh and n_open == 1


# ----------------------------------------------------------------------------- loader


def _assert_batches_equal(a, b):
    assert (a is None) == (b is None)
    if a is None:
        return
    assert a.keys() == b.keys() and a["n_bad"] == b["n_bad"]
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k


def test_sample_rng_and_permutation_are_deterministic():
    assert sample_rng(1, 2, 3).random() == sample_rng(1, 2, 3).random()
    assert sample_rng(1, 2, 3).random() != sample_rng(1, 3, 3).random()
    p0, p1 = epoch_permutation(50, 0, 0), epoch_permutation(50, 0, 1)
    assert sorted(p0.tolist()) == list(range(50)) and not np.array_equal(p0, p1)
    assert np.array_equal(p0, epoch_permutation(50, 0, 0))
    assert not np.array_equal(p0, epoch_permutation(50, 1, 0))


def test_sampler_epochs_state_and_resume():
    n = 7
    s = ResumableSampler(n, seed=5, num_samples=3 * n)
    stream = list(s)
    assert len(stream) == len(s) == 21
    for e in range(3):
        epoch = stream[e * n:(e + 1) * n]
        assert {ep for ep, _ in epoch} == {e} and sorted(i for _, i in epoch) == list(range(n))
    assert s.state_dict() == {"epoch": 3, "position": 0, "seed": 5, "n": n}

    endless = ResumableSampler(n, seed=5)
    it = iter(endless)
    head = [next(it) for _ in range(10)]
    assert head == stream[:10]
    assert endless.state_dict() == {"epoch": 1, "position": 3, "seed": 5, "n": n}
    with pytest.raises(TypeError):
        len(endless)

    resumed = ResumableSampler(n, seed=5, num_samples=11)
    resumed.load_state_dict(endless.state_dict())
    assert list(resumed) == stream[10:21]
    assert list(ResumableSampler(n, seed=5, start_sample=10, num_samples=11)) == stream[10:21]
    with pytest.raises(ValueError, match="changed"):
        ResumableSampler(n + 1, seed=5).load_state_dict(endless.state_dict())
    with pytest.raises(ValueError, match="seed"):
        ResumableSampler(n, seed=6).load_state_dict(endless.state_dict())
    with pytest.raises(ValueError, match="rank"):
        ResumableSampler(n, num_replicas=2, rank=2)


@pytest.mark.parametrize("n", [7, 8])
def test_replicas_cover_the_same_global_batches(n):
    global_batch, world, steps = 4, 2, 9  # 36 samples: several epochs, n divides or not
    one = ResumableSampler(n, seed=1, num_samples=steps * global_batch)
    ranks = [ResumableSampler(n, seed=1, num_samples=steps * global_batch, num_replicas=world, rank=r)
             for r in range(world)]
    single = list(one)
    per_rank = [list(r) for r in ranks]
    micro = global_batch // world
    for step in range(steps):
        expected = sorted(single[step * global_batch:(step + 1) * global_batch])
        got = sorted(x for r in per_rank for x in r[step * micro:(step + 1) * micro])
        assert got == expected, step
    # (epoch, index) pairs are unique in the stream: the ranks' slices are disjoint and cover it
    assert set(per_rank[0]).isdisjoint(per_rank[1])
    assert set(per_rank[0]) | set(per_rank[1]) == set(single)


def test_collate_skip_bad_counts_and_all_bad():
    item = {"x": torch.ones(2), "index": 3}
    out = collate_skip_bad([item, None, item])
    assert out["n_bad"] == 1 and out["x"].shape == (2, 2) and out["index"].tolist() == [3, 3]
    assert collate_skip_bad([None, None]) is None
    assert collate_skip_bad([item])["n_bad"] == 0


def test_transformed_dataset_returns_none_for_bad_and_index(folder):
    source = open_source(folder)
    ds = TransformedDataset(source, _transform, seed=0)
    good, bad = FOLDER_KEYS.index("one.png"), FOLDER_KEYS.index("zero.jpg")
    assert ds[(0, bad)] is None
    item = ds[(2, good)]
    assert item["index"] == good and item["pixels"].shape == (3, 4, 4)
    assert torch.equal(item["draw"], ds[(2, good)]["draw"])
    assert not torch.equal(item["draw"], ds[(3, good)]["draw"])  # new epoch, new augmentation
    assert torch.equal(ds[good]["draw"], ds[(0, good)]["draw"])
    rejecting = TransformedDataset(source, lambda r, rng: None)
    assert rejecting[good] is None


def _run(source, *, steps, global_batch, start_step=0, world=1, num_workers=0, seed=11):
    """Global batches as lists of (index, draw, pixel-sum) sorted by index, plus the bad total."""
    loaders = [iter(make_loader(source, _transform, batch_size=global_batch // world, seed=seed,
                                start_sample=start_step * global_batch, num_workers=num_workers,
                                num_replicas=world, rank=r)) for r in range(world)]
    out, n_bad = [], 0
    for _ in range(start_step, steps):
        items = []
        for it in loaders:
            batch = next(it)
            if batch is None:
                n_bad += global_batch // world
                continue
            n_bad += batch["n_bad"]
            items += [(int(i), float(d), float(p.sum())) for i, d, p in
                      zip(batch["index"], batch["draw"], batch["pixels"])]
        out.append(sorted(items))
    return out, n_bad


def test_resumption_sees_the_same_batches_and_world_size_does_not_matter(folder):
    source = open_source(folder)
    full, bad_full = _run(source, steps=8, global_batch=4)
    resumed, _ = _run(source, steps=8, global_batch=4, start_step=5)
    assert resumed == full[5:]
    two_procs, bad_two = _run(source, steps=8, global_batch=4, world=2)
    assert two_procs == full and bad_two == bad_full
    resumed_two, _ = _run(source, steps=8, global_batch=4, world=2, start_step=3)
    assert resumed_two == full[3:]
    # bad images: every stream position whose index is bad is counted once
    sampler = ResumableSampler(len(source), seed=11, num_samples=32)
    bad_idx = {FOLDER_KEYS.index(k) for k in FOLDER_BAD}
    assert bad_full == sum(i in bad_idx for _, i in sampler) > 0
    assert all(i not in bad_idx for step in full for i, _, _ in step)
    # a different seed gives a different order
    other, _ = _run(source, steps=8, global_batch=4, seed=12)
    assert other != full


def test_make_loader_does_not_touch_global_torch_rng(folder):
    torch.manual_seed(0)
    before = torch.get_rng_state()
    it = iter(make_loader(open_source(folder), _transform, batch_size=2, seed=0))
    next(it)
    assert torch.equal(before, torch.get_rng_state())


def test_sources_survive_a_fork_with_workers_on_folders(folder):
    source = open_source(folder)
    serial, _ = _run(source, steps=4, global_batch=4)
    parallel, _ = _run(source, steps=4, global_batch=4, num_workers=2)
    assert serial == parallel


def test_sixteen_bit_greyscale_png_is_scaled_not_clipped(tmp_path):
    from un2clip.data.sources import decode_image

    ramp = np.linspace(0, 65535, 256).round().astype(np.uint16)  # a known gradient, black to white
    wide = np.tile(ramp, (4, 1))  # (4, 256)
    path = tmp_path / "grey16.png"
    Image.fromarray(wide).save(path)
    assert Image.open(path).mode.startswith("I")  # PIL reads it as 16-bit grey
    rgb = np.asarray(decode_image(path))  # (4, 256, 3)
    expected = np.round(wide / 257.0).astype(np.uint8)
    for channel in range(3):
        assert np.array_equal(rgb[..., channel], expected)
    assert rgb[0, 0, 0] == 0 and rgb[0, 128, 0] == 128 and rgb[0, -1, 0] == 255
    # the same gradient in 8 bits decodes to the same picture
    Image.fromarray(expected).save(tmp_path / "grey8.png")
    assert np.array_equal(np.asarray(decode_image(tmp_path / "grey8.png")), rgb)


def test_truncated_shard_warning_reports_where_the_file_really_ends(tmp_path, caplog):
    import logging
    import re

    shard = tmp_path / "full.tar"
    _write_shard(shard, [(f"{k:04d}", {"png": _encoded(_image(k, (32, 32)), "PNG")}) for k in range(3)])
    with tarfile.open(shard) as tf:
        last = tf.getmembers()[-1]
    data = shard.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: last.offset_data + last.size // 2])  # the file ends inside the last image
    size = cut.stat().st_size
    with caplog.at_level(logging.WARNING, logger="un2clip.data.shards"):
        source = WebDatasetSource([str(cut)])
    assert len(source) == 2 and all(source.load(i) is not None for i in range(2))
    (message,) = [r.getMessage() for r in caplog.records]
    assert f"truncated at byte {size}, the end of the file, inside the data of member '0002.png'" in message
    assert f"(bytes {last.offset_data} to {last.offset_data + last.size})" in message
    assert "using the 2 whole member(s)" in message
    offsets = [int(v) for v in re.findall(r"byte (\d+)", message)]
    assert offsets and max(offsets) <= size
    # the file ends after the last image's data, inside its padding: nothing is lost, and that is what it says
    cut.write_bytes(data[: last.offset_data + last.size])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="un2clip.data.shards"):
        assert len(WebDatasetSource([str(cut)])) == 3
    (message,) = [r.getMessage() for r in caplog.records]
    assert f"ends at byte {last.offset_data + last.size} after member '0002.png'" in message
