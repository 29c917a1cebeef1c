"""The un²CLIP objective pinned down on a tiny batch: its loss rebuilt from the decoder's parts, the K draws per
image, the timestep range, the projector switches, the crop switch and the refused options.

Fast (tiny CLIP and pixel-space decoder, no training run), so that a mutation run can afford them per mutant.
"""

from __future__ import annotations

import copy
import random

import pytest
import torch
from PIL import Image

from un2clip.data.sources import Record


def _micro_clip():
    """ViT patch 8 on 16 px (5 tokens), width 32, one layer; 16-d joint space: fast enough to run per mutant."""
    from un2clip.models.clip import ImageProcessing
    from un2clip.models.presets import build_clip_from_config

    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
              "image_size": 16, "patch_size": 8, "hidden_act": "quick_gelu"}
    text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
            "max_position_embeddings": 32, "hidden_act": "quick_gelu"}
    return build_clip_from_config(vision, text, 16, processing=ImageProcessing(size=16), seed=0)


def _micro_decoder(embed_dim: int = 16):
    """Pixel-space UNet on 16 px, channels (8, 16), conditioned on 16-d embeddings; v-prediction, 1000 steps."""
    from un2clip.models.presets import TINY_SCHEDULER, build_decoder_from_config

    unet = {"sample_size": 16, "in_channels": 3, "out_channels": 3, "layers_per_block": 1,
            "block_out_channels": (8, 16), "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"), "cross_attention_dim": 32,
            "attention_head_dim": 8, "norm_num_groups": 8}
    return build_decoder_from_config(unet, embed_dim=embed_dim, scheduler=TINY_SCHEDULER, context_shape=(1, 32),
                                     image_size=16, seed=0)


@pytest.fixture(scope="module")
def tiny_clip():
    return _micro_clip()


@pytest.fixture(scope="module")
def tiny_decoder():
    return _micro_decoder()


def _objective(clip, decoder, **options):
    from un2clip.objectives.un2clip import Un2ClipObjective

    return Un2ClipObjective(copy.deepcopy(clip), decoder, **options)


def _batch(seeds=(11, 22)) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    n = len(seeds)
    return {"clip_pixels": torch.randn(n, 3, 16, 16, generator=g),
            "decoder_pixels": torch.rand(n, 3, 16, 16, generator=g) * 2 - 1,
            "draw_seed": torch.tensor(seeds, dtype=torch.int64)}


def _reference_loss(decoder, embeds, latents, seeds, noise_level=0, t_max=1000):
    """The objective's loss rebuilt from the decoder's parts: per seed one generator drawing t, the noise and the
    embedding noise in that order; noisy latents; the UNet's prediction; mean squared error to the v target."""
    ts, noises, embed_noises = [], [], []
    for s in seeds:
        g = torch.Generator().manual_seed(int(s))
        ts.append(torch.randint(0, t_max, (1,), generator=g))
        noises.append(torch.randn(latents.shape[1:], generator=g))
        embed_noises.append(torch.randn(embeds.shape[1:], generator=g))
    t, noise, embed_noise = torch.cat(ts), torch.stack(noises), torch.stack(embed_noises)
    labels = decoder.condition(embeds, noise_level, noise=embed_noise)
    noisy = decoder.train_scheduler.add_noise(latents, noise, t)
    prediction = decoder.predict(noisy, t, labels).float()
    target = decoder.train_scheduler.get_velocity(latents, noise, t).float()
    return ((prediction - target) ** 2).flatten(1).mean(1).mean(), t


def _spy_draws(objective) -> list[dict]:
    """Record the seeds and t_range the objective passes to the decoder's draws."""
    calls, real = [], objective.decoder.draws_from_seeds

    def spy(seeds, latents, *, t_range=None):
        out = real(seeds, latents, t_range=t_range)
        calls.append({"seeds": seeds.tolist(), "t_range": t_range, "t": out[0].tolist()})
        return out

    objective.decoder.draws_from_seeds = spy
    return calls


# -- the loss -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("noise_level", [0, 40])
def test_loss_on_a_fixed_batch_equals_the_decoders_parts(tiny_clip, tiny_decoder, noise_level):
    objective = _objective(tiny_clip, tiny_decoder, noise_level=noise_level)
    batch = _batch()
    with torch.no_grad():
        out = objective(batch)
        embeds = objective.clip.encode_image(batch["clip_pixels"]).float()
        latents = tiny_decoder.encode_pixels(batch["decoder_pixels"])
        want, _ = _reference_loss(tiny_decoder, embeds, latents, [11, 22], noise_level=noise_level)
    torch.testing.assert_close(out["loss"], want, rtol=1e-6, atol=0)
    torch.testing.assert_close(out["embed_norm"], embeds.norm(dim=-1).mean(), rtol=1e-6, atol=0)
    assert set(out) == {"loss", "embed_norm"}


def test_cached_latents_are_used_as_they_are(tiny_clip, tiny_decoder):
    objective = _objective(tiny_clip, tiny_decoder)
    batch = _batch()
    with torch.no_grad():
        latents = tiny_decoder.encode_pixels(batch["decoder_pixels"]).half()  # what the cache stores
        cached = {"clip_pixels": batch["clip_pixels"], "latents": latents, "draw_seed": batch["draw_seed"]}
        got = objective(cached)["loss"]
        embeds = objective.clip.encode_image(batch["clip_pixels"]).float()
        want, _ = _reference_loss(tiny_decoder, embeds, latents.float(), [11, 22])
        scaled, _ = _reference_loss(tiny_decoder, embeds, latents.float() * 1.01, [11, 22])
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    assert abs(float(scaled) - float(want)) > 1e-4 * float(want)  # the tolerance above would see a 1 % change


def test_k_draws_per_image_use_the_documented_seeds_and_differ(tiny_clip, tiny_decoder):
    objective = _objective(tiny_clip, tiny_decoder, timesteps_per_image=2)
    calls = _spy_draws(objective)
    batch = _batch()
    with torch.no_grad():
        out = objective(batch)
    # draw j of seed s: s * 1000003 + j (mod 2^62), written out
    assert calls[0]["seeds"] == [11000033, 11000034, 22000066, 22000067]
    t = calls[0]["t"]
    assert len(t) == 4 and t[0] != t[1] and t[2] != t[3]  # the two draws of one image differ
    with torch.no_grad():
        embeds = objective.clip.encode_image(batch["clip_pixels"]).float().repeat_interleave(2, 0)
        latents = tiny_decoder.encode_pixels(batch["decoder_pixels"]).repeat_interleave(2, 0)
        want, want_t = _reference_loss(tiny_decoder, embeds, latents, [11000033, 11000034, 22000066, 22000067])
    assert want_t.tolist() == t
    torch.testing.assert_close(out["loss"], want, rtol=1e-6, atol=0)


def test_k_draws_wrap_large_seeds_modulo_2_to_the_62(tiny_clip, tiny_decoder):
    seed = 2**62 - 5
    objective = _objective(tiny_clip, tiny_decoder, timesteps_per_image=3)
    calls = _spy_draws(objective)
    with torch.no_grad():
        objective(_batch(seeds=(seed,)))
    assert calls[0]["seeds"] == [4611686018422387889, 4611686018422387890, 4611686018422387891]
    assert calls[0]["seeds"] == [(seed * 1000003 + j) % 2**62 for j in range(3)]


def test_one_draw_per_image_passes_the_seeds_unchanged(tiny_clip, tiny_decoder):
    objective = _objective(tiny_clip, tiny_decoder)
    calls = _spy_draws(objective)
    with torch.no_grad():
        objective(_batch())
    assert calls[0]["seeds"] == [11, 22] and calls[0]["t_range"] is None


def test_max_timestep_limits_the_draws_to_zero_up_to_it(tiny_clip, tiny_decoder):
    objective = _objective(tiny_clip, tiny_decoder, max_timestep=3)
    calls = _spy_draws(objective)
    with torch.no_grad():
        out = objective(_batch(seeds=tuple(range(40))))
    assert calls[0]["t_range"] == (0, 3)
    assert set(calls[0]["t"]) == {0, 1, 2}  # 40 draws in [0, 3): every value, none of 3
    assert torch.isfinite(out["loss"])


# -- the projector --------------------------------------------------------------------------------------


def test_projector_switches_checked_by_their_weights(tiny_clip, tiny_decoder):
    from un2clip.objectives.un2clip import make_projector

    assert isinstance(make_projector("none", 4), torch.nn.Identity)
    torch.manual_seed(0)
    identity = make_projector("identity", 4)
    assert torch.equal(identity.weight, torch.eye(4)) and torch.equal(identity.bias, torch.zeros(4))
    random_layer = make_projector("random", 4)
    assert random_layer.weight.shape == (4, 4)
    assert not torch.equal(random_layer.weight, torch.eye(4)) and bool((random_layer.bias != 0).all())
    with pytest.raises(ValueError, match="projector must be one of"):
        make_projector("linear", 4)

    dim = tiny_clip.embed_dim
    objective = _objective(tiny_clip, tiny_decoder, projector="identity")
    assert torch.equal(objective.projector.weight, torch.eye(dim)) and not objective.projector.bias.any()
    x = _batch()["clip_pixels"]
    with torch.no_grad():
        torch.testing.assert_close(objective.embed(x), objective.clip.encode_image(x).float(), rtol=0, atol=1e-6)
    rand = _objective(tiny_clip, tiny_decoder, projector="random")
    with torch.no_grad():
        e = rand.clip.encode_image(x).float()
        torch.testing.assert_close(rand.embed(x), e @ rand.projector.weight.T + rand.projector.bias)
    assert isinstance(_objective(tiny_clip, tiny_decoder).projector, torch.nn.Identity)


# -- what trains, what is frozen ------------------------------------------------------------------------


def test_only_the_image_tower_trains_unless_the_decoder_is_asked_for(tiny_clip):
    build_tiny_decoder = _micro_decoder
    objective = _objective(tiny_clip, build_tiny_decoder())
    vision = list(objective.clip.vision_parameters())
    assert vision and all(p.requires_grad for p in vision)
    assert not any(p.requires_grad for p in objective.clip.model.text_model.parameters())
    assert not any(p.requires_grad for p in objective.decoder.parameters())
    both = _objective(tiny_clip, build_tiny_decoder(), train_decoder=True)
    assert all(p.requires_grad for p in both.decoder.unet.parameters())
    assert objective.compile_targets() == [objective.clip.vision_model, objective.decoder.unet]

    both.set_train_mode()
    assert both.training and both.decoder.training and not both.clip.model.text_model.training
    objective.set_train_mode()
    assert objective.training and objective.clip.vision_model.training and not objective.decoder.training
    anchored = _objective(tiny_clip, build_tiny_decoder(), anchor_weight=0.5)
    anchored.set_train_mode()
    assert not anchored.anchor.training

    anchored.cast_frozen(torch.bfloat16)
    assert anchored.decoder.dtype == torch.bfloat16
    assert next(anchored.anchor.parameters()).dtype == torch.bfloat16
    assert next(anchored.clip.vision_model.parameters()).dtype == torch.float32
    both.cast_frozen(torch.bfloat16)
    assert next(both.decoder.unet.parameters()).dtype == torch.float32  # a training decoder keeps its dtype


def test_a_step_moves_the_tower_and_leaves_the_frozen_decoder_and_text_tower_bit_identical(tiny_clip):
    decoder = _micro_decoder()  # built trainable (requires_grad True): the objective must freeze it
    objective = _objective(tiny_clip, decoder)
    assert list(decoder.parameters()) and not any(p.requires_grad for p in decoder.parameters())
    assert not decoder.training
    frozen = {n: p.detach().clone() for n, p in decoder.named_parameters()}
    text = {n: p.detach().clone() for n, p in objective.clip.model.text_model.named_parameters()}
    vision = {n: p.detach().clone() for n, p in objective.clip.vision_model.named_parameters()}
    optimizer = torch.optim.SGD(objective.trainable_parameters(), lr=0.5)
    objective.set_train_mode()
    objective(_batch())["loss"].backward()
    optimizer.step()
    assert all(p.grad is None for p in decoder.parameters())
    assert all(torch.equal(p, frozen[n]) for n, p in decoder.named_parameters())
    assert all(torch.equal(p, text[n]) for n, p in objective.clip.model.text_model.named_parameters())
    moved = [n for n, p in objective.clip.vision_model.named_parameters() if not torch.equal(p, vision[n])]
    assert len(moved) > len(vision) // 2  # the encoder is what trains


def test_train_decoder_makes_a_frozen_decoders_unet_trainable(tiny_clip):
    decoder = _micro_decoder().freeze()  # frozen first, as a loaded decoder may be
    assert not any(p.requires_grad for p in decoder.unet.parameters())
    objective = _objective(tiny_clip, decoder, train_decoder=True)
    unet = list(decoder.unet.parameters())
    assert unet and all(p.requires_grad for p in unet)
    trainable = {id(p) for p in objective.trainable_parameters()}
    assert all(id(p) in trainable for p in unet)
    before = [p.detach().clone() for p in unet]
    objective.set_train_mode()
    objective(_batch())["loss"].backward()
    torch.optim.SGD(objective.trainable_parameters(), lr=0.5).step()
    assert any(not torch.equal(p, b) for p, b in zip(unet, before))


# -- LoRA -----------------------------------------------------------------------------------------------


def test_lora_puts_adapters_on_the_named_layers_only_and_trains_only_them(tiny_clip, tiny_decoder):
    pytest.importorskip("peft")
    from un2clip.models.lora import has_lora

    objective = _objective(tiny_clip, tiny_decoder, lora_rank=1, lora_targets=("q_proj", "fc1"))
    names = {n for n, p in objective.named_parameters() if p.requires_grad}
    layer = "clip.model.vision_model.encoder.layers.0."
    assert names == {layer + "self_attn.q_proj.lora_A.default.weight", layer + "self_attn.q_proj.lora_B.default.weight",
                     layer + "mlp.fc1.lora_A.default.weight", layer + "mlp.fc1.lora_B.default.weight"}
    # rank 1 on width 32: q_proj 32 -> 32 (A 1 x 32, B 32 x 1), fc1 32 -> 64 (A 1 x 32, B 64 x 1)
    assert sum(p.numel() for p in objective.trainable_parameters()) == (32 + 32) + (32 + 64) == 160
    assert has_lora(objective.clip.vision_model)
    assert not any("lora_" in n for n, _ in objective.clip.model.text_model.named_parameters())
    assert not any("lora_" in n for n, _ in objective.clip.visual_projection.named_parameters())
    assert not any(p.requires_grad for p in objective.decoder.parameters())


def test_lora_scale_is_alpha_over_rank_and_defaults_to_one(tiny_clip, tiny_decoder):
    pytest.importorskip("peft")
    from peft.tuners.lora import LoraLayer

    def scales(objective):
        return {n.rsplit(".", 1)[-1]: m.scaling["default"] for n, m in objective.clip.vision_model.named_modules()
                if isinstance(m, LoraLayer)}

    assert scales(_objective(tiny_clip, tiny_decoder, lora_rank=2, lora_alpha=6.0)) == {
        k: 3.0 for k in ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")}
    assert set(scales(_objective(tiny_clip, tiny_decoder, lora_rank=2)).values()) == {1.0}


def test_anchor_term_adds_its_weighted_distance(tiny_clip, tiny_decoder):
    from un2clip.objectives.un2clip import anchor_distance

    objective = _objective(tiny_clip, tiny_decoder, anchor_weight=0.25, projector="random")
    with torch.no_grad():
        for p in objective.clip.vision_model.parameters():  # move the encoder away from its frozen copy
            p.add_(0.05 * torch.randn_like(p))
        batch = _batch()
        out = objective(batch)
        image_embeds = objective.clip.encode_image(batch["clip_pixels"]).float()
        anchor = anchor_distance(image_embeds, objective.anchor(batch["clip_pixels"]))
        latents = tiny_decoder.encode_pixels(batch["decoder_pixels"])
        diffusion, _ = _reference_loss(tiny_decoder, objective.projector(image_embeds), latents, [11, 22])
    assert float(anchor) > 1e-4
    torch.testing.assert_close(out["anchor"], anchor, rtol=1e-6, atol=0)
    torch.testing.assert_close(out["diffusion_loss"], diffusion, rtol=1e-6, atol=0)
    torch.testing.assert_close(out["loss"], diffusion + 0.25 * anchor, rtol=1e-6, atol=0)


def test_frozen_tower_encodes_like_the_model_also_at_another_size(tiny_clip):
    from un2clip.objectives.un2clip import FrozenImageTower

    tower = FrozenImageTower(tiny_clip)
    assert not any(p.requires_grad for p in tower.parameters()) and not tower.training
    for size in (16, 24):
        x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
        with torch.no_grad():
            torch.testing.assert_close(tower(x), tiny_clip.encode_image(x).float(), rtol=1e-5, atol=1e-6)
    # a copy: training the model's tower and projection leaves the anchor where it was
    clip = copy.deepcopy(tiny_clip)
    tower = FrozenImageTower(clip)
    with torch.no_grad():
        before = tower(x)
        for p in list(clip.vision_model.parameters()) + list(clip.visual_projection.parameters()):
            p.add_(0.1)
        assert torch.equal(tower(x), before)


# -- data: crops and seeds --------------------------------------------------------------------------------


def _gradient_record(width=40, height=64) -> Record:
    """A vertical gradient: every square crop of it looks different."""
    rows = torch.arange(height, dtype=torch.uint8).mul(3).reshape(height, 1, 1).expand(height, width, 3)
    return Record(Image.fromarray(rows.contiguous().numpy()), None, "g")


def test_random_crop_false_is_honoured_on_the_fly(tiny_clip, tiny_decoder):
    from un2clip.data import transforms as T

    record = _gradient_record()
    centre = record.image.crop((0, 12, 40, 52))  # the centred 40 x 40 square of a 40 x 64 image
    fixed = _objective(tiny_clip, tiny_decoder, random_crop=False)
    for seed in range(4):
        view = fixed.transform(record, random.Random(seed))
        assert torch.equal(view["clip_pixels"], fixed.clip.processing(centre))
        assert torch.equal(view["decoder_pixels"], T.decoder_view(centre, tiny_decoder.image_size))
        rng = random.Random(seed)
        assert int(view["draw_seed"]) == rng.getrandbits(62)  # a centred crop draws nothing first
    moving = _objective(tiny_clip, tiny_decoder)  # random crops by default
    views = [moving.transform(record, random.Random(seed))["decoder_pixels"] for seed in range(4)]
    assert any(not torch.equal(v, T.decoder_view(centre, tiny_decoder.image_size)) for v in views)


def test_draw_seeds_are_62_bit_and_follow_the_rng(tiny_clip, tiny_decoder):
    from un2clip.objectives.un2clip import two_views

    record = _gradient_record(48, 48)  # square: the crop is the whole image, random or not
    seeds = [int(two_views(record, random.Random(s), tiny_clip.processing, 16)["draw_seed"]) for s in range(20)]
    assert len(set(seeds)) == 20 and all(0 <= s < 2**62 for s in seeds)
    assert max(seeds) >= 2**61  # 62 random bits, not fewer


def test_cached_views_draw_the_crop_first_as_two_views_does(tiny_clip):
    from un2clip.data.latent_cache import CachedSample
    from un2clip.objectives.un2clip import cached_views, two_views

    record = _gradient_record()
    sample = CachedSample(latents=torch.ones(3, 16, 16, dtype=torch.float16),
                          clip_pixels=torch.full((3, 16, 16), 7, dtype=torch.uint8), width=40, height=64, key="g")
    for random_crop in (True, False):
        fly = two_views(record, random.Random(5), tiny_clip.processing, 16, random_crop=random_crop)
        cached = cached_views(sample, random.Random(5), tiny_clip.processing, random_crop=random_crop)
        assert int(fly["draw_seed"]) == int(cached["draw_seed"])
        assert fly["draw_seed"].dtype == cached["draw_seed"].dtype == torch.int64  # tensors, for the loader
        assert torch.equal(cached["latents"], sample.latents)
        assert torch.equal(cached["clip_pixels"], tiny_clip.processing.from_uint8(sample.clip_pixels))
    # random crops by default on both paths: the crop box consumes the rng before the seed is drawn
    centred_seed = random.Random(5).getrandbits(62)
    assert int(cached_views(sample, random.Random(5), tiny_clip.processing)["draw_seed"]) != centred_seed
    assert int(two_views(record, random.Random(5), tiny_clip.processing, 16)["draw_seed"]) != centred_seed


def test_anchor_distance_known_values():
    from un2clip.objectives.un2clip import anchor_distance

    e = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert float(anchor_distance(e, 3 * e)) == pytest.approx(0.0, abs=1e-7)  # blind to the norm
    assert float(anchor_distance(e, torch.tensor([[0.0, 1.0], [0.0, -1.0]]))) == pytest.approx((1.0 + 2.0) / 2)


# -- refused options ------------------------------------------------------------------------------------


@pytest.mark.parametrize("option, value, words", [
    ("timesteps_per_image", 0, "timesteps_per_image must be >= 1, got 0"),
    ("lora_rank", -1, "lora_rank must be >= 0, got -1"),
    ("anchor_weight", -0.5, "anchor_weight must be >= 0, got -0.5"),
    ("max_timestep", 0, "max_timestep must be in [1, 1000], got 0"),
    ("max_timestep", 1001, "max_timestep must be in [1, 1000], got 1001"),
    ("projector", "linear", "projector must be one of"),
])
def test_invalid_options_are_refused_with_a_clear_error(tiny_clip, tiny_decoder, option, value, words):
    with pytest.raises(ValueError) as info:
        _objective(tiny_clip, tiny_decoder, **{option: value})
    assert words in str(info.value)


def test_defaults_are_the_papers_setting(tiny_clip, tiny_decoder):
    from un2clip.models.lora import has_lora

    objective = _objective(tiny_clip, tiny_decoder)
    assert isinstance(objective.projector, torch.nn.Identity) and objective.projector_kind == "none"
    assert objective.anchor is None and objective.anchor_weight == 0.0 and not has_lora(objective.clip.vision_model)
    assert (objective.timesteps_per_image, objective.t_range, objective.noise_level) == (1, None, 0)
    assert objective.random_crop is True and objective.train_decoder is False


def test_an_encoder_and_decoder_of_different_widths_are_refused(tiny_clip):
    with pytest.raises(ValueError, match="encoder and decoder do not fit"):
        _objective(tiny_clip, _micro_decoder(embed_dim=24))


def test_the_smallest_valid_options_are_accepted(tiny_clip, tiny_decoder):
    objective = _objective(tiny_clip, tiny_decoder, timesteps_per_image=1, lora_rank=0, anchor_weight=0.0,
                           max_timestep=1)
    assert objective.timesteps_per_image == 1 and objective.anchor is None and objective.t_range == (0, 1)
    assert _objective(tiny_clip, tiny_decoder, max_timestep=1000).t_range == (0, 1000)


# -- what a finished run writes ---------------------------------------------------------------------------


def test_save_outputs_writes_the_encoder_and_only_the_parts_that_trained(tmp_path, tiny_clip):
    from safetensors.torch import load_file

    from un2clip.models.clip import ClipModel
    from un2clip.models.unclip import UnclipDecoder

    x = _batch()["clip_pixels"]
    plain = _objective(tiny_clip, _micro_decoder())
    with torch.no_grad():
        for p in plain.clip.vision_model.parameters():  # a trained encoder differs from the one it started as
            p.add_(0.05)
    plain.save_outputs(str(tmp_path / "plain"))  # a str folder works as a Path does
    assert sorted(p.name for p in (tmp_path / "plain").iterdir()) == ["clip"]
    with torch.no_grad():
        torch.testing.assert_close(ClipModel.from_pretrained(tmp_path / "plain" / "clip").encode_image(x),
                                   plain.clip.encode_image(x), rtol=0, atol=1e-6)

    both = _objective(tiny_clip, _micro_decoder(), projector="identity", train_decoder=True)
    with torch.no_grad():
        both.projector.bias.fill_(0.25)
    both.save_outputs(str(tmp_path / "both"))
    assert sorted(p.name for p in (tmp_path / "both").iterdir()) == ["clip", "decoder", "projector.safetensors"]
    saved = load_file(str(tmp_path / "both" / "projector.safetensors"))
    dim = tiny_clip.embed_dim
    assert set(saved) == {"weight", "bias"}
    assert torch.equal(saved["weight"], torch.eye(dim)) and torch.equal(saved["bias"], torch.full((dim,), 0.25))
    decoder = UnclipDecoder.from_pretrained(tmp_path / "both" / "decoder")
    state = both.decoder.unet.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in decoder.unet.state_dict().items())


def test_save_outputs_merges_lora_into_a_copy_and_keeps_the_training_adapters(tmp_path, tiny_clip, tiny_decoder):
    pytest.importorskip("peft")
    from un2clip.models.clip import ClipModel
    from un2clip.models.lora import has_lora

    objective = _objective(tiny_clip, tiny_decoder, lora_rank=1, lora_alpha=2.0)
    with torch.no_grad():  # adapters start as a no-op (B = 0): give them weights
        for n, p in objective.named_parameters():
            if "lora_B" in n:
                p.copy_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    x = _batch()["clip_pixels"]
    with torch.no_grad():
        adapted = objective.clip.encode_image(x)
        assert not torch.allclose(adapted, tiny_clip.encode_image(x), atol=1e-4)  # the adapters change the output
    objective.save_outputs(tmp_path)
    merged = ClipModel.from_pretrained(tmp_path / "clip")
    assert not any("lora" in k for k in merged.model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(merged.encode_image(x), adapted, rtol=1e-5, atol=1e-6)
    assert has_lora(objective.clip.vision_model)  # the training model keeps its adapters


def test_transform_sends_cached_samples_to_cached_views_and_records_to_two_views(tiny_clip, tiny_decoder):
    from un2clip.data.latent_cache import CachedSample
    from un2clip.objectives.un2clip import cached_views, two_views

    objective = _objective(tiny_clip, tiny_decoder)
    sample = CachedSample(latents=torch.ones(3, 16, 16, dtype=torch.float16),
                          clip_pixels=torch.full((3, 16, 16), 7, dtype=torch.uint8), width=40, height=64, key="g")
    got = objective.transform(sample, random.Random(5))
    want = cached_views(sample, random.Random(5), tiny_clip.processing)
    assert set(got) == {"clip_pixels", "latents", "draw_seed"}
    assert all(torch.equal(got[k], want[k]) for k in want)
    record = _gradient_record()
    got = objective.transform(record, random.Random(5))
    want = two_views(record, random.Random(5), tiny_clip.processing, tiny_decoder.image_size)
    assert set(got) == {"clip_pixels", "decoder_pixels", "draw_seed"}
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_on_the_fly_pixels_go_through_the_decoders_encoder(tiny_clip):
    decoder = _micro_decoder()
    objective = _objective(tiny_clip, decoder)
    decoder.encode_pixels = lambda pixels: 0.5 * pixels  # a stand-in encoder (the pixel-space one is the identity)
    batch = _batch()
    with torch.no_grad():
        got = objective(batch)["loss"]
        embeds = objective.clip.encode_image(batch["clip_pixels"]).float()
        want, _ = _reference_loss(decoder, embeds, 0.5 * batch["decoder_pixels"], [11, 22])
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
