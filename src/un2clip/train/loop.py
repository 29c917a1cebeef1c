"""The one training loop: any Objective, any Source, one process or many (accelerate).

Determinism contract: the data order comes from ``(seed, epoch)`` and each sample's
augmentations and diffusion draws from ``(seed, epoch, index)``, so a run resumed from a
checkpoint sees the same batches and the same draws as an uninterrupted run, and the
global batch is the same whatever the number of processes.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from un2clip.data.loader import make_loader
from un2clip.data.sources import Source
from un2clip.objectives.base import Objective
from un2clip.train import checkpoint as ckpt
from un2clip.train import perf


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stopped before the optimiser step."""


@dataclass
class TrainResult:
    step: int
    samples_seen: int
    n_bad: int
    last_loss: float
    output: Path


def make_optimizer(params: list[torch.nn.Parameter], *, name: str, lr: float, weight_decay: float,
                   betas: tuple[float, float] = (0.9, 0.999), momentum: float = 0.9,
                   implementation: str = "auto") -> torch.optim.Optimizer:
    """AdamW or SGD with momentum.

    ``implementation``: "auto" (AdamW fused on CUDA, multi-tensor "foreach" elsewhere; SGD foreach),
    or "fused", "foreach", "for-loop" (one parameter at a time, PyTorch's reference path).
    """
    if not params:
        raise ValueError("the objective has no trainable parameters")
    if implementation not in ("auto", "fused", "foreach", "for-loop"):
        raise ValueError(f"optimizer implementation must be auto, fused, foreach or for-loop, got {implementation!r}")
    if implementation == "auto":
        implementation = "fused" if name == "adamw" and all(p.is_cuda for p in params) else "foreach"
    kind = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False, "fused": False}}
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=betas, **kind[implementation])
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, **kind[implementation])
    raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {name!r}")


def lr_factor(step: int, *, warmup_steps: int, max_steps: int, schedule: str) -> float:
    """Multiplier of the base learning rate at optimiser step ``step`` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    raise ValueError(f"lr schedule must be 'constant' or 'cosine', got {schedule!r}")


def _truncate_metrics(path: Path, last_step: int) -> None:
    """Drop metric lines written after the checkpoint we resume from."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= last_step]
    path.write_text("".join(ln + "\n" for ln in keep))


def train(
    objective: Objective,
    source: Source,
    *,
    output: str | Path,
    max_steps: int,
    batch_size: int,
    lr: float,
    optimizer: str = "adamw",
    weight_decay: float = 0.0,
    warmup_steps: int = 0,
    lr_schedule: str = "constant",
    grad_accum: int = 1,
    precision: str = "fp32",
    max_grad_norm: float | None = 1.0,
    save_every: int = 500,
    keep_checkpoints: int = 2,
    seed: int = 0,
    num_workers: int = 0,
    resume: bool = False,
    grad_checkpointing: bool = False,
    compile: bool = False,
    channels_last: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Minimise ``objective`` on ``source`` for ``max_steps`` optimiser steps of ``batch_size`` images.

    ``batch_size`` is the global batch (all processes, all accumulation micro-steps).
    Checkpoints go to ``output/checkpoints`` every ``save_every`` steps and at the end;
    ``resume=True`` continues from the newest one. ``compile``: ``torch.compile`` the objective's
    ``compile_targets()``, tried on the first batch, eager with a warning if compilation fails;
    ``channels_last``: convolution weights in NHWC memory format.
    """
    from accelerate import Accelerator

    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be fp32, bf16 or fp16, got {precision!r}")
    accelerator = Accelerator(mixed_precision={"fp32": "no"}.get(precision, precision),
                              gradient_accumulation_steps=grad_accum)
    world = accelerator.num_processes
    if batch_size % (world * grad_accum):
        raise ValueError(f"batch size {batch_size} is not divisible by processes ({world}) x grad-accum ({grad_accum})")
    micro = batch_size // (world * grad_accum)
    output = Path(output)
    metrics_path = output / "metrics.jsonl"
    if accelerator.is_main_process:
        output.mkdir(parents=True, exist_ok=True)

    if grad_checkpointing:
        objective.enable_gradient_checkpointing()
    objective.to(accelerator.device)
    if precision != "fp32":
        objective.cast_frozen(torch.bfloat16 if precision == "bf16" else torch.float16)
    if channels_last:
        perf.use_channels_last(objective)
    opt = make_optimizer(objective.trainable_parameters(), name=optimizer, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, warmup_steps=warmup_steps, max_steps=max_steps, schedule=lr_schedule))

    step, n_bad, last_loss = 0, 0, float("nan")
    if resume:
        found = ckpt.latest_checkpoint(output)
        if found is None:
            raise FileNotFoundError(f"nothing to resume: {output / ckpt.CKPT_DIR} holds no complete checkpoint")
        saved = ckpt.load_checkpoint(found)
        objective.load_trainable_state_dict({k: v.to(accelerator.device) for k, v in saved["trainable"].items()})
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["rng"]["torch"])
        step, n_bad = int(saved["state"]["step"]), int(saved["state"].get("n_bad", 0))
        if accelerator.is_main_process:
            _truncate_metrics(metrics_path, step)
        accelerator.print(f"resuming from {found} (step {step})")

    loader = make_loader(source, objective.transform, batch_size=micro, seed=seed,
                         start_sample=step * batch_size, num_workers=num_workers,
                         num_replicas=world, rank=accelerator.process_index)
    batches = iter(loader)
    objective.set_train_mode()
    if compile and objective.compile_targets():  # compiled on the first batch, before DDP wraps the model
        first = next(batches)
        batches = itertools.chain([first], batches)
        if first is not None:
            perf.compile_with_fallback(objective.compile_targets(),
                                       perf.trial_step(objective, first, accelerator.autocast))
    model, opt = accelerator.prepare(objective, opt)

    def save(at: int) -> None:
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            ckpt.save_checkpoint(output, at, trainable=accelerator.unwrap_model(model).trainable_state_dict(),
                                 optimizer_state=opt.state_dict(), scheduler_state=sched.state_dict(),
                                 state={"n_bad": n_bad, "samples_seen": at * batch_size}, keep=keep_checkpoints)
        accelerator.wait_for_everyone()

    bar = tqdm(total=max_steps, initial=step, disable=not (progress and accelerator.is_main_process),
               desc=f"{objective.kind}", unit="step", dynamic_ncols=True)
    t_last, seen_since = time.perf_counter(), 0
    while step < max_steps:
        losses, extras = [], {}
        for _ in range(grad_accum):
            batch = next(batches)
            n_bad += int(accelerator.reduce(torch.tensor(batch.pop("n_bad", 0) if batch else micro,
                                                         device=accelerator.device), "sum"))
            with accelerator.accumulate(model):
                if batch is None:  # every image of this micro-batch was unreadable: a zero step keeps ranks in sync
                    loss = sum(p.sum() * 0.0 for p in objective.trainable_parameters())
                    out = {"loss": loss}
                else:
                    with accelerator.autocast():
                        out = model(batch)
                    loss = out["loss"]
                reduced = accelerator.reduce(loss.detach().float(), "mean")
                if not torch.isfinite(reduced):
                    last = ckpt.latest_checkpoint(output)
                    raise NonFiniteLossError(
                        f"loss became {float(reduced)} at step {step + 1}; stopped before the optimiser step. "
                        f"Last good checkpoint: {last or 'none written yet'}. "
                        "Try a lower --lr, --precision fp32 or bf16 instead of fp16.")
                accelerator.backward(loss)
                if accelerator.sync_gradients and max_grad_norm:
                    accelerator.clip_grad_norm_(objective.trainable_parameters(), max_grad_norm)
                opt.step()
                opt.zero_grad(set_to_none=True)
            losses.append(float(reduced))
            for k, v in out.items():
                if k != "loss":
                    extras[k] = extras.get(k, 0.0) + float(accelerator.reduce(v.detach().float(), "mean")) / grad_accum
        sched.step()
        step += 1
        seen_since += batch_size
        last_loss = sum(losses) / len(losses)
        now = time.perf_counter()
        ips = seen_since / max(now - t_last, 1e-9)
        if accelerator.is_main_process:
            record = {"step": step, "loss": last_loss, "lr": sched.get_last_lr()[0], "images_per_s": ips,
                      "n_bad": n_bad, **extras}
            with metrics_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        bar.set_postfix(loss=f"{last_loss:.4f}", img_s=f"{ips:.1f}")
        bar.update(1)
        t_last, seen_since = now, 0
        if step % save_every == 0 or step == max_steps:
            save(step)
    bar.close()
    if accelerator.is_main_process:
        accelerator.unwrap_model(model).save_outputs(output)
    accelerator.wait_for_everyone()
    if n_bad:
        accelerator.print(f"skipped {n_bad} unreadable image(s) during training")
    return TrainResult(step=step, samples_seen=step * batch_size, n_bad=n_bad, last_loss=last_loss, output=output)


def dump_run_info(output: Path, info: dict[str, Any]) -> None:
    output.mkdir(parents=True, exist_ok=True)
    ckpt.write_run_marker(output, info)
