"""The one rule for outputs (check_output) and the whole-output replacement (replace_output)."""

import pytest

from un2clip.errors import first_few
from un2clip.files import check_output, replace_output


def test_check_output_refuses_existing_outputs_and_inputs(tmp_path):
    src = tmp_path / "data" / "model"
    src.mkdir(parents=True)
    (src / "w.bin").write_bytes(b"1")
    assert check_output(tmp_path / "new") == tmp_path / "new"
    (tmp_path / "empty").mkdir()
    check_output(tmp_path / "empty")  # an empty folder holds no output yet
    with pytest.raises(FileExistsError, match="already exists: pass --overwrite"):
        check_output(src / "w.bin")
    check_output(src / "w.bin", overwrite=True)
    for target in (src, tmp_path / "data"):  # the input itself, a folder holding it
        with pytest.raises(ValueError, match="would write over the input"):
            check_output(target, inputs=[str(src)], overwrite=True)
    check_output(src / "export", inputs=[str(src), None, "tiny"])  # inside an input, presets: fine


def test_replace_output_replaces_whole_and_keeps_the_old_on_failure(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with replace_output(out) as tmp:
            tmp.mkdir()
            (tmp / "new.txt").write_text("new")
            raise RuntimeError("the write failed")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (out / "old.txt").read_text() == "old"
    with replace_output(out) as tmp:
        tmp.mkdir()
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary left behind
    with replace_output(out) as tmp:  # a folder replaced by a file
        tmp.write_text("a file now")
    assert out.read_text() == "a file now"


@pytest.mark.parametrize("items, shown", [([], ""), (["a"], "a"), (["a", "b", "c"], "a, b, c"),
                                          (["a", "b", "c", "d"], "a, b, c and 1 more"),
                                          ([1, 2, 3, 4, 5, 6], "1, 2, 3 and 3 more")])
def test_first_few_names_three_and_counts_the_rest(items, shown):
    assert first_few(items) == shown
    assert first_few(["x", "y"], n=1) == "x and 1 more"
