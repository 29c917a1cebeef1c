"""AudioCLIP's audio tower, small: a log-mel front end and a ResNeXt-style CNN into a CLIP's joint space.

AudioCLIP (Guzhov et al. 2022) adds an audio head (ESResNeXt) to CLIP and, in its partial-training mode,
trains only that head so that its embeddings meet the frozen CLIP's image and text embeddings. Here:

- :func:`mel_filterbank`: triangular filters on the HTK mel scale (``mel = 2595 log10(1 + f / 700)``),
  peak 1, no area normalisation (what ``torchaudio``'s ``melscale_fbanks`` gives with ``norm=None,
  mel_scale="htk"``), written from the formula;
- :class:`LogMel`: ``torch.stft`` power spectrogram (Hann window, centred frames) through that bank,
  ``log(mel + 1e-6)``;
- :class:`AudioHead`: a stride-2 stem, stages of ResNeXt bottleneck blocks (1x1, grouped 3x3, 1x1 with a residual;
  cardinality ``cardinality``), global average pooling and a linear map to the joint space;
- :class:`AudioClip`: a trained head beside the CLIP it was trained into (what ``eval audio-zeroshot`` takes).

Pure torch; the head is saved as ``config.json`` + ``model.safetensors``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def hz_to_mel(freq: torch.Tensor | float) -> torch.Tensor:
    """HTK mel scale: ``2595 log10(1 + f / 700)``."""
    return 2595.0 * torch.log10(1.0 + torch.as_tensor(freq, dtype=torch.float64) / 700.0)


def mel_to_hz(mel: torch.Tensor | float) -> torch.Tensor:
    """Inverse of :func:`hz_to_mel`."""
    return 700.0 * (10.0 ** (torch.as_tensor(mel, dtype=torch.float64) / 2595.0) - 1.0)


def mel_filterbank(*, n_freqs: int, n_mels: int, sample_rate: int, f_min: float = 0.0,
                   f_max: float | None = None) -> torch.Tensor:
    """(n_freqs, n_mels) triangular filters: filter m rises from mel point m to m + 1 and falls to m + 2, the
    ``n_mels + 2`` points equally spaced in mel between ``f_min`` and ``f_max`` (default Nyquist); the ``n_freqs``
    FFT bins are at ``k * sample_rate / (2 (n_freqs - 1))``. Peak 1, no normalisation."""
    f_max = sample_rate / 2 if f_max is None else f_max
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(f"mel band must satisfy 0 <= f_min < f_max <= sample_rate / 2, got {f_min}, {f_max}, "
                         f"{sample_rate}")
    if n_mels < 1 or n_freqs < 2:
        raise ValueError(f"need n_mels >= 1 and n_freqs >= 2, got {n_mels}, {n_freqs}")
    if n_mels >= n_freqs:
        raise ValueError(f"{n_mels} mel bands need more than {n_mels} FFT bins, the STFT has {n_freqs} (n_fft "
                         f"{2 * (n_freqs - 1)}): choose fewer bands or a larger n_fft")
    bins = torch.linspace(0, sample_rate / 2, n_freqs, dtype=torch.float64)
    points = mel_to_hz(torch.linspace(float(hz_to_mel(f_min)), float(hz_to_mel(f_max)), n_mels + 2,
                                      dtype=torch.float64))
    lower, centre, upper = points[:-2], points[1:-1], points[2:]
    rising = (bins[:, None] - lower[None, :]) / (centre - lower)[None, :]
    falling = (upper[None, :] - bins[:, None]) / (upper - centre)[None, :]
    return torch.clamp(torch.minimum(rising, falling), min=0.0).float()


class LogMel(nn.Module):
    """(B, T) waveforms -> (B, 1, n_mels, frames) log-mel spectrograms (power STFT, Hann window, centred)."""

    def __init__(self, *, sample_rate: int, n_fft: int, hop_length: int, n_mels: int, f_min: float = 0.0,
                 f_max: float | None = None):
        super().__init__()
        self.n_fft, self.hop_length = n_fft, hop_length
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.register_buffer("fbank", mel_filterbank(n_freqs=n_fft // 2 + 1, n_mels=n_mels, sample_rate=sample_rate,
                                                     f_min=f_min, f_max=f_max), persistent=False)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(waveform.float(), self.n_fft, hop_length=self.hop_length, window=self.window,
                          center=True, pad_mode="reflect", return_complex=True)
        power = spec.real ** 2 + spec.imag ** 2  # (B, F, frames)
        mel = torch.einsum("bft,fm->bmt", power, self.fbank)
        return torch.log(mel + 1e-6).unsqueeze(1)


class ResNeXtBlock(nn.Module):
    """Bottleneck: 1x1 to ``width``, grouped 3x3 (``cardinality`` groups, ``stride``), 1x1 to ``out``; + shortcut."""

    def __init__(self, in_ch: int, out_ch: int, *, cardinality: int, stride: int):
        super().__init__()
        width = max(cardinality, out_ch // 2 // cardinality * cardinality)
        self.conv1, self.bn1 = nn.Conv2d(in_ch, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, groups=cardinality, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch)
        self.shortcut = nn.Identity() if in_ch == out_ch and stride == 1 else nn.Sequential(
            nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + self.shortcut(x))


@dataclass
class AudioHeadConfig:
    """Everything that builds an :class:`AudioHead` (saved as its ``config.json``)."""

    embed_dim: int = 512
    sample_rate: int = 16000
    clip_seconds: float = 5.0  # training crops (and evaluation pads or crops) to this length (ESC-50's clips)
    n_fft: int = 1024
    hop_length: int = 320  # 20 ms at 16 kHz
    n_mels: int = 64
    f_min: float = 0.0
    f_max: float | None = None
    stem: int = 32
    widths: list[int] = field(default_factory=lambda: [64, 128, 256])
    blocks: list[int] = field(default_factory=lambda: [1, 1, 1])
    cardinality: int = 8

    @property
    def clip_samples(self) -> int:
        return max(1, round(self.clip_seconds * self.sample_rate))


class AudioHead(nn.Module):
    """Waveforms at ``config.sample_rate`` (B, T) -> (B, embed_dim) embeddings, not normalised."""

    def __init__(self, config: AudioHeadConfig):
        super().__init__()
        if len(config.widths) != len(config.blocks) or not config.widths:
            raise ValueError(f"widths {config.widths} and blocks {config.blocks} must be non-empty and as long")
        self.config = config
        self.frontend = LogMel(sample_rate=config.sample_rate, n_fft=config.n_fft, hop_length=config.hop_length,
                               n_mels=config.n_mels, f_min=config.f_min, f_max=config.f_max)
        self.input_norm = nn.BatchNorm2d(1)  # the log-mel's scale is learnt, not a dataset statistic
        self.stem = nn.Sequential(nn.Conv2d(1, config.stem, 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(config.stem), nn.ReLU())  # halves both axes, as ResNeXt's stem
        layers, ch = [], config.stem
        for width, n in zip(config.widths, config.blocks):
            for i in range(n):
                layers.append(ResNeXtBlock(ch, width, cardinality=config.cardinality, stride=2 if i == 0 else 1))
                ch = width
        self.blocks = nn.Sequential(*layers)
        self.proj = nn.Linear(ch, config.embed_dim)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        x = self.input_norm(self.frontend(waveform))
        x = self.blocks(self.stem(x))
        return self.proj(x.mean(dim=(2, 3)))

    def save_pretrained(self, folder: str | Path) -> Path:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_NAME).write_text(json.dumps(asdict(self.config), indent=2), encoding="utf-8")
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()},
                  str(folder / WEIGHTS_NAME))
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> AudioHead:
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / CONFIG_NAME).is_file() or not (folder / WEIGHTS_NAME).is_file():
            raise FileNotFoundError(f"{folder} is no audio head folder (needs {CONFIG_NAME} and {WEIGHTS_NAME})")
        head = cls(config_from_dict(json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))))
        head.load_state_dict(load_file(str(folder / WEIGHTS_NAME)))
        return head.eval()


def config_from_dict(data: dict) -> AudioHeadConfig:
    """An :class:`AudioHeadConfig` from a dict; an unknown key is an error naming it."""
    known = set(AudioHeadConfig.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown audio head setting(s) {unknown}; known: {sorted(known)}")
    return AudioHeadConfig(**data)


def fit_length(waveform: torch.Tensor, length: int, offset: int = 0) -> torch.Tensor:
    """(..., T) -> (..., length): a crop from ``offset`` when longer, zeros appended when shorter."""
    n = waveform.shape[-1]
    if n >= length:
        return waveform[..., offset:offset + length]
    return F.pad(waveform, (0, length - n))


def resample(waveform: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """(T,) or (C, T) -> same at ``new_rate``: linear interpolation, low-passed (antialiased) when going down."""
    if orig_rate == new_rate:
        return waveform
    if orig_rate <= 0 or new_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_rate} -> {new_rate}")
    squeeze = waveform.dim() == 1
    x = waveform.reshape(1, -1, 1, waveform.shape[-1]).float()
    n_out = max(1, math.floor(waveform.shape[-1] * new_rate / orig_rate))
    y = F.interpolate(x, size=(1, n_out), mode="bilinear", align_corners=False, antialias=new_rate < orig_rate)
    y = y.reshape(-1, n_out)
    return y[0] if squeeze else y


class AudioClip(nn.Module):
    """A trained audio head with the CLIP whose joint space it was trained into (text tower for zero-shot)."""

    def __init__(self, head: AudioHead, clip: nn.Module):
        super().__init__()
        self.head, self.clip = head, clip

    @property
    def device(self) -> torch.device:
        return next(self.head.parameters()).device

    def encode_audio(self, waveforms: torch.Tensor) -> torch.Tensor:
        """(B, T) waveforms at the head's rate -> (B, D) embeddings, not normalised."""
        return self.head(waveforms.to(self.device))

    def encode_text(self, texts: Sequence[str] | str) -> torch.Tensor:
        return self.clip.encode_text(list(texts) if not isinstance(texts, str) else texts)
