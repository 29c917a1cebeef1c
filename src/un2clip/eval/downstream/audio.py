"""Zero-shot sound classification with an AudioCLIP head: ESC-50 and UrbanSound8K, accuracy per fold.

Each clip (mono, resampled to the head's rate, zero-padded or cut to the head's clip length from its start)
is embedded by the audio head; each class by the CLIP text tower the head was trained into, as the
normalised mean of its templates' embeddings (default ``{}``: the class name alone, as AudioCLIP prompts;
``DIR/templates.txt`` when the set has one). A clip's class is the nearest by cosine. Zero-shot needs no
training split, so every fold is scored: ``fold<N>_acc1`` and ``acc1``, their unweighted mean (the
protocol of both sets' papers). An unreadable clip is an error naming it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from un2clip.data.audio import AudioSet, read_audio_set, read_wav
from un2clip.eval.core.metrics import fold_accuracy
from un2clip.eval.encoder.zeroshot import _lines, zeroshot_classifier
from un2clip.models.audio import AudioClip, fit_length, resample

DEFAULT_TEMPLATES = ("{}",)


def read_sound_set(data: str | Path) -> AudioSet:
    """The ESC-50 or UrbanSound8K set (meta file checked row by row, before any model loads)."""
    return read_audio_set(data)


def load_clip_samples(path: str, *, sample_rate: int, length: int) -> torch.Tensor:
    """(length,) mono samples of a WAV file at ``sample_rate``, from its start, zero-padded."""
    try:
        samples, rate = read_wav(path)
    except OSError as err:
        raise FileNotFoundError(f"{path}: cannot read the clip ({err})") from err
    wave = resample(torch.from_numpy(samples.mean(axis=0)), rate, sample_rate)
    return fit_length(wave, length)


@torch.no_grad()
def evaluate(model: AudioClip, data: str | Path, *, templates: Sequence[str] | str | Path | None = None,
             batch_size: int = 32, progress: bool = True) -> dict[str, float]:
    """acc1 (mean over folds), fold<N>_acc1, n_clips, n_classes of ``model`` on an ESC-50 / US8K folder."""
    from tqdm.auto import tqdm

    sounds = read_sound_set(data)
    if templates is None and (sounds.root / "templates.txt").is_file():
        templates = sounds.root / "templates.txt"
    prompts = _lines(templates) or list(DEFAULT_TEMPLATES)
    model.eval()
    classifier = zeroshot_classifier(model.clip, sounds.classnames, prompts, progress=progress).float()
    cfg = model.head.config
    embeds = []
    clips = sounds.clips
    for start in tqdm(range(0, len(clips), batch_size), desc="clips", disable=not progress):
        batch = torch.stack([load_clip_samples(c.path, sample_rate=cfg.sample_rate, length=cfg.clip_samples)
                             for c in clips[start:start + batch_size]])
        embeds.append(F.normalize(model.encode_audio(batch).float(), dim=-1).cpu())
    logits = torch.cat(embeds) @ classifier.cpu()
    targets = torch.tensor([c.target for c in clips])
    out = fold_accuracy(logits, targets, [c.fold for c in clips])
    return {**out, "n_clips": len(clips), "n_classes": len(sounds.classnames)}
