"""`un2clip` evaluation commands: eval TASK (generated from the registry of evaluations), seg, reconstruct, report.

`un2clip eval NAME` is built from the registered task alone (:mod:`un2clip.eval.tasks`): its description is the
help, the flags its model kind shares (``MODEL_KINDS``) plus the task's own flags hook are the options, and the
task's own flags' dests with the kind's shared options (less those the task ``ignores``) are the keywords passed
to its ``evaluate`` (:func:`option_names`). Nothing here imports a task module before the command runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from un2clip.cli.types import OVERWRITE_HELP, finite_float, nonneg_int, positive_int, template_with

if TYPE_CHECKING:
    from un2clip.eval import EvalTask


# -- the model kinds: the flags their tasks share, how their models are loaded and recorded -------------------


def _result_flags(tp: argparse.ArgumentParser) -> None:
    """Where results go and how they are named: the same for every model kind."""
    tp.add_argument("--output", required=True, metavar="OUT", help="folder for the result files")
    tp.add_argument("--model-name", nargs="+", metavar="NAME", help="names of the models in the results")
    tp.add_argument("--dataset-name", help="name of the dataset in the results (default: from --data)")


def _clip_flags(tp: argparse.ArgumentParser) -> None:
    tp.add_argument("--model", nargs="+", required=True, metavar="M",
                    help="preset (e.g. tiny), Hub id, model folder, fine-tune run directory or exported folder")
    tp.add_argument("--data", required=True, help="the dataset (folder or file; see the task's layout)")
    _result_flags(tp)
    tp.add_argument("--random-weights", action="store_true", help="a preset's architecture, random weights")
    tp.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    tp.add_argument("--precision", choices=["auto", "fp32", "bf16"],
                    help="autocast precision (default auto: bf16 on CUDA, fp32 on CPU)")
    tp.add_argument("--batch-size", type=positive_int, help="images per batch")
    tp.add_argument("--num-workers", type=nonneg_int, help="image-reading processes (default 0)")
    tp.add_argument("--no-progress", action="store_true", help="no progress bars")


def _llava_flags(tp: argparse.ArgumentParser) -> None:
    tp.add_argument("--model", nargs="+", required=True, metavar="LLAVA_DIR",
                    help="transformers LLaVA folders (e.g. written by `un2clip llava swap`)")
    tp.add_argument("--data", required=True, help="the benchmark folder (see the layout above)")
    _result_flags(tp)
    tp.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    tp.add_argument("--dtype", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                    help="weights' dtype (default auto: as saved)")
    tp.add_argument("--batch-size", type=positive_int, default=8, help="questions generated at once (default 8)")
    tp.add_argument("--max-new-tokens", type=positive_int, default=16, help="answer length limit (default 16)")
    tp.add_argument("--prompt-suffix", help="text after each question (mmvp-mllm default: none, as the official "
                                            "script; cvbench default: answer with the option's letter)")
    tp.add_argument("--prompt-template", type=template_with("question"),
                    help="whole prompt, which must contain {question} (default: the processor's chat template, "
                         "else LLaVA-1.5's 'USER: <image>\\n{question} ASSISTANT:')")
    tp.add_argument("--no-progress", action="store_true", help="no progress bars (transformers' included)")


def _audio_flags(tp: argparse.ArgumentParser) -> None:
    tp.add_argument("--model", nargs="+", required=True, metavar="RUN",
                    help="`un2clip train-audio` run directories (each an audio head and the CLIP it was trained into)")
    tp.add_argument("--data", required=True, help="the dataset folder (see the layout above)")
    _result_flags(tp)
    tp.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    tp.add_argument("--batch-size", type=positive_int, help="clips per batch (default 32)")
    tp.add_argument("--no-progress", action="store_true", help="no progress bars")


def _load_audio(spec: str, args: argparse.Namespace, device: Any) -> Any:
    from un2clip.load import load_audio_model

    return load_audio_model(spec).to(device)


def _load_clip(spec: str, args: argparse.Namespace, device: Any) -> Any:
    from un2clip.load import load_clip

    return load_clip(spec, random_weights=args.random_weights).to(device)


def _load_llava(spec: str, args: argparse.Namespace, device: Any) -> Any:
    import torch

    from un2clip.models.llava import LlavaChat

    dtype = {"auto": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    return LlavaChat.from_pretrained(spec, device=device, dtype=dtype, prompt_template=args.prompt_template)


@dataclass(frozen=True)
class ModelKind:
    """How `un2clip eval` loads and records the models of one kind (``EvalTask.model_kind``)."""

    flags: Callable[[argparse.ArgumentParser], None]  # the flags every task of this kind has
    options: tuple[str, ...]  # the dests of those flags that reach evaluate (unless the task ignores them)
    load: Callable[[str, argparse.Namespace, Any], Any]  # (spec, args, device) -> model
    # the loader's settings: (args) -> (added to the result's options, added to the result's fields)
    record: Callable[[argparse.Namespace], tuple[dict[str, Any], dict[str, Any]]]


MODEL_KINDS = {
    "clip": ModelKind(_clip_flags, ("precision", "batch_size", "num_workers"), _load_clip,
                      lambda args: ({}, {"random_weights": args.random_weights})),
    "audio": ModelKind(_audio_flags, ("batch_size",), _load_audio, lambda args: ({}, {})),
    "llava": ModelKind(_llava_flags, ("batch_size", "max_new_tokens", "prompt_suffix"), _load_llava,
                       lambda args: ({"prompt_template": args.prompt_template, "dtype": args.dtype}, {})),
}


def option_names(task: EvalTask) -> list[str]:
    """The keywords `un2clip eval` passes to ``task.evaluate`` (with ``progress``): the dests of the task's own
    flags, then the shared options of its model kind that it does not ignore."""
    scratch = argparse.ArgumentParser(add_help=False)
    if task.flags:
        task.flags(scratch.add_argument_group())
    own = [a.dest for a in scratch._actions]
    return own + [k for k in MODEL_KINDS[task.model_kind].options if k not in task.ignores and k not in own]


# -- the commands -------------------------------------------------------------------------------------------


def _epilog(task: EvalTask) -> str:
    csv = f", and a {_item_suffix(task.item_csv)} of every item beside it" if task.item_csv else ""
    notes = [f"Results: one JSON per model in --output (merge with `un2clip report`){csv}."]
    if task.extras:
        notes.append("Extras: " + ", ".join(f"pip install 'un2clip[{e}]'" for e in task.extras) + ".")
    return " ".join(notes)


def _item_suffix(keyword: str) -> str:
    """``pairs_csv`` -> ``.pairs.csv``: the suffix of the per-item CSV written beside a result file."""
    return "." + keyword.removesuffix("_csv") + ".csv"


def _add_task(sub: argparse._SubParsersAction, task: EvalTask, help_text: str | None = None) -> None:
    """The command of one registered task. A task's own flag replaces a shared flag of the same name (mmvp's
    --precision defaults to fp32)."""
    per_model = task.runner == "per-model"
    tp = sub.add_parser(task.name, help=help_text or task.description, description=task.description,
                        epilog=_epilog(task) if per_model else None, conflict_handler="resolve")
    if per_model:
        MODEL_KINDS[task.model_kind].flags(tp)
    if task.flags:
        task.flags(tp.add_argument_group(f"{task.name} options") if per_model else tp)
    tp.set_defaults(func=_RUNNERS[task.runner])


def _add_eval(sub: argparse._SubParsersAction) -> None:
    from un2clip.eval import TASKS

    p = sub.add_parser(
        "eval", help="evaluate encoders: " + " | ".join(TASKS),
        description="Evaluate one or more models; each (model, task, dataset) gives one JSON file in --output "
                    "with the metrics and the options used. Merge them with `un2clip report OUTPUT`.")
    tasks = p.add_subparsers(dest="task", metavar="TASK")
    for task in TASKS.values():
        _add_task(tasks, task)

    def usage(args: argparse.Namespace) -> int:
        p.print_help()
        return 2

    p.set_defaults(func=usage)


def _add_seg(sub: argparse._SubParsersAction) -> None:
    """`un2clip seg`: the registered task seg under a shorter name, the same flags."""
    from un2clip.eval import get_task

    _add_task(sub, get_task("seg"), help_text="training-free open-vocabulary segmentation (the same as "
                                              "`un2clip eval seg`)")


def _data_name(data: str) -> str:
    from pathlib import Path

    path = Path(data.rstrip("/"))
    return path.name if path.is_dir() or not path.suffix else f"{path.parent.name}-{path.stem}".lstrip("-")


def _model_name(spec: str) -> str:
    """A model's name in results: the spec as given; a local path relative to the working folder when inside it."""
    import os

    spec = spec.rstrip("/") or spec
    if os.path.isabs(spec) and os.path.exists(spec):
        rel = os.path.relpath(spec)
        return spec if rel.startswith("..") else rel
    return spec


@contextmanager
def _naming_extras(task: EvalTask) -> Iterator[None]:
    """A package missing inside the task's data check or evaluate: a one-line error that names its extras."""
    try:
        yield
    except ImportError as err:
        text = str(err)
        if task.extras and "un2clip[" not in text:
            text += f" (the {task.name} evaluation needs: " + ", ".join(
                f"pip install 'un2clip[{e}]'" for e in task.extras) + ")"
        raise ModuleNotFoundError(text, name=err.name) from err


def _run_eval(args: argparse.Namespace) -> int:
    import inspect
    from pathlib import Path

    from un2clip.eval import get_task
    from un2clip.eval.core.embed import pick_device

    task = get_task(args.task)
    names = args.model_name or [_model_name(m) for m in args.model]
    if len(names) != len(args.model):
        raise ValueError(f"{len(args.model)} models but {len(names)} --model-name values")
    if not Path(args.data).exists():
        raise FileNotFoundError(f"--data {args.data} not found")
    options = {k: getattr(args, k) for k in option_names(task) if getattr(args, k) is not None}
    options["progress"] = not args.no_progress
    if task.check_data is not None:  # a malformed dataset fails before any model loads
        wanted = inspect.signature(task.check_data).parameters
        with _naming_extras(task):
            task.check_data(args.data, **{k: v for k, v in options.items() if k in wanted})
    device, decoders = pick_device(args.device), {}
    for spec, name in zip(args.model, names):
        _eval_model(task, args, spec, name, device, options, decoders)
    return 0


def _eval_model(task: EvalTask, args: argparse.Namespace, spec: str, name: str, device: Any,
                options: dict[str, Any], decoders: dict[str, Any]) -> None:
    """Evaluate one model: load it (and the decoder a task needs), write its result file, print its metrics."""
    import inspect
    from pathlib import Path

    from un2clip.eval.core.results import format_value, result_path, write_result

    kind = MODEL_KINDS[task.model_kind]
    model = kind.load(spec, args, device)
    opts, recorded = dict(options), dict(options)
    # every option that changes the result is recorded with its effective value: the defaults of evaluate too
    for key, param in inspect.signature(task.evaluate).parameters.items():
        if key in option_names(task) and key not in recorded and param.default is not inspect.Parameter.empty:
            recorded[key] = param.default
    if task.needs_decoder:
        opts["decoder"], recorded["decoder"] = _decoder(spec, args, device, decoders)
    label, dataset = task.result_name(options), args.dataset_name or _data_name(args.data)
    path = result_path(args.output, name, label, dataset)
    if task.item_csv:
        opts[task.item_csv] = recorded[task.item_csv] = path.with_name(path.stem + _item_suffix(task.item_csv))
    with _naming_extras(task):
        metrics = task.evaluate(model, args.data, **opts)
    loader_options, loader_fields = kind.record(args)
    fields, lines = ({}, []) if task.result_extras is None else task.result_extras(
        spec, metrics, random_weights=getattr(args, "random_weights", False))
    extra = {"model_spec": spec, "data": str(Path(args.data).resolve()), "device": str(device), **loader_fields,
             **fields}
    write_result(args.output, model=name, task=label, dataset=dataset, metrics=metrics,
                 options={**recorded, **loader_options}, extra=extra)
    print(f"{name} | {label} | {dataset}")
    for k in (k for k in metrics if not k.startswith("n_")):
        print(f"  {k}: {format_value(metrics[k])}")
    for line in lines:
        print(f"  {line}")
    print(f"  -> {path}")


def _decoder(spec: str, args: argparse.Namespace, device: Any, decoders: dict[str, Any]) -> tuple[Any, str]:
    """The unCLIP decoder for ``spec`` (--decoder, else the model's own), loaded once per decoder spec."""
    from un2clip.eval.decoder.diffloss import default_decoder_spec
    from un2clip.load import load_decoder

    dec_spec = args.decoder or default_decoder_spec(spec)
    if dec_spec is None:
        raise ValueError(f"{spec} is neither a preset nor a run directory with a decoder: pass --decoder")
    if dec_spec not in decoders:
        decoders[dec_spec] = load_decoder(dec_spec, random_weights=args.random_weights).to(device)
    return decoders[dec_spec], dec_spec


def _run_seg(args: argparse.Namespace) -> int:
    from pathlib import Path

    from un2clip.eval.seg.presets import OPTION_NAMES
    from un2clip.eval.seg.report import DataSpec, benchmark_specs, format_table, run_seg

    if args.benchmarks_root:
        data = benchmark_specs(args.benchmarks_root, args.datasets)
    else:
        if args.datasets:
            raise ValueError("--datasets goes with --benchmarks-root; with --data give --dataset")
        data = [DataSpec(args.dataset, Path(args.data))]
    templates = None
    if args.templates:
        from un2clip.eval.seg.infer import read_templates

        templates = read_templates(args.templates)
    settings = {k: getattr(args, k) for k in OPTION_NAMES}  # every SegSettings field has its flag
    if settings.get("pamr_dilations") is not None:
        settings["pamr_dilations"] = tuple(settings["pamr_dilations"])
    records = run_seg(args.model, args.method, data, output=args.output, model_names=args.model_name,
                      classes=args.classes, templates=templates, split=args.split, max_images=args.max_images,
                      random_weights=args.random_weights, device=args.device, batch_size=args.batch_size,
                      num_workers=args.num_workers, precision=args.precision, progress=not args.no_progress,
                      settings=settings, resize_masks=args.resize_masks, heads=args.head)
    print(format_table(records))
    return 0



_RUNNERS = {"per-model": _run_eval, "seg": _run_seg}  # EvalTask.runner -> how its command runs


def _add_reconstruct(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reconstruct", help="PNG grid: each input image, then the decoder's image from each model's embedding",
        description="Encode images with each model and decode the embeddings with one unCLIP decoder, same seeds "
                    "for every model: which details does each encoder keep?")
    p.add_argument("--models", nargs="+", required=True, metavar="M", help="presets, Hub ids, folders or run dirs")
    p.add_argument("--images", required=True, help="image folder, CSV/TSV or webdataset shards")
    p.add_argument("--output", required=True, help="PNG file to write (a folder gets reconstructions.png)")
    p.add_argument("--decoder", help="unCLIP decoder (default: that of the first model that is a preset or run)")
    p.add_argument("--labels", nargs="+", help="column titles of the models (default: their specs)")
    p.add_argument("--num-images", type=positive_int, default=8, help="rows: the first N readable images (default 8)")
    p.add_argument("--steps", type=positive_int, default=50, help="DDIM steps (default 50)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed, the same for every model (default 0)")
    p.add_argument("--guidance-scale", type=finite_float, default=1.0, help="classifier-free guidance (default 1: none)")
    p.add_argument("--noise-level", type=nonneg_int, default=0, help="embedding noise augmentation level (default 0)")
    p.add_argument("--cell-size", type=positive_int, help="pixels per grid cell (default: the decoder's resolution)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="images decoded at once (default 8)")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.add_argument("--random-weights", action="store_true", help="presets' architectures, random weights")
    p.add_argument("--device", help="cpu, cuda ... (default: cuda if available)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto", help="autocast precision")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")

    def run(args: argparse.Namespace) -> int:
        from pathlib import Path

        from un2clip.eval.core.embed import pick_device
        from un2clip.eval.decoder.diffloss import default_decoder_spec
        from un2clip.eval.decoder.reconstruct import first_images, reconstruction_grid
        from un2clip.files import check_output
        from un2clip.load import load_clip, load_decoder

        labels = args.labels or [_model_name(m) for m in args.models]
        if len(labels) != len(args.models):
            raise ValueError(f"{len(args.models)} models but {len(labels)} --labels")
        out = Path(args.output)
        if out.is_dir() or not out.suffix:
            out = out / "reconstructions.png"
        check_output(out, inputs=[args.images, *args.models], overwrite=args.overwrite)
        dec_spec = args.decoder or next((s for s in map(default_decoder_spec, args.models) if s), None)
        if dec_spec is None:
            raise ValueError("no model is a preset or a run directory with a decoder: pass --decoder")
        device = pick_device(args.device)
        images = first_images(args.images, args.num_images)
        decoder = load_decoder(dec_spec, random_weights=args.random_weights).to(device)
        models = [load_clip(m, random_weights=args.random_weights).to(device) for m in args.models]
        grid = reconstruction_grid(models, decoder, images, labels=labels, cell_size=args.cell_size, seed=args.seed,
                                   num_inference_steps=args.steps, guidance_scale=args.guidance_scale,
                                   noise_level=args.noise_level, batch_size=args.batch_size,
                                   precision=args.precision, progress=not args.no_progress)
        out.parent.mkdir(parents=True, exist_ok=True)
        grid.save(out)
        print(f"{len(images)} images x {len(models)} models, decoder {dec_spec}, seed {args.seed} -> {out}")
        return 0

    p.set_defaults(func=run)


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="merge `un2clip eval` results into a Markdown table, a CSV and a chart; "
                                      "for a training run folder, draw its loss and learning-rate curves",
                       description="RESULTS_DIR holding `un2clip eval` result files: report.md, report.csv and "
                                   "mmvp_patterns.png. A training run folder (it holds metrics.jsonl): curves.png, "
                                   "its loss and learning-rate curves (also written at the end of every run).")
    p.add_argument("results", metavar="RESULTS_DIR",
                   help="folder of result files (searched recursively), or a training run folder")
    p.add_argument("--output", help="where report.md, report.csv, mmvp_patterns.png or curves.png go "
                                    "(default RESULTS_DIR)")

    def run(args: argparse.Namespace) -> int:
        from pathlib import Path

        from un2clip.eval.report import write_report

        if (Path(args.results) / "metrics.jsonl").is_file():  # a training run: its curves
            from un2clip.train.curves import write_curves

            path, note = write_curves(args.results, args.output)
            print(note)
            return 0 if path is not None or "matplotlib" in note else 2
        files = write_report(args.results, args.output)
        print(files.text)
        written = [files.markdown, files.csv] + ([files.chart] if files.chart else [])
        print("wrote " + ", ".join(str(f) for f in written))
        if files.chart is None:
            print("(no MMVP chart: no MMVP results, or matplotlib missing: pip install 'un2clip[plot]')")
        return 0

    p.set_defaults(func=run)


# sub-commands of this group, in the order `un2clip --help` lists them
COMMANDS = [_add_eval, _add_seg, _add_reconstruct, _add_report]
