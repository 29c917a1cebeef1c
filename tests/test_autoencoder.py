"""The latent decoder's first stage: `un2clip train-autoencoder` and the latent-variance scaling factor."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from un2clip.cli import main as cli


def _images(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        arr = np.full((32, 32, 3), 230, np.uint8)
        x, y = rng.integers(2, 20, 2)
        arr[y:y + 10, x:x + 10] = rng.integers(0, 255, 3)
        Image.fromarray(arr).save(folder / f"{i:03d}.png")
    return folder


def test_latent_variance_estimate_and_scaling_factor():
    from un2clip.models.presets import build_tiny_latent_decoder
    from un2clip.objectives.autoencoder import AutoencoderObjective

    obj = AutoencoderObjective(build_tiny_latent_decoder(), std_momentum=0.5)
    assert obj.scaling_factor() == 1.0  # nothing seen: the VAE's own factor
    a = torch.tensor([0.0, 2.0, 4.0, 6.0])  # variance 20 / 3 (unbiased)
    obj.update_latent_var(a)
    assert float(obj.latent_var) == pytest.approx(20 / 3)
    obj.update_latent_var(torch.tensor([1.0, 1.0, 3.0, 3.0]))  # variance 4 / 3; halfway with momentum 0.5
    assert float(obj.latent_var) == pytest.approx(12 / 3)
    assert obj.scaling_factor() == pytest.approx(1 / math.sqrt(4.0))


def test_pixel_space_decoder_has_no_autoencoder_to_train():
    from un2clip.models.presets import build_tiny_decoder
    from un2clip.objectives.autoencoder import AutoencoderObjective

    with pytest.raises(ValueError, match="no VAE"):
        AutoencoderObjective(build_tiny_decoder())


def test_train_autoencoder_then_decoder_on_its_frozen_vae(tmp_path):
    from un2clip.load import load_decoder
    from un2clip.models.presets import build_tiny_latent_decoder
    from un2clip.runs import latest_checkpoint, load_checkpoint

    data = _images(tmp_path / "img", 24)
    ae = tmp_path / "ae"
    args = ["--preset", "tiny-latent", "--data", str(data), "--batch-size", "8", "--lr", "1e-3", "--no-progress"]
    assert cli(["train-autoencoder", *args, "--max-steps", "3", "--output", str(ae)]) == 0
    decoder = load_decoder(str(ae))
    fresh = build_tiny_latent_decoder()
    # the VAE trained and carries the measured factor; the UNet is the preset's, untouched
    state = load_checkpoint(latest_checkpoint(ae))["trainable"]
    assert decoder.vae_scale == pytest.approx(1 / math.sqrt(float(state["latent_var"])))
    assert decoder.vae_scale != 1.0
    assert any(not torch.equal(v, fresh.vae.state_dict()[k]) for k, v in decoder.vae.state_dict().items())
    assert all(torch.equal(v, fresh.unet.state_dict()[k]) for k, v in decoder.unet.state_dict().items())
    # second stage: the UNet trains on the frozen VAE's latents
    dec = tmp_path / "dec"
    assert cli(["train-decoder", *args, "--decoder", str(ae), "--max-steps", "2", "--output", str(dec)]) == 0
    trained = load_decoder(str(dec))
    assert all(torch.equal(v, decoder.vae.state_dict()[k]) for k, v in trained.vae.state_dict().items())
    assert trained.vae_scale == decoder.vae_scale
    assert any(not torch.equal(v, fresh.unet.state_dict()[k]) for k, v in trained.unet.state_dict().items())
