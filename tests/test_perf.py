"""Speed of the step without changing it: input-only gradients through the frozen decoder, SDPA,
channels-last, optimiser implementations, torch.compile's eager fallback, the benchmark ladder."""

import functools
import re

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from tests.test_latent_cache import _tiny_latent_decoder
from tests.test_train import _images


def _objective(**kw):
    from un2clip.models.presets import build_tiny_clip
    from un2clip.objectives.un2clip import Un2ClipObjective

    return Un2ClipObjective(build_tiny_clip(), _tiny_latent_decoder(), **kw)


def _batch(n=4):
    g = torch.Generator().manual_seed(0)
    return {"clip_pixels": torch.randn(n, 3, 32, 32, generator=g),
            "decoder_pixels": torch.rand(n, 3, 32, 32, generator=g) * 2 - 1, "draw_seed": torch.arange(n)}


def _graph(root) -> list:
    """Every autograd node reachable from ``root``."""
    seen, stack, out = set(), [root], []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        out.append(node)
        stack.extend(nxt for nxt, _ in node.next_functions)
    return out


@pytest.mark.parametrize("frozen_dtype", [None, torch.bfloat16])
def test_frozen_decoder_backward_computes_input_gradients_only(frozen_dtype):
    """What this proves, for the un²CLIP step as training runs it (fp32, or bf16 frozen decoder + autocast):

    1. the autograd graph holds no decoder weight: its leaves (AccumulateGrad nodes) are exactly the
       encoder's trainable weights and the input pixels, so nothing can ever write a decoder ``.grad``;
    2. every UNet convolution is in the graph (gradients do flow through it to its input) and its
       backward node received no weight gradient from the backward kernel: autograd asks
       ``convolution_backward`` / ``mm`` / norm backward kernels only for the outputs whose edge leads
       to a leaf that needs them, and node hooks on every node of the graph see ``None`` in every other
       slot of those kernels;
    3. ``torch.autograd.grad`` reaches the encoder's input through the decoder, and after a full
       step (backward + AdamW) the decoder has no ``.grad`` and unchanged weights.
    ``test_frozen_decoder_backward_costs_one_forward`` adds the FLOPs view of the same fact.
    """
    objective = _objective()
    if frozen_dtype is not None:
        objective.cast_frozen(frozen_dtype)
    objective.set_train_mode()
    batch = _batch()
    pixels = batch["clip_pixels"].requires_grad_(True)
    conv_outputs = []  # does the UNet convolution's output depend on the encoder (need a gradient)?
    for m in objective.decoder.unet.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(lambda mod, inp, out: conv_outputs.append(out.requires_grad))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=frozen_dtype is not None):
        loss = objective(batch)["loss"]

    nodes = _graph(loss.grad_fn)
    leaves = {id(n.variable) for n in nodes if type(n).__name__ == "AccumulateGrad"}
    trainable = {id(p) for p in objective.trainable_parameters()}
    decoder = {id(p) for p in objective.decoder.parameters()}
    assert leaves == trainable | {id(pixels)}
    assert not leaves & decoder

    # conv_in and the first ResNet conv see only the noisy latents (the embedding enters after them): no
    # gradient flows there at all; every other UNet convolution is in the graph with a dead weight edge
    unet_convs = sum(conv_outputs)
    assert len(conv_outputs) - unet_convs == 2
    frozen_conv_nodes = [n for n in nodes if type(n).__name__ == "ConvolutionBackward0" and n.next_functions[1][0] is None]
    assert len(frozen_conv_nodes) == unet_convs  # the encoder's patch conv trains: its weight edge is valid

    produced = []  # (node, slot, gradient computed?) for slots whose edge leads nowhere

    def hook(node, grad_inputs, grad_outputs):
        for j, (grad, (nxt, _)) in enumerate(zip(grad_inputs, node.next_functions)):
            if nxt is None:
                produced.append((type(node).__name__, j, grad is not None))

    for n in nodes:
        n.register_hook(functools.partial(hook, n))
    (grad_pixels,) = torch.autograd.grad(loss, pixels, retain_graph=True)
    assert grad_pixels.abs().sum() > 0
    assert len([p for p in produced if p[0] == "ConvolutionBackward0"]) >= unet_convs
    # the kernels that hold weights (convolutions, matmuls, norms, attention) produced nothing for dead edges;
    # only shape ops answer every slot (CatBackward0 returns a slice of its gradient per input: a view)
    weighted = re.compile(r"Convolution|Mm|Addmm|Bmm|Linear|Norm|Attention")
    assert not [p for p in produced if p[2] and weighted.search(p[0])], "a weight gradient was computed"
    assert {p[0] for p in produced if p[2]} <= {"CatBackward0"}

    before = {k: v.clone() for k, v in objective.decoder.state_dict().items()}
    opt = torch.optim.AdamW(objective.trainable_parameters(), lr=1e-3)
    loss.backward()
    opt.step()
    assert all(p.grad is None for p in objective.decoder.parameters())
    assert all(p.grad is not None for p in objective.trainable_parameters())
    assert all(torch.equal(v, before[k]) for k, v in objective.decoder.state_dict().items())


@pytest.mark.slow
def test_frozen_decoder_backward_costs_one_forward():
    """FlopCounterMode counts the kernels that run (convolution_backward by its output mask): with frozen
    weights the UNet's backward costs about one forward (input gradients), with trainable weights two."""
    decoder = _tiny_latent_decoder().freeze()
    latents = torch.randn(4, 4, 16, 16)
    embeds = torch.randn(4, 128, requires_grad=True)
    t, noise, embed_noise = decoder.draws_from_seeds(torch.arange(4), latents)

    def flops(train_weights: bool) -> tuple[int, int]:
        decoder.unet.requires_grad_(train_weights)
        with FlopCounterMode(display=False) as fwd:
            loss = decoder.diffusion_loss(embeds, latents, timesteps=t, noise=noise, embed_noise=embed_noise)
        with FlopCounterMode(display=False) as bwd:
            loss.backward()
        return fwd.get_total_flops(), bwd.get_total_flops()

    f_frozen, b_frozen = flops(False)
    f_train, b_train = flops(True)
    assert f_frozen == f_train
    assert b_frozen <= 1.05 * f_frozen  # input gradients only (the first conv's input needs none: a bit below 1)
    assert b_train >= 1.9 * f_train  # input + weight gradients
    assert b_train - b_frozen >= 0.9 * f_frozen  # the weight-gradient work that frozen weights skip


def test_attention_is_sdpa_and_eager_gives_the_same_loss(tmp_path):
    from un2clip.models.clip import ClipModel
    from un2clip.models.presets import build_tiny_clip
    from un2clip.train.perf import attention_kinds, set_attention

    objective = _objective().eval()
    assert attention_kinds(objective) == {"sdpa", "AttnProcessor2_0"}  # HF CLIP + diffusers UNet and VAE
    assert attention_kinds(ClipModel.from_pretrained(build_tiny_clip().save_pretrained(tmp_path / "c"))) == {"sdpa"}
    batch = _batch()
    with torch.no_grad():
        sdpa = objective(batch)["loss"]
        set_attention(objective, "eager")
        assert attention_kinds(objective) == {"eager", "AttnProcessor"}
        eager = objective(batch)["loss"]
    torch.testing.assert_close(sdpa, eager, rtol=1e-5, atol=1e-6)


def test_channels_last_gives_the_same_loss():
    from un2clip.train.perf import use_channels_last

    objective = _objective().eval()
    batch = _batch()
    with torch.no_grad():
        plain = objective(batch)["loss"]
        use_channels_last(objective)
        convs = [m.weight for m in objective.modules() if isinstance(m, nn.Conv2d)]
        assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
        nhwc = objective(batch)["loss"]
    torch.testing.assert_close(plain, nhwc, rtol=1e-5, atol=1e-6)


def test_optimizer_implementations_agree():
    from un2clip.train.loop import make_optimizer

    results = {}
    for impl in ("auto", "for-loop", "foreach", "fused"):
        torch.manual_seed(0)
        layer = nn.Linear(8, 4)
        opt = make_optimizer(list(layer.parameters()), name="adamw", lr=1e-2, weight_decay=0.1, implementation=impl)
        if impl == "auto":  # CPU tensors: the multi-tensor path (fused is chosen on CUDA)
            assert opt.defaults["foreach"] is True and not opt.defaults["fused"]
        for _ in range(3):
            layer(torch.ones(2, 8)).square().sum().backward()
            opt.step()
            opt.zero_grad()
        results[impl] = layer.weight.detach()
    for impl, weight in results.items():
        torch.testing.assert_close(weight, results["for-loop"], rtol=1e-6, atol=1e-7, msg=impl)
    with pytest.raises(ValueError, match="implementation"):
        make_optimizer([nn.Parameter(torch.ones(1))], name="adamw", lr=1.0, weight_decay=0.0, implementation="x")


def _failing_backend(gm, example_inputs):
    raise RuntimeError("no compiler here")


class _Block(nn.Module):  # not a torch.nn built-in: dynamo traces it (built-ins alone run eagerly)
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, x):
        return self.linear(x).relu() * 2


def test_compile_falls_back_to_eager_with_a_warning(capsys):
    from un2clip.train.perf import compile_with_fallback

    layer = _Block()
    x = torch.randn(2, 4)
    expected = layer(x)
    with pytest.warns(RuntimeWarning, match="torch.compile failed"):
        ok = compile_with_fallback([layer], lambda: layer(x).sum().backward(), backend=_failing_backend)
    assert not ok and layer._compiled_call_impl is None
    assert "running eagerly" in capsys.readouterr().err
    torch.testing.assert_close(layer(x), expected)
    layer.linear.weight.grad = None
    assert compile_with_fallback([layer], lambda: layer(x).sum().backward(), backend="eager")
    assert layer._compiled_call_impl is not None
    torch.testing.assert_close(layer(x), expected)


@pytest.mark.slow
def test_training_with_a_failing_compiler_runs_eagerly_and_matches(tmp_path, monkeypatch, capsys):
    import json

    from un2clip.data import open_source
    from un2clip.models.presets import build_tiny_clip, build_tiny_decoder
    from un2clip.objectives.un2clip import Un2ClipObjective
    from un2clip.train import perf
    from un2clip.train.config import RunConfig
    from un2clip.train.loop import train

    source = open_source(str(_images(tmp_path / "img", 16)))
    losses = {}
    monkeypatch.setattr(perf, "compile_with_fallback",
                        functools.partial(perf.compile_with_fallback, backend=_failing_backend))
    for compiled in (False, True):
        out = tmp_path / f"run{compiled}"
        objective = Un2ClipObjective(build_tiny_clip(), build_tiny_decoder())
        train(objective, source, RunConfig(output=str(out), max_steps=2, batch_size=4, lr=1e-3, compile=compiled,
                                           channels_last=compiled), progress=False)
        losses[compiled] = [json.loads(ln)["loss"] for ln in (out / "metrics.jsonl").read_text().splitlines()]
        assert all(m._compiled_call_impl is None for m in objective.compile_targets())
    assert "torch.compile failed" in capsys.readouterr().err
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)


@pytest.mark.slow
def test_bench_ladder_in_process_writes_a_table(tmp_path):
    from un2clip.bench import format_markdown, gpu_peak_tflops, ladder_configs, run_ladder

    configs = ladder_configs("cpu", timesteps_per_image=2, carry_bf16=False)
    assert [c.key for c in configs] == ["base", "bf16", "cache", "sdpa", "nhwc", "adamw", "k", "ckpt", "compile"]
    assert configs[2].autocast is None and configs[1].autocast == "bf16"  # bf16 not carried on
    assert configs[-1].cached_latents and configs[-1].timesteps_per_image == 2 and configs[-1].compile
    gpu = ladder_configs("cuda")
    assert gpu[0].autocast == "fp16" and gpu[2].autocast == "bf16" and gpu[5].optimizer == "fused"
    assert gpu_peak_tflops("NVIDIA H100 80GB HBM3") == ("H100 SXM", 989.4)
    assert gpu_peak_tflops("NVIDIA H100 PCIe")[0] == "H100 PCIe" and gpu_peak_tflops("Tesla T4") is None

    result = run_ladder("tiny", batch_size=2, steps=1, warmup=0, device="cpu", timesteps_per_image=2,
                        only=["base", "sdpa", "k", "ckpt"], isolate=False, progress=False)
    rows = result["rungs"]
    assert [r["key"] for r in rows] == ["base", "sdpa", "k", "ckpt"]
    assert rows[0]["speedup_samples"] == 1.0 and all(r["flops_per_step"] > 0 for r in rows)
    assert rows[2]["images_per_step"] == 1 and rows[2]["samples_per_step"] == 2
    assert rows[2]["flops_per_step"] < rows[1]["flops_per_step"]  # half the encoder passes
    assert rows[3]["flops_per_step"] == rows[2]["flops_per_step"]  # model FLOPs: recomputation not counted
    assert result["load_avg_before"] and result["peak"]["tflops"]["fp32"] > 0
    assert all(r["mfu"] is not None and r["peak_memory_gib"] > 0 for r in rows)
    table = format_markdown(result)
    assert table.count("\n| ") == 5 and "MFU" in table and "load average" in table


def test_bench_refuses_an_existing_result_file_before_timing_anything(tmp_path, capsys, monkeypatch):
    """Issue 32's one rule for outputs: `bench --json/--markdown` over an existing file needs --overwrite, and the
    refusal comes before minutes of timing; with --overwrite the file is replaced whole."""
    import json

    import un2clip.bench as bench
    from un2clip.cli import main

    calls = []

    def fake_run_single(*args, **kwargs):
        calls.append(1)
        return {"rows": []}

    monkeypatch.setattr(bench, "run_single", fake_run_single)
    monkeypatch.setattr(bench, "format_markdown", lambda result: "| table |")
    out = tmp_path / "result.json"
    out.write_text("old")
    assert main(["bench", "--json", str(out)]) == 2
    assert "--json" in capsys.readouterr().err and calls == [] and out.read_text() == "old"
    assert main(["bench", "--json", str(out), "--markdown", str(tmp_path / "new.md"), "--overwrite"]) == 0
    assert json.loads(out.read_text()) == {"rows": []} and (tmp_path / "new.md").read_text() == "| table |\n"
