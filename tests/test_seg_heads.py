"""Last-block heads: each method's patch features against its formula, computed here from the weights."""

import itertools
import math

import pytest
import torch
from torch.nn import functional as F

from un2clip.eval.seg.heads import METHODS, dense_features, gaussian_bias, get_head


def _linear(x, lin):
    return x @ lin.weight.T + lin.bias


def _layer_norm(x, ln):
    return F.layer_norm(x, (x.shape[-1],), ln.weight, ln.bias, ln.eps)


def _omega(gh, gw, std):
    """Ω[(i, j), (k, l)] = exp(-((i-k)² + (j-l)²) / 2σ²), written out position by position."""
    cells = list(itertools.product(range(gh), range(gw)))
    out = torch.zeros(len(cells), len(cells))
    for a, (i, j) in enumerate(cells):
        for b, (k, m) in enumerate(cells):
            out[a, b] = math.exp(-((i - k) ** 2 + (j - m) ** 2) / (2 * std * std))
    return out


def reference_features(model, pixels, method, std=5.0):
    """The issue's formulas, from HF's own forward up to the last block and the raw weights after it."""
    vm = model.vision_model
    with torch.no_grad():
        x = vm(pixel_values=pixels, interpolate_pos_encoding=True, output_hidden_states=True).hidden_states[-2]
        layer = vm.encoder.layers[-1]
        attn = layer.self_attn
        b, t, w = x.shape
        nh = attn.num_heads
        d = w // nh
        y = _layer_norm(x, layer.layer_norm1)
        q, k, v = (_linear(y, lin).reshape(b, t, nh, d) for lin in (attn.q_proj, attn.k_proj, attn.v_proj))

        def soft(a, c):
            return torch.softmax(torch.einsum("bthd,bshd->bhts", a, c) / math.sqrt(d), dim=-1)

        cls = model.family == "clip"
        gh, gw = pixels.shape[-2] // model.patch_size, pixels.shape[-1] // model.patch_size
        if method == "vanilla":
            weights = soft(q, k)
        elif method == "maskclip":
            weights = torch.eye(t).expand(b, nh, t, t)
        elif method == "sclip":
            weights = soft(q, q) + soft(k, k)
        elif method == "clearclip":
            weights = soft(q, q)
        else:  # naclip
            omega = _omega(gh, gw, std)
            if cls:
                omega = F.pad(omega, (1, 0, 1, 0))
            weights = torch.softmax(torch.einsum("bthd,bshd->bhts", k, k) / math.sqrt(d) + omega, dim=-1)
        mixed = torch.einsum("bhts,bshd->bthd", weights, v).reshape(b, t, w)
        out = _linear(mixed, attn.out_proj)
        if method in ("vanilla", "maskclip", "sclip"):
            out = x + out
            h = _linear(_layer_norm(out, layer.layer_norm2), layer.mlp.fc1)
            h = h * torch.sigmoid(1.702 * h) if model.family == "clip" else F.gelu(h, approximate="tanh")
            out = out + _linear(h, layer.mlp.fc2)
        if cls:
            out = out[:, 1:]
        out = _layer_norm(out, vm.post_layernorm)
        if cls:
            out = out @ model.model.visual_projection.weight.T
        return F.normalize(out, dim=-1).reshape(b, gh, gw, -1)


@pytest.mark.parametrize("method", METHODS)
def test_head_matches_its_formula(tiny_clip, method):
    torch.manual_seed(1)
    x = torch.randn(2, 3, 40, 24)  # 5 x 3 patches: a non-square grid, position embeddings interpolated
    with torch.no_grad():
        got = dense_features(tiny_clip, x, method)
    assert got.shape == (2, 5, 3, tiny_clip.embed_dim)
    torch.testing.assert_close(got, reference_features(tiny_clip, x, method), atol=2e-5, rtol=0)


def test_naclip_neighbourhood_is_used(tiny_clip):
    torch.manual_seed(2)
    x = torch.randn(1, 3, 48, 32)
    with torch.no_grad():
        narrow = dense_features(tiny_clip, x, "naclip", gaussian_std=0.7)
        wide = dense_features(tiny_clip, x, "naclip", gaussian_std=50.0)
    torch.testing.assert_close(narrow, reference_features(tiny_clip, x, "naclip", std=0.7), atol=2e-5, rtol=0)
    assert (narrow - wide).abs().max() > 1e-3


def test_vanilla_is_the_model_as_it_is(tiny_clip):
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours = dense_features(tiny_clip, x, "vanilla").flatten(1, 2)
        theirs = F.normalize(tiny_clip.image_tokens(x), dim=-1)
    torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=0)


def test_heads_differ(tiny_clip):
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        feats = {m: dense_features(tiny_clip, x, m) for m in METHODS}
    for a, b in itertools.combinations(METHODS, 2):
        assert (feats[a] - feats[b]).abs().max() > 1e-3, (a, b)


def test_gaussian_bias():
    omega = gaussian_bias(3, 4, std=2.0)
    assert omega.shape == (12, 12)
    torch.testing.assert_close(omega, _omega(3, 4, 2.0))
    assert torch.allclose(omega.diagonal(), torch.ones(12))
    with pytest.raises(ValueError):
        gaussian_bias(2, 2, std=0)


def test_unknown_method():
    with pytest.raises(ValueError, match="known: vanilla"):
        get_head("gem")


@pytest.fixture(scope="module")
def tiny_siglip():
    from transformers import SiglipConfig, SiglipModel

    from un2clip.models.clip import ClipMeta, ClipModel, ImageProcessing
    from un2clip.models.tokenizer import build_word_tokenizer

    tok = build_word_tokenizer(["a", "red", "circle"], context_length=16)
    cfg = SiglipConfig(
        text_config={"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 4, "max_position_embeddings": 16, "pad_token_id": tok.pad_token_id},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                       "num_attention_heads": 4, "image_size": 32, "patch_size": 8})
    torch.manual_seed(0)
    return ClipModel(SiglipModel(cfg).eval(), tok,
                     ClipMeta(family="siglip", processing=ImageProcessing(32, (0.5,) * 3, (0.5,) * 3, "squash"),
                              context_length=16))


@pytest.mark.parametrize("method", METHODS)
def test_siglip_heads_without_class_token(tiny_siglip, method):
    x = torch.randn(1, 3, 40, 24)
    with torch.no_grad():
        got = dense_features(tiny_siglip, x, method)
    assert got.shape == (1, 5, 3, 32)
    torch.testing.assert_close(got, reference_features(tiny_siglip, x, method), atol=2e-5, rtol=0)


def test_siglip_vanilla_is_the_model_as_it_is(tiny_siglip):
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        theirs = F.normalize(tiny_siglip.image_tokens(x), dim=-1)
        torch.testing.assert_close(dense_features(tiny_siglip, x, "vanilla").flatten(1, 2), theirs,
                                   atol=2e-5, rtol=0)
