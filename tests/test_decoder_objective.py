"""Training an unCLIP decoder: the plain loss is the denoising MSE; Min-SNR-γ weights by hand."""

import pytest
import torch

from un2clip.objectives.decoder import DecoderObjective, min_snr_weights


def test_min_snr_weights_by_hand():
    abar = torch.tensor([0.99, 0.5, 0.01])  # SNR 99, 1, 1/99
    t = torch.tensor([0, 1, 2])
    snr = torch.tensor([99.0, 1.0, 1 / 99])
    v = min_snr_weights(abar, t, 5.0, "v_prediction")
    assert torch.allclose(v, torch.minimum(snr, torch.tensor(5.0)) / (snr + 1), rtol=1e-6)
    assert v[0].item() == pytest.approx(5 / 100) and v[1].item() == pytest.approx(0.5)
    eps = min_snr_weights(abar, t, 5.0, "epsilon")
    assert torch.allclose(eps, torch.tensor([5 / 99, 1.0, 1.0]), rtol=1e-6)
    assert torch.allclose(min_snr_weights(abar, t, 5.0, "sample"), torch.tensor([5.0, 1.0, 1 / 99]), rtol=1e-6)
    with pytest.raises(ValueError, match="prediction_type"):
        min_snr_weights(abar, t, 5.0, "flow")


def _batch(n=4):
    g = torch.Generator().manual_seed(0)
    return {"clip_pixels": torch.randn(n, 3, 32, 32, generator=g),
            "decoder_pixels": torch.rand(n, 3, 32, 32, generator=g) * 2 - 1,
            "draw_seed": torch.arange(n, dtype=torch.int64) + 11}


def test_plain_loss_is_the_mean_squared_error_and_gamma_reweights_it():
    from un2clip.models.presets import build_tiny_clip, build_tiny_decoder

    clip, decoder = build_tiny_clip(), build_tiny_decoder()
    plain = DecoderObjective(clip, decoder, p_uncond=0.0, max_noise_level=0)  # level 0: the embedding as is
    batch = _batch()
    loss = plain(batch)["loss"]
    # by hand: the same per-sample draws, the decoder's own noising and target
    embeds = clip.encode_image(batch["clip_pixels"]).float()
    latents = batch["decoder_pixels"]
    t, noise, embed_noise = decoder.draws_from_seeds(batch["draw_seed"], latents)
    labels = decoder.condition(embeds, torch.zeros(4, dtype=torch.long), noise=embed_noise)
    noisy = decoder.train_scheduler.add_noise(latents, noise, t)
    per_sample = (decoder.predict(noisy, t, labels).float() - decoder.loss_target(latents, noise, t)).pow(2)
    per_sample = per_sample.flatten(1).mean(1)
    assert loss.item() == pytest.approx(per_sample.mean().item(), rel=1e-5)
    weighted = DecoderObjective(clip, decoder, p_uncond=0.0, max_noise_level=0, snr_gamma=5.0)(batch)["loss"]
    w = min_snr_weights(decoder.train_scheduler.alphas_cumprod, t, 5.0, decoder.prediction_type)
    assert weighted.item() == pytest.approx((per_sample * w).mean().item(), rel=1e-5)
    with pytest.raises(ValueError, match="snr_gamma"):
        DecoderObjective(clip, decoder, snr_gamma=0.0)
