"""ClipModel: HF parity of preprocessing and embeddings, save/load, export, SigLIP backend."""

import numpy as np
import pytest
import torch
from PIL import Image

from un2clip.models.clip import ClipModel, ImageProcessing


def _photo(w=50, h=37, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_preprocess_matches_hf_clip_image_processor():
    from transformers import CLIPImageProcessor

    proc = ImageProcessing(size=32)
    hf = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    for seed, (w, h) in enumerate([(50, 37), (37, 50), (64, 64), (31, 90)]):
        im = _photo(w, h, seed)
        ours = proc(im)
        theirs = torch.from_numpy(hf(im, return_tensors="np")["pixel_values"][0])
        # both resize with PIL bicubic; HF rounds crop offsets the same way
        torch.testing.assert_close(ours, theirs, atol=2e-2, rtol=0)
        assert (ours - theirs).abs().mean() < 2e-3


def test_embeddings_equal_hf_clip_model(tiny_clip):
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours = tiny_clip.encode_image(x)
        out = tiny_clip.model(pixel_values=x, input_ids=tiny_clip.tokenize(["a red circle", "blue"])["input_ids"])
        torch.testing.assert_close(ours, out.image_embeds / 1.0 * ours.norm(dim=-1, keepdim=True) /
                                   out.image_embeds.norm(dim=-1, keepdim=True))
        torch.testing.assert_close(torch.nn.functional.normalize(ours, dim=-1), out.image_embeds)
        txt = tiny_clip.encode_text(["a red circle", "blue"])
        torch.testing.assert_close(torch.nn.functional.normalize(txt, dim=-1), out.text_embeds)


def test_image_tokens_shape_and_projection(tiny_clip):
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        tokens = tiny_clip.image_tokens(x)
        hidden = tiny_clip.vision_model(pixel_values=x).last_hidden_state
        expected = tiny_clip.model.visual_projection(tiny_clip.vision_model.post_layernorm(hidden[:, 1:]))
    assert tokens.shape == (1, 16, 128)
    torch.testing.assert_close(tokens, expected)


def test_tiny_is_identical_in_every_build():
    from un2clip.models.presets import build_tiny_clip

    a, b = build_tiny_clip(), build_tiny_clip()
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_save_load_round_trip(tmp_path, tiny_clip):
    tiny_clip.save_pretrained(tmp_path / "m")
    again = ClipModel.from_pretrained(tmp_path / "m")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(again.encode_image(x), tiny_clip.encode_image(x))
        torch.testing.assert_close(again.encode_text(["a red circle"]), tiny_clip.encode_text(["a red circle"]))
    assert again.processing == tiny_clip.processing


def test_export_hf_loads_in_transformers(tmp_path, tiny_clip):
    from transformers import CLIPModel, CLIPVisionModelWithProjection

    from un2clip.export import export_hf

    export_hf(tiny_clip, tmp_path / "hf")
    vision = CLIPVisionModelWithProjection.from_pretrained(tmp_path / "hf").eval()
    full = CLIPModel.from_pretrained(tmp_path / "hf").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = tiny_clip.encode_image(x)
        torch.testing.assert_close(vision(pixel_values=x).image_embeds, ref, atol=1e-5, rtol=0)
        torch.testing.assert_close(full.get_image_features(pixel_values=x).pooler_output
                                   if hasattr(full.get_image_features(pixel_values=x), "pooler_output")
                                   else full.get_image_features(pixel_values=x), ref, atol=1e-5, rtol=0)


def test_siglip_backend(tmp_path):
    from transformers import SiglipConfig, SiglipModel

    from un2clip.models.clip import ClipMeta
    from un2clip.models.tokenizer import build_word_tokenizer

    tok = build_word_tokenizer(["a", "red", "circle"], context_length=16)
    cfg = SiglipConfig(
        text_config={"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 4, "max_position_embeddings": 16, "pad_token_id": tok.pad_token_id},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                       "num_attention_heads": 4, "image_size": 32, "patch_size": 8})
    torch.manual_seed(0)
    model = ClipModel(SiglipModel(cfg).eval(), tok,
                      ClipMeta(family="siglip", processing=ImageProcessing(32, (0.5,) * 3, (0.5,) * 3, "squash"),
                               context_length=16))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert model.encode_image(x).shape == (2, 32)
        assert model.image_tokens(x).shape == (2, 16, 32)
        assert model.encode_text(["a red circle"]).shape == (1, 32)
    model.save_pretrained(tmp_path / "s")
    again = ClipModel.from_pretrained(tmp_path / "s")
    with torch.no_grad():
        torch.testing.assert_close(again.encode_image(x), model.encode_image(x))
    assert model.preprocess(_photo(50, 20)).shape == (1, 3, 32, 32)


def test_not_a_model_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        ClipModel.from_pretrained(tmp_path)
