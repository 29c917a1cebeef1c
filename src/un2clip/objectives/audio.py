"""AudioCLIP's partial training: an audio head learns a frozen CLIP's joint space.

Each clip is paired with its text (class name or caption) and, where the data has one, its image. The audio
embedding meets the frozen text embedding and the frozen image embedding in a symmetric cross-entropy over
the batch (row i's positive is column i), each pair of modalities with its own learnable scale, stored as a
log, initialised to 100 and clamped to [1, 100] after the exponential: AudioCLIP's ``logit_scale_ai`` and
``logit_scale_at``. As in AudioCLIP's ``loss_fn``, the loss is the sum over the pairs used of both
directions' cross-entropies, divided by the factorial of the number of pairs (1 for audio-text alone, 2 with
audio-image too). The CLIP itself takes no gradient; only the head and the two scales train.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import torch
import torch.nn.functional as F

from un2clip.data.audio import AudioRecord
from un2clip.models.audio import AudioHead, AudioHeadConfig, fit_length, resample
from un2clip.models.clip import ClipModel
from un2clip.objectives.base import Objective, check_state_keys, module_state

SCALE_INIT, SCALE_MIN, SCALE_MAX = 100.0, 1.0, 100.0


def pair_loss(a: torch.Tensor, b: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Both directions' cross-entropies of the (B, B) logits ``exp(log_scale)`` (clamped to [1, 100]) x a @ b.T
    (``a``, ``b`` L2-normalised); summed, not averaged, as AudioCLIP sums them."""
    scale = torch.clamp(log_scale.exp(), min=SCALE_MIN, max=SCALE_MAX)
    logits = scale * a @ b.t()
    labels = torch.arange(a.shape[0], device=a.device)
    return F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)


def audioclip_loss(audio: torch.Tensor, *, image: torch.Tensor | None, text: torch.Tensor | None,
                   log_scale_ai: torch.Tensor, log_scale_at: torch.Tensor) -> torch.Tensor:
    """AudioCLIP's loss over the pairs present: sum of :func:`pair_loss` terms / (number of terms)!."""
    terms = []
    if image is not None:
        terms.append(pair_loss(audio, image, log_scale_ai))
    if text is not None:
        terms.append(pair_loss(audio, text, log_scale_at))
    if not terms:
        raise ValueError("the audio loss needs images or texts to pair the clips with")
    return sum(terms) / math.factorial(len(terms))


class AudioClipObjective(Objective):
    """Train an :class:`AudioHead` into ``clip``'s joint space (the CLIP frozen)."""

    kind = "audio"

    def __init__(self, clip: ClipModel, *, clip_seconds: float = 5.0, n_mels: int = 64, sample_rate: int = 16000,
                 widths: tuple[int, ...] | list[int] = (64, 128, 256), blocks: tuple[int, ...] | list[int] = (1, 1, 1),
                 cardinality: int = 8, use_images: bool = True, use_texts: bool = True, seed: int = 0):
        """``use_images`` / ``use_texts``: which pairs the loss takes (images only where the data has them)."""
        super().__init__()
        if not (use_images or use_texts):
            raise ValueError("the audio objective needs use_images or use_texts")
        self.clip = clip.requires_grad_(False).eval()
        config = AudioHeadConfig(embed_dim=clip.embed_dim, sample_rate=sample_rate, clip_seconds=clip_seconds,
                                 n_mels=n_mels, widths=list(widths), blocks=list(blocks), cardinality=cardinality)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.head = AudioHead(config)
        self.log_scale_ai = torch.nn.Parameter(torch.tensor(math.log(SCALE_INIT)))
        self.log_scale_at = torch.nn.Parameter(torch.tensor(math.log(SCALE_INIT)))
        self.use_images, self.use_texts = use_images, use_texts

    def transform(self, record: AudioRecord, rng: random.Random) -> dict[str, torch.Tensor] | None:
        """A random ``clip_seconds`` crop of the clip at the head's rate (zero-padded when shorter), its text's
        tokens and its image's CLIP view."""
        cfg = self.head.config
        wave = resample(torch.from_numpy(record.waveform), record.sample_rate, cfg.sample_rate)
        offset = rng.randrange(max(1, wave.shape[-1] - cfg.clip_samples + 1))
        out = {"audio": fit_length(wave, cfg.clip_samples, offset).float()}
        if self.use_texts:
            tokens = self.clip.tokenizer(record.text, padding="max_length", truncation=True,
                                         max_length=self.clip.meta.context_length, return_tensors="pt")
            out["input_ids"] = tokens["input_ids"][0]
            if "attention_mask" in tokens and self.clip.family == "clip":
                out["attention_mask"] = tokens["attention_mask"][0]
        if self.use_images and record.image is not None:
            out["pixels"] = self.clip.processing(record.image)
        return out

    @torch.no_grad()
    def _text(self, batch: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
        model = self.clip.model
        inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask") if k in batch}
        txt = model.text_model(**inputs).pooler_output
        if self.clip.family == "clip":
            txt = model.text_projection(txt)
        return F.normalize(txt.float(), dim=-1)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        audio = F.normalize(self.head(batch["audio"]).float(), dim=-1)
        image = text = None
        if "pixels" in batch:
            with torch.no_grad():
                image = F.normalize(self.clip.encode_image(batch["pixels"]).float(), dim=-1)
        if "input_ids" in batch:
            text = self._text(batch, audio.device)
        loss = audioclip_loss(audio, image=image, text=text, log_scale_ai=self.log_scale_ai,
                              log_scale_at=self.log_scale_at)
        out = {"loss": loss, "scale_at": self.log_scale_at.detach().exp().clamp(SCALE_MIN, SCALE_MAX)}
        if image is not None:
            out["scale_ai"] = self.log_scale_ai.detach().exp().clamp(SCALE_MIN, SCALE_MAX)
        return out

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [*self.head.parameters(), self.log_scale_ai, self.log_scale_at]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The head's whole state (its batch-norm statistics too: a resumed run must not restart them) and the
        two scales."""
        return {**module_state(self.head, "head."), "log_scale_ai": self.log_scale_ai.detach(), "log_scale_at": self.log_scale_at.detach()}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        check_state_keys(self.trainable_state_dict(), state, "the audio head")
        self.head.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("head.")})
        with torch.no_grad():
            self.log_scale_ai.copy_(state["log_scale_ai"])
            self.log_scale_at.copy_(state["log_scale_at"])

    def set_train_mode(self) -> None:
        self.train()
        self.clip.eval()

    def save_outputs(self, folder: Path) -> None:
        self.head.save_pretrained(Path(folder) / "audio")
