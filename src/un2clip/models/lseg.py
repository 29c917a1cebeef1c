"""LSeg (Li et al., ICLR 2022, isl-org/lang-seg): a dense head that puts every pixel in CLIP's joint space.

The head reads the hidden states of four blocks of a ViT image tower (``hook_blocks``: LSeg's ViT-L/16 hooks
blocks 5, 11, 17, 23, its ViT-B/32 blocks 2, 5, 8, 11) and decodes them as DPT does:

1. reassemble: each block's patch tokens (the class token folded in by LSeg's ``project`` readout:
   concatenated to every patch token, Linear(2W, W), GELU) laid out on the patch grid, a 1x1 convolution to
   ``reassemble[i]`` channels, then resampled to 4x, 2x, 1x and 1/2x the grid (transposed convolutions of
   stride 4 and 2, nothing, a stride-2 3x3 convolution), and a 3x3 convolution (no bias) to ``features``;
2. fuse: from the coarsest level up, ``path = RCU2(path + RCU1(level))`` upsampled 2x (bilinear, corners
   aligned) and a 1x1 convolution; a residual convolution unit is ReLU-conv3x3-BN-ReLU-conv3x3-BN plus its
   input (LSegNet builds it with batch norm);
3. a 1x1 convolution to the joint space (``head1``): one embedding per pixel at 8x the patch grid.

Per-pixel logits are the dot products of the L2-normalised pixel embeddings and L2-normalised text embeddings
of the label names, times ``LOGIT_SCALE`` = 1/0.07 (``lseg_logits``); LSeg trains them with per-pixel cross
entropy, upsampled to the label map. Unlike LSeg, whose encoder is fine-tuned, the tower here is the user's
CLIP, frozen by default, so that the head measures the encoder.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

LOGIT_SCALE = 1.0 / 0.07
HEAD_CONFIG = "lseg_head.json"
HEAD_WEIGHTS = "lseg_head.safetensors"


def hook_blocks(num_layers: int, n: int = 4) -> tuple[int, ...]:
    """The ``n`` blocks whose outputs the head reads: the last of each quarter (24 layers: 5, 11, 17, 23)."""
    if num_layers < 1:
        raise ValueError(f"a vision tower needs at least one block, got {num_layers}")
    return tuple(max(0, (i + 1) * num_layers // n - 1) for i in range(n))


@dataclass
class LSegConfig:
    """What the head is: the tower it reads and its widths (saved beside its weights)."""

    width: int  # the tower's hidden size
    embed_dim: int  # the joint space's size
    blocks: tuple[int, ...]  # 0-based blocks whose outputs are read, coarse level last
    features: int = 256  # fusion width (LSeg's ``features``)
    reassemble: tuple[int, ...] = ()  # per level; default (W/8, W/4, W/2, W) as DPT's ViT-B (96, 192, 384, 768)
    class_token: bool = True  # the tower has a class token (CLIP; SigLIP has none: readout ignored)
    labels: list[str] = field(default_factory=list)  # the label names it was trained on
    image_size: int = 224  # the crop side it was trained on
    model: str = ""  # the encoder spec it was trained on

    def __post_init__(self) -> None:
        self.blocks = tuple(int(b) for b in self.blocks)
        if len(self.blocks) != 4:
            raise ValueError(f"the DPT decoder reads 4 blocks, got {list(self.blocks)}")
        if not self.reassemble:
            self.reassemble = tuple(max(1, self.width // d) for d in (8, 4, 2, 1))
        self.reassemble = tuple(int(c) for c in self.reassemble)
        if len(self.reassemble) != 4 or min(self.reassemble) < 1 or self.features < 1:
            raise ValueError(f"reassemble needs 4 positive widths and features > 0, got {self.reassemble}, "
                             f"{self.features}")


class _Readout(nn.Module):
    """LSeg's ``project`` readout: each patch token concatenated with the class token, Linear(2W, W), GELU."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.project = nn.Sequential(nn.Linear(2 * width, width), nn.GELU())

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        cls = tokens[:, :1].expand_as(tokens[:, 1:])
        return self.project(torch.cat([tokens[:, 1:], cls], dim=-1))


class _ResidualUnit(nn.Module):
    """ReLU, 3x3 conv, BN, ReLU, 3x3 conv, BN, plus the input."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(features)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn1(self.conv1(F.relu(x)))
        out = self.bn2(self.conv2(F.relu(out)))
        return out + x


class _Fusion(nn.Module):
    """DPT's fusion block: path (+ RCU1(skip)), RCU2, 2x bilinear upsampling (corners aligned), 1x1 conv."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.unit1 = _ResidualUnit(features)
        self.unit2 = _ResidualUnit(features)
        self.out_conv = nn.Conv2d(features, features, 1)

    def forward(self, path: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if skip is not None:
            if path.shape[-2:] != skip.shape[-2:]:  # an odd grid: the 1/2 level rounds up
                path = F.interpolate(path, size=skip.shape[-2:], mode="bilinear", align_corners=True)
            path = path + self.unit1(skip)
        path = self.unit2(path)
        path = F.interpolate(path, scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_conv(path)


def _resample(channels: int, level: int) -> nn.Module:
    """Level 0: 4x up, 1: 2x up, 2: as is, 3: 1/2 (DPT's reassemble resampling)."""
    if level == 0:
        return nn.ConvTranspose2d(channels, channels, kernel_size=4, stride=4)
    if level == 1:
        return nn.ConvTranspose2d(channels, channels, kernel_size=2, stride=2)
    if level == 2:
        return nn.Identity()
    return nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=1)


class LSegHead(nn.Module):
    """Four blocks' tokens -> (B, D, 8 gh, 8 gw) pixel embeddings in the joint space (not normalised)."""

    def __init__(self, config: LSegConfig) -> None:
        super().__init__()
        self.config = config
        w, f = config.width, config.features
        self.readouts = nn.ModuleList([_Readout(w) if config.class_token else nn.Identity() for _ in range(4)])
        self.reassemble = nn.ModuleList([
            nn.Sequential(nn.Conv2d(w, c, 1), _resample(c, i)) for i, c in enumerate(config.reassemble)])
        self.to_features = nn.ModuleList([nn.Conv2d(c, f, 3, padding=1, bias=False) for c in config.reassemble])
        self.fusions = nn.ModuleList([_Fusion(f) for _ in range(4)])
        self.head1 = nn.Conv2d(f, config.embed_dim, 1)

    def forward(self, hidden: Sequence[torch.Tensor], grid: tuple[int, int]) -> torch.Tensor:
        """``hidden``: the four blocks' (B, T, W) outputs (class token first when the tower has one)."""
        if len(hidden) != 4:
            raise ValueError(f"LSegHead reads 4 blocks' outputs, got {len(hidden)}")
        gh, gw = grid
        levels = []
        for i, tokens in enumerate(hidden):
            x = self.readouts[i](tokens) if self.config.class_token else tokens
            if x.shape[1] != gh * gw:
                raise ValueError(f"{x.shape[1]} patch tokens do not fill a {gh} x {gw} grid")
            x = x.transpose(1, 2).reshape(x.shape[0], x.shape[2], gh, gw)
            levels.append(self.to_features[i](self.reassemble[i](x)))
        path = self.fusions[3](levels[3])
        for i in (2, 1, 0):
            path = self.fusions[i](path, levels[i])
        return self.head1(path)


def lseg_logits(pixels: torch.Tensor, text: torch.Tensor, logit_scale: float = LOGIT_SCALE) -> torch.Tensor:
    """(B, D, H, W) pixel embeddings, (C, D) label embeddings -> (B, C, H, W): scale x cosine similarity."""
    if pixels.shape[1] != text.shape[-1]:
        raise ValueError(f"pixel embeddings have {pixels.shape[1]} dims, label embeddings {text.shape[-1]}")
    pix = F.normalize(pixels.float(), dim=1)
    txt = F.normalize(text.float(), dim=-1)
    return logit_scale * torch.einsum("bdhw,cd->bchw", pix, txt)


def lseg_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Per-pixel cross entropy of (B, C, h, w) logits upsampled (bilinear) to (B, H, W) label maps."""
    if logits.shape[-2:] != labels.shape[-2:]:
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(logits, labels.long(), ignore_index=ignore_index)


def block_outputs(vision_model: nn.Module, pixels: torch.Tensor, blocks: Sequence[int]) -> list[torch.Tensor]:
    """The (B, T, W) outputs of ``blocks`` (0-based) of a HF vision transformer, positions interpolated to the
    input's patch grid."""
    out = vision_model(pixel_values=pixels, output_hidden_states=True, interpolate_pos_encoding=True)
    states = out.hidden_states  # embeddings, then one per block
    n = len(states) - 1
    if any(not 0 <= b < n for b in blocks):
        raise ValueError(f"blocks {list(blocks)} outside the tower's {n} blocks")
    return [states[b + 1] for b in blocks]


def save_head(head: LSegHead, folder: str | Path) -> Path:
    """Write the head's config (JSON) and weights (safetensors) into ``folder``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = asdict(head.config)
    (folder / HEAD_CONFIG).write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}, str(folder / HEAD_WEIGHTS))
    return folder


def load_head(spec: str | Path) -> LSegHead:
    """A head folder, or a `un2clip train-dense` run (its ``lseg/``) -> LSegHead in eval mode."""
    from safetensors.torch import load_file

    folder = Path(spec)
    if (folder / "lseg" / HEAD_CONFIG).is_file():
        folder = folder / "lseg"
    if not (folder / HEAD_CONFIG).is_file() or not (folder / HEAD_WEIGHTS).is_file():
        raise FileNotFoundError(f"{spec} is not an LSeg head: expected {HEAD_CONFIG} and {HEAD_WEIGHTS} in it or in "
                                "its lseg/ (written by `un2clip train-dense --head lseg`)")
    data = json.loads((folder / HEAD_CONFIG).read_text(encoding="utf-8"))
    try:
        config = LSegConfig(**data)
    except TypeError as err:
        raise ValueError(f"{folder / HEAD_CONFIG}: not an LSeg head config ({err})") from None
    head = LSegHead(config)
    head.load_state_dict(load_file(str(folder / HEAD_WEIGHTS)))
    return head.eval()
