"""GenHancer as its authors run it: rectified flow, logit-normal timesteps, the light FLUX denoiser, LoRA stage 2."""

import math

import pytest
import torch

from un2clip.models.flow import (
    FlowDecoder,
    build_flow_decoder,
    image_ids,
    logit_normal,
    pack,
    rectified_flow_loss,
    unpack,
)
from un2clip.models.presets import build_tiny_clip, build_tiny_latent_decoder
from un2clip.objectives.genhancer import FlowDecoderObjective, GenHancerObjective, flow_draws


def test_rectified_flow_loss_hand_computed():
    # two samples of two latent values; x_t = (1 - t) x + t ε, target ε - x, prediction 2 · x_t
    x = torch.tensor([[1.0, -1.0], [0.0, 2.0]]).reshape(2, 1, 1, 2)
    eps = torch.tensor([[3.0, 1.0], [1.0, 1.0]]).reshape(2, 1, 1, 2)
    t = torch.tensor([0.25, 0.5])
    # x_t = [1.5, -0.5], [0.5, 1.5]; predictions [3, -1], [1, 3]; targets [2, 2], [1, -1]
    # errors [1, -3], [0, 4] -> squares 1, 9, 0, 16 -> mean 6.5
    assert rectified_flow_loss(lambda x_t: 2 * x_t, x, eps, t).item() == pytest.approx(6.5)
    # t = 0 is the data itself, t = 1 pure noise
    seen = []
    rectified_flow_loss(lambda x_t: seen.append(x_t) or x_t, x, eps, torch.tensor([0.0, 1.0]))
    assert torch.equal(seen[0][0], x[0]) and torch.equal(seen[0][1], eps[1])


def test_logit_normal_quantiles():
    # t = sigmoid(z), z ~ N(0, 1): the quantile at Φ(k) is sigmoid(k)
    t = logit_normal(200_000, generator=torch.Generator().manual_seed(0))
    probs = torch.tensor([0.022750, 0.158655, 0.5, 0.841345, 0.977250])  # Φ(-2), Φ(-1), Φ(0), Φ(1), Φ(2)
    expected = torch.tensor([0.119203, 0.268941, 0.5, 0.731059, 0.880797])  # sigmoid(-2 .. 2)
    assert torch.allclose(torch.quantile(t, probs), expected, atol=3e-3)
    assert 0 < t.min() and t.max() < 1
    # scale 2: sigmoid(2 z); its Φ(1) quantile is sigmoid(2)
    t2 = logit_normal(200_000, scale=2.0, generator=torch.Generator().manual_seed(1))
    assert torch.quantile(t2, torch.tensor(0.841345)).item() == pytest.approx(0.880797, abs=3e-3)
    # what training draws: one logit-normal t per sample seed (independent of the batch)
    latents = torch.zeros(20_000, 1, 1, 1)
    ts, noise = flow_draws(torch.arange(20_000), latents)
    assert torch.allclose(torch.quantile(ts, probs[1:4]), expected[1:4], atol=0.01)
    again, _ = flow_draws(torch.arange(5, 7), latents[:2])
    assert torch.equal(again, ts[5:7]) and noise.shape == latents.shape


def test_pack_is_fluxs_patch_layout_and_unpacks():
    # b c (h ph) (w pw) -> b (h w) (c ph pw), written out for one 2-channel 4 x 4 latent
    x = torch.arange(32.0).reshape(1, 2, 4, 4)
    tokens = pack(x)
    assert tokens.shape == (1, 4, 8)
    # token 1 = patch row 0, column 1: channel 0 values 2, 3, 6, 7, then channel 1 values 18, 19, 22, 23
    assert tokens[0, 1].tolist() == [2, 3, 6, 7, 18, 19, 22, 23]
    assert torch.equal(unpack(tokens, 4, 4), x)
    assert image_ids(2, 2).tolist() == [[0, 0, 0], [0, 0, 1], [0, 1, 0], [0, 1, 1]]


@pytest.fixture(scope="module")
def tiny_flow():
    vae = build_tiny_latent_decoder().vae
    return build_flow_decoder(vae, embed_dim=128, image_size=32, heads=2, head_dim=16, axes_dims=(4, 6, 6))


def test_flow_decoder_is_genhancers_shape(tiny_flow):
    cfg = tiny_flow.transformer.config
    assert (cfg.num_layers, cfg.num_single_layers) == (2, 4)
    assert cfg.in_channels == 16 and cfg.pooled_projection_dim == 128 and cfg.guidance_embeds
    # the two LayerNorm-MLPs of the class token: modulation vector and one attention token
    for proj, width in ((tiny_flow.project_vector, 128), (tiny_flow.project_token, cfg.joint_attention_dim)):
        kinds = [type(m).__name__ for m in proj]
        assert kinds == ["LayerNorm", "Linear", "GELU", "Linear"] and proj[-1].out_features == width
    vector, token = tiny_flow.condition(torch.randn(3, 128))
    assert vector.shape == (3, 128) and token.shape == (3, 1, cfg.joint_attention_dim)


def test_stage1_loss_is_the_rectified_flow_loss_of_the_velocity(tiny_flow, tmp_path):
    clip = build_tiny_clip()
    objective = FlowDecoderObjective(clip, tiny_flow)
    g = torch.Generator().manual_seed(3)
    batch = {"clip_pixels": torch.randn(2, 3, 32, 32, generator=g),
             "decoder_pixels": torch.rand(2, 3, 32, 32, generator=g) * 2 - 1, "draw_seed": torch.tensor([11, 12])}
    objective.eval()
    with torch.no_grad():
        loss = objective(batch)["loss"]
        # by hand: the sample's own seed gives t = sigmoid(z) then the noise; x_t mixes, the target is ε - x
        embeds = clip.encode_image(batch["clip_pixels"])
        latents = tiny_flow.encode_pixels(batch["decoder_pixels"])
        ts, errs = [], []
        for i, seed in enumerate((11, 12)):
            gen = torch.Generator().manual_seed(seed)
            t = 1 / (1 + math.exp(-torch.randn(1, generator=gen).item()))
            eps = torch.randn(latents.shape[1:], generator=gen)
            x_t = (1 - t) * latents[i] + t * eps
            pred = tiny_flow.predict(x_t[None], torch.tensor([t]), embeds[i:i + 1])[0]
            errs.append((pred - (eps - latents[i])).pow(2).mean())
            ts.append(t)
    assert loss.item() == pytest.approx(torch.stack(errs).mean().item(), rel=1e-5)
    # stage 1 trains the transformer and both projections, never the CLIP or the VAE
    names = {n.split(".")[1] for n, p in objective.named_parameters() if p.requires_grad}
    assert names == {"transformer", "project_vector", "project_token"}
    # saved and loaded, the decoder predicts the same velocity
    tiny_flow.save_pretrained(tmp_path / "flow")
    loaded = FlowDecoder.from_pretrained(tmp_path / "flow").eval()
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        assert torch.allclose(loaded.predict(x, torch.tensor([0.3]), embeds[:1]),
                              tiny_flow.eval().predict(x, torch.tensor([0.3]), embeds[:1]), atol=1e-6)


def test_stage2_lora_leaves_every_other_encoder_weight_bit_identical(tiny_flow, tmp_path):
    from un2clip.models.clip import ClipModel

    clip = build_tiny_clip()
    before = {k: v.clone() for k, v in clip.model.state_dict().items()}
    flow_before = {k: v.clone() for k, v in tiny_flow.state_dict().items()}
    objective = GenHancerObjective(clip, tiny_flow)
    # an adapter on every linear layer of the image tower and its projection, none on the text tower
    from peft.tuners.lora import LoraLayer

    adapted = {n for n, m in clip.model.named_modules() if isinstance(m, LoraLayer)}
    linear = {n for n in adapted} | {n for n, m in clip.model.named_modules()
                                     if isinstance(m, torch.nn.Linear) and ".base_layer" not in n
                                     and not n.endswith(("lora_A.default", "lora_B.default"))
                                     and n.startswith(("vision_model", "visual_projection"))}
    assert adapted == linear and "visual_projection" in adapted
    assert not any(n.startswith("text_model") for n in adapted)
    layer = clip.model.get_submodule("vision_model.encoder.layers.0.self_attn.q_proj")
    assert (layer.r["default"], layer.scaling["default"], layer.lora_dropout["default"].p) == (16, 1.0, 0.1)
    opt = torch.optim.AdamW(objective.trainable_parameters(), lr=1e-2, weight_decay=0.01)
    g = torch.Generator().manual_seed(0)
    batch = {"clip_pixels": torch.randn(4, 3, 32, 32, generator=g),
             "decoder_pixels": torch.rand(4, 3, 32, 32, generator=g) * 2 - 1, "draw_seed": torch.arange(4)}
    objective.set_train_mode()
    for _ in range(3):
        objective(batch)["loss"].backward()
        opt.step()
        opt.zero_grad()
    after = clip.model.state_dict()
    lora_b = [k for k in after if "lora_B" in k]
    assert lora_b and all(not torch.equal(after[k], torch.zeros_like(after[k])) for k in lora_b), "adapters trained"
    trained_bias = set()
    for key, value in after.items():
        if "lora_" in key:
            continue
        name = key.replace(".base_layer", "")
        if ".base_layer.bias" in key:  # peft's bias="lora_only" (GenHancer's): the adapted layers' biases train
            trained_bias.add(name)
            continue
        assert torch.equal(value, before[name]), f"{name} changed"
    assert trained_bias and any(not torch.equal(after[k], before[k.replace(".base_layer", "")])
                                for k in after if ".base_layer.bias" in k)
    assert all(torch.equal(v, flow_before[k]) for k, v in tiny_flow.state_dict().items()), "the denoiser is frozen"
    # the saved encoder is the adapters merged: it encodes as the adapter model does (dropout off)
    objective.eval()
    objective.save_outputs(tmp_path)
    merged = ClipModel.from_pretrained(tmp_path / "clip")
    with torch.no_grad():
        assert torch.allclose(merged.encode_image(batch["clip_pixels"]), clip.encode_image(batch["clip_pixels"]),
                              atol=1e-5)
    assert not any("lora" in k for k in merged.model.state_dict())
