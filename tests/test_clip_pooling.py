"""CLIPpy-style max pooling of the image embedding and the world's grid presets (issue 28's levers)."""

import pytest
import torch

from un2clip.models.clip import ClipMeta, ClipModel, ImageProcessing
from un2clip.models.presets import get_preset


@pytest.fixture(scope="module")
def maxpool_clip():
    return get_preset("tiny-maxpool").build_clip()


def _max_over_patches_by_hand(clip: ClipModel, x: torch.Tensor) -> torch.Tensor:
    """The CLIPpy embedding written out: every patch token -> final norm -> projection matrix, max over patches."""
    vm = clip.model.vision_model
    hidden = vm(pixel_values=x).last_hidden_state  # (B, 1 + N, W), class token first
    patches = torch.nn.functional.layer_norm(hidden[:, 1:], (hidden.shape[-1],), vm.post_layernorm.weight,
                                             vm.post_layernorm.bias, vm.post_layernorm.eps)
    projected = patches @ clip.model.visual_projection.weight.T  # (B, N, D); CLIP's projection has no bias
    return projected.max(dim=1).values


def _class_token_by_hand(clip: ClipModel, x: torch.Tensor) -> torch.Tensor:
    """CLIP's own embedding: the class token -> final norm -> projection matrix."""
    vm = clip.model.vision_model
    hidden = vm(pixel_values=x).last_hidden_state[:, 0]
    cls = torch.nn.functional.layer_norm(hidden, (hidden.shape[-1],), vm.post_layernorm.weight,
                                         vm.post_layernorm.bias, vm.post_layernorm.eps)
    return cls @ clip.model.visual_projection.weight.T


def test_max_pooled_embedding_is_the_max_over_patch_tokens(maxpool_clip):
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = maxpool_clip.encode_image(x)
        torch.testing.assert_close(ours, _max_over_patches_by_hand(maxpool_clip, x))
        # the same numbers as the max of the tokens the dense heads read
        torch.testing.assert_close(ours, maxpool_clip.image_tokens(x).amax(dim=1))
        # and not the class token's embedding of the same weights
        cls = _class_token_by_hand(maxpool_clip, x)
    assert (ours - cls).abs().max() > 1e-2


def test_class_pooling_is_unchanged():
    clip = get_preset("tiny").build_clip()
    assert clip.meta.pooling == "class"
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(clip.encode_image(x), _class_token_by_hand(clip, x))


def test_pooling_survives_save_and_load(tmp_path, maxpool_clip):
    maxpool_clip.save_pretrained(tmp_path / "m")
    back = ClipModel.from_pretrained(tmp_path / "m")
    assert back.meta.pooling == "max"
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(back.encode_image(x), _max_over_patches_by_hand(back, x))
        torch.testing.assert_close(back.encode_image(x), maxpool_clip.encode_image(x))


def test_frozen_anchor_and_sketch_tower_pool_as_the_model_does(maxpool_clip):
    from un2clip.objectives.un2clip import FrozenImageTower
    from un2clip.sketch.loss import tower_features

    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    pixels = maxpool_clip.processing.from_unit(x)
    with torch.no_grad():
        want = _max_over_patches_by_hand(maxpool_clip, pixels)
        torch.testing.assert_close(FrozenImageTower(maxpool_clip)(pixels), want)
        embeds, _ = tower_features(maxpool_clip, x, [0])
        torch.testing.assert_close(embeds, want)


@pytest.mark.parametrize(("name", "size", "patch", "tokens", "pooling"), [
    ("tiny-64", 64, 8, 64, "class"), ("tiny-64-p4", 64, 4, 256, "class"), ("tiny-p4-maxpool", 32, 4, 64, "max")])
def test_grid_presets_build_and_round_trip(tmp_path, name, size, patch, tokens, pooling):
    clip = get_preset(name).build_clip()
    assert (clip.image_size, clip.patch_size, clip.processing.size, clip.meta.pooling) == (size, patch, size, pooling)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert clip.image_tokens(x).shape == (2, tokens, 128)
        emb = clip.encode_image(x)
    clip.save_pretrained(tmp_path / name)
    back = ClipModel.from_pretrained(tmp_path / name)
    assert (back.image_size, back.patch_size, back.processing.size) == (size, patch, size)
    with torch.no_grad():
        torch.testing.assert_close(back.encode_image(x), emb)


def test_bad_pooling_is_refused():
    with pytest.raises(ValueError, match="pooling must be one of class, max"):
        ClipMeta(pooling="mean")
    with pytest.raises(ValueError, match="needs a CLIP vision tower"):
        ClipMeta(family="siglip", processing=ImageProcessing(32), pooling="max")


def test_open_clip_export_refuses_max_pooling(tmp_path, maxpool_clip):
    from un2clip.export import export_openclip

    with pytest.raises(ValueError, match="pools 'max'"):
        export_openclip(maxpool_clip, tmp_path / "oc")
