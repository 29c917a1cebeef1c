"""The DIVA baseline: token selection, condition, gradients, the text-to-image decoder, runs end to end."""

import csv
import json
import random

import pytest
import torch

from un2clip.cli import main as cli
from un2clip.models.clip import ImageProcessing
from un2clip.models.presets import (
    OPENAI_L14_VISION,
    SD21_BASE_SCHEDULER,
    build_clip_from_config,
    build_t2i_decoder_from_config,
    build_tiny_clip,
    build_tiny_t2i_decoder,
)
from un2clip.objectives.diva import (
    DivaObjective,
    diva_condition,
    per_draw_seeds,
    sample_patch_indices,
    select_visual_tokens,
)

SMALL_TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
              "max_position_embeddings": 77}
SMALL_VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                "image_size": 16, "patch_size": 8}


def gens(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def small_t2i_decoder(width: int):
    """A small latent-free text-to-image decoder whose text encoder gives 77 x ``width`` hidden states."""
    text = {**SMALL_TEXT, "hidden_size": width, "intermediate_size": width, "num_attention_heads": 8}
    text_clip = build_clip_from_config(SMALL_VISION, text, 32, processing=ImageProcessing(size=16))
    unet = {"sample_size": 8, "in_channels": 3, "out_channels": 3, "layers_per_block": 1,
            "block_out_channels": (32, 64), "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
            "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"), "cross_attention_dim": width,
            "attention_head_dim": 8, "norm_num_groups": 8}
    return build_t2i_decoder_from_config(unet, scheduler=SD21_BASE_SCHEDULER, text_clip=text_clip, image_size=8)


# -- pure functions on hand-built inputs ------------------------------------------------------------

def test_select_visual_tokens_known_answer():
    tokens = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)  # class + 4 patches, 3-d
    idx = sample_patch_indices(4, 6, gens([7, 8]))
    assert idx.shape == (2, 6) and idx.min() >= 0 and idx.max() < 4
    out = select_visual_tokens(tokens, 6, gens([7, 8]))
    assert out.shape == (2, 7, 3)
    for b in range(2):
        assert torch.equal(out[b, 0], tokens[b, 0])
        for j in range(6):
            assert torch.equal(out[b, 1 + j], tokens[b, 1 + int(idx[b, j])])
    # one generator for the whole batch also works; with replacement, so n may exceed the patch count
    assert select_visual_tokens(tokens, 9, torch.Generator().manual_seed(0)).shape == (2, 10, 3)
    with pytest.raises(ValueError, match="generators"):
        select_visual_tokens(tokens, 2, gens([1]))
    with pytest.raises(ValueError, match="patch token"):
        select_visual_tokens(tokens[:, :1], 2)


def test_diva_condition_concat_and_add():
    text, visual = torch.randn(1, 4, 8), torch.randn(3, 5, 8)
    cond = diva_condition(text, visual)
    assert cond.shape == (3, 9, 8)
    assert torch.equal(cond[:, :4], text.expand(3, -1, -1)) and torch.equal(cond[:, 4:], visual)
    added = diva_condition(text, visual[:, :4], "add")
    assert torch.allclose(added, text + visual[:, :4])
    with pytest.raises(ValueError, match="as many visual tokens"):
        diva_condition(text, visual, "add")
    with pytest.raises(ValueError, match="combine"):
        diva_condition(text, visual, "sum")


def test_per_draw_seeds():
    seeds = torch.tensor([3, 4])
    assert torch.equal(per_draw_seeds(seeds, 1), seeds)
    k2 = per_draw_seeds(seeds, 2)
    assert k2.shape == (4,) and len(set(k2.tolist())) == 4
    assert torch.equal(per_draw_seeds(seeds[1:], 2), k2[2:])  # a sample's draws do not depend on the batch


# -- the real ViT-L/14 (random weights): shapes, draws, gradients ----------------------------------------

@pytest.fixture(scope="module")
def l14_clip():
    """OpenAI ViT-L/14 @224 image tower exactly as the openai-l14 preset builds it; a small text tower (unused)."""
    return build_clip_from_config(OPENAI_L14_VISION, SMALL_TEXT, 768, processing=ImageProcessing(size=224))


@pytest.mark.slow
def test_real_l14_tokens_condition_and_gradients(l14_clip):
    decoder = small_t2i_decoder(1024)  # SD 2.1's cross-attention width, 77-token text context
    obj = DivaObjective(l14_clip, decoder)
    assert decoder.text_encoder is None, "the text encoder is dropped once the template's context is computed"
    assert obj.text_context.shape == (1, 77, 1024)
    assert isinstance(obj.projection, torch.nn.Linear)
    assert (obj.projection.in_features, obj.projection.out_features) == (768, 1024)

    pixels = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    tokens = l14_clip.image_tokens(pixels, keep_class=True)  # one image through the real tower
    assert tokens.shape == (1, 257, 768)  # class token + 16 x 16 patches, projected to 768
    batch = tokens.repeat(2, 1, 1)  # (2, 257, 768): B = 2 rows, different seeds
    selected = select_visual_tokens(batch, 76, gens([11, 12]))
    assert selected.shape == (2, 77, 768)
    assert torch.equal(selected[:, 0], batch[:, 0]), "the class token comes first"
    idx = sample_patch_indices(256, 76, gens([11, 12]))
    assert 0 <= int(idx.min()) and int(idx.max()) < 256
    assert torch.equal(selected[:, 1:], torch.stack([batch[b, 1:][idx[b]] for b in range(2)]))
    assert torch.equal(idx, sample_patch_indices(256, 76, gens([11, 12]))), "same seeds, same indices"
    assert not torch.equal(idx[0], idx[1])
    assert torch.equal(select_visual_tokens(batch, 76, gens([11, 12])), selected)

    cond = diva_condition(obj.text_context, obj.projection(selected))
    assert cond.shape == (2, 77 + 77, 1024)  # template's text hidden states, then the projected tokens
    assert torch.equal(cond[:, :77], obj.text_context.expand(2, -1, -1))

    cond[:, 77:].float().pow(2).mean().backward()
    vision = l14_clip.vision_model
    for p in (vision.embeddings.patch_embedding.weight, vision.encoder.layers[0].mlp.fc1.weight,
              l14_clip.model.visual_projection.weight, obj.projection.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert all(p.grad is None for p in l14_clip.model.text_model.parameters())
    assert all(p.grad is None and not p.requires_grad for p in decoder.parameters())


# -- diva-tiny: the objective's step -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_diva():
    return DivaObjective(build_tiny_clip(), build_tiny_t2i_decoder())


def test_condition_is_per_sample_and_reproducible(tiny_diva):
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        both = tiny_diva.condition(pixels, gens([5, 6]))
        again = tiny_diva.condition(pixels, gens([5, 6]))
        alone = tiny_diva.condition(pixels[1:], gens([6]))
        other = tiny_diva.condition(pixels, gens([5, 7]))
        tokens = tiny_diva.clip.image_tokens(pixels, keep_class=True)
    text_len = tiny_diva.text_context.shape[1]
    assert both.shape == (2, text_len + 77, 128)
    assert torch.equal(both, again)
    assert torch.allclose(both[1:], alone, atol=1e-6), "a sample's draws do not depend on the batch"
    assert not torch.allclose(both[1], other[1])
    manual = diva_condition(tiny_diva.text_context,
                            tiny_diva.projection(select_visual_tokens(tokens, 76, gens([5, 6]))))
    assert torch.allclose(both, manual, atol=1e-6)


def test_step_trains_encoder_and_projection_only(tiny_diva):
    torch.manual_seed(0)
    batch = {"clip_pixels": torch.randn(2, 3, 32, 32), "decoder_pixels": torch.rand(2, 3, 32, 32) * 2 - 1,
             "draw_seed": torch.tensor([1, 2])}
    tiny_diva.set_train_mode()
    out = tiny_diva(batch)
    assert set(out) == {"loss"} and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert all(p.grad is not None for p in tiny_diva.clip.vision_parameters())
    assert tiny_diva.projection.weight.grad is not None and tiny_diva.projection.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny_diva.clip.model.text_model.parameters())
    assert all(p.grad is None and not p.requires_grad for p in tiny_diva.decoder.parameters())
    keys = set(tiny_diva.trainable_state_dict())
    assert keys and all(k.startswith(("clip.model.vision_model.", "clip.model.visual_projection.", "projection."))
                        for k in keys)
    assert {"projection.weight", "projection.bias"} <= keys
    # two draws per image: one encoder pass, twice the noisings and token draws
    tiny_diva.draws_per_image = 2
    try:
        with torch.no_grad():
            assert torch.isfinite(tiny_diva(batch)["loss"])
    finally:
        tiny_diva.draws_per_image = 1


def test_add_condition_is_divas_own_computation():
    """DIVA's condition, written from its description (models/SD_with_OpenAICLIP.py, condition/OpenAICLIP_for_...):
    the vision transformer's class token and (77 - 1 there) patch tokens drawn uniformly with replacement, each
    through ln_post and the visual projection, then a linear layer, added to the hidden states of 'a photo of a .'."""
    objective = DivaObjective(build_tiny_clip(), build_tiny_t2i_decoder(), combine="add", n_patch_tokens=None)
    text = build_tiny_t2i_decoder().encode_prompts(["a photo of a ."])  # (1, L, C): the template, as DIVA runs it
    length = text.shape[1]
    assert objective.n_patch_tokens == length - 1  # DIVA's int(77 - 1) for the world's template length
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    vision = objective.clip.model.vision_model
    with torch.no_grad():
        ours = objective.condition(pixels, gens([21, 22]))
        hidden = vision(pixel_values=pixels).last_hidden_state  # (B, 1 + P, W) before ln_post
        rows = []
        for b, seed in enumerate((21, 22)):
            picks = torch.randint(0, hidden.shape[1] - 1, (length - 1,), generator=torch.Generator().manual_seed(seed))
            x = torch.cat([hidden[b, :1], hidden[b, 1:][picks]])  # class token, then the drawn patches
            x = objective.clip.model.visual_projection(vision.post_layernorm(x))
            rows.append(text[0] + objective.projection(x))  # context = context + image_features
        theirs = torch.stack(rows)
    assert ours.shape == (2, length, text.shape[-1])
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_summed_draws_are_k_times_the_mean(tiny_diva):
    batch = {"clip_pixels": torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2)),
             "decoder_pixels": torch.rand(2, 3, 32, 32) * 2 - 1, "draw_seed": torch.tensor([3, 4])}
    tiny_diva.draws_per_image = 2
    try:
        with torch.no_grad():
            mean = tiny_diva(batch)["loss"]
            tiny_diva.sum_draws = True
            summed = tiny_diva(batch)
    finally:
        tiny_diva.draws_per_image, tiny_diva.sum_draws = 1, False
    assert summed["loss"].item() == pytest.approx(2 * mean.item(), rel=1e-6)
    assert summed["loss_per_draw"].item() == pytest.approx(mean.item(), rel=1e-6)


def test_divas_mmvp_readout_is_class_token_plus_mean_of_drawn_patches():
    from un2clip.eval.encoder.mmvp import DivaReadout, diva_readout

    tokens = torch.tensor([[[1.0, 1.0], [0.0, 0.0], [2.0, 4.0], [4.0, 8.0]]])  # class, then three patches
    # patches 0, 2, 2: mean (8/3, 16/3), plus the class token
    assert torch.allclose(diva_readout(tokens, torch.tensor([[0, 2, 2]])), torch.tensor([[11 / 3, 19 / 3]]))
    clip = build_tiny_clip()
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        ours = DivaReadout(clip, seed=5).encode_image(pixels)
        # DIVA's forward: ln_post and proj on the class token and on 76 patches drawn with replacement, then
        # global + local.mean
        hidden = clip.model.vision_model(pixel_values=pixels).last_hidden_state
        out = clip.model.visual_projection(clip.model.vision_model.post_layernorm(hidden))
        picks = torch.randint(0, out.shape[1] - 1, (2, 76), generator=torch.Generator().manual_seed(5))
        theirs = out[:, 0] + torch.stack([out[b, 1:][picks[b]].mean(0) for b in range(2)])
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert not torch.allclose(ours, clip.encode_image(pixels), atol=1e-3)  # not the pooled embedding


def test_presets_keep_decoder_kinds_apart():
    from un2clip.load import load_decoder, load_t2i_decoder
    from un2clip.models.presets import PRESETS

    assert PRESETS["diva-openai-l14"].decoder == "stabilityai/stable-diffusion-2-1-base"
    assert PRESETS["diva-tiny"].decoder_kind == "t2i" and PRESETS["tiny"].decoder_kind == "unclip"
    with pytest.raises(ValueError, match="text-to-image"):
        load_decoder("diva-tiny")
    with pytest.raises(ValueError, match="no text-to-image decoder"):
        load_t2i_decoder("tiny")
    with pytest.raises(ValueError, match="class token"):
        DivaObjective(_siglip_like(), build_tiny_t2i_decoder())


def _siglip_like():
    clip = build_tiny_clip()
    clip.family = "siglip"
    return clip


# -- parity with diffusers' StableDiffusionPipeline ------------------------------------------------------------

def test_loads_stable_diffusion_layout_and_matches_pipeline(tmp_path):
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    from un2clip.models.t2i import TextToImageDecoder, clip_text_encoder

    torch.manual_seed(0)
    text_encoder, tokenizer = clip_text_encoder(build_clip_from_config(SMALL_VISION, SMALL_TEXT, 32,
                                                                       processing=ImageProcessing(size=16)))
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=8, norm_num_groups=8)
    vae = AutoencoderKL(block_out_channels=(8, 16), latent_channels=4, norm_num_groups=8, scaling_factor=0.18215,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=DDIMScheduler(**SD21_BASE_SCHEDULER), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(tmp_path / "sd")
    dec = TextToImageDecoder.from_pretrained(tmp_path / "sd")
    assert dec.image_size == 16 and dec.vae_scale == pytest.approx(0.18215) and dec.prediction_type == "epsilon"
    prompt = "a photo of a ."
    ours = dec.encode_prompts([prompt])
    theirs, _ = pipe.encode_prompt(prompt, "cpu", 1, False)
    assert torch.allclose(ours, theirs, atol=1e-6)
    # latents = VAE latent mean x 0.18215; noising and epsilon target as DDPM defines them
    pixels = torch.rand(2, 3, 16, 16) * 2 - 1
    latents = dec.encode_pixels(pixels)
    with torch.no_grad():
        assert torch.allclose(latents, pipe.vae.encode(pixels).latent_dist.mean * 0.18215, atol=1e-6)
        t, noise = torch.tensor([10, 900]), torch.randn(2, 4, 8, 8)
        ctx = ours.expand(2, -1, -1)
        loss = dec.diffusion_loss(latents, ctx, timesteps=t, noise=noise)
        a = pipe.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
        expected = (pipe.unet(noisy, t, encoder_hidden_states=ctx).sample - noise).pow(2).mean()
    assert torch.allclose(loss, expected, atol=1e-5)
    images = dec.generate([prompt], num_inference_steps=2, guidance_scale=2.0)
    assert images.shape == (1, 3, 16, 16) and images.abs().max() <= 1


# -- the CLI on the one loop: train the tiny text-to-image decoder, then DIVA, then evaluate -----------------------

def _captioned_images(root, n=12):
    """``root/captions.csv`` and its PNGs: a red or blue square on grey, captioned by its colour."""
    from PIL import Image

    rng = random.Random(0)
    rows = [["image", "caption"]]
    for i in range(n):
        colour = rng.choice([("red", (220, 30, 30)), ("blue", (30, 30, 220))])
        im = Image.new("RGB", (36, 32), (128, 128, 128))
        x, y = rng.randint(0, 20), rng.randint(0, 16)
        im.paste(colour[1], (x, y, x + 12, y + 12))
        im.save(root / f"{i}.png")
        rows.append([f"{i}.png", f"a {colour[0]} square"])
    with open(root / "captions.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return root / "captions.csv"


@pytest.fixture(scope="module")
def t2i_run(tmp_path_factory):
    """A 2-step text-to-image decoder run on the text tower of a (perturbed, saved) tiny CLIP."""
    root = tmp_path_factory.mktemp("t2i")
    (root / "img").mkdir()
    data = _captioned_images(root / "img")
    clip = build_tiny_clip()
    with torch.no_grad():
        clip.model.text_model.embeddings.token_embedding.weight.add_(0.1)
    clip.save_pretrained(root / "clip")
    out = root / "run"
    assert cli(["train-decoder", "--text-conditioned", "--preset", "diva-tiny", "--clip", str(root / "clip"),
                "--data", str(data), "--max-steps", "2", "--batch-size", "4", "--lr", "1e-3",
                "--no-progress", "--output", str(out)]) == 0
    return root, out


@pytest.mark.slow
def test_train_decoder_text_conditioned_writes_pipeline_folder(t2i_run):
    from un2clip.load import load_t2i_decoder
    from un2clip.models.clip import ClipModel

    root, run = t2i_run
    for sub in ("unet", "scheduler", "text_encoder", "tokenizer"):
        assert (run / "decoder" / sub).is_dir(), sub
    assert json.loads((run / "un2clip_run.json").read_text())["kind"] == "t2i-decoder"
    dec = load_t2i_decoder(str(run))
    fresh = build_tiny_t2i_decoder()
    changed = [k for k, v in dec.unet.state_dict().items() if not torch.equal(v, fresh.unet.state_dict()[k])]
    assert changed, "the UNet did not train"
    # the text encoder is the given CLIP's text tower, untouched
    clip = ClipModel.from_pretrained(root / "clip")
    with torch.no_grad():
        ids = dec.tokenize(["a red square"])
        expected = clip.model.text_model(input_ids=ids).last_hidden_state
    assert torch.allclose(dec.encode_prompts(["a red square"]), expected, atol=1e-6)
    assert dec.generate(["a red square"], num_inference_steps=2).shape == (1, 3, 32, 32)
    # a run that has not finished loads from its checkpoint: the same UNet
    import shutil

    shutil.copytree(run, root / "unfinished", ignore=shutil.ignore_patterns("decoder"))
    again = load_t2i_decoder(str(root / "unfinished"))
    assert all(torch.equal(v, again.unet.state_dict()[k]) for k, v in dec.unet.state_dict().items())
    assert torch.allclose(again.encode_prompts(["a red square"]), expected, atol=1e-6)


@pytest.mark.slow
def test_diva_runs_through_the_loop_and_evaluators_load_it(t2i_run, tmp_path):
    from safetensors.torch import load_file

    from un2clip.models.clip import ClipModel
    from un2clip.runs import latest_checkpoint, load_checkpoint

    root, t2i = t2i_run
    out = tmp_path / "diva"
    assert cli(["diva", "--preset", "diva-tiny", "--clip", str(root / "clip"), "--decoder", str(t2i),
                "--data", str(root / "img"), "--max-steps", "3", "--batch-size", "4", "--optimizer", "sgd", "--lr", "1e-2",
                "--lr-schedule", "cosine", "--warmup-steps", "1", "--save-every", "2", "--no-progress",
                "--output", str(out)]) == 0
    info = json.loads((out / "un2clip_run.json").read_text())
    assert info["kind"] == "diva" and info["t2i_decoder"] == str(t2i) and "decoder" not in info
    saved = load_checkpoint(latest_checkpoint(out))["trainable"]
    assert saved and all(k.startswith(("clip.model.vision_model.", "clip.model.visual_projection.", "projection."))
                         for k in saved), "only the image tower and the projection are checkpointed"
    trained = ClipModel.from_pretrained(out / "clip")
    start = ClipModel.from_pretrained(root / "clip")
    assert any(not torch.equal(v, start.vision_state_dict()[k]) for k, v in trained.vision_state_dict().items())
    assert all(torch.equal(v, start.model.state_dict()[k])
               for k, v in trained.model.state_dict().items() if k.startswith("text_model."))
    proj = load_file(str(out / "diva_projection.safetensors"))
    assert proj["weight"].shape == (128, 128) and proj["bias"].shape == (128,)
    # the evaluators take the run directory like any other model
    folder = tmp_path / "zs"
    for name in ("red", "blue"):
        (folder / name).mkdir(parents=True)
    for i, png in enumerate(sorted((root / "img").glob("*.png"))[:4]):
        (folder / ("red", "blue")[i % 2] / png.name).write_bytes(png.read_bytes())
    (tmp_path / "templates.txt").write_text("a photo of a {c}.\n")
    assert cli(["eval", "zeroshot", "--model", str(out), "--data", str(folder), "--output", str(tmp_path / "res"),
                "--templates", str(tmp_path / "templates.txt"), "--no-progress"]) == 0
    assert list((tmp_path / "res").rglob("*.json"))


def test_recipe_has_diva_defaults_and_fits_the_objective():
    import inspect
    from pathlib import Path

    from un2clip.train.config import load_config

    cfg = load_config(Path(__file__).parent.parent / "configs" / "diva_openai_l14.yaml")
    assert (cfg.objective, cfg.preset, cfg.optimizer, cfg.lr_schedule) == ("diva", "diva-openai-l14", "sgd", "cosine")
    assert cfg.lr == pytest.approx(1e-4) and cfg.max_steps == 4600 and cfg.batch_size == 640
    assert cfg.warmup_steps == round(0.005 * 4600)
    assert set(cfg.objective_options) <= set(inspect.signature(DivaObjective.__init__).parameters)
    assert cfg.objective_options["n_patch_tokens"] == 76
