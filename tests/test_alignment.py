"""Keeping alignment while fine-tuning: the anchor term and LoRA adapters of the un²CLIP objective."""

import copy
import json
import sys
from pathlib import Path

import pytest
import torch

from tests.test_train import _images
from un2clip.cli import main as cli


def _batch(n: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"clip_pixels": torch.randn(n, 3, 32, 32, generator=g),
            "decoder_pixels": torch.rand(n, 3, 32, 32, generator=g) * 2 - 1, "draw_seed": torch.arange(n)}


def _objective(clip, decoder, **options):
    """A fresh objective around a copy of the session's tiny CLIP (the frozen decoder can be shared)."""
    from un2clip.objectives.un2clip import Un2ClipObjective

    return Un2ClipObjective(copy.deepcopy(clip), decoder, **options)


def _metrics(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]


# -- anchor ------------------------------------------------------------------------------------------

def test_anchor_distance_known_values():
    from un2clip.objectives.un2clip import anchor_distance

    e = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert float(anchor_distance(e, e)) == pytest.approx(0.0, abs=1e-7)
    assert float(anchor_distance(e, 3 * e)) == pytest.approx(0.0, abs=1e-7)  # blind to the norm
    assert float(anchor_distance(e, torch.tensor([[0.0, 1.0], [0.0, -1.0]]))) == pytest.approx((1.0 + 2.0) / 2)


@pytest.mark.slow
def test_zero_anchor_weight_is_the_plain_loss_and_builds_no_copy(tiny_clip, tiny_decoder):
    plain, zero = _objective(tiny_clip, tiny_decoder), _objective(tiny_clip, tiny_decoder, anchor_weight=0.0)
    assert zero.anchor is None
    batch = _batch()
    a, b = plain(batch), zero(batch)
    assert torch.equal(a["loss"], b["loss"]) and "anchor" not in b
    # "as before": the frozen decoder's diffusion loss of the encoder's embedding, draws from the batch seeds
    dec = plain.decoder
    embeds = plain.clip.encode_image(batch["clip_pixels"]).float()
    latents = dec.encode_pixels(batch["decoder_pixels"])
    t, noise, embed_noise = dec.draws_from_seeds(batch["draw_seed"], latents)
    ref = dec.diffusion_loss(embeds, latents, timesteps=t, noise=noise, noise_level=0, embed_noise=embed_noise)
    assert torch.equal(a["loss"], ref)


@pytest.mark.slow
def test_anchor_is_zero_at_start_then_positive_and_pulls_the_encoder(tiny_clip, tiny_decoder):
    from un2clip.objectives.un2clip import anchor_distance

    objective = _objective(tiny_clip, tiny_decoder, anchor_weight=2.0)
    batch = _batch()
    out = objective(batch)
    assert float(out["anchor"]) == pytest.approx(0.0, abs=1e-6)
    # diffusion_loss is the plain loss (the test above pins it to the plain computation)
    torch.testing.assert_close(out["loss"], out["diffusion_loss"], atol=1e-6, rtol=0)
    assert torch.equal(out["diffusion_loss"], _objective(tiny_clip, tiny_decoder)(batch)["loss"])
    # the copy is frozen and stays out of checkpoints
    assert all(not p.requires_grad for p in objective.anchor.parameters())
    assert all(k.startswith("clip.model.vision_model.") or k.startswith("clip.model.visual_projection.")
               for k in objective.trainable_state_dict())
    with torch.no_grad():
        for p in objective.clip.vision_parameters():
            p.add_(0.05 * torch.randn_like(p))
    out = objective(batch)
    assert float(out["anchor"]) > 1e-4
    torch.testing.assert_close(out["loss"], out["diffusion_loss"] + 2.0 * out["anchor"])
    # the anchor term alone sends gradients to the encoder, none to the frozen copy
    x = batch["clip_pixels"]
    anchor_distance(objective.clip.encode_image(x), objective.anchor(x)).backward()
    grads = [p.grad for p in objective.clip.vision_parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in objective.anchor.parameters())


@pytest.mark.slow
def test_anchor_weight_flag_logs_the_term(tmp_path):
    data = _images(tmp_path / "img", 4)
    out = tmp_path / "run"
    assert cli(["finetune", "--preset", "tiny", "--data", str(data), "--batch-size", "2", "--lr", "1e-3",
                "--max-steps", "2", "--anchor-weight", "0.5", "--output", str(out), "--no-progress"]) == 0
    rows = _metrics(out)
    assert [r["step"] for r in rows] == [1, 2] and all("anchor" in r and "diffusion_loss" in r for r in rows)
    assert rows[-1]["anchor"] > 0  # the first step moved the encoder away from the original
    assert json.loads((out / "un2clip_run.json").read_text())["projector"] == "none"
    assert not any("anchor" in p.name for p in (out / "clip").iterdir())


# -- LoRA ----------------------------------------------------------------------------------------------

def test_lora_trains_only_the_adapters(tiny_clip, tiny_decoder):
    objective = _objective(tiny_clip, tiny_decoder, lora_rank=4)
    names = [n for n, p in objective.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    # tiny tower: 4 blocks x (q, k, v, out 128->128 and fc1 128->512, fc2 512->128) at rank 4
    per_block = 4 * 4 * (128 + 128) + 2 * 4 * (128 + 512)
    assert sum(p.numel() for p in objective.trainable_parameters()) == 4 * per_block == 36864
    assert all(not p.requires_grad for p in objective.clip.model.text_model.parameters())
    assert all(not p.requires_grad for p in objective.clip.visual_projection.parameters())
    with pytest.raises(ValueError, match="not linear layers"):
        _objective(tiny_clip, tiny_decoder, lora_rank=4, lora_targets=["query"])


def test_lora_merged_output_encodes_like_the_adapter_model(tmp_path, tiny_clip, tiny_decoder):
    from un2clip.models.clip import ClipModel
    from un2clip.models.presets import build_tiny_clip

    objective = _objective(tiny_clip, tiny_decoder, lora_rank=4, lora_alpha=8)
    with torch.no_grad():  # adapters start as a no-op (B = 0): give them weights
        for n, p in objective.named_parameters():
            if "lora_B" in n:
                p.copy_(0.05 * torch.randn_like(p))
    x = _batch()["clip_pixels"]
    with torch.no_grad():
        adapted = objective.clip.encode_image(x)
    objective.save_outputs(tmp_path)
    merged = ClipModel.from_pretrained(tmp_path / "clip")
    original = build_tiny_clip()
    assert not any("lora" in k for k in merged.model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(merged.encode_image(x), adapted, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(original.encode_image(x), adapted, atol=1e-3)
    # the training model keeps its adapters; the text tower is the original's
    assert any("lora_" in n for n, _ in objective.named_parameters())
    text = {k: v for k, v in original.model.state_dict().items() if k.startswith("text_")}
    assert text and all(torch.equal(merged.model.state_dict()[k], v) for k, v in text.items())


@pytest.mark.slow
def test_lora_run_resumes_and_checkpoint_loads_merged(tmp_path):
    from un2clip.load import load_run_clip
    from un2clip.models.clip import ClipModel
    from un2clip.runs import latest_checkpoint, load_checkpoint

    data = _images(tmp_path / "img", 8)
    args = ["finetune", "--preset", "tiny", "--data", str(data), "--batch-size", "2", "--lr", "1e-2",
            "--lora-rank", "2", "--lora-targets", "q_proj,v_proj", "--save-every", "1", "--no-progress"]
    ref, part = tmp_path / "ref", tmp_path / "part"
    assert cli(args + ["--max-steps", "3", "--output", str(ref)]) == 0
    assert cli(args + ["--max-steps", "1", "--output", str(part)]) == 0
    assert cli(["finetune", "--resume", str(part), "--max-steps", "3", "--no-progress"]) == 0
    a, b = _metrics(ref), _metrics(part)
    assert len(a) == 3 and [r["loss"] for r in a] == [r["loss"] for r in b]
    saved = load_checkpoint(latest_checkpoint(part))["trainable"]
    assert saved and all("lora_" in k and (".q_proj." in k or ".v_proj." in k) for k in saved)
    assert json.loads((part / "un2clip_run.json").read_text())["lora"] == {"rank": 2, "targets": ["q_proj", "v_proj"]}
    # a run with checkpoints only (no final clip/) loads as base + adapters, merged
    x = _batch()["clip_pixels"]
    final = ClipModel.from_pretrained(part / "clip")
    import shutil

    shutil.rmtree(part / "clip")
    with torch.no_grad():
        torch.testing.assert_close(load_run_clip(part).encode_image(x), final.encode_image(x), atol=1e-5, rtol=1e-5)


def test_lora_without_peft_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft -> ImportError
    data = _images(tmp_path / "img", 4)
    rc = cli(["finetune", "--preset", "tiny", "--data", str(data), "--batch-size", "4", "--max-steps", "1",
              "--lora-rank", "2", "--output", str(tmp_path / "run"), "--no-progress"])
    assert rc == 2
    assert "un2clip[lora]" in capsys.readouterr().err


# -- the paper's ablation switches -------------------------------------------------------------------------

@pytest.mark.slow
def test_projector_and_decoder_ablations_record_and_evaluate_the_encoder_alone(tmp_path):
    from un2clip.eval.decoder import diffloss
    from un2clip.load import load_clip, load_decoder
    from un2clip.models.clip import ClipModel

    data = _images(tmp_path / "img", 4)
    out = tmp_path / "run"
    assert cli(["finetune", "--preset", "tiny", "--data", str(data), "--batch-size", "2", "--lr", "1e-3",
                "--max-steps", "1", "--projector", "identity", "--train-decoder", "--output", str(out),
                "--no-progress"]) == 0
    assert json.loads((out / "un2clip_run.json").read_text())["projector"] == "identity"
    assert (out / "projector.safetensors").exists() and (out / "decoder" / "unet").is_dir()
    # the evaluated model is the encoder alone: the run loads as its clip/ folder
    model = load_clip(str(out))
    x = _batch()["clip_pixels"]
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(x), ClipModel.from_pretrained(out / "clip").encode_image(x))
    # the evaluators find the run's (updated) decoder by default
    assert diffloss.default_decoder_spec(str(out)) == str(out)
    assert load_decoder(str(out)).embed_dim == model.embed_dim
