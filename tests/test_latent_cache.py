"""`un2clip cache-latents`: the cached path gives the on-the-fly loss on the same crops and draws.

The decoder here is latent-space (a tiny AutoencoderKL + UNet built from configs), so the
VAE really runs when the cache is written and really is skipped when it is read.

Tolerances. The CLIP view is stored as the uint8 pixels CLIP preprocessing produces before
it turns them into floats, so it is compared bit for bit. The latents are stored in float16:
each element carries a relative rounding error of at most 2^-11 (4.9e-4). (1) Against
on-the-fly latents rounded to float16 the two steps see identical inputs up to the VAE
having run on batches of different size (convolution kernels may sum in another order,
~1e-7 relative, which can flip a float16 rounding only for values at a rounding boundary):
rtol 1e-5. (measured: equal). (2) Against unrounded on-the-fly latents the loss, a smooth function
of the latents (noisy = a·x + b·ε, v-target = a·ε - b·x), moves at most by a small multiple
of the latents' relative error: rtol 2e-3 (measured over three seeds: 2e-7 to 2e-6, since
the independent rounding errors of 1024 elements per sample average out in the mean).
"""

import json

import pytest
import torch

from tests.test_train import _images
from un2clip.cli import main as cli


def _tiny_latent_decoder(embed_dim: int = 128, image_size: int = 32):
    """A latent-space unCLIP decoder: tiny AutoencoderKL (factor 2, 4 channels) + UNet on 16 x 16 latents."""
    from un2clip.models.presets import build_decoder_from_config

    vae = {"in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 1,
           "block_out_channels": (16, 32), "down_block_types": ("DownEncoderBlock2D",) * 2,
           "up_block_types": ("UpDecoderBlock2D",) * 2, "norm_num_groups": 8, "sample_size": image_size,
           "scaling_factor": 0.5}
    unet = {"sample_size": image_size // 2, "in_channels": 4, "out_channels": 4, "layers_per_block": 1,
            "block_out_channels": (32, 64), "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
            "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"), "cross_attention_dim": 32,
            "attention_head_dim": 8, "norm_num_groups": 8}
    scheduler = {"num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2",
                 "prediction_type": "v_prediction", "clip_sample": False, "set_alpha_to_one": False}
    return build_decoder_from_config(unet, embed_dim=embed_dim, scheduler=scheduler, vae=vae,
                                     context_shape=(1, 32), image_size=image_size, seed=1)


def _first_batch(source, objective, seed, batch_size=8):
    from un2clip.data.loader import make_loader

    return next(iter(make_loader(source, objective.transform, batch_size=batch_size, seed=seed)))


@pytest.mark.slow
def test_cached_latents_give_the_on_the_fly_loss(tmp_path):
    from un2clip.data import open_source
    from un2clip.data.latent_cache import LatentCacheSource, cache_latents
    from un2clip.models.presets import build_tiny_clip
    from un2clip.objectives.un2clip import Un2ClipObjective

    images = open_source(str(_images(tmp_path / "img", 12, corrupt=2)))  # 40 x 48: the random crop matters
    objective = Un2ClipObjective(build_tiny_clip(), _tiny_latent_decoder(), timesteps_per_image=2).eval()
    seed = 7
    index = cache_latents(images, objective.clip.processing, objective.decoder, tmp_path / "cache", seed=seed,
                          shard_size=5, batch_size=3, progress=False)
    assert (index["n_samples"], index["n_cached"], index["n_bad"]) == (14, 12, 2)
    assert len(index["shards"]) == 3 and index["latents"]["shape"] == [4, 16, 16]
    cache = open_source(str(tmp_path / "cache"))
    assert isinstance(cache, LatentCacheSource) and len(cache) == len(images)
    assert [cache.key(i) for i in range(len(cache))] == [images.key(i) for i in range(len(images))]
    bad = [i for i in range(len(images)) if images.load(i) is None]
    assert bad and all(cache.load(i) is None for i in bad)

    fly = _first_batch(images, objective, seed)
    cached = _first_batch(cache, objective, seed)
    assert "decoder_pixels" in fly and "latents" not in fly and "decoder_pixels" not in cached
    # same samples, same draw seeds, same CLIP input (bit for bit): the crops are the same
    assert torch.equal(fly["index"], cached["index"]) and fly["n_bad"] == cached["n_bad"] > 0
    assert torch.equal(fly["draw_seed"], cached["draw_seed"])
    assert torch.equal(fly["clip_pixels"], cached["clip_pixels"])
    assert cached["latents"].dtype == torch.float16

    with torch.no_grad():
        latents = objective.decoder.encode_pixels(fly["decoder_pixels"])  # the VAE, batch of 8 (cache: 3)
        torch.testing.assert_close(cached["latents"].float(), latents.half().float(), rtol=1e-3, atol=1e-4)
        common = {k: fly[k] for k in ("clip_pixels", "draw_seed")}
        loss_fly = objective(fly)["loss"]
        loss_rounded = objective({**common, "latents": latents.half()})["loss"]

        def no_vae(*args, **kwargs):
            raise AssertionError("the VAE ran on a cached batch")

        objective.decoder.vae.encode = no_vae
        loss_cached = objective(cached)["loss"]
    torch.testing.assert_close(loss_cached, loss_rounded, rtol=1e-5, atol=0)
    torch.testing.assert_close(loss_cached, loss_fly, rtol=2e-3, atol=0)


@pytest.mark.slow
def test_cache_latents_cli_then_finetune_reads_the_cache(tmp_path, capsys):
    images = _images(tmp_path / "img", 16)
    decoder_dir = _tiny_latent_decoder().save_pretrained(tmp_path / "decoder")
    cache = tmp_path / "cache"
    assert cli(["cache-latents", "--decoder", str(decoder_dir), "--clip", "tiny", "--data", str(images),
                "--output", str(cache), "--seed", "3", "--shard-size", "6", "--no-progress"]) == 0
    assert "cached 16 of 16 images" in capsys.readouterr().out
    index = json.loads((cache / "un2clip_latents.json").read_text())
    assert index["latents"]["space"] == "vae" and index["seed"] == 3 and len(index["shards"]) == 3
    run = tmp_path / "run"
    args = ["finetune", "--clip", "tiny", "--decoder", str(decoder_dir), "--data", str(cache), "--seed", "3",
            "--batch-size", "8", "--max-steps", "2", "--lr", "1e-4", "--no-progress", "--output", str(run)]
    assert cli(args) == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    # the tiny preset's decoder is pixel-space at 32 px: the cache (VAE latents 4 x 16 x 16) does not fit it
    assert cli(args[:4] + ["tiny"] + args[5:-1] + [str(tmp_path / "run2")]) == 2
    assert "does not fit" in capsys.readouterr().err
    # a cache is refused by objectives that need the images
    assert cli(["pretrain", "--preset", "tiny", "--data", str(cache), "--max-steps", "1", "--no-progress",
                "--output", str(tmp_path / "run3")]) == 2
    assert "latent cache" in capsys.readouterr().err


@pytest.mark.parametrize("random_crop", [True, False])
def test_cached_views_consume_the_rng_as_two_views_does(random_crop):
    import random

    from PIL import Image

    from un2clip.data.latent_cache import CachedSample
    from un2clip.models.clip import ImageProcessing
    from un2clip.objectives.un2clip import cached_views, two_views

    proc = ImageProcessing(size=16)
    record = type("R", (), {"image": Image.new("RGB", (30, 20), (10, 200, 30)), "text": None, "key": "k"})()
    sample = CachedSample(latents=torch.zeros(3, 8, 8, dtype=torch.float16),
                          clip_pixels=torch.zeros(3, 16, 16, dtype=torch.uint8), width=30, height=20, key="k")
    a = two_views(record, random.Random(5), proc, 8, random_crop=random_crop)
    b = cached_views(sample, random.Random(5), proc, random_crop=random_crop)
    assert int(a["draw_seed"]) == int(b["draw_seed"])
