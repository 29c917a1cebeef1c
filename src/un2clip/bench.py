"""Throughput and peak memory of one un²CLIP training step (forward, backward, optimiser step)."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_train_step(
    preset: str,
    *,
    random_weights: bool = False,
    batch_size: int = 8,
    steps: int = 10,
    warmup: int = 2,
    precision: str = "fp32",
    device: str | None = None,
    lr: float = 1e-6,
) -> dict[str, Any]:
    """Median seconds per step over ``steps`` timed steps after ``warmup``, images/s, peak memory."""
    from un2clip.models.presets import load_clip, load_decoder
    from un2clip.objectives.un2clip import Un2ClipObjective
    from un2clip.train.loop import make_optimizer

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    clip = load_clip(preset, random_weights=random_weights)
    decoder = load_decoder(preset, random_weights=random_weights)
    objective = Un2ClipObjective(clip, decoder).to(dev)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if dtype is not None:
        objective.cast_frozen(dtype)
    objective.set_train_mode()
    opt = make_optimizer(objective.trainable_parameters(), name="adamw", lr=lr, weight_decay=0.0)
    s_clip, s_dec = clip.image_size, decoder.image_size
    gen = torch.Generator().manual_seed(0)
    batch = {
        "clip_pixels": torch.randn(batch_size, 3, s_clip, s_clip, generator=gen).to(dev),
        "decoder_pixels": torch.rand(batch_size, 3, s_dec, s_dec, generator=gen).mul(2).sub(1).to(dev),
        "draw_seed": torch.arange(batch_size, dtype=torch.int64),
    }
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for i in range(warmup + steps):
        _sync(dev)
        t0 = time.perf_counter()
        with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
            loss = objective(batch)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(dev)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else _cpu_peak_gib()
    return {
        "preset": preset, "random_weights": random_weights, "device": _device_name(dev), "precision": precision,
        "batch_size": batch_size, "clip_size": s_clip, "decoder_size": s_dec, "steps": steps,
        "median_step_s": med, "images_per_s": batch_size / med, "peak_memory_gib": peak,
        "step_times_s": times,
    }


def _cpu_peak_gib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (process max RSS)


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def format_result(r: dict[str, Any]) -> str:
    mem = "peak GPU memory" if "cpu" not in r["device"] else "peak RSS"
    return (f"{r['preset']}{' (random weights)' if r['random_weights'] else ''} on {r['device']}, "
            f"{r['precision']}, batch {r['batch_size']}, clip {r['clip_size']} px, decoder {r['decoder_size']} px\n"
            f"  median step {r['median_step_s'] * 1000:.1f} ms over {r['steps']} steps -> "
            f"{r['images_per_s']:.2f} images/s, {mem} {r['peak_memory_gib']:.2f} GiB")
