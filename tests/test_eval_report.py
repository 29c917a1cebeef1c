"""Result files, the merged report, and the small helpers around evaluation runs (no models)."""

import json
import math

import pytest
import torch

from un2clip.eval import TASKS, EvalTask, get_task, register_task
from un2clip.eval.core.embed import autocast_dtype
from un2clip.eval.core.results import load_results, markdown_table, result_path, slug, write_result
from un2clip.eval.decoder.diffloss import default_decoder_spec
from un2clip.eval.report import results_table, write_report


def test_registry_names_every_task_with_its_headline():
    assert list(TASKS) == ["mmvp", "zeroshot", "retrieval", "diffloss", "mmvp-mllm", "cvbench", "detect", "grounding",
                           "depth", "pointcloud", "video-retrieval", "video-zeroshot", "sketch", "audio-zeroshot",
                           "seg"]
    assert get_task("mmvp").headline == ("average",) and get_task("diffloss").needs_decoder
    with pytest.raises(ValueError, match="unknown evaluation 'seg2'"):
        get_task("seg2")
    with pytest.raises(ValueError, match="already registered"):
        register_task(EvalTask("mmvp", lambda m, d: {}, ()))


def test_result_files_round_trip_and_the_latest_wins(tmp_path):
    assert slug("runs/demo/finetune") == "runs_demo_finetune" and slug("openai/clip-vit-large-patch14") == \
        "openai_clip-vit-large-patch14"
    first = write_result(tmp_path, model="runs/a", task="mmvp", dataset="mmvp", metrics={"average": 10.0, "x": math.nan},
                         options={"batch_size": 8, "path": tmp_path})
    assert first == result_path(tmp_path, "runs/a", "mmvp", "mmvp") and first.name == "runs_a__mmvp__mmvp.json"
    record = json.loads(first.read_text())
    assert record["metrics"] == {"average": 10.0, "x": None}  # NaN is not JSON
    assert record["options"] == {"batch_size": 8, "path": str(tmp_path)}
    (tmp_path / "other.json").write_text(json.dumps({"not": "a result"}))
    (tmp_path / "broken.json").write_text("{")
    sub = tmp_path / "later"
    write_result(sub, model="runs/a", task="mmvp", dataset="mmvp", metrics={"average": 30.0}, options={})
    write_result(sub, model="base", task="zeroshot", dataset="cifar10", metrics={"acc1": 0.5, "acc5": 0.9,
                                                                                 "n_images": 100}, options={})
    results = load_results(tmp_path)  # oldest first, whatever the file names
    assert [r["path"] for r in results] == [str(first), str(sub / "runs_a__mmvp__mmvp.json"),
                                            str(sub / "base__zeroshot__cifar10.json")]
    table = results_table(results)
    assert table.models == ["runs/a", "base"]
    assert table.columns == ["mmvp/mmvp/average", "zeroshot/cifar10/acc1", "zeroshot/cifar10/acc5"]
    assert table.cell("runs/a", "mmvp/mmvp/average") == 30.0  # the later result replaced the earlier one
    assert table.cell("runs/a", "zeroshot/cifar10/acc1") is None
    assert "zeroshot/cifar10/n_images" in results_table(results, "all").columns
    md = markdown_table(table).splitlines()
    assert md[0] == "| model | mmvp/mmvp/average | zeroshot/cifar10/acc1 | zeroshot/cifar10/acc5 |"
    assert md[2] == "| runs/a | 30 |  |  |" and md[3] == "| base |  | 0.5 | 0.9 |"


def test_report_lists_published_anchors_and_survives_without_matplotlib(tmp_path, monkeypatch):
    write_result(tmp_path, model="openai/clip-vit-large-patch14", task="mmvp", dataset="MMVP_VLM",
                 metrics={"Texts": 20.0, "average": 20.0, "n_pairs": 15}, options={},
                 extra={"published": {"original": 19.3, "un2clip": 32.6}})
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("no matplotlib here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    files = write_report(tmp_path, tmp_path / "report")
    assert files.chart is None and files.csv.exists()
    md = files.markdown.read_text()
    assert "original 19.3, un²CLIP 32.6" in md and "## MMVP-VLM per pattern: MMVP_VLM" in md
    assert "| Texts | average |" in md and "n_pairs" not in md.split("## MMVP-VLM per pattern")[1]


def test_decoder_defaults_follow_presets_and_run_directories(tmp_path):
    assert default_decoder_spec("tiny") == "tiny"
    assert default_decoder_spec("openai-l14") == "openai-l14"
    assert default_decoder_spec("openai-l14-336") is None  # no public unCLIP for it
    assert default_decoder_spec(str(tmp_path)) is None
    (tmp_path / "un2clip_run.json").write_text(json.dumps({"kind": "un2clip", "clip": "tiny", "decoder": "tiny"}))
    assert default_decoder_spec(str(tmp_path)) == str(tmp_path)
    (tmp_path / "un2clip_run.json").write_text(json.dumps({"kind": "contrastive", "clip": "tiny"}))
    assert default_decoder_spec(str(tmp_path)) is None


def test_precision_bf16_on_cuda_by_default_only():
    assert autocast_dtype(torch.device("cpu")) is None
    assert autocast_dtype(torch.device("cuda")) is torch.bfloat16
    assert autocast_dtype(torch.device("cuda"), "fp32") is None
    assert autocast_dtype(torch.device("cpu"), "bf16") is torch.bfloat16
    with pytest.raises(ValueError, match="precision must be one of"):
        autocast_dtype(torch.device("cpu"), "fp16")
