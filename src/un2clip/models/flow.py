"""FlowDecoder: GenHancer's lightweight denoiser, a small FLUX-style transformer trained by rectified flow.

GenHancer (arXiv 2503.19480, its ``Continuous/`` code) conditions a randomly initialised FLUX
transformer of 2 double-stream and 4 single-stream blocks on the CLIP class token (the pooled,
projected image embedding) through two LayerNorm-MLPs: one gives FLUX's pooled vector (added to
the timestep embedding, it drives every block's modulation), the other one attention token (FLUX's
text sequence, here of length 1). Latents are packed in 2 x 2 patches. Training draws
``t = sigmoid(s · n)``, ``n ~ N(0, 1)`` (logit-normal, ``s`` = 1), mixes ``x_t = (1 - t) x + t ε``
and regresses the velocity ``ε - x`` with a mean squared error.

The transformer is diffusers' ``FluxTransformer2DModel``; the first stage (``vae``) is a diffusers
``AutoencoderKL``, shared with the world's other generators. A folder written by
:meth:`FlowDecoder.save_pretrained` holds ``transformer/``, ``vae/``, ``projections.safetensors``
and ``flow_decoder.json``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

FLOW_META = "flow_decoder.json"
PROJECTIONS_FILE = "projections.safetensors"


# -- the math ----------------------------------------------------------------------------------------

def logit_normal(n: int, *, scale: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """(n,) timesteps ``sigmoid(scale · z)``, z ~ N(0, 1): GenHancer's (and SD3's) logit-normal draws in (0, 1)."""
    return torch.sigmoid(scale * torch.randn(n, generator=generator))


def rectified_flow_pair(latents: torch.Tensor, noise: torch.Tensor,
                        t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, target): ``x_t = (1 - t) · x + t · ε`` and the velocity ``ε - x``; ``t`` (B,) in [0, 1]."""
    tt = t.to(latents.dtype).reshape(-1, *([1] * (latents.ndim - 1)))
    return (1 - tt) * latents + tt * noise, noise - latents


def rectified_flow_loss(predict: Callable[[torch.Tensor], torch.Tensor], latents: torch.Tensor,
                        noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Mean squared error between ``predict(x_t)`` and ``ε - x`` (every element, every sample)."""
    x_t, target = rectified_flow_pair(latents, noise, t)
    return (predict(x_t).float() - target.float()).pow(2).mean()


def pack(latents: torch.Tensor, patch: int = 2) -> torch.Tensor:
    """(B, C, h, w) -> (B, (h/p)(w/p), C·p·p): FLUX's ``b c (h ph) (w pw) -> b (h w) (c ph pw)``."""
    b, c, h, w = latents.shape
    if h % patch or w % patch:
        raise ValueError(f"latents of {h} x {w} do not split into {patch} x {patch} patches")
    x = latents.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // patch) * (w // patch), c * patch * patch)


def unpack(tokens: torch.Tensor, h: int, w: int, patch: int = 2) -> torch.Tensor:
    """Inverse of :func:`pack` -> (B, C, h, w)."""
    b, _, d = tokens.shape
    c = d // (patch * patch)
    x = tokens.reshape(b, h // patch, w // patch, c, patch, patch)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def image_ids(h: int, w: int) -> torch.Tensor:
    """(h·w, 3) FLUX position ids of an h x w token grid: (0, row, column)."""
    ids = torch.zeros(h, w, 3)
    ids[..., 1] = torch.arange(h)[:, None]
    ids[..., 2] = torch.arange(w)[None, :]
    return ids.reshape(h * w, 3)


def ln_mlp(dim_in: int, dim_out: int) -> nn.Sequential:
    """GenHancer's projection of the class token: LayerNorm, Linear, GELU, Linear."""
    return nn.Sequential(nn.LayerNorm(dim_in), nn.Linear(dim_in, dim_out), nn.GELU(), nn.Linear(dim_out, dim_out))


# -- the model ---------------------------------------------------------------------------------------

class FlowDecoder(nn.Module):
    """Class-token-conditioned FLUX transformer on VAE latents: ``condition``, ``flow_loss``, files."""

    def __init__(self, transformer: nn.Module, project_vector: nn.Module, project_token: nn.Module,
                 vae: nn.Module, *, embed_dim: int, image_size: int, patch: int = 2, guidance: float | None = 4.0):
        super().__init__()
        self.transformer = transformer
        self.project_vector = project_vector
        self.project_token = project_token
        self.vae = vae
        self.embed_dim = int(embed_dim)
        self.image_size = int(image_size)
        self.patch = int(patch)
        self.guidance = guidance if transformer.config.guidance_embeds else None
        self.vae_scale = float(vae.config.scaling_factor)
        self.vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        side = self.image_size // self.vae_factor
        expected = vae.config.latent_channels * patch * patch
        if transformer.config.in_channels != expected:
            raise ValueError(f"the transformer takes {transformer.config.in_channels}-channel tokens; the VAE's "
                             f"{vae.config.latent_channels}-channel latents in {patch} x {patch} patches give {expected}")
        self.latent_side = side
        self.register_buffer("img_ids", image_ids(side // patch, side // patch), persistent=False)

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    def freeze(self) -> FlowDecoder:
        """No gradients, eval mode: backward computes input gradients only."""
        self.requires_grad_(False)
        return self.eval()

    def trainable_modules(self) -> list[nn.Module]:
        """What GenHancer's stage 1 trains: the transformer and both projections (the VAE stays frozen)."""
        return [self.transformer, self.project_vector, self.project_token]

    def set_vae(self, vae: nn.Module) -> None:
        """Use ``vae`` (the world's shared first stage) in place of this decoder's own."""
        if vae.config.latent_channels != self.vae.config.latent_channels:
            raise ValueError(f"the VAE gives {vae.config.latent_channels}-channel latents; the transformer packs "
                             f"{self.vae.config.latent_channels}-channel ones")
        self.vae = vae.to(self.device)
        self.vae_scale = float(vae.config.scaling_factor)

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> scaled latent means (fp32), no gradient."""
        with torch.no_grad():
            dist = self.vae.encode(pixels.to(self.device, self.vae.dtype)).latent_dist
        return dist.mean.float() * self.vae_scale

    def condition(self, image_embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, D) class-token embeddings -> (pooled vector (B, D), one attention token (B, 1, J))."""
        return self.project_vector(image_embeds), self.project_token(image_embeds[:, None, :])

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        """Velocity for (B, C, h, w) latents ``x_t`` at times ``t`` (B,) in [0, 1] -> (B, C, h, w)."""
        vector, token = self.condition(image_embeds.float())
        b, _, h, w = x_t.shape
        guidance = None if self.guidance is None else torch.full((b,), float(self.guidance), device=x_t.device)
        out = self.transformer(hidden_states=pack(x_t, self.patch), encoder_hidden_states=token,
                               pooled_projections=vector, timestep=t.to(x_t.device, x_t.dtype),
                               img_ids=self.img_ids.to(x_t.device), txt_ids=torch.zeros(1, 3, device=x_t.device),
                               guidance=guidance, return_dict=False)[0]
        return unpack(out, h, w, self.patch)

    def flow_loss(self, image_embeds: torch.Tensor, latents: torch.Tensor, *, t: torch.Tensor,
                  noise: torch.Tensor) -> torch.Tensor:
        """Rectified-flow loss of the velocity predicted from the class-token embeddings."""
        return rectified_flow_loss(lambda x_t: self.predict(x_t, t, image_embeds), latents, noise, t)

    # -- files -----------------------------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path) -> Path:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.transformer.save_pretrained(folder / "transformer", safe_serialization=True)
        self.vae.save_pretrained(folder / "vae", safe_serialization=True)
        weights = {f"vector.{k}": v for k, v in self.project_vector.state_dict().items()}
        weights |= {f"token.{k}": v for k, v in self.project_token.state_dict().items()}
        save_file({k: v.detach().float().cpu().contiguous() for k, v in weights.items()},
                  str(folder / PROJECTIONS_FILE))
        meta = {"embed_dim": self.embed_dim, "image_size": self.image_size, "patch": self.patch,
                "guidance": self.guidance, "token_dim": int(self.transformer.config.joint_attention_dim)}
        (folder / FLOW_META).write_text(json.dumps(meta, indent=2))
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> FlowDecoder:
        from diffusers import AutoencoderKL, FluxTransformer2DModel
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / FLOW_META).exists():
            raise FileNotFoundError(f"{folder} is not a flow decoder folder: expected {FLOW_META}, transformer/, "
                                    f"vae/ and {PROJECTIONS_FILE} (written by a `flow-decoder` run)")
        meta = json.loads((folder / FLOW_META).read_text())
        transformer = FluxTransformer2DModel.from_pretrained(folder / "transformer")
        vae = AutoencoderKL.from_pretrained(folder / "vae")
        d, j = int(meta["embed_dim"]), int(meta["token_dim"])
        vector, token = ln_mlp(d, d), ln_mlp(d, j)
        weights = load_file(str(folder / PROJECTIONS_FILE))
        vector.load_state_dict({k[7:]: v for k, v in weights.items() if k.startswith("vector.")})
        token.load_state_dict({k[6:]: v for k, v in weights.items() if k.startswith("token.")})
        return cls(transformer, vector, token, vae, embed_dim=d, image_size=int(meta["image_size"]),
                   patch=int(meta["patch"]), guidance=meta.get("guidance"))


def build_flow_decoder(vae: nn.Module, *, embed_dim: int, image_size: int, depth: int = 2, depth_single: int = 4,
                       heads: int = 4, head_dim: int = 32, token_dim: int | None = None,
                       axes_dims: tuple[int, int, int] = (8, 12, 12), guidance: float | None = 4.0,
                       seed: int = 0) -> FlowDecoder:
    """A randomly initialised FlowDecoder: GenHancer's 2 double + 4 single blocks at width ``heads · head_dim``.

    GenHancer's is 3,072 wide (24 heads of 128, RoPE axes 16/56/56) with a 4,096-d attention token; the
    world's default is 128 wide (4 heads of 32, axes 8/12/12) with a 128-d token. ``guidance`` is FLUX-dev's
    guidance input, which GenHancer keeps and feeds a constant 4 (None: no guidance embedding).
    """
    from diffusers import FluxTransformer2DModel

    if sum(axes_dims) != head_dim:
        raise ValueError(f"RoPE axes {axes_dims} must sum to the head width {head_dim}")
    token_dim = token_dim or heads * head_dim
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=vae.config.latent_channels * 4, num_layers=depth,
            num_single_layers=depth_single, attention_head_dim=head_dim, num_attention_heads=heads,
            joint_attention_dim=token_dim, pooled_projection_dim=embed_dim, guidance_embeds=guidance is not None,
            axes_dims_rope=tuple(axes_dims))
        vector, token = ln_mlp(embed_dim, embed_dim), ln_mlp(embed_dim, token_dim)
    return FlowDecoder(transformer, vector, token, vae, embed_dim=embed_dim, image_size=image_size,
                       guidance=guidance)
