"""OpenAI-CLIP / open_clip checkpoints both ways: key map round trip, parity with a reference forward of the
published architecture, shape refusal, visual-only completion, loading the files anywhere, and the CLI."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from un2clip.cli import main as cli
from un2clip.load import clip_from_checkpoint, load_clip
from un2clip.models import openclip_format as oc
from un2clip.models.clip import ImageProcessing
from un2clip.models.presets import build_tiny_clip

# a tiny ViT CLIP in open_clip's config format: 4 heads of width 16 in both towers
TINY_CFG = {"embed_dim": 24, "quick_gelu": True,
            "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 16, "patch_size": 8},
            "text_cfg": {"context_length": 12, "vocab_size": 50, "width": 48, "heads": 3, "layers": 2}}


# -- a reference forward of the OpenAI CLIP architecture (Radford et al. 2021, the released model.py's
# -- structure), written on the open_clip-layout state dict with plain tensor ops --------------------------

def _layer_norm(x, sd, name):
    return F.layer_norm(x, x.shape[-1:], sd[f"{name}.weight"], sd[f"{name}.bias"], eps=1e-5)


def _act(x, quick):
    return x * torch.sigmoid(1.702 * x) if quick else F.gelu(x)


def _block(x, sd, p, heads, quick, causal):
    b, n, w = x.shape
    h = _layer_norm(x, sd, p + "ln_1")
    q, k, v = (h @ sd[p + "attn.in_proj_weight"].t() + sd[p + "attn.in_proj_bias"]).chunk(3, dim=-1)
    q, k, v = (t.reshape(b, n, heads, w // heads).transpose(1, 2) for t in (q, k, v))  # (B, H, N, d)
    scores = q @ k.transpose(-1, -2) / math.sqrt(w // heads)
    if causal:
        scores = scores + torch.full((n, n), float("-inf")).triu(1)
    att = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, w)
    x = x + att @ sd[p + "attn.out_proj.weight"].t() + sd[p + "attn.out_proj.bias"]
    h = _layer_norm(x, sd, p + "ln_2")
    h = _act(h @ sd[p + "mlp.c_fc.weight"].t() + sd[p + "mlp.c_fc.bias"], quick)
    return x + h @ sd[p + "mlp.c_proj.weight"].t() + sd[p + "mlp.c_proj.bias"]


def reference_image(sd, cfg, pixels):
    v = cfg["vision_cfg"]
    x = F.conv2d(pixels, sd["visual.conv1.weight"], stride=v["patch_size"])  # (B, W, g, g), no bias
    x = x.flatten(2).transpose(1, 2)  # (B, N, W)
    cls = sd["visual.class_embedding"].expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], 1) + sd["visual.positional_embedding"]
    x = _layer_norm(x, sd, "visual.ln_pre")
    for i in range(v["layers"]):
        x = _block(x, sd, f"visual.transformer.resblocks.{i}.", v["width"] // v["head_width"], cfg["quick_gelu"], False)
    return _layer_norm(x[:, 0], sd, "visual.ln_post") @ sd["visual.proj"]


def reference_text(sd, cfg, ids):
    t = cfg["text_cfg"]
    x = sd["token_embedding.weight"][ids] + sd["positional_embedding"]
    for i in range(t["layers"]):
        x = _block(x, sd, f"transformer.resblocks.{i}.", t["heads"], cfg["quick_gelu"], True)
    x = _layer_norm(x, sd, "ln_final")
    return x[torch.arange(len(ids)), ids.argmax(-1)] @ sd["text_projection"]  # pooled at the end-of-text token


def random_openclip_state(cfg, seed=0):
    config = oc.hf_config(cfg, hidden_act="quick_gelu")
    gen = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(shape, generator=gen) * 0.2 for k, shape in oc.expected_shapes(config).items()}
    for k in state:
        if ".ln_" in k or k.startswith(("ln_", "visual.ln_")):
            state[k] = (1.0 if k.endswith("weight") else 0.0) + 0.1 * torch.randn(state[k].shape, generator=gen)
    state["logit_scale"] = torch.tensor(math.log(100.0))
    return state


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return build_tiny_clip().save_pretrained(tmp_path_factory.mktemp("tiny") / "clip")


def test_round_trip_hf_openclip_hf_is_identical():
    clip = build_tiny_clip(seed=3)
    hf = clip.model.state_dict()
    back = oc.openclip_to_hf(oc.hf_to_openclip(hf))
    assert set(back) == set(hf)
    for key, value in hf.items():
        assert torch.equal(back[key], value), key
    # the layout's own names and shapes: fused qkv, transposed projections
    state = oc.hf_to_openclip(hf)
    assert state["visual.transformer.resblocks.0.attn.in_proj_weight"].shape == (3 * 128, 128)
    assert torch.equal(state["visual.proj"], hf["visual_projection.weight"].t())
    assert torch.equal(state["visual.transformer.resblocks.1.attn.in_proj_bias"][128:256],
                       hf["vision_model.encoder.layers.1.self_attn.k_proj.bias"])


def test_named_configs_have_the_published_shapes():
    b32 = oc.expected_shapes(oc.hf_config(oc.resolve_config("ViT-B-32"), hidden_act="quick_gelu"))
    assert b32["visual.positional_embedding"] == (50, 768) and b32["visual.conv1.weight"] == (768, 3, 32, 32)
    assert b32["visual.proj"] == (768, 512) and b32["text_projection"] == (512, 512)
    assert b32["token_embedding.weight"] == (49408, 512) and b32["positional_embedding"] == (77, 512)
    assert b32["visual.transformer.resblocks.11.attn.in_proj_weight"] == (2304, 768)
    assert "visual.transformer.resblocks.12.ln_1.weight" not in b32
    h14 = oc.hf_config(oc.resolve_config("ViT-H-14"), hidden_act="gelu")
    assert h14.vision_config.num_attention_heads == 16 and h14.text_config.num_hidden_layers == 12
    l336 = oc.expected_shapes(oc.hf_config(oc.resolve_config("ViT-L-14-336"), hidden_act="quick_gelu"), visual_only=True)
    assert l336["visual.positional_embedding"] == (577, 1024) and not any(not k.startswith("visual.") for k in l336)
    assert oc.resolve_config("ViT-L-14-quickgelu")["quick_gelu"] is True
    with pytest.raises(ValueError, match="unknown config 'ViT-Q-9'"):
        oc.resolve_config("ViT-Q-9")


@pytest.mark.parametrize("quick", [True, False])
def test_converted_model_matches_the_reference_forward(quick):
    cfg = {**TINY_CFG, "quick_gelu": quick}
    state = random_openclip_state(cfg, seed=1)
    eot = cfg["text_cfg"]["vocab_size"] - 1  # OpenAI's end-of-text token has the highest id
    clip = oc.build_clip(state, cfg, hidden_act="quick_gelu" if quick else "gelu", tokenizer=None,
                         processing=ImageProcessing(size=32), text_ids={"eos_token_id": eot, "bos_token_id": eot - 1,
                                                                        "pad_token_id": 0})
    gen = torch.Generator().manual_seed(2)
    pixels = torch.randn(3, 3, 32, 32, generator=gen)
    ids = torch.zeros(3, 12, dtype=torch.long)
    for row, length in enumerate((3, 7, 12)):
        ids[row, :length] = torch.randint(1, eot - 1, (length,), generator=gen)
        ids[row, length - 1] = eot
    with torch.no_grad():
        img, ref_img = clip.encode_image(pixels), reference_image(state, cfg, pixels)
        txt = clip.model.text_projection(clip.model.text_model(input_ids=ids).pooler_output)
        ref_txt = reference_text(state, cfg, ids)
    assert img.shape == (3, 24) and txt.shape == (3, 24)
    assert (img - ref_img).abs().max() <= 1e-5
    assert (txt - ref_txt).abs().max() <= 1e-5
    assert clip.logit_scale == pytest.approx(100.0, rel=1e-5)
    # the wrong activation is caught by the same comparison: the test can fail
    other = oc.build_clip(state, cfg, hidden_act="gelu" if quick else "quick_gelu", tokenizer=None,
                          processing=ImageProcessing(size=32), text_ids={"eos_token_id": eot})
    with torch.no_grad():
        assert (other.encode_image(pixels) - ref_img).abs().max() > 1e-3


def test_shapes_that_do_not_match_the_named_config_are_refused(tmp_path):
    state = random_openclip_state(TINY_CFG)
    path = oc.write_state_dict(state, tmp_path / "ckpt.safetensors")
    wrong = json.loads(json.dumps(TINY_CFG))
    wrong["vision_cfg"]["width"] = 96
    (tmp_path / "wrong.json").write_text(json.dumps(wrong))
    with pytest.raises(ValueError, match=r"does not match the config .*wrong.json.*mismatched key\(s\), first: "
                                         r"visual\.class_embedding: checkpoint \(64,\) vs config \(96,\)"):
        clip_from_checkpoint(path, config=str(tmp_path / "wrong.json"), base="tiny")
    with pytest.raises(ValueError, match=r"ViT-B-32: 301 mismatched key\(s\), first: ln_final.bias: checkpoint \(48,\) "
                                         r"vs config \(512,\);.*\(and 296 more\)"):
        clip_from_checkpoint(path, config="ViT-B-32", base="tiny")


def test_cli_round_trip_through_files_and_refusal(tmp_path, tiny_folder, capsys):
    ckpt = tmp_path / "tiny_openclip.pt"
    assert cli(["convert", str(tiny_folder), "--to", "openclip", "--output", str(ckpt)]) == 0
    raw = torch.load(ckpt, weights_only=True)
    assert "visual.transformer.resblocks.3.attn.in_proj_weight" in raw and "text_projection" in raw
    cfg_json = tmp_path / "tiny.json"
    cfg_json.write_text(json.dumps(oc.openclip_config(build_tiny_clip().model.config)))
    out = tmp_path / "back"
    assert cli(["convert", str(ckpt), "--to", "hf", "--output", str(out), "--config", str(cfg_json),
                "--base", str(tiny_folder)]) == 0
    original, back = load_clip(str(tiny_folder)), load_clip(str(out))
    a, b = original.model.state_dict(), back.model.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert back.model.config.vision_config.hidden_act == "quick_gelu"
    assert back.encode_text(["a red circle"]).allclose(original.encode_text(["a red circle"]))
    # a config of other shapes: exit 2 and the first mismatched keys on one line
    assert cli(["convert", str(ckpt), "--to", "hf", "--output", str(tmp_path / "x"), "--config", "ViT-B-16",
                "--base", str(tiny_folder)]) == 2
    err = capsys.readouterr().err
    assert "does not match the config ViT-B-16" in err and "token_embedding.weight: checkpoint (70, 128) vs config (49408, 512)" in err
    assert cli(["convert", str(tiny_folder), "--to", "openclip", "--output", str(tmp_path / "y.pt"),
                "--config", "ViT-L-14"]) == 2


def test_visual_only_checkpoint_is_completed_with_the_base_text_tower(tmp_path, tiny_folder):
    tuned = build_tiny_clip(seed=7)  # "fine-tuned": other weights, same architecture
    visual = tmp_path / "tuned_visual.safetensors"
    tuned_dir = tuned.save_pretrained(tmp_path / "tuned")
    assert cli(["export", str(tuned_dir), "--format", "openclip", "--visual-only", "--output", str(visual)]) == 0
    assert cli(["convert", str(visual), "--to", "hf", "--output", str(tmp_path / "done"),
                "--base", str(tiny_folder)]) == 0
    done, base = load_clip(str(tmp_path / "done")), load_clip(str(tiny_folder))
    d, t, b = done.model.state_dict(), tuned.model.state_dict(), base.model.state_dict()
    for key in d:
        source = t if key.startswith(("vision_model.", "visual_projection.")) else b
        assert torch.equal(d[key], source[key]), key
    assert not torch.equal(t["text_projection.weight"], b["text_projection.weight"])  # the two differ
    # the base must give embeddings of the same width
    narrow = oc.hf_to_openclip(tuned.model.state_dict(), visual_only=True)
    narrow["visual.proj"] = narrow["visual.proj"][:, :64]
    oc.write_state_dict(narrow, tmp_path / "narrow.safetensors")
    with pytest.raises(ValueError, match="64-d image embeddings, the base .*128-d"):
        clip_from_checkpoint(tmp_path / "narrow.safetensors", base=str(tiny_folder))


def test_bare_visual_keys_and_wrappers_are_read(tmp_path, tiny_folder):
    tuned = build_tiny_clip(seed=5)
    visual = oc.hf_to_openclip(tuned.model.state_dict(), visual_only=True)
    bare = {"state_dict": {"module." + k.removeprefix("visual."): v for k, v in visual.items()}}
    torch.save(bare, tmp_path / "bare.pt")
    clip = clip_from_checkpoint(tmp_path / "bare.pt", base=str(tiny_folder))
    assert torch.equal(clip.model.visual_projection.weight, tuned.model.visual_projection.weight)


def test_openclip_export_folder_loads_anywhere_by_itself(tmp_path, tiny_folder):
    folder = tmp_path / "oc"
    assert cli(["export", str(tiny_folder), "--format", "openclip", "--output", str(folder)]) == 0
    assert (folder / "open_clip_model.safetensors").is_file() and not (folder / "config.json").exists()
    side = json.loads((folder / "open_clip_config.json").read_text())
    assert side["model_cfg"]["quick_gelu"] is True and side["model_cfg"]["vision_cfg"]["head_width"] == 32
    original = load_clip(str(tiny_folder))
    for spec in (folder, folder / "open_clip_model.safetensors"):
        clip = load_clip(str(spec))  # the loader every command uses
        pixels = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            assert torch.allclose(clip.encode_image(pixels), original.encode_image(pixels), atol=1e-6)
            assert torch.allclose(clip.encode_text(["a blue square"]), original.encode_text(["a blue square"]),
                                  atol=1e-6)
        assert clip.processing == original.processing


class Payload:
    """An object a pickle would rebuild by running code: not a tensor."""


def test_pickles_with_code_are_refused(tmp_path):
    torch.save({"visual.conv1.weight": torch.zeros(1), "obj": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="weights_only=True"):
        oc.read_state_dict(tmp_path / "evil.pt")


def test_cli_help_lists_the_named_configs():
    from un2clip.cli.tools import CONFIG_NAMES

    assert CONFIG_NAMES == tuple(oc.OPENCLIP_CONFIGS)


# -- the activation (issue 27 item 16) and unreadable files (issue 32) ---------------------------------------

@pytest.fixture
def tiny_named(monkeypatch):
    """The tiny CLIP's shapes registered as a named architecture "ViT-T-8" (an OpenAI-style name, like ViT-B-32),
    so that names are exercised on a model the CPU builds in a moment."""
    cfg = oc.openclip_config(build_tiny_clip().model.config)
    cfg.pop("quick_gelu", None)
    monkeypatch.setitem(oc.OPENCLIP_CONFIGS, "ViT-T-8", cfg)
    monkeypatch.setattr(oc, "OPENAI_ARCHITECTURES", (*oc.OPENAI_ARCHITECTURES, "ViT-T-8"))
    return cfg


def test_a_config_name_without_quickgelu_means_gelu_whatever_the_base(tmp_path, tiny_folder, tiny_named):
    """A GELU checkpoint converted with --config ViT-T-8 and a QuickGELU base: the name decides (GELU), and the
    converted model computes what the reference forward computes with GELU."""
    state = oc.hf_to_openclip(build_tiny_clip(seed=4).model.state_dict())
    ckpt = oc.write_state_dict(state, tmp_path / "gelu.safetensors")
    for name, quick in (("ViT-T-8", False), ("ViT-T-8-quickgelu", True)):
        out = tmp_path / name
        assert cli(["convert", str(ckpt), "--to", "hf", "--output", str(out), "--config", name,
                    "--base", str(tiny_folder)]) == 0
        clip = load_clip(str(out))
        act = "quick_gelu" if quick else "gelu"
        assert (clip.model.config.vision_config.hidden_act, clip.model.config.text_config.hidden_act) == (act, act)
        pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            ref = reference_image(state, {**tiny_named, "quick_gelu": quick}, pixels)
            assert (clip.encode_image(pixels) - ref).abs().max() <= 1e-5


def test_a_visual_only_checkpoint_keeps_the_base_text_tower_activation(tmp_path, tiny_folder):
    visual = oc.hf_to_openclip(build_tiny_clip(seed=7).model.state_dict(), visual_only=True)
    ckpt = oc.write_state_dict(visual, tmp_path / "visual.safetensors")
    clip = clip_from_checkpoint(ckpt, base=str(tiny_folder), activation="gelu")
    base = load_clip(str(tiny_folder))
    assert clip.model.config.vision_config.hidden_act == "gelu"
    assert clip.model.config.text_config.hidden_act == base.model.config.text_config.hidden_act == "quick_gelu"
    with torch.no_grad():
        assert torch.equal(clip.encode_text(["a red circle", "two cats"]), base.encode_text(["a red circle", "two cats"]))


def test_without_a_config_the_chosen_activation_and_its_source_are_said(tmp_path, tiny_folder, caplog):
    ckpt = oc.write_state_dict(oc.hf_to_openclip(build_tiny_clip(seed=4).model.state_dict()), tmp_path / "c.pt")
    with caplog.at_level("WARNING"):
        assert cli(["convert", str(ckpt), "--to", "hf", "--output", str(tmp_path / "o"), "--base", str(tiny_folder)]) == 0
    assert "MLP activation quick_gelu, from the base model's image tower" in caplog.text
    assert oc.choose_activation(explicit=None, config=None, config_is_file=False, config_name="ViT-B-32",
                                base_act="quick_gelu", arch_name="ViT-B-32") == (
        "gelu", "the config name ViT-B-32 (without -quickgelu)")
    assert oc.choose_activation(explicit=None, config=None, config_is_file=False, config_name=None,
                                base_act=None, arch_name="ViT-B-32") == ("quick_gelu", "OpenAI's release of ViT-B-32")


def test_to_openclip_with_a_gelu_config_name_refuses_a_quickgelu_model(tmp_path, tiny_folder, tiny_named, capsys):
    assert cli(["convert", str(tiny_folder), "--to", "openclip", "--output", str(tmp_path / "y.pt"),
                "--config", "ViT-T-8"]) == 2
    err = capsys.readouterr().err
    assert "--config ViT-T-8 means gelu but" in err and "uses quick_gelu" in err
    assert "pass --config ViT-T-8-quickgelu" in err and not (tmp_path / "y.pt").exists()
    assert cli(["convert", str(tiny_folder), "--to", "openclip", "--output", str(tmp_path / "y.pt"),
                "--config", "ViT-T-8-quickgelu"]) == 0


@pytest.mark.parametrize(("name", "content", "message"), [
    ("empty.pt", b"", "is empty (0 bytes): not a checkpoint"),
    ("empty.safetensors", b"", "is empty (0 bytes): not a checkpoint"),
    ("junk.safetensors", b"\x01\x02\x03", "is not a readable safetensors file"),
])
def test_convert_names_an_empty_or_unreadable_file_on_one_line(tmp_path, capsys, name, content, message):
    (tmp_path / name).write_bytes(content)
    assert cli(["convert", str(tmp_path / name), "--to", "hf", "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(tmp_path / name) in err and message in err
