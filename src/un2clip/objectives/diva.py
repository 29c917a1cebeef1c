"""The DIVA baseline (arXiv 2407.20171): train the CLIP image encoder through a frozen text-to-image model.

One image -> one square crop -> the CLIP view and the generator's view (512 px for SD 2.1-base,
latents = VAE latent mean x 0.18215). The frozen UNet's cross-attention context is the text
encoder's hidden states of the template ``"a photo of a ."`` (DIVA's prompt with an empty class
name), computed once, followed along the sequence by a trainable linear projection of CLIP's
visual tokens: the class token and ``n_patch_tokens`` patch tokens drawn uniformly with
replacement, each after the vision tower's final norm and visual projection (768-d for ViT-L/14,
then Linear(768 -> 1024)). Loss: MSE between predicted and true noise at t ~ U[0, 1000).
Gradients reach the encoder and the projection only.

``combine="add"`` instead adds the projected tokens to the text hidden states position by
position (both 77 long for ViT-L/14 and SD 2.1), which is what DIVA's released code computes;
``n_patch_tokens=None`` draws as many patches as the template has positions after the first (76
there, 31 for the shapes world's 32-token template). ``draws_per_image`` = 2 with ``sum_draws``
is DIVA's ``--train_steps 2``: two timestep, noise and patch draws per image per step, the two
losses' gradients summed (its first draw backpropagates inside the forward pass).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from un2clip.data.sources import Record
from un2clip.models.clip import ClipModel
from un2clip.models.t2i import TextToImageDecoder
from un2clip.objectives.base import Objective
from un2clip.objectives.un2clip import two_views

DIVA_PROMPT = "a photo of a ."  # DIVA's "a photo of a {}." with the empty class name
COMBINE = ("concat", "add")
PROJECTION_FILE = "diva_projection.safetensors"
_TOKEN_SALT = 0x2407_20171  # the token draws of a sample use their own stream of its seed


def sample_patch_indices(n_patches: int, n: int, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """(B, n) patch indices in [0, n_patches), uniform with replacement; row i from ``generators[i]``."""
    return torch.stack([torch.randint(0, n_patches, (n,), generator=g) for g in generators])


def select_visual_tokens(tokens: torch.Tensor, n: int,
                         generator: torch.Generator | Sequence[torch.Generator] | None = None) -> torch.Tensor:
    """(B, 1 + P, D) class token then P patch tokens -> (B, 1 + n, D): the class token, then n sampled patches.

    Patches are drawn uniformly with replacement, independently per row; ``generator`` is one
    generator for the whole batch or one per row (per-sample draws that do not depend on the batch).
    """
    b, p = tokens.shape[0], tokens.shape[1] - 1
    if p < 1:
        raise ValueError(f"expected a class token and at least one patch token, got {tokens.shape[1]} tokens")
    if generator is None or isinstance(generator, torch.Generator):
        idx = torch.randint(0, p, (b, n), generator=generator)
    else:
        if len(generator) != b:
            raise ValueError(f"{len(generator)} generators for {b} rows")
        idx = sample_patch_indices(p, n, generator)
    idx = idx.to(tokens.device)
    patches = torch.gather(tokens[:, 1:], 1, idx[..., None].expand(-1, -1, tokens.shape[-1]))  # (B, n, D)
    return torch.cat([tokens[:, :1], patches], dim=1)


def diva_condition(text_context: torch.Tensor, visual: torch.Tensor, combine: str = "concat") -> torch.Tensor:
    """Cross-attention context from (1 or B, L, C) text hidden states and (B, M, C) projected visual tokens.

    ``concat`` -> (B, L + M, C), text first; ``add`` -> (B, L, C), needs M == L.
    """
    b = visual.shape[0]
    text = text_context.to(visual.device, visual.dtype).expand(b, -1, -1)
    if combine == "concat":
        return torch.cat([text, visual], dim=1)
    if combine == "add":
        if text.shape[1] != visual.shape[1]:
            raise ValueError(f"combine='add' needs as many visual tokens as text tokens: {visual.shape[1]} vs "
                             f"{text.shape[1]} (set n_patch_tokens to {text.shape[1] - 1})")
        return text + visual
    raise ValueError(f"combine must be one of {COMBINE}, got {combine!r}")


def per_draw_seeds(seeds: torch.Tensor, k: int) -> torch.Tensor:
    """(B,) sample seeds -> (B * k,) seeds of k independent draws per sample (k = 1: unchanged)."""
    if k == 1:
        return seeds
    rows = [((int(s) * 1_000_003 + j) % (2**62)) for s in seeds.tolist() for j in range(k)]
    return torch.tensor(rows, dtype=torch.int64)


class DivaObjective(Objective):
    """CLIP image tower + projection trainable; the text-to-image generator frozen."""

    kind = "diva"

    def __init__(
        self,
        clip: ClipModel,
        t2i_decoder: TextToImageDecoder,
        *,
        n_patch_tokens: int | None = 76,
        prompt: str = DIVA_PROMPT,
        combine: str = "concat",
        draws_per_image: int = 1,
        sum_draws: bool = False,
        random_crop: bool = True,
        projection_seed: int = 0,
    ):
        super().__init__()
        if clip.family != "clip":
            raise ValueError(f"DIVA conditions on a class token and patch tokens: a {clip.family} tower has no "
                             "class token")
        if combine not in COMBINE:
            raise ValueError(f"combine must be one of {COMBINE}, got {combine!r}")
        if (n_patch_tokens is not None and n_patch_tokens < 1) or draws_per_image < 1:
            raise ValueError("n_patch_tokens and draws_per_image must be >= 1")
        self.clip = clip
        self.decoder = t2i_decoder
        self.prompt = prompt
        self.combine = combine
        self.draws_per_image = draws_per_image
        self.sum_draws = bool(sum_draws)
        self.random_crop = random_crop
        # the template's context, once; then the text encoder goes
        context = t2i_decoder.encode_prompts([prompt])  # (1, L, C)
        if n_patch_tokens is None:  # DIVA's rule: the template's length minus the class token
            n_patch_tokens = context.shape[1] - 1
        self.n_patch_tokens = n_patch_tokens
        if combine == "add":
            diva_condition(context, context.new_zeros(1, 1 + n_patch_tokens, context.shape[-1]), "add")
        self.register_buffer("text_context", context.detach().clone(), persistent=False)
        t2i_decoder.drop_text_encoder()
        t2i_decoder.freeze()
        with torch.random.fork_rng(devices=[]):  # every process builds the same projection
            torch.manual_seed(projection_seed)
            self.projection = nn.Linear(clip.embed_dim, t2i_decoder.context_dim)
        clip.requires_grad_(False)
        for p in clip.vision_parameters():
            p.requires_grad_(True)

    def cast_frozen(self, dtype: torch.dtype) -> None:
        self.decoder.to(dtype)

    def set_train_mode(self) -> None:
        self.train()
        self.clip.model.text_model.eval()
        self.decoder.eval()

    def compile_targets(self) -> list[nn.Module]:
        return [self.clip.vision_model, self.decoder.unet]

    # -- data ------------------------------------------------------------------------------------
    def transform(self, record: Record, rng: random.Random) -> dict[str, torch.Tensor]:
        return two_views(record, rng, self.clip.processing, self.decoder.image_size, random_crop=self.random_crop)

    # -- step --------------------------------------------------------------------------------------
    def condition(self, clip_pixels: torch.Tensor, generators: Sequence[torch.Generator], *,
                  repeat: int = 1) -> torch.Tensor:
        """(B, 3, S, S) -> (B * repeat, L + 1 + n, C) context: template hidden states then projected tokens."""
        tokens = self.clip.image_tokens(clip_pixels, keep_class=True).float()  # (B, 1 + P, D)
        if repeat > 1:
            tokens = tokens.repeat_interleave(repeat, 0)
        visual = select_visual_tokens(tokens, self.n_patch_tokens, generators)  # (B', 1 + n, D)
        return diva_condition(self.text_context, self.projection(visual), self.combine)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        pixels = batch["clip_pixels"]
        if "latents" in batch:  # cached VAE latents
            latents = batch["latents"].to(self.decoder.device, torch.float32)
        else:
            latents = self.decoder.encode_pixels(batch["decoder_pixels"])  # (B, C, h, w)
        k = self.draws_per_image
        seeds = per_draw_seeds(batch["draw_seed"].reshape(-1).cpu(), k)
        if k > 1:  # one encoder pass, k noisings and k token draws per image
            latents = latents.repeat_interleave(k, 0)
        t, noise = self.decoder.draws_from_seeds(seeds, latents)
        generators = [torch.Generator().manual_seed(int(s) ^ _TOKEN_SALT) for s in seeds.tolist()]
        context = self.condition(pixels, generators, repeat=k)
        loss = self.decoder.diffusion_loss(latents, context, timesteps=t, noise=noise)
        if self.sum_draws:  # the mean over B·k draws times k: the sum over draws of each draw's batch mean
            return {"loss": loss * k, "loss_per_draw": loss.detach()}
        return {"loss": loss}

    # -- outputs -----------------------------------------------------------------------------------
    def save_outputs(self, folder: Path) -> None:
        """``clip/`` (what every evaluator loads) and the projection's weights."""
        from safetensors.torch import save_file

        self.clip.save_pretrained(Path(folder) / "clip")
        meta = {"in_features": str(self.projection.in_features), "out_features": str(self.projection.out_features),
                "n_patch_tokens": str(self.n_patch_tokens), "prompt": self.prompt, "combine": self.combine}
        save_file({k: v.detach().float().cpu().contiguous() for k, v in self.projection.state_dict().items()},
                  str(Path(folder) / PROJECTION_FILE), metadata=meta)
