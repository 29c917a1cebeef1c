"""The one training loop: any Objective, any Source, one process or many (accelerate).

Determinism contract: the data order comes from ``(seed, epoch)`` and each sample's
augmentations and diffusion draws from ``(seed, epoch, index)``, so a run resumed from a
checkpoint sees the same batches and the same draws as an uninterrupted run, and the
global batch is the same whatever the number of processes.

Stopping contract: a run that cannot go on raises :class:`un2clip.errors.RunStopped` with its
newest checkpoint intact — a non-finite loss (before the optimiser step), SIGINT or SIGTERM (after
the step in progress, which is then checkpointed), or a failed write (a full disk) of the metrics,
a checkpoint or the trained models. Every process stops at the same step.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from un2clip import runs
from un2clip.data.loader import make_loader
from un2clip.data.sources import Source
from un2clip.errors import RunStopped
from un2clip.objectives.base import Objective
from un2clip.train import perf, trackers
from un2clip.train.config import RunConfig
from un2clip.train.curves import write_curves
from un2clip.train.skips import SkipMonitor, UnreadableDataError

if TYPE_CHECKING:
    from accelerate import Accelerator


class NonFiniteLossError(RunStopped):
    """The loss became NaN or infinite; the run stopped before the optimiser step."""


class StopSignals:
    """While active, SIGINT and SIGTERM ask the training loop to stop after the step in progress.

    ``received`` names the first signal; a second one raises KeyboardInterrupt at once. Handlers can
    only be installed from the main thread; elsewhere (a loop run from a worker thread) the signals
    keep their previous behaviour.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name
        # os.write: a handler may run in the middle of a print, where a buffered stream refuses a second writer
        os.write(2, f"\n{self.received} received: stopping after the step in progress and writing a checkpoint "
                    "(send it again to stop at once)\n".encode())

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        self._previous = {}


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


#: the power of the "poly" schedule: LSeg's LambdaLR (1 - epoch / epochs) ** 0.9, applied here per step
POLY_POWER = 0.9


def lr_factor(step: int, *, warmup_steps: int, max_steps: int, schedule: str) -> float:
    """Multiplier of the base learning rate at optimiser step ``step`` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "poly":  # LSeg's (and mmseg's) polynomial decay, power 0.9, to 0
        return (1.0 - progress) ** POLY_POWER
    raise ValueError(f"lr schedule must be 'constant', 'cosine' or 'poly', got {schedule!r}")


def _truncate_metrics(path: Path, last_step: int) -> None:
    """Drop metric lines written after the checkpoint we resume from."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= last_step]
    path.write_text("".join(ln + "\n" for ln in keep))


class Trainer:
    """One training run: any objective, any source, one process or many (accelerate).

    ``setup()`` builds the accelerator, optimiser and scheduler, restores a checkpoint when resuming
    and opens the data; ``fit()`` runs the optimiser steps, checkpoints and writes the trained models.
    ``cfg.batch_size`` is the global batch (all processes, all accumulation micro-steps); checkpoints go
    to ``cfg.output/checkpoints`` every ``cfg.save_every`` steps and at the end; ``resume`` continues from
    the newest one, with ``cfg``'s learning rate, step budget, precision and checkpoint interval
    (``resume_changes``, ``{field: [old, new]}``, is written into the first metrics line after the resume).

    Unreadable images are skipped and counted. A draw of a global batch none of whose images could be
    read is not an optimiser step: nothing is updated and the next batch is drawn. A
    :class:`~un2clip.train.skips.SkipMonitor` (``cfg.max_skip_rate``, ``cfg.skip_window``) judges the counts;
    when it says stop, the run raises :class:`UnreadableDataError` naming some of the unreadable images.

    ``cfg.compile``: ``torch.compile`` the objective's ``compile_targets()``, tried on the first batch,
    eager with a warning if compilation fails; ``cfg.channels_last``: NHWC convolution weights.
    """

    def __init__(self, objective: Objective, source: Source, cfg: RunConfig, *, resume: bool = False,
                 progress: bool = True, resume_changes: dict[str, list[Any]] | None = None):
        cfg.validate()  # the config's rules (precision, step counts, skip rate, choices) are checked here only
        self.objective, self.source, self.cfg = objective, source, cfg
        self.resume, self.progress = resume, progress
        self.resume_changes = dict(resume_changes or {})
        self.output = Path(cfg.output)
        self.metrics_path = self.output / "metrics.jsonl"
        self.step, self.n_bad, self.last_loss = 0, 0, float("nan")
        self.samples = 0  # global samples drawn, skipped draws included: the data position
        self.skipped_steps = 0  # draws of a global batch without one readable image
        self.skips = SkipMonitor(max_rate=cfg.max_skip_rate, window=cfg.skip_window, source_size=len(source))
        self._micro_batches = 0  # micro-batches this process took from its loader
        self._step_images = 0  # readable images of the optimiser step being drawn (all processes)
        self._pending_note: dict[str, Any] | None = None
        self._grad_norm = float("nan")  # gradient norm of the optimiser step just made (before clipping)
        self.trackers = trackers.tracker_names(cfg.report_to)  # accelerate trackers (--report-to)
        # built by setup()
        self.accelerator: Accelerator | None = None
        self.micro = 0  # images per micro-batch and process
        self.opt: torch.optim.Optimizer | None = None
        self.sched: torch.optim.lr_scheduler.LambdaLR | None = None
        self.model: torch.nn.Module | None = None  # the objective as accelerate prepared it (DDP-wrapped when many)
        self.sampler: Any = None  # the loader's sampler: which samples a micro-batch drew
        self._loader_start = 0  # the data position the loader started from
        self.batches: Any = None  # iterator of micro-batches (None: all unreadable)

    def setup(self) -> Trainer:
        trackers.check_tracker_packages(self.trackers)  # a missing package: a one-line error before any step
        self._setup_accelerator()
        self._setup_objective()
        self._setup_optimizer()
        if self.resume:
            self._restore()  # the global random state too, as it was saved
        else:  # dropout (LoRA's, a model's) draws from the global random state: from the run's seed, not from
            torch.manual_seed(self.cfg.seed + self.accelerator.process_index)  # whatever ran before in the process
        self._setup_trackers()
        self.sched = self._scheduler()
        self._setup_data()
        return self

    def _setup_accelerator(self) -> None:
        from accelerate import Accelerator

        cfg = self.cfg
        self.accelerator = Accelerator(mixed_precision={"fp32": "no"}.get(cfg.precision, cfg.precision),
                                       gradient_accumulation_steps=cfg.grad_accum,
                                       log_with=self.trackers or None, project_dir=str(self.output))
        world = self.accelerator.num_processes
        if cfg.batch_size % (world * cfg.grad_accum):
            raise ValueError(f"batch size {cfg.batch_size} is not divisible by processes ({world}) x "
                             f"grad-accum ({cfg.grad_accum})")
        self.micro = cfg.batch_size // (world * cfg.grad_accum)
        if self.accelerator.is_main_process:
            self.output.mkdir(parents=True, exist_ok=True)

    def _setup_trackers(self) -> None:
        """Start the ``--report-to`` trackers on the main process; a resume continues their run (same
        TensorBoard folder, steps after the checkpoint purged; the W&B run id kept in the run folder)."""
        accelerator = self.accelerator
        if not self.trackers or not accelerator.is_main_process:
            return
        init_kwargs = trackers.tracker_init_kwargs(self.trackers, self.output, resumed_step=self.step)
        if "wandb" in init_kwargs:
            import dataclasses

            init_kwargs["wandb"]["config"] = dataclasses.asdict(self.cfg)
            accelerator.print(trackers.wandb_mode_note())
        accelerator.init_trackers(trackers.PROJECT, init_kwargs=init_kwargs)
        if "tensorboard" in self.trackers:
            accelerator.print(f"TensorBoard: tensorboard --logdir {self.output}")

    def _setup_objective(self) -> None:
        cfg, objective = self.cfg, self.objective
        if cfg.grad_checkpointing:
            objective.enable_gradient_checkpointing()
        objective.to(self.accelerator.device)
        if cfg.precision != "fp32":
            objective.cast_frozen(torch.bfloat16 if cfg.precision == "bf16" else torch.float16)
        if cfg.channels_last:
            perf.use_channels_last(objective)

    def _setup_optimizer(self) -> None:
        cfg = self.cfg
        self.opt = make_optimizer(self.objective.trainable_parameters(), name=cfg.optimizer, lr=cfg.lr,
                                  weight_decay=cfg.weight_decay)

    def _scheduler(self) -> torch.optim.lr_scheduler.LambdaLR:
        """The schedule of this run's settings, at optimiser step ``self.step`` (0, or the restored step).

        Its base rate is ``cfg.lr`` and the next step's rate ``cfg.lr`` x the schedule's factor at ``self.step``
        (a resume may change --lr and --max-steps); with unchanged settings a resumed run gets back exactly
        the rates it saved (the same product). LambdaLR's ``last_epoch`` counts the optimiser steps.
        """
        cfg = self.cfg
        for group in self.opt.param_groups:
            group["initial_lr"] = cfg.lr
        return torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: lr_factor(
            s, warmup_steps=cfg.warmup_steps, max_steps=cfg.max_steps, schedule=cfg.lr_schedule),
            last_epoch=self.step - 1)

    def _restore(self) -> None:
        found = runs.newest_intact_checkpoint(self.output)  # partial and damaged ones: passed over, with a warning
        if found is None:
            raise FileNotFoundError(f"nothing to resume: {self.output / runs.CKPT_DIR} holds no complete checkpoint")
        saved = runs.load_checkpoint(found, verify=False)  # just verified
        device = self.accelerator.device
        self.objective.load_trainable_state_dict({k: v.to(device) for k, v in saved["trainable"].items()})
        self.opt.load_state_dict(saved["optimizer"])  # the schedule is rebuilt at the restored step (setup)
        torch.set_rng_state(saved["rng"]["torch"])
        state = saved["state"]
        self.step, self.n_bad = int(state["step"]), int(state.get("n_bad", 0))
        self.samples = int(state.get("samples_seen", self.step * self.cfg.batch_size))
        self.skipped_steps = int(state.get("skipped_steps", 0))
        if self.accelerator.is_main_process:
            _truncate_metrics(self.metrics_path, self.step)
        if self.resume_changes:
            self._pending_note = {"resumed_at": self.step, "changed": self.resume_changes}
        changed = "".join(f", {k} {a} -> {b}" for k, (a, b) in self.resume_changes.items())
        self.accelerator.print(f"resuming from {found} (step {self.step}{changed})")

    def _setup_data(self) -> None:
        cfg, objective, accelerator = self.cfg, self.objective, self.accelerator
        loader = make_loader(self.source, objective.transform, batch_size=self.micro, seed=cfg.seed,
                             start_sample=self.samples, num_workers=cfg.num_workers,
                             num_replicas=accelerator.num_processes, rank=accelerator.process_index)
        self.sampler, self._loader_start = loader.sampler, self.samples
        batches = iter(loader)
        objective.set_train_mode()
        if cfg.compile and objective.compile_targets():  # compiled on the first batch, before DDP wraps the model
            first = next(batches)
            batches = itertools.chain([first], batches)
            if first is not None:
                perf.compile_with_fallback(objective.compile_targets(),
                                           perf.trial_step(objective, first, accelerator.autocast))
        self.batches = batches
        self.model, self.opt = accelerator.prepare(objective, self.opt)

    def _on_any_process(self, flag: bool) -> bool:
        """True when ``flag`` holds on any process (a collective call: every process must make it)."""
        if self.accelerator.num_processes == 1:
            return flag
        total = self.accelerator.reduce(torch.tensor(float(flag), device=self.accelerator.device), "sum")
        return bool(total > 0)

    def _stopped(self, what: str, err: BaseException | None) -> RunStopped:
        last = runs.latest_checkpoint(self.output)
        cause = f": {err}" if err is not None else " on the main process"
        return RunStopped(f"{what}{cause}; the last good checkpoint, {last or 'none written yet'}, is intact: fix the "
                          f"cause (a full disk?) and continue with --resume {self.output}")

    def save(self, at: int) -> Path:
        """Checkpoint optimiser step ``at`` (main process writes; every process waits).

        A failed write (a full disk) stops the run on every process with :class:`RunStopped`; the
        previous checkpoint stays as it was.
        """
        accelerator = self.accelerator
        accelerator.wait_for_everyone()
        failure = None
        if accelerator.is_main_process:
            try:
                runs.save_checkpoint(self.output, at,
                                     trainable=accelerator.unwrap_model(self.model).trainable_state_dict(),
                                     optimizer_state=self.opt.state_dict(), scheduler_state=self.sched.state_dict(),
                                     state={"n_bad": self.n_bad, "samples_seen": self.samples,
                                            "skipped_steps": self.skipped_steps},
                                     keep=self.cfg.keep_checkpoints)
            except OSError as err:
                failure = err
        if self._on_any_process(failure is not None):  # also the barrier after the write
            raise self._stopped(f"could not write checkpoint step {at} into {self.output / runs.CKPT_DIR}",
                                failure) from failure
        return self.output / runs.CKPT_DIR / f"step_{at:06d}"

    def _append_metrics(self, record: dict[str, Any]) -> OSError | None:
        """Append one line to metrics.jsonl (main process); the error of a failed write, else None."""
        if not self.accelerator.is_main_process:
            return None
        try:
            with self.metrics_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as err:
            return err
        return None

    def _write_models(self) -> None:
        """The trained models into the run folder (main process); a failed write stops the run."""
        accelerator = self.accelerator
        failure = None
        if accelerator.is_main_process:
            try:
                accelerator.unwrap_model(self.model).save_outputs(self.output)
            except OSError as err:
                failure = err
        if self._on_any_process(failure is not None):
            raise self._stopped(f"could not write the trained models into {self.output} (--resume writes them "
                                "once the cause is fixed)", failure) from failure
        accelerator.wait_for_everyone()

    def _note_unreadable(self, batch: dict[str, Any] | None) -> None:
        """Give the skip monitor the keys of the unreadable images of the micro-batch just drawn (for the error)."""
        drawn = self.sampler.batch_indices(self._loader_start, self._micro_batches - 1, self.micro)
        readable = [] if batch is None else batch["index"].tolist()
        for index in readable:
            if index in drawn:
                drawn.remove(index)
        self.skips.remember(self.source.key(i) for i in drawn)

    def _count_draws(self, drawn: int, bad: int) -> None:
        """Add one micro-step's global counts to the run's totals and the skip monitor; stop when it says so."""
        self.samples += drawn
        self.n_bad += bad
        self._stop_if_unreadable(self.skips.record(drawn, bad))

    def _stop_if_unreadable(self, why: str | None) -> None:
        if why is None:
            return
        last = runs.latest_checkpoint(self.output)
        examples = ", ".join(self.skips.examples())
        where = f" under {self.source.spec}" if self.source.kind == "folder" else ""
        raise UnreadableDataError(
            f"{why} (missing, empty or corrupt files{where}, e.g. {examples or 'on other processes'}); "
            f"the run stopped at step {self.step}, last checkpoint: {last or 'none written yet'}. "
            f"Check the paths in {self.cfg.data}, or raise --max-skip-rate / --skip-window to train on what "
            "is readable.")

    def _micro_step(self) -> tuple[float, float, dict[str, torch.Tensor]]:
        """Forward and backward of one micro-batch; the optimiser steps after the last of an optimiser step's.

        Returns the summed loss and the number of processes whose micro-batch had images (both over
        all processes), and the objective's extra metrics (empty unless every process had images).
        """
        accelerator, objective = self.accelerator, self.objective
        batch = next(self.batches)
        self._micro_batches += 1
        n_bad = int(batch.pop("n_bad", 0)) if batch is not None else self.micro
        if n_bad:
            self._note_unreadable(batch)
        with accelerator.accumulate(self.model):
            if batch is None:  # every image of this micro-batch was unreadable: a zero step keeps ranks in sync
                loss = sum(p.sum() * 0.0 for p in objective.trainable_parameters())
                out = {"loss": loss}
            else:
                with accelerator.autocast():
                    out = self.model(batch)
                loss = out["loss"]
            local = loss.detach().float() if batch is not None else torch.zeros((), device=accelerator.device)
            counts = torch.tensor([float(batch is not None), float(n_bad)], device=accelerator.device)
            totals = accelerator.reduce(torch.cat([local.reshape(1), counts]), "sum")
            loss_sum, with_images, bad = (float(v) for v in totals)
            self._count_draws(self.micro * accelerator.num_processes, int(bad))
            self._step_images += self.micro * accelerator.num_processes - int(bad)
            if not math.isfinite(loss_sum):
                last = runs.latest_checkpoint(self.output)
                raise NonFiniteLossError(
                    f"loss became {loss_sum / max(with_images, 1.0)} at step {self.step + 1}; stopped before the "
                    f"optimiser step. Last good checkpoint: {last or 'none written yet'}. "
                    "Try a lower --lr (`--resume RUN --lr ...`), --precision fp32 or bf16 instead of fp16.")
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                if self._step_images:  # a draw without one readable image updates nothing
                    # the norm before clipping; no --max-grad-norm: an infinite bound measures and leaves them alone
                    norm = accelerator.clip_grad_norm_(objective.trainable_parameters(),
                                                       self.cfg.max_grad_norm or math.inf)
                    self._grad_norm = float(norm) if norm is not None else float("nan")
                    self.opt.step()
                self.opt.zero_grad(set_to_none=True)
        extras = {k: v for k, v in out.items() if k != "loss"}
        if with_images < accelerator.num_processes:  # some process has no metrics to reduce for this micro-batch
            extras = {}
        return loss_sum, with_images, extras

    def _optimizer_step(self) -> dict[str, float]:
        """One optimiser step over ``grad_accum`` micro-batches: the mean loss and the objective's extra metrics.

        A draw whose global batch holds no readable image is not a step: it is counted and drawn again.
        """
        while True:
            self._step_images = 0
            loss_sum, with_images, sums, counts = 0.0, 0.0, {}, {}
            for _ in range(self.cfg.grad_accum):
                micro_loss, micro_with, out = self._micro_step()
                loss_sum, with_images = loss_sum + micro_loss, with_images + micro_with
                for k, v in out.items():
                    sums[k] = sums.get(k, 0.0) + float(self.accelerator.reduce(v.detach().float(), "mean"))
                    counts[k] = counts.get(k, 0) + 1
            if self._step_images:
                break
            self.skipped_steps += 1
        self.sched.step()
        self.step += 1
        self.last_loss = loss_sum / with_images
        return {k: sums[k] / counts[k] for k in sums}

    def fit(self) -> TrainResult:
        """Run the remaining optimiser steps; checkpoints, metrics.jsonl and, at the end, the trained models.

        SIGINT or SIGTERM stop the run after the step in progress: that step is checkpointed and
        :class:`RunStopped` raised, so ``--resume`` continues with the losses of an uninterrupted run.
        """
        cfg, accelerator = self.cfg, self.accelerator
        if self.resume and self.step >= cfg.max_steps:
            accelerator.print(f"{self.output} is already at step {self.step} of --max-steps {cfg.max_steps}: no step "
                              f"to train (give a larger --max-steps to continue); writing its trained models")
        bar = tqdm(total=cfg.max_steps, initial=self.step, disable=not (self.progress and accelerator.is_main_process),
                   desc=f"{self.objective.kind}", unit="step", dynamic_ncols=True)
        t_last = time.perf_counter()
        with StopSignals() as signals:
            try:
                while self.step < cfg.max_steps:
                    extras = self._optimizer_step()
                    now = time.perf_counter()
                    ips = cfg.batch_size / max(now - t_last, 1e-9)
                    record = {"step": self.step, "loss": self.last_loss, "lr": self.sched.get_last_lr()[0],
                              "grad_norm": self._grad_norm, "images_per_s": ips, "n_bad": self.n_bad,
                              "skip_rate": self.n_bad / max(self.samples, 1), "skipped_steps": self.skipped_steps,
                              **extras}
                    if self._pending_note:
                        record.update(self._pending_note)
                    self._pending_note = None
                    metrics_error = self._append_metrics(record)
                    if self.trackers:
                        accelerator.log(trackers.scalars(record), step=self.step)
                    bar.set_postfix(loss=f"{self.last_loss:.4f}", img_s=f"{ips:.1f}")
                    bar.update(1)
                    t_last = now
                    saved = self.step % cfg.save_every == 0 or self.step == cfg.max_steps
                    if saved:
                        self.save(self.step)
                    if self._on_any_process(signals.received is not None or metrics_error is not None):
                        self._stop_now(saved, signals.received, metrics_error)
            finally:
                bar.close()
                if self.trackers:
                    accelerator.end_training()  # flush and close the trackers' files, also when the run stops
        self._stop_if_unreadable(self.skips.final_verdict())  # a run shorter than the window: all it drew
        self._write_models()
        self._write_curves()
        if self.n_bad:
            skipped = f" ({self.skipped_steps} draw(s) without a readable image, not counted as steps)" \
                if self.skipped_steps else ""
            accelerator.print(f"skipped {self.n_bad} unreadable image(s) during training{skipped}")
        return TrainResult(step=self.step, samples_seen=self.samples, n_bad=self.n_bad,
                           last_loss=self.last_loss, output=self.output)

    def _write_curves(self) -> None:
        """curves.png (loss, learning rate) into the run folder (main process); a missing matplotlib or a
        failed write is a note, not a failure: the run's models are written already."""
        if not self.accelerator.is_main_process:
            return
        try:
            _, note = write_curves(self.output)
        except (OSError, ValueError) as err:
            note = f"no loss curve: {err}"
        self.accelerator.print(note)

    def _stop_now(self, saved: bool, signal_name: str | None, metrics_error: OSError | None) -> None:
        """Checkpoint the step just finished (unless it was) and raise :class:`RunStopped` saying why."""
        path = self.output / runs.CKPT_DIR / f"step_{self.step:06d}"
        if not saved:
            path = self.save(self.step)  # a failed write (the disk that is full) raises here instead
        if metrics_error is not None:
            raise RunStopped(f"could not append to {self.metrics_path}: {metrics_error}; checkpoint {path} written: "
                             f"fix the cause (a full disk?) and continue with --resume {self.output}") from metrics_error
        raise RunStopped(f"stopped by {signal_name or 'a signal to another process'} after step {self.step} of "
                         f"{self.cfg.max_steps}: checkpoint {path} written; continue with --resume {self.output}")


def train(objective: Objective, source: Source, cfg: RunConfig, *, resume: bool = False,
          progress: bool = True, resume_changes: dict[str, list[Any]] | None = None) -> TrainResult:
    """Minimise ``objective`` on ``source`` with the loop settings of ``cfg`` (see :class:`Trainer`)."""
    return Trainer(objective, source, cfg, resume=resume, progress=progress,
                   resume_changes=resume_changes).setup().fit()


def dump_run_info(output: Path, info: dict[str, Any]) -> None:
    runs.write_run_marker(output, info)
