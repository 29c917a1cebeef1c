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


def sclip_pos_embed(pos, width, height, patch, has_cls=True):
    """SCLIP's / NACLIP's / ClearCLIP's ``interpolate_pos_encoding(x, w, h)`` as they write it (w: the
    image's height, h: its width): bicubic, scale_factor ((w // p + 0.1) / sqrt(N), (h // p + 0.1) / sqrt(N))."""
    cls, patches = (pos[:1], pos[1:]) if has_cls else (pos[:0], pos)
    n = patches.shape[0]
    w0, h0 = width // patch + 0.1, height // patch + 0.1
    grid = patches.reshape(1, int(math.sqrt(n)), int(math.sqrt(n)), -1).permute(0, 3, 1, 2)
    out = F.interpolate(grid, scale_factor=(w0 / math.sqrt(n), h0 / math.sqrt(n)), mode="bicubic")
    assert int(w0) == out.shape[-2] and int(h0) == out.shape[-1]
    return torch.cat([cls, out.permute(0, 2, 3, 1).reshape(-1, pos.shape[-1])])


def reference_features(model, pixels, method, std=5.0):
    """The issue's formulas, from HF's own forward up to the last block (with the reference repos' position
    embeddings at a non-native size) and the raw weights after it."""
    vm = model.vision_model
    emb = vm.embeddings
    has_cls = model.family == "clip"

    def pos_embed(embeddings, height, width):
        return sclip_pos_embed(emb.position_embedding.weight, height, width, model.patch_size, has_cls)[None]

    emb.interpolate_pos_encoding = pos_embed  # an instance attribute: the class's method is left alone
    try:
        with torch.no_grad():
            x = vm(pixel_values=pixels, interpolate_pos_encoding=True, output_hidden_states=True).hidden_states[-2]
    finally:
        del emb.interpolate_pos_encoding
    with torch.no_grad():
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
    # NACLIP's sigma is 5 by default: exp(-d^2 / 50), d^2 = 1 for grid neighbours, 2 for diagonal ones
    default = gaussian_bias(2, 2)
    assert default[0].tolist() == pytest.approx([1.0, math.exp(-1 / 50), math.exp(-1 / 50), math.exp(-2 / 50)])
    torch.testing.assert_close(default, _omega(2, 2, 5.0))


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


@pytest.mark.parametrize("grid", [(5, 3), (6, 6), (4, 7), (13, 9)])
def test_position_embeddings_are_interpolated_as_the_references_do(tiny_clip, grid):
    from un2clip.eval.seg.heads import reference_position_embedding

    pos = tiny_clip.vision_model.embeddings.position_embedding.weight.detach()  # native 4 x 4 grid + class
    gh, gw = grid
    got = reference_position_embedding(pos, grid, has_class_token=True)
    want = sclip_pos_embed(pos, gh * 8, gw * 8, 8)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    exact_size = F.interpolate(pos[1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2), size=grid, mode="bicubic",
                               align_corners=False).permute(0, 2, 3, 1).reshape(gh * gw, -1)
    assert (got[1:] - exact_size).abs().max() > 1e-3  # transformers' rule is another one
    assert torch.equal(reference_position_embedding(pos, (4, 4), has_class_token=True), pos)  # native: unchanged


def test_heads_use_the_reference_position_embeddings(tiny_clip):
    """A non-native size through dense_features: the references' bicubic scale factor, not an exact size."""
    torch.manual_seed(3)
    x = torch.randn(1, 3, 56, 40)  # 7 x 5 patches
    with torch.no_grad():
        got = dense_features(tiny_clip, x, "clearclip")
        hf = dense_features_with_hf_positions(tiny_clip, x)
    torch.testing.assert_close(got, reference_features(tiny_clip, x, "clearclip"), atol=2e-5, rtol=0)
    assert (got - hf).abs().max() > 1e-4


def dense_features_with_hf_positions(model, pixels):
    """ClearCLIP's features from transformers' own interpolation (the exact-size rule), for contrast."""
    vm = model.vision_model
    with torch.no_grad():
        x = vm(pixel_values=pixels, interpolate_pos_encoding=True, output_hidden_states=True).hidden_states[-2]
        layer = vm.encoder.layers[-1]
        attn = layer.self_attn
        b, t, w = x.shape
        nh = attn.num_heads
        d = w // nh
        y = _layer_norm(x, layer.layer_norm1)
        q, v = (_linear(y, lin).reshape(b, t, nh, d) for lin in (attn.q_proj, attn.v_proj))
        weights = torch.softmax(torch.einsum("bthd,bshd->bhts", q, q) / math.sqrt(d), dim=-1)
        out = _linear(torch.einsum("bhts,bshd->bthd", weights, v).reshape(b, t, w), attn.out_proj)[:, 1:]
        out = _layer_norm(out, vm.post_layernorm) @ model.model.visual_projection.weight.T
        gh, gw = pixels.shape[-2] // model.patch_size, pixels.shape[-1] // model.patch_size
        return F.normalize(out, dim=-1).reshape(b, gh, gw, -1)


def test_leftover_pixels_are_dropped_by_the_patch_embedding(tiny_clip):
    torch.manual_seed(4)
    x = torch.randn(1, 3, 45, 30)  # 5 x 3 whole patches and 5 rows, 6 columns left over
    with torch.no_grad():
        whole = dense_features(tiny_clip, x, "naclip")
        cut = dense_features(tiny_clip, x[..., :40, :24], "naclip")
    assert whole.shape[1:3] == (5, 3)
    torch.testing.assert_close(whole, cut, atol=0, rtol=0)


# -- a hand-built last block whose right answer is known -------------------------------------------------------
REGIONS = torch.tensor([[0, 0, 1, 1],  # class of each patch of a 4 x 4 grid (32 px, 8 px patches); not symmetric,
                        [0, 0, 1, 1],  # so a transposed or flipped grid is caught; class 0 the majority (6 of 16)
                        [2, 2, 2, 1],
                        [2, 2, 0, 0]])


def _known_block_model(monkeypatch, n_classes=3):
    """The tiny CLIP with its last block, final norm and projection set by hand, and the tokens entering that block
    replaced: patch (i, j) carries the vector of class REGIONS[i, j], the class token zeros.

    Class vectors: in each head's 32 dims, +1 at slot c and -1 at slot c + 16 (zero mean, orthogonal, so the layer
    norms only scale them). q = k = 2 x (large same-class logits, 0 across classes and to the class token); v = 10 x:
    the attention's output outweighs the residual, so only a head whose attention gathers the token's own class
    keeps the class (uniform attention would paint the majority class everywhere); FFN output zero; projection
    the identity. Every head's patch feature is then its class vector, whose query is that vector."""
    import un2clip.eval.seg.heads as heads
    from un2clip.models.presets import build_tiny_clip

    model = build_tiny_clip()
    width = model.vision_model.config.hidden_size
    nh = model.vision_model.config.num_attention_heads
    hd = width // nh
    vectors = torch.zeros(n_classes, width)
    for c in range(n_classes):
        for h in range(nh):
            vectors[c, h * hd + c], vectors[c, h * hd + c + hd // 2] = 1.0, -1.0
    layer = model.vision_model.encoder.layers[-1]
    eye = torch.eye(width)
    with torch.no_grad():
        for lin, scale in ((layer.self_attn.q_proj, 2.0), (layer.self_attn.k_proj, 2.0),
                           (layer.self_attn.v_proj, 10.0), (layer.self_attn.out_proj, 1.0)):
            lin.weight.copy_(scale * eye)
            lin.bias.zero_()
        layer.mlp.fc2.weight.zero_()
        layer.mlp.fc2.bias.zero_()
        for ln in (layer.layer_norm1, layer.layer_norm2, model.vision_model.post_layernorm):
            ln.weight.fill_(1.0)
            ln.bias.zero_()
        model.model.visual_projection.weight.copy_(torch.eye(model.embed_dim, width))

    def tokens(_model, pixels):
        patches = vectors[REGIONS.flatten()]  # (16, W), row-major over the grid
        x = torch.cat([torch.zeros(1, width), patches])
        return x.expand(pixels.shape[0], -1, -1).clone()

    monkeypatch.setattr(heads, "last_block_input", tokens)
    return model, F.normalize(vectors, dim=-1)


@pytest.mark.parametrize("method", METHODS)
def test_each_head_finds_the_regions_of_a_hand_built_feature_map(monkeypatch, method):
    from un2clip.eval.seg.infer import predict_classes, window_logits

    model, queries = _known_block_model(monkeypatch)
    pixels = torch.zeros(1, 3, 32, 32)
    with torch.no_grad():
        feats = dense_features(model, pixels, method)  # (1, 4, 4, D)
        assert torch.equal((feats[0] @ queries.T).argmax(dim=-1), REGIONS)
        logits = window_logits(model, pixels, queries, method)[0]  # upsampled to the 32 x 32 window
    pred = predict_classes(torch.softmax(40 * logits, dim=0))
    # away from the patch edges (where bilinear upsampling mixes neighbours) every pixel has its patch's class
    centres = pred[3::8, 3::8], pred[4::8, 4::8]
    for c in centres:
        assert torch.equal(c, REGIONS)
