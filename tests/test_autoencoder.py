"""The latent decoder's first stage: `un2clip train-autoencoder` and the latent-variance scaling factor."""

import math

import pytest
import torch

from tests.test_train import _images
from un2clip.cli import main as cli


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


@pytest.mark.slow
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


def test_set_vae_refuses_what_the_unet_cannot_read():
    from diffusers import AutoencoderKL

    from un2clip.models.presets import TINY_VAE, build_tiny_decoder, build_tiny_latent_decoder

    with pytest.raises(ValueError, match="pixel space"):
        build_tiny_decoder().set_vae(AutoencoderKL(**TINY_VAE))
    with pytest.raises(ValueError, match="8-channel latents"):
        build_tiny_latent_decoder().set_vae(AutoencoderKL(**{**TINY_VAE, "latent_channels": 8}))
    decoder = build_tiny_latent_decoder()
    vae = AutoencoderKL(**{**TINY_VAE, "scaling_factor": 0.5})
    decoder.set_vae(vae)
    assert decoder.vae is vae and decoder.vae_scale == 0.5


@pytest.mark.slow
def test_vae_flag_gives_every_generator_the_same_first_stage(tmp_path):
    """train-decoder --vae (unCLIP, GenHancer's light one, DIVA's text-to-image one) uses the given VAE, also
    when the decoder is rebuilt from an unfinished run's checkpoint."""
    import shutil

    from un2clip.load import load_decoder, load_run_decoder, load_t2i_decoder, load_vae
    from un2clip.models.presets import TINY_VAE

    data = _images(tmp_path / "img", 16)
    ae = tmp_path / "ae"
    common = ["--data", str(data), "--batch-size", "4", "--lr", "1e-3", "--no-progress", "--max-steps", "2"]
    assert cli(["train-autoencoder", "--preset", "tiny-latent", *common, "--output", str(ae)]) == 0
    vae = load_vae(str(ae))
    assert vae.config.scaling_factor != TINY_VAE["scaling_factor"]

    def same_vae(decoder) -> bool:
        return decoder.vae_scale == vae.config.scaling_factor and all(
            torch.equal(v, vae.state_dict()[k]) for k, v in decoder.vae.state_dict().items())

    light = tmp_path / "light"
    assert cli(["train-decoder", "--preset", "genhancer-tiny-latent", "--vae", str(ae), *common,
                "--output", str(light)]) == 0
    assert same_vae(load_decoder(str(light)))
    shutil.rmtree(light / "decoder")  # as if stopped before the end: rebuilt from marker + checkpoint
    assert same_vae(load_run_decoder(light))
    t2i = tmp_path / "t2i"
    captions = tmp_path / "captions.csv"
    captions.write_text("image,caption\n" + "".join(f"{p},a red square\n" for p in sorted(data.glob("*.png"))))
    assert cli(["train-decoder", "--text-conditioned", "--preset", "diva-tiny-latent", "--vae", str(ae),
                "--data", str(captions), *common[2:], "--output", str(t2i)]) == 0
    assert same_vae(load_t2i_decoder(str(t2i)))


@pytest.mark.slow
def test_train_decoder_no_progress_draws_no_bar(tmp_path, capfd):
    # --no-progress covers the decoder's set-up too: its pass over the images for the embedding statistics
    data = _images(tmp_path / "img", 8)
    common = ["--preset", "tiny", "--data", str(data), "--batch-size", "4", "--max-steps", "1"]
    assert cli(["train-decoder", *common, "--no-progress", "--output", str(tmp_path / "quiet")]) == 0
    assert "embedding statistics" not in capfd.readouterr().err
    assert cli(["train-decoder", *common, "--output", str(tmp_path / "loud")]) == 0
    assert "embedding statistics" in capfd.readouterr().err
