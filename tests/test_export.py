"""Weight-space interpolation (WiSE-FT): pure math on hand-built dicts, then the export command on a tiny run."""

import pytest
import torch

from un2clip.cli import main as cli
from un2clip.export import interpolate_state_dicts


def _pair():
    a = {"w": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "b": torch.tensor([0.5, -0.5]), "ids": torch.arange(3)}
    b = {"w": torch.tensor([[3.0, 2.0], [1.0, 0.0]]), "b": torch.tensor([1.5, 0.5]), "ids": torch.arange(3)}
    return a, b


def test_alpha_ends_give_either_side_exactly_and_half_the_midpoint():
    a, b = _pair()
    for key, v in interpolate_state_dicts(a, b, 0.0).items():
        assert torch.equal(v, a[key])
    for key, v in interpolate_state_dicts(a, b, 1.0).items():
        assert torch.equal(v, b[key])
    mid = interpolate_state_dicts(a, b, 0.5)
    assert torch.equal(mid["w"], torch.tensor([[2.0, 2.0], [2.0, 2.0]]))
    assert torch.equal(mid["b"], torch.tensor([1.0, 0.0]))
    assert torch.equal(mid["ids"], torch.arange(3))
    quarter = interpolate_state_dicts(a, b, 0.25)
    assert torch.allclose(quarter["b"], torch.tensor([0.75, -0.25]))
    # no aliasing: the result is not the input's storage
    assert interpolate_state_dicts(a, b, 0.0)["w"].data_ptr() != a["w"].data_ptr()


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_alpha_outside_unit_interval_is_an_error(alpha):
    a, b = _pair()
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        interpolate_state_dicts(a, b, alpha)


def test_mismatched_keys_shapes_or_ids_are_errors():
    a, b = _pair()
    with pytest.raises(ValueError, match="only in the original"):
        interpolate_state_dicts(a, {k: v for k, v in b.items() if k != "b"}, 0.5)
    with pytest.raises(ValueError, match="shape"):
        interpolate_state_dicts(a, {**b, "w": torch.zeros(3, 2)}, 0.5)
    with pytest.raises(ValueError, match="non-float"):
        interpolate_state_dicts(a, {**b, "ids": torch.arange(3) + 1}, 0.5)


def _perturbed_run(tmp_path):
    """A fake finished fine-tune run: marker pointing at the tiny preset, clip/ = tiny with a shifted image tower."""
    from un2clip.models.presets import build_tiny_clip
    from un2clip.runs import write_run_marker

    run = tmp_path / "run"
    run.mkdir()
    write_run_marker(run, {"kind": "un2clip", "clip": "tiny", "decoder": "tiny", "random_weights": False})
    tuned = build_tiny_clip()
    with torch.no_grad():
        for p in tuned.vision_parameters():
            p.add_(0.1)
    tuned.save_pretrained(run / "clip")
    return run, tuned


def test_export_alpha_interpolates_image_tower_and_keeps_text_tower(tmp_path):
    from un2clip.models.clip import ClipModel
    from un2clip.models.presets import build_tiny_clip

    run, tuned = _perturbed_run(tmp_path)
    original = build_tiny_clip()
    outs = {}
    for alpha in (0.0, 0.5, 1.0):
        out = tmp_path / f"a{alpha}"
        assert cli(["export", str(run), "--alpha", str(alpha), "--output", str(out)]) == 0
        outs[alpha] = ClipModel.from_pretrained(out).model.state_dict()
    o, t = original.model.state_dict(), tuned.model.state_dict()
    for key in original.vision_state_dict():
        assert torch.equal(outs[0.0][key], o[key]), key
        assert torch.equal(outs[1.0][key], t[key]), key
        if o[key].is_floating_point():
            torch.testing.assert_close(outs[0.5][key], (o[key] + t[key]) / 2)
    for key, v in o.items():
        if key.startswith("text_model.") or key.startswith("text_projection."):
            assert all(torch.equal(outs[a][key], v) for a in outs), key
    # --original overrides the marker: interpolating the run with itself gives the run back
    same = tmp_path / "same"
    assert cli(["export", str(run), "--alpha", "0.5", "--original", str(run / "clip"), "--output", str(same)]) == 0
    back = ClipModel.from_pretrained(same).model.state_dict()
    assert all(torch.equal(back[k], t[k]) for k in tuned.vision_state_dict())


def test_export_alpha_errors_are_one_line(tmp_path, capsys):
    run, _ = _perturbed_run(tmp_path)
    # checked when the arguments are parsed, before any run directory is looked at (issue 32)
    for model in (str(run), str(tmp_path / "not-a-run")):
        with pytest.raises(SystemExit) as exit_info:
            cli(["export", model, "--alpha", "1.5", "--output", str(tmp_path / "x")])
        assert exit_info.value.code == 2
        assert "argument --alpha: must be a fraction in [0, 1], not '1.5'" in capsys.readouterr().err
    from un2clip.export import export_model

    with pytest.raises(ValueError, match=r"--alpha must be in \[0, 1\]"):
        export_model(str(tmp_path / "not-a-run"), tmp_path / "x", alpha=1.5)
    # a plain model folder has no marker: the original must be named
    assert cli(["export", str(run / "clip"), "--alpha", "0.5", "--output", str(tmp_path / "y")]) == 2
    assert "--original" in capsys.readouterr().err


def test_alpha_from_a_run_whose_original_moved_asks_for_original(tmp_path):
    from un2clip.export import original_spec
    from un2clip.runs import write_run_marker

    run = tmp_path / "run"
    run.mkdir()
    write_run_marker(run, {"kind": "un2clip", "clip": str(tmp_path / "gone" / "clip"), "random_weights": False})
    with pytest.raises(ValueError, match="not there any more.*--original"):
        original_spec(run)
    write_run_marker(run, {"kind": "un2clip", "clip": "openai/clip-vit-large-patch14", "random_weights": False})
    assert original_spec(run) == ("openai/clip-vit-large-patch14", False)  # a Hub id is not checked on disk


def test_a_missing_local_model_path_is_one_clear_error_not_a_hub_lookup(tmp_path, monkeypatch):
    from un2clip.load import load_clip, load_decoder, load_t2i_decoder

    monkeypatch.chdir(tmp_path)  # the relative specs below must not exist (a `make demo` writes runs/demo here)
    for load in (load_clip, load_decoder, load_t2i_decoder):
        for spec in (str(tmp_path / "gone"), "runs/demo/decoder/decoder", "./gone"):
            with pytest.raises(ValueError, match="no such folder"):
                load(spec)
        with pytest.raises(ValueError, match="neither a preset"):
            load("no-such-preset")


# -- one rule for outputs that exist (issue 32) ------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from un2clip.models.presets import build_tiny_clip

    return build_tiny_clip().save_pretrained(tmp_path_factory.mktemp("tiny") / "clip")


@pytest.mark.parametrize("command", [
    ["export", "{model}"], ["export", "{model}", "--format", "openclip"], ["convert", "{model}", "--to", "openclip"],
])
def test_writers_refuse_an_existing_output_unless_overwrite(tmp_path, tiny_dir, capsys, command):
    from un2clip.load import load_clip

    args = [c.format(model=tiny_dir) for c in command]
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("earlier work")
    assert cli([*args, "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--output {out} already exists: pass --overwrite to replace it" in err
    assert (out / "keep.txt").read_text() == "earlier work"
    assert cli([*args, "--output", str(out), "--overwrite"]) == 0
    assert not (out / "keep.txt").exists()  # replaced whole: no mix of the old and the new output
    assert load_clip(str(out)).encode_text(["a red circle"]).allclose(
        load_clip(str(tiny_dir)).encode_text(["a red circle"]), atol=1e-6)
    # an existing file too; an empty folder is no output yet
    (tmp_path / "file.pt").write_bytes(b"x")
    assert cli([*args, "--output", str(tmp_path / "file.pt")]) == 2
    (tmp_path / "empty").mkdir()
    assert cli([*args, "--output", str(tmp_path / "empty")]) == 0


def test_writers_never_write_over_an_input(tmp_path, tiny_dir, capsys):
    import shutil

    model = shutil.copytree(tiny_dir, tmp_path / "model")
    before = sorted(p.name for p in model.iterdir())
    for args in (["export", str(model), "--output", str(model), "--overwrite"],
                 ["export", str(model), "--output", str(tmp_path), "--overwrite"],  # the folder holding it
                 ["convert", str(model), "--to", "openclip", "--output", str(model), "--overwrite"]):
        assert cli(args) == 2
        assert "would write over the input" in capsys.readouterr().err
    assert sorted(p.name for p in model.iterdir()) == before
