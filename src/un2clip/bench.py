"""Throughput, memory and FLOPs of the un²CLIP training step (forward, backward, optimiser step).

:func:`run_ladder` measures a ladder of step configurations on one device in one run: a
straightforward step, then one optimisation added at a time (bf16, cached latents, SDPA,
channels-last, fused/foreach AdamW, K timesteps per image, gradient checkpointing,
torch.compile). Each rung is measured the same way:

- time: median over ``steps`` timed steps after ``warmup`` untimed ones (compilation, if
  any, happens before both, in a trial step);
- memory: on CUDA ``torch.cuda.max_memory_allocated`` over the warm-up and timed steps
  (weights, gradients, optimiser state and activations); on CPU the process's peak resident
  set (``VmHWM``, reset before the warm-up through ``/proc/self/clear_refs``) and its rise
  over the resident set just before the steps;
- FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` over one eager forward and backward
  before checkpointing or compilation is switched on, i.e. model FLOPs without recomputation
  (the optimiser's element-wise work is not counted); MFU = FLOPs / median step time / peak.
  Peaks: NVIDIA's dense bf16/fp16 tensor-core figures for known GPUs; on CPU a measured
  matmul rate on the same cores (a reference, not a hardware peak).

By default each rung runs in a fresh process, so memory, allocator caches and compiled
graphs of one rung do not leak into the next.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import platform
import re
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch

# NVIDIA datasheet dense (no sparsity) bf16 / fp16 tensor-core peaks, TFLOPS; the first match of the device name wins
GPU_PEAK_TFLOPS: list[tuple[str, str, float]] = [
    ("H100 PCIe", "H100 PCIe", 756.0),
    ("H100 NVL", "H100 NVL", 835.0),
    ("H100", "H100 SXM", 989.4),
    ("H200", "H200", 989.4),
    ("GH200", "GH200", 989.4),
    ("A100", "A100", 312.0),
    ("L40S", "L40S", 362.0),
    ("L4", "L4", 121.0),
]


def gpu_peak_tflops(device_name: str) -> tuple[str, float] | None:
    """(label, dense bf16 TFLOPS) of a known GPU, from its ``torch.cuda.get_device_name``."""
    for pattern, label, peak in GPU_PEAK_TFLOPS:
        if pattern in device_name:
            return label, peak
    return None


@dataclass(frozen=True)
class StepConfig:
    """One way of running the un²CLIP training step."""

    key: str
    label: str
    autocast: str | None = None  # "bf16" | "fp16" | None (fp32)
    frozen_dtype: str | None = None  # "bf16": the frozen decoder stored in bf16 (Objective.cast_frozen)
    cached_latents: bool = False  # latents precomputed (un2clip cache-latents): no VAE in the step
    attention: str = "sdpa"  # "sdpa" | "eager"
    channels_last: bool = False
    optimizer: str = "auto"  # "for-loop" | "foreach" | "fused" | "auto"
    timesteps_per_image: int = 1
    grad_checkpointing: bool = False
    compile: bool = False


def has_fast_bf16(device_type: str) -> bool:
    """Whether bf16 matmuls run natively: on CUDA, and on CPUs with AVX512-BF16 / AMX (oneDNN says)."""
    if device_type == "cuda":
        return True
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def ladder_configs(device_type: str, *, timesteps_per_image: int = 4,
                   carry_bf16: bool | None = None) -> list[StepConfig]:
    """The straightforward step, then one optimisation added at a time.

    Where bf16 has no hardware support (``carry_bf16`` False; default: :func:`has_fast_bf16`) the bf16
    rung is measured on top of the straightforward step but not carried into the later rungs.
    """
    cuda = device_type == "cuda"
    carry_bf16 = has_fast_bf16(device_type) if carry_bf16 is None else carry_bf16
    base = StepConfig("base", "straightforward: fp32 weights, " + ("fp16 autocast" if cuda else "fp32 (no autocast)")
                      + ", VAE every step, eager attention, for-loop AdamW",
                      autocast="fp16" if cuda else None, attention="eager", optimizer="for-loop")
    k = timesteps_per_image
    steps = [
        ("bf16", "+ bf16 autocast, bf16 frozen decoder", {"autocast": "bf16", "frozen_dtype": "bf16"}),
        ("cache", "+ cached latents (no VAE)", {"cached_latents": True}),
        ("sdpa", "+ SDPA attention", {"attention": "sdpa"}),
        ("nhwc", "+ channels-last", {"channels_last": True}),
        ("adamw", "+ fused AdamW" if cuda else "+ foreach AdamW", {"optimizer": "fused" if cuda else "foreach"}),
        ("k", f"+ {k} timesteps per image (batch = images x {k})", {"timesteps_per_image": k}),
        ("ckpt", "+ encoder gradient checkpointing", {"grad_checkpointing": True}),
        ("compile", "+ torch.compile (encoder, UNet)", {"compile": True}),
    ]
    out, carried = [base], base
    for key, label, change in steps:
        if key == "bf16" and not carry_bf16:
            out.append(dataclasses.replace(carried, key=key, label=label + " (not carried on: no bf16 hardware)",
                                           **change))
            continue
        carried = dataclasses.replace(carried, key=key, label=label, **change)
        out.append(carried)
    return out


# -- memory ----------------------------------------------------------------------------------------------

def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def _release_free_memory() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them), so the RSS before the steps is the live memory."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _peak_rss_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            return int(re.search(r"VmHWM:\s+(\d+)\s+kB", f.read()).group(1)) * 1024
    except (OSError, AttributeError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# -- device ----------------------------------------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            found = re.search(r"model name\s*:\s*(.+)", f.read())
        cpu = found.group(1).strip() if found else cpu
    except OSError:
        pass
    return f"cpu ({cpu}, {torch.get_num_threads()} threads)"


def cpu_matmul_gflops(dtype: torch.dtype, *, max_n: int = 2048, seconds: float = 1.0) -> float:
    """Best GFLOPS of a square matmul on this CPU: the CPU's reference rate.

    The side doubles from 256 until one product takes 50 ms (or ``max_n``), then the best of
    the repetitions that fit in about ``seconds`` counts.
    """
    n = 256
    while True:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        t0 = time.perf_counter()
        torch.mm(a, b)
        if time.perf_counter() - t0 > 0.05 or n >= max_n:
            break
        n *= 2
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def _load() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


# -- one configuration ---------------------------------------------------------------------------------------

def _dtype(name: str | None) -> torch.dtype | None:
    return {"bf16": torch.bfloat16, "fp16": torch.float16, None: None}[name]


def _step_objective(preset: str, cfg: StepConfig, *, random_weights: bool, decoder_size: int | None,
                    models: tuple[Any, Any] | None, dev: torch.device):
    """The un²CLIP objective of ``cfg`` on ``dev``: frozen dtype, attention kind, memory format, train mode."""
    from un2clip.load import load_clip, load_decoder
    from un2clip.objectives.un2clip import Un2ClipObjective
    from un2clip.train import perf

    if models is not None:
        clip, decoder = copy.deepcopy(models[0]), copy.deepcopy(models[1])
    else:
        clip = load_clip(preset, random_weights=random_weights)
        decoder = load_decoder(preset, random_weights=random_weights)
    if decoder_size:
        if decoder_size % (8 * decoder.vae_factor):
            raise ValueError(f"decoder size {decoder_size} is not a multiple of {8 * decoder.vae_factor}")
        decoder.image_size = int(decoder_size)
    objective = Un2ClipObjective(clip, decoder, timesteps_per_image=cfg.timesteps_per_image).to(dev)
    if cfg.frozen_dtype:
        objective.cast_frozen(_dtype(cfg.frozen_dtype))
    perf.set_attention(objective, cfg.attention)
    if cfg.channels_last:
        perf.use_channels_last(objective)
    objective.set_train_mode()
    return objective


def _synthetic_batch(objective, n_images: int, cached_latents: bool, dev: torch.device) -> dict[str, torch.Tensor]:
    """Seeded random pixels at both views' sizes; the decoder view as float16 latents when ``cached_latents``."""
    s_clip, s_dec = objective.clip.image_size, objective.decoder.image_size
    gen = torch.Generator().manual_seed(0)
    batch: dict[str, torch.Tensor] = {
        "clip_pixels": torch.randn(n_images, 3, s_clip, s_clip, generator=gen).to(dev),
        "draw_seed": torch.arange(n_images, dtype=torch.int64),
    }
    decoder_pixels = torch.rand(n_images, 3, s_dec, s_dec, generator=gen).mul(2).sub(1).to(dev)
    if cached_latents:  # what a cache holds: the VAE's latents in float16, computed once
        with torch.no_grad():
            batch["latents"] = objective.decoder.encode_pixels(decoder_pixels).to(torch.float16)
    else:
        batch["decoder_pixels"] = decoder_pixels
    return batch


def _count_flops(objective, batch: dict[str, torch.Tensor], autocast) -> int:
    """Model FLOPs of one forward + backward: eager, no recomputation (gradients are left to the caller)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        with autocast():
            loss = objective(batch)["loss"]
        loss.backward()
    return int(counter.get_total_flops())


def _timed_steps(step, dev: torch.device, *, warmup: int, steps: int) -> dict[str, Any]:
    """Run ``warmup + steps`` calls of ``step``; wall and CPU times of the last ``steps``, peak memory."""
    _sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        mem_before = torch.cuda.memory_allocated(dev)
    else:
        _release_free_memory()  # the FLOP-counting and compile steps' activations
        mem_before = _rss_bytes()
        _reset_peak_rss()
    times, cpu_times = [], []
    for i in range(warmup + steps):
        _sync(dev)
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        _sync(dev)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
    peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else _peak_rss_bytes()
    return {"times": times, "cpu_times": cpu_times, "peak": peak, "mem_before": mem_before}


def measure_step(
    preset: str,
    cfg: StepConfig,
    *,
    random_weights: bool = False,
    batch_size: int = 8,
    steps: int = 10,
    warmup: int = 2,
    device: str | None = None,
    lr: float = 1e-6,
    decoder_size: int | None = None,
    models: tuple[Any, Any] | None = None,
) -> dict[str, Any]:
    """Time, memory and FLOPs of ``cfg``'s training step on ``preset``.

    ``batch_size`` is the decoder's batch (image-timestep pairs per step): with K timesteps per
    image a step encodes ``batch_size // K`` images. ``decoder_size``: the decoder view's side in
    pixels instead of the preset's (the UNet and VAE are convolutional: e.g. 512 for SD 2.1 at 768).
    ``models``: (clip, decoder) to copy instead of building the preset again.
    """
    from un2clip.train import perf
    from un2clip.train.loop import make_optimizer

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if batch_size % cfg.timesteps_per_image:
        raise ValueError(f"batch size {batch_size} is not a multiple of {cfg.timesteps_per_image} timesteps per image")
    n_images = batch_size // cfg.timesteps_per_image
    objective = _step_objective(preset, cfg, random_weights=random_weights, decoder_size=decoder_size, models=models,
                                dev=dev)
    opt = make_optimizer(objective.trainable_parameters(), name="adamw", lr=lr, weight_decay=0.0,
                         implementation=cfg.optimizer)
    dtype = _dtype(cfg.autocast)

    def autocast():
        return torch.autocast(dev.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()

    batch = _synthetic_batch(objective, n_images, cfg.cached_latents, dev)

    def step() -> None:
        with autocast():
            loss = objective(batch)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    flops = _count_flops(objective, batch, autocast)
    opt.zero_grad(set_to_none=True)

    if cfg.grad_checkpointing:
        objective.enable_gradient_checkpointing()
        objective.set_train_mode()
    compiled, compile_s = False, 0.0
    if cfg.compile:
        t0 = time.perf_counter()
        compiled = perf.compile_with_fallback(objective.compile_targets(), perf.trial_step(objective, batch, autocast))
        _sync(dev)
        compile_s = time.perf_counter() - t0

    run = _timed_steps(step, dev, warmup=warmup, steps=steps)
    times, med = run["times"], statistics.median(run["times"])
    return {
        "key": cfg.key, "label": cfg.label, "config": dataclasses.asdict(cfg),
        "preset": preset, "random_weights": random_weights, "device": device_name(dev),
        "images_per_step": n_images, "samples_per_step": batch_size, "clip_size": objective.clip.image_size,
        "decoder_size": objective.decoder.image_size,
        "steps": steps, "warmup": warmup, "median_step_s": med, "images_per_s": n_images / med,
        "samples_per_s": batch_size / med, "step_times_s": times,
        # CPU time of this process (all threads) per step: on a shared CPU, less sensitive to other jobs than wall time
        "median_step_cpu_s": statistics.median(run["cpu_times"]), "step_cpu_times_s": run["cpu_times"],
        "memory_kind": "cuda max_memory_allocated" if dev.type == "cuda" else "peak RSS (VmHWM)",
        "peak_memory_gib": run["peak"] / 2**30, "memory_rise_gib": (run["peak"] - run["mem_before"]) / 2**30,
        "flops_per_step": flops, "achieved_tflops": flops / med / 1e12,
        "compiled": compiled, "compile_s": compile_s, "load_avg": _load(),
    }


def _measure_in_child(kwargs: dict[str, Any]) -> dict[str, Any]:
    torch.set_num_threads(kwargs.pop("threads"))
    return measure_step(**kwargs)


# -- the ladder --------------------------------------------------------------------------------------------

def run_ladder(
    preset: str,
    *,
    random_weights: bool = False,
    batch_size: int = 8,
    steps: int = 10,
    warmup: int = 2,
    device: str | None = None,
    timesteps_per_image: int = 4,
    decoder_size: int | None = None,
    only: list[str] | None = None,
    isolate: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Measure :func:`ladder_configs` (or the rungs named in ``only``) one after the other.

    ``isolate``: each rung in a fresh process (spawn); otherwise in this one, copying models built once.
    Without ``only``, a CPU with no bf16 hardware skips the bf16 rung (its bf16 matmuls run at a few
    per cent of fp32's, recorded in the result); name it in ``only`` to measure it anyway.
    """
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    configs = ladder_configs(dev.type, timesteps_per_image=timesteps_per_image)
    header = _header(preset, dev, random_weights=random_weights, batch_size=batch_size, steps=steps, warmup=warmup)
    header["isolated"] = isolate
    header["skipped"] = {}
    if only:
        unknown = sorted(set(only) - {c.key for c in configs})
        if unknown:
            raise ValueError(f"unknown rung(s) {unknown}; rungs: {[c.key for c in configs]}")
        configs = [c for c in configs if c.key in only]
    elif not has_fast_bf16(dev.type):
        rates = header["peak"]["tflops"]
        header["skipped"]["bf16"] = (f"no bf16 hardware on this CPU: bf16 matmul {1e3 * rates['bf16']:.1f} GFLOPS vs "
                                     f"fp32 {1e3 * rates['fp32']:.1f} GFLOPS")
        configs = [c for c in configs if c.key != "bf16"]
    common = {"random_weights": random_weights, "batch_size": batch_size, "steps": steps, "warmup": warmup,
              "device": str(dev), "decoder_size": decoder_size}
    models = None
    if not isolate:
        from un2clip.load import load_clip, load_decoder

        models = (load_clip(preset, random_weights=random_weights), load_decoder(preset, random_weights=random_weights))
    rows = []
    for cfg in configs:
        if progress:
            print(f"[bench] {preset}: {cfg.label} ...", flush=True)
        if isolate:
            import multiprocessing

            with multiprocessing.get_context("spawn").Pool(1) as pool:
                row = pool.apply(_measure_in_child, ({"preset": preset, "cfg": cfg, "threads": torch.get_num_threads(),
                                                      **common},))
        else:
            row = measure_step(preset, cfg, models=models, **common)
        rows.append(row)
        if progress:
            print(f"[bench]   {row['median_step_s'] * 1000:.0f} ms/step, {row['samples_per_s']:.2f} samples/s",
                  flush=True)
    header["load_avg_after"] = _load()
    _add_ratios(header, rows)
    return {**header, "rungs": rows}


def run_single(preset: str, cfg: StepConfig, *, random_weights: bool = False, batch_size: int = 8, steps: int = 10,
               warmup: int = 2, device: str | None = None, decoder_size: int | None = None) -> dict[str, Any]:
    """One configuration, reported like a one-rung ladder."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    header = _header(preset, dev, random_weights=random_weights, batch_size=batch_size, steps=steps, warmup=warmup)
    row = measure_step(preset, cfg, random_weights=random_weights, batch_size=batch_size, steps=steps,
                       warmup=warmup, device=str(dev), decoder_size=decoder_size)
    header["load_avg_after"] = _load()
    _add_ratios(header, [row])
    return {**header, "rungs": [row]}


def _header(preset: str, dev: torch.device, **settings) -> dict[str, Any]:
    header: dict[str, Any] = {
        "preset": preset, "device": device_name(dev), **settings, "torch": torch.__version__,
        "load_avg_before": _load(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "fast_bf16": has_fast_bf16(dev.type),
    }
    if dev.type == "cuda":
        peak = gpu_peak_tflops(header["device"])
        header["peak"] = {"label": peak[0], "tflops": {"bf16": peak[1], "fp16": peak[1]}} if peak else None
    else:
        header["peak"] = {"label": "best measured square matmul on these cores",
                          "tflops": {"fp32": cpu_matmul_gflops(torch.float32) / 1e3,
                                     "bf16": cpu_matmul_gflops(torch.bfloat16) / 1e3}}
    return header


def _add_ratios(header: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    base = rows[0]
    for r in rows:
        r["speedup_samples"] = r["samples_per_s"] / base["samples_per_s"]
        r["speedup_images"] = r["images_per_s"] / base["images_per_s"]
        r["memory_ratio"] = r["peak_memory_gib"] / base["peak_memory_gib"]
        peak = header.get("peak")
        compute = r["config"]["autocast"] or "fp32"
        tflops = (peak or {}).get("tflops", {}).get(compute) if peak else None
        if compute != "fp32" and not header.get("fast_bf16", True):  # emulated bf16: mostly fp32 work, no peak
            tflops = None
        r["peak_tflops"] = tflops
        r["mfu"] = r["achieved_tflops"] / tflops if tflops else None


def format_markdown(result: dict[str, Any]) -> str:
    """The ladder as a Markdown table, with what was measured and where."""
    rows = result["rungs"]
    cpu = "cpu" in result["device"]
    mem = "peak RSS GiB (rise)" if cpu else "peak alloc GiB"
    lines = [
        f"**{result['preset']}**{' (random weights)' if result['random_weights'] else ''} on {result['device']}, "
        f"CLIP view {rows[0]['clip_size']} px, decoder view {rows[0]['decoder_size']} px, "
        f"decoder batch {result['batch_size']}, median of {result['steps']} steps after {result['warmup']} warm-up, "
        f"torch {result['torch']}, load average before {result['load_avg_before']} / after {result['load_avg_after']}",
        "",
        f"| rung | images/step | ms/step | images/s | samples/s | x base (samples/s) | {mem} | x base mem "
        "| GFLOP/step | TFLOPS | MFU |" + (" CPU-s/step | x base (CPU-s) |" if cpu else ""),
        "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if cpu else ""),
    ]
    base = rows[0]
    for r in rows:
        memory = f"{r['peak_memory_gib']:.2f} ({r['memory_rise_gib']:+.2f})" if cpu else f"{r['peak_memory_gib']:.2f}"
        mfu = f"{100 * r['mfu']:.1f} %" if r["mfu"] is not None else "n/a"
        note = "" if not r["config"]["compile"] or r["compiled"] else " (compile failed: eager)"
        line = (f"| {r['label']}{note} | {r['images_per_step']} | {r['median_step_s'] * 1000:.0f} | "
                f"{r['images_per_s']:.2f} | {r['samples_per_s']:.2f} | {r['speedup_samples']:.2f} | {memory} | "
                f"{r['memory_ratio']:.2f} | {r['flops_per_step'] / 1e9:.1f} | {r['achieved_tflops']:.3f} | {mfu} |")
        if cpu:  # samples per CPU-second, relative to the first rung
            per_cpu_s = (r["samples_per_step"] / r["median_step_cpu_s"]) / (base["samples_per_step"] / base["median_step_cpu_s"])
            line += f" {r['median_step_cpu_s']:.2f} | {per_cpu_s:.2f} |"
        lines.append(line)
    peak = result.get("peak")
    lines += ["", "samples = image-timestep pairs the decoder denoises; with K timesteps per image a step "
              "encodes batch / K images, so images/s falls while samples/s is the comparable throughput."]
    if cpu:
        lines.append("CPU-s/step = CPU time of the benchmark process (all its threads) per step, median; "
                     "x base (CPU-s) = samples per CPU-second relative to the first rung: the throughput ratio "
                     "with other jobs' share of the cores taken out (wall-clock ratios on a shared machine are not).")
    if peak:
        lines.append("MFU = counted model FLOPs (forward + backward, no recomputation) / step time / "
                     f"peak of {peak['label']}: " + ", ".join(f"{k} {v:.3f} TFLOPS" for k, v in peak["tflops"].items())
                     + (" (a measured matmul rate on shared cores, not a hardware peak)" if cpu else ""))
    else:
        lines.append("MFU: n/a (no known peak for this device)")
    for key, why in result.get("skipped", {}).items():
        lines.append(f"rung {key} not measured: {why} (force it with --rungs)")
    compiled = [r for r in rows if r["config"]["compile"]]
    if compiled:
        lines.append(f"compilation (trial step, untimed): {compiled[0]['compile_s']:.0f} s")
    return "\n".join(lines)
