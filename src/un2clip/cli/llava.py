"""`un2clip llava swap` and the LLaVA evaluations `un2clip eval mmvp-mllm | cvbench`."""

from __future__ import annotations

import argparse

from un2clip.cli.types import OVERWRITE_HELP, positive_int, template_with

MLLM_HELP = {
    "mmvp-mllm": "MMVP with a LLaVA: 300 two-option questions on CLIP-blind pairs (DIR/Questions.csv with Index, "
                 "Question, Options, Correct Answer; DIR/MMVP Images/<Index>.jpg); pairs scored as the paper does",
    "cvbench": "CV-Bench with a LLaVA: 2D/3D multiple choice (DIR/test_2d.jsonl, DIR/test_3d.jsonl, images at each "
               "row's filename; or test*.parquet); per-source accuracy, 2D, 3D and their mean",
}


def _add_llava(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("llava", help="LLaVA with another vision tower: swap",
                       description="Work on transformers LlavaForConditionalGeneration folders.")
    cmds = p.add_subparsers(dest="llava_command", metavar="COMMAND")
    s = cmds.add_parser(
        "swap", help="write a LLaVA folder whose vision tower is another CLIP image encoder",
        description="Copy a LLaVA folder with its vision tower replaced by ENCODER's image tower (an export, run, "
                    "preset, converted open_clip checkpoint or CLIPVisionModel folder). The encoder must have the "
                    "tower's image size, patch size and width; everything else (projector, language model, "
                    "processor) is kept as it is.")
    s.add_argument("--llava", required=True, metavar="LLAVA_DIR", help="transformers LLaVA folder")
    s.add_argument("--encoder", required=True, metavar="EXPORT", help="the new image encoder")
    s.add_argument("--output", required=True, metavar="DIR", help="folder to write (not --llava itself)")
    s.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)

    def swap(args: argparse.Namespace) -> int:
        from un2clip.export import swap_llava_tower

        out, notes = swap_llava_tower(args.llava, args.encoder, args.output, overwrite=args.overwrite)
        print(f"wrote LLaVA with the vision tower of {args.encoder} to {out}")
        for note in notes:
            print(f"  note: {note}")
        return 0

    def usage(args: argparse.Namespace) -> int:
        p.print_help()
        return 2

    s.set_defaults(func=swap)
    p.set_defaults(func=usage)


def add_eval_tasks(tasks: argparse._SubParsersAction, *, data_name, model_name) -> None:
    """The LLaVA evaluations under `un2clip eval`; ``data_name``/``model_name``: how results name data and models
    (the other evaluations' rules, passed in so this module does not import `un2clip.cli.eval`)."""
    for task, help_text in MLLM_HELP.items():
        tp = tasks.add_parser(task, help=help_text, description=help_text + ". One JSON per model in --output "
                              "(merge with `un2clip report`) and a .samples.csv of every answer.")
        tp.add_argument("--model", nargs="+", required=True, metavar="LLAVA_DIR",
                        help="transformers LLaVA folders (e.g. written by `un2clip llava swap`)")
        tp.add_argument("--data", required=True, help="the benchmark folder (see the layout above)")
        tp.add_argument("--output", required=True, metavar="OUT", help="folder for the result files")
        tp.add_argument("--model-name", nargs="+", metavar="NAME", help="names of the models in the results")
        tp.add_argument("--dataset-name", help="name of the dataset in the results (default: from --data)")
        tp.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
        tp.add_argument("--dtype", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                        help="weights' dtype (default auto: as saved)")
        tp.add_argument("--batch-size", type=positive_int, default=8, help="questions generated at once (default 8)")
        tp.add_argument("--max-new-tokens", type=positive_int, default=16, help="answer length limit (default 16)")
        tp.add_argument("--prompt-suffix", help="text after each question (mmvp-mllm default: none, as the official "
                                                "script; cvbench default: answer with the option's letter)")
        tp.add_argument("--prompt-template", type=template_with("question"),
                        help="whole prompt, which must contain {question} (default: the processor's chat "
                             "template, else LLaVA-1.5's 'USER: <image>\\n{question} ASSISTANT:')")
        if task == "cvbench":
            tp.add_argument("--limit", type=positive_int, help="the first N questions only, N >= 1 (default: all)")
        tp.add_argument("--no-progress", action="store_true", help="no progress bars (transformers' included)")
        tp.set_defaults(func=_run_mllm_eval, data_name=data_name, model_name_of=model_name)


def _run_mllm_eval(args: argparse.Namespace) -> int:
    import inspect
    from pathlib import Path

    import torch

    from un2clip.eval import get_task
    from un2clip.eval.core.embed import pick_device
    from un2clip.eval.core.results import format_value, result_path, write_result
    from un2clip.models.llava import LlavaChat

    task = get_task(args.task)
    names = args.model_name or [args.model_name_of(m) for m in args.model]
    if len(names) != len(args.model):
        raise ValueError(f"{len(args.model)} models but {len(names)} --model-name values")
    if not Path(args.data).exists():
        raise FileNotFoundError(f"--data {args.data} not found")
    task.check_data(args.data)  # a malformed benchmark fails before any model loads
    dataset = args.dataset_name or args.data_name(args.data)
    device = pick_device(args.device)
    dtype = {"auto": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    params = inspect.signature(task.evaluate).parameters
    options = {k: getattr(args, k) for k in params
               if k not in ("model", "data", "samples_csv") and getattr(args, k, None) is not None}
    options["progress"] = not args.no_progress
    # every setting that changes an answer is recorded with its effective value, defaults included
    effective = {k: options.get(k, p.default) for k, p in params.items()
                 if k not in ("model", "data", "samples_csv", "progress")}
    for spec, name in zip(args.model, names):
        model = LlavaChat.from_pretrained(spec, device=device, dtype=dtype, prompt_template=args.prompt_template)
        path = result_path(args.output, name, task.name, dataset)
        samples = path.with_name(path.stem + ".samples.csv")
        metrics = task.evaluate(model, args.data, **options, samples_csv=samples)
        recorded = {**effective, "samples_csv": samples, "prompt_template": args.prompt_template,
                    "prompt": model.prompt("{question}"), "dtype": args.dtype}
        write_result(args.output, model=name, task=task.name, dataset=dataset, metrics=metrics, options=recorded,
                     extra={"model_spec": spec, "data": str(Path(args.data).resolve()), "device": str(device),
                            "units": "percent", "answer_matching": "option letter, else option text (no LLM judge); "
                                                                   "an answer naming several letters matches none"})
        print(f"{name} | {task.name} | {dataset}")
        for k in (k for k in metrics if not k.startswith("n_")):
            print(f"  {k}: {format_value(metrics[k])}")
        print(f"  unmatched answers: {metrics.get('n_unmatched', 0)}")
        print(f"  -> {path}")
        del model
    return 0


COMMANDS = [_add_llava]
