"""The OpenAI-CLIP / open_clip state-dict layout of ViT CLIPs, and its map to Hugging Face's ``CLIPModel``.

Pure key maps and reshapes on state dicts, without importing ``open_clip`` or ``clip``:

==============================================  ==============================================================
open_clip / OpenAI ``clip``                      Hugging Face ``CLIPModel``
==============================================  ==============================================================
``visual.class_embedding`` (W)                   ``vision_model.embeddings.class_embedding``
``visual.positional_embedding`` (1 + N, W)       ``vision_model.embeddings.position_embedding.weight``
``visual.conv1.weight`` (W, 3, P, P)             ``vision_model.embeddings.patch_embedding.weight``
``visual.ln_pre``                                ``vision_model.pre_layrnorm``
``visual.transformer.resblocks.i.ln_1/ln_2``    ``vision_model.encoder.layers.i.layer_norm1/layer_norm2``
``....attn.in_proj_weight/bias`` (3W, W)         ``....self_attn.q_proj/k_proj/v_proj`` (fused <-> split)
``....attn.out_proj``                            ``....self_attn.out_proj``
``....mlp.c_fc`` / ``....mlp.c_proj``            ``....mlp.fc1`` / ``....mlp.fc2``
``visual.ln_post``                               ``vision_model.post_layernorm``
``visual.proj`` (W, D)                           ``visual_projection.weight`` (D, W), transposed
``token_embedding.weight``                       ``text_model.embeddings.token_embedding.weight``
``positional_embedding`` (L, W)                  ``text_model.embeddings.position_embedding.weight``
``transformer.resblocks.i.*``                    ``text_model.encoder.layers.i.*``
``ln_final``                                     ``text_model.final_layer_norm``
``text_projection`` (W, D)                       ``text_projection.weight`` (D, W), transposed
``logit_scale``                                  ``logit_scale``
==============================================  ==============================================================

Architectures are open_clip model configs (``embed_dim``, ``vision_cfg``, ``text_cfg``, ``quick_gelu``): the
named ones of :data:`OPENCLIP_CONFIGS`, a JSON file in that format, or inferred from a checkpoint's shapes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

# open_clip's architectures (the shapes of its model_configs/*.json); head_width 64 and mlp_ratio 4 by default
OPENCLIP_CONFIGS: dict[str, dict[str, Any]] = {
    "ViT-B-32": {"embed_dim": 512, "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 32},
                 "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12}},
    "ViT-B-16": {"embed_dim": 512, "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 16},
                 "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12}},
    "ViT-L-14": {"embed_dim": 768, "vision_cfg": {"image_size": 224, "layers": 24, "width": 1024, "patch_size": 14},
                 "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 768, "heads": 12, "layers": 12}},
    "ViT-L-14-336": {"embed_dim": 768,
                     "vision_cfg": {"image_size": 336, "layers": 24, "width": 1024, "patch_size": 14},
                     "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 768, "heads": 12, "layers": 12}},
    "ViT-H-14": {"embed_dim": 1024,
                 "vision_cfg": {"image_size": 224, "layers": 32, "width": 1280, "head_width": 80, "patch_size": 14},
                 "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 1024, "heads": 16, "layers": 12}},
    "ViT-g-14": {"embed_dim": 1024,
                 "vision_cfg": {"image_size": 224, "layers": 40, "width": 1408, "head_width": 88,
                                "mlp_ratio": 4.3637, "patch_size": 14},
                 "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 1024, "heads": 16, "layers": 12}},
    "ViT-bigG-14": {"embed_dim": 1280,
                    "vision_cfg": {"image_size": 224, "layers": 48, "width": 1664, "head_width": 104,
                                   "mlp_ratio": 4.9231, "patch_size": 14},
                    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 1280, "heads": 20, "layers": 32}},
}
# The architectures OpenAI released (with QuickGELU): the default activation when nothing else names one.
OPENAI_ARCHITECTURES = ("ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336")
# The Hugging Face model whose tokenizer, preprocessing and text tower complete a checkpoint of each architecture.
DEFAULT_BASES = {
    "ViT-B-32": "openai/clip-vit-base-patch32",
    "ViT-B-16": "openai/clip-vit-base-patch16",
    "ViT-L-14": "openai/clip-vit-large-patch14",
    "ViT-L-14-336": "openai/clip-vit-large-patch14-336",
    "ViT-H-14": "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
    "ViT-g-14": "laion/CLIP-ViT-g-14-laion2B-s12B-b42K",
    "ViT-bigG-14": "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k",
}
OPENCLIP_CONFIG_FILE = "open_clip_config.json"  # open_clip's Hub layout: config beside the weights
OPENCLIP_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
# keys some checkpoints carry that are not weights (the OpenAI TorchScript's metadata, open_clip's causal mask)
IGNORED_KEYS = ("input_resolution", "context_length", "vocab_size", "attn_mask", "text.attn_mask")
QUICKGELU_SUFFIX = "-quickgelu"

_BLOCK = {  # inside one residual block: open_clip -> HF (fused attention handled apart)
    "ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
}
_VISION = {"visual.class_embedding": "vision_model.embeddings.class_embedding",
           "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
           "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
           "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
           "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
           "visual.ln_post.weight": "vision_model.post_layernorm.weight",
           "visual.ln_post.bias": "vision_model.post_layernorm.bias"}
_TEXT = {"token_embedding.weight": "text_model.embeddings.token_embedding.weight",
         "positional_embedding": "text_model.embeddings.position_embedding.weight",
         "ln_final.weight": "text_model.final_layer_norm.weight",
         "ln_final.bias": "text_model.final_layer_norm.bias",
         "logit_scale": "logit_scale"}
_TRANSPOSED = {"visual.proj": "visual_projection.weight", "text_projection": "text_projection.weight"}
_TOWERS = (("visual.transformer.resblocks.", "vision_model.encoder.layers."),
           ("transformer.resblocks.", "text_model.encoder.layers."))
_BLOCK_KEY = re.compile(r"^(visual\.transformer\.resblocks\.|transformer\.resblocks\.)(\d+)\.(.+)$")
_HF_BLOCK_KEY = re.compile(r"^(vision_model\.encoder\.layers\.|text_model\.encoder\.layers\.)(\d+)\.(.+)$")


# -- state dicts: open_clip <-> HF ------------------------------------------------------------------

def openclip_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An open_clip-layout state dict (full or ``visual.*`` only) -> HF ``CLIPModel`` names and shapes.

    A key this map does not know is an error that names it (e.g. layer scale or attention pooling, which
    HF's CLIP has no place for).
    """
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state.items():
        if key in _VISION:
            out[_VISION[key]] = value
        elif key in _TEXT:
            out[_TEXT[key]] = value
        elif key in _TRANSPOSED:
            out[_TRANSPOSED[key]] = value.t().contiguous()
        elif m := _BLOCK_KEY.match(key):
            tower, index, rest = m.groups()
            prefix = dict(_TOWERS)[tower] + index + "."
            if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = rest.rsplit("_", 1)[1]  # weight | bias
                q, k, v = value.chunk(3, dim=0)  # fused (3W, ...) -> three (W, ...)
                for name, part in zip(("q_proj", "k_proj", "v_proj"), (q, k, v)):
                    out[f"{prefix}self_attn.{name}.{kind}"] = part.contiguous()
                continue
            module, _, param = rest.rpartition(".")
            if module not in _BLOCK:
                unknown.append(key)
                continue
            out[f"{prefix}{_BLOCK[module]}.{param}"] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"{len(unknown)} key(s) of the checkpoint have no place in a HF CLIP ViT: "
                         f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}")
    return out


def hf_to_openclip(state: dict[str, torch.Tensor], *, visual_only: bool = False) -> dict[str, torch.Tensor]:
    """A HF ``CLIPModel`` (or ``CLIPVisionModel[WithProjection]``) state dict -> the open_clip layout.

    ``visual_only``: keep the image tower and ``visual.proj`` only. Buffers (position ids) are dropped.
    """
    inverse = {v: k for k, v in {**_VISION, **_TEXT}.items()}
    inverse_t = {v: k for k, v in _TRANSPOSED.items()}
    inverse_block = {v: k for k, v in _BLOCK.items()}
    towers = {hf: oc for oc, hf in _TOWERS}
    out: dict[str, torch.Tensor] = {}
    fused: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    unknown = []
    for key, value in state.items():
        if key.endswith("position_ids"):
            continue
        if key in inverse:
            out[inverse[key]] = value
        elif key in inverse_t:
            out[inverse_t[key]] = value.t().contiguous()
        elif m := _HF_BLOCK_KEY.match(key):
            tower, index, rest = m.groups()
            prefix = towers[tower] + index + "."
            module, _, param = rest.rpartition(".")
            if module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                fused.setdefault((prefix, param), {})[module.rsplit(".", 1)[1]] = value
            elif module in inverse_block:
                out[f"{prefix}{inverse_block[module]}.{param}"] = value
            else:
                unknown.append(key)
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"{len(unknown)} key(s) have no place in the open_clip layout: "
                         f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}")
    for (prefix, param), parts in fused.items():
        if set(parts) != {"q_proj", "k_proj", "v_proj"}:
            raise ValueError(f"{prefix}: attention has only {sorted(parts)}, not q, k and v")
        out[f"{prefix}attn.in_proj_{param}"] = torch.cat([parts["q_proj"], parts["k_proj"], parts["v_proj"]], 0)
    if visual_only:
        out = {k: v for k, v in out.items() if k.startswith("visual.")}
    return dict(sorted(out.items(), key=lambda kv: _natural(kv[0])))


def _natural(key: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def normalize_checkpoint(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], str]:
    """Unwrap a loaded checkpoint to (tensors, layout): layout ``"openclip"`` or ``"hf"``.

    Takes training checkpoints (``{"state_dict": ...}``), DDP's ``module.`` prefix, a visual tower saved on
    its own (``conv1.weight`` ... without ``visual.``: the prefix is added) and drops non-weight keys.
    """
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
            break
    tensors = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        for prefix in ("module.", "_orig_mod."):
            key = key.removeprefix(prefix)
        if key in IGNORED_KEYS:
            continue
        tensors[key] = value
    if not tensors:
        raise ValueError("the checkpoint holds no tensors (keys: " + (", ".join(map(str, list(state)[:5])) or "none")
                         + ")")
    if any(k.startswith(("vision_model.", "text_model.", "visual_projection.")) for k in tensors):
        return tensors, "hf"
    if "conv1.weight" in tensors and "visual.conv1.weight" not in tensors:  # a bare visual tower
        tensors = {f"visual.{k}": v for k, v in tensors.items()}
    if "visual.conv1.weight" not in tensors and "token_embedding.weight" not in tensors:
        raise ValueError(f"the checkpoint is neither in the open_clip / OpenAI layout nor in the HF one "
                         f"(first keys: {', '.join(list(tensors)[:5])})")
    return tensors, "openclip"


def has_text_tower(state: dict[str, torch.Tensor]) -> bool:
    """Whether an open_clip-layout state dict holds the text tower (else it is a visual tower only)."""
    return "token_embedding.weight" in state


# -- architectures -------------------------------------------------------------------------------------

def resolve_config(name_or_path: str) -> dict[str, Any]:
    """An open_clip model config: a name of :data:`OPENCLIP_CONFIGS` (``-quickgelu`` suffix allowed) or a JSON
    file (open_clip's model config, or an ``open_clip_config.json`` with ``model_cfg``)."""
    path = Path(name_or_path)
    if path.suffix == ".json" or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"--config {path}: no such file")
        data = json.loads(path.read_text(encoding="utf-8"))
        cfg = data.get("model_cfg", data)
        if "vision_cfg" not in cfg:
            raise ValueError(f"{path} is not an open_clip model config (no vision_cfg)")
        return cfg
    name = name_or_path
    quick = name.endswith(QUICKGELU_SUFFIX)
    base = name.removesuffix(QUICKGELU_SUFFIX)
    if base not in OPENCLIP_CONFIGS:
        raise ValueError(f"unknown config {name!r}: one of {', '.join(OPENCLIP_CONFIGS)} (optionally with "
                         f"{QUICKGELU_SUFFIX!r}) or an open_clip model-config JSON file")
    cfg = json.loads(json.dumps(OPENCLIP_CONFIGS[base]))
    if quick:
        cfg["quick_gelu"] = True
    return cfg


def infer_config(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The open_clip config an open_clip-layout state dict's shapes give (heads: width / 64, open_clip's and
    OpenAI's default, unless the shapes are those of a named architecture, whose heads are taken)."""
    conv = state["visual.conv1.weight"]  # (W, 3, P, P)
    width, patch = int(conv.shape[0]), int(conv.shape[-1])
    tokens = int(state["visual.positional_embedding"].shape[0]) - 1
    grid = round(tokens ** 0.5)
    if grid * grid != tokens:
        raise ValueError(f"visual.positional_embedding has {tokens + 1} rows: not 1 + a square number of patches")
    layers = _count_blocks(state, "visual.transformer.resblocks.")
    mlp = int(state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0])
    vision = {"image_size": grid * patch, "layers": layers, "width": width, "patch_size": patch}
    if mlp != 4 * width:
        vision["mlp_ratio"] = mlp / width
    embed = int(state["visual.proj"].shape[1]) if "visual.proj" in state else width
    cfg: dict[str, Any] = {"embed_dim": embed, "vision_cfg": vision}
    if has_text_tower(state):
        twidth = int(state["token_embedding.weight"].shape[1])
        cfg["text_cfg"] = {"context_length": int(state["positional_embedding"].shape[0]),
                           "vocab_size": int(state["token_embedding.weight"].shape[0]), "width": twidth,
                           "heads": max(1, twidth // 64), "layers": _count_blocks(state, "transformer.resblocks.")}
        tmlp = int(state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0])
        if tmlp != 4 * twidth:
            cfg["text_cfg"]["mlp_ratio"] = tmlp / twidth
    named = matching_config_name(cfg)
    if named:  # heads are not in the shapes: take the named architecture's
        known = OPENCLIP_CONFIGS[named]
        cfg["vision_cfg"] = {**cfg["vision_cfg"], **{k: v for k, v in known["vision_cfg"].items()
                                                      if k in ("head_width", "mlp_ratio")}}
        if "text_cfg" in cfg:
            cfg["text_cfg"]["heads"] = known["text_cfg"]["heads"]
    return cfg


def _count_blocks(state: dict[str, torch.Tensor], prefix: str) -> int:
    ids = {int(k[len(prefix):].split(".", 1)[0]) for k in state if k.startswith(prefix)}
    if not ids or ids != set(range(len(ids))):
        raise ValueError(f"the checkpoint's {prefix}N blocks are not numbered 0..N-1: {sorted(ids)[:5]}")
    return len(ids)


def matching_config_name(cfg: dict[str, Any]) -> str | None:
    """The name of the :data:`OPENCLIP_CONFIGS` architecture with the same shapes as ``cfg`` (text tower
    compared when both have one), or None."""
    def shape(c: dict[str, Any]) -> tuple:
        v = c["vision_cfg"]
        return (c["embed_dim"], v["image_size"], v["layers"], v["width"], v["patch_size"],
                int(v["width"] * v.get("mlp_ratio", 4.0)))

    for name, known in OPENCLIP_CONFIGS.items():
        if shape(known) != shape(cfg):
            continue
        t, kt = cfg.get("text_cfg"), known["text_cfg"]
        if t and (t["width"], t["layers"], t["context_length"]) != (kt["width"], kt["layers"], kt["context_length"]):
            continue
        return name
    return None


def hf_config(cfg: dict[str, Any], *, hidden_act: str, text_overrides: dict[str, Any] | None = None,
              text_act: str | None = None):
    """open_clip model config -> transformers ``CLIPConfig`` (text tower: ``cfg['text_cfg']``, with
    ``text_overrides`` such as the tokenizer's special-token ids). ``hidden_act`` is the MLP activation of the
    image tower and, unless ``text_act`` gives the text tower's own, of the text tower."""
    from transformers import CLIPConfig

    v = cfg["vision_cfg"]
    vwidth = int(v["width"])
    vision = {"hidden_size": vwidth, "intermediate_size": int(vwidth * v.get("mlp_ratio", 4.0)),
              "num_hidden_layers": int(v["layers"]), "num_attention_heads": vwidth // int(v.get("head_width", 64)),
              "image_size": int(v["image_size"]), "patch_size": int(v["patch_size"]), "hidden_act": hidden_act,
              "layer_norm_eps": 1e-5, "projection_dim": int(cfg["embed_dim"])}
    t = cfg["text_cfg"]
    twidth = int(t["width"])
    text = {"hidden_size": twidth, "intermediate_size": int(twidth * t.get("mlp_ratio", 4.0)),
            "num_hidden_layers": int(t["layers"]), "num_attention_heads": int(t.get("heads", twidth // 64)),
            "max_position_embeddings": int(t.get("context_length", 77)), "vocab_size": int(t.get("vocab_size", 49408)),
            "hidden_act": text_act or hidden_act, "layer_norm_eps": 1e-5, "projection_dim": int(cfg["embed_dim"]),
            **(text_overrides or {})}
    return CLIPConfig(vision_config=vision, text_config=text, projection_dim=int(cfg["embed_dim"]))


def openclip_config(config, *, visual_only: bool = False) -> dict[str, Any]:
    """transformers ``CLIPConfig`` -> open_clip model config (``quick_gelu`` from the activation). open_clip has
    one activation for both towers: towers that differ are refused unless ``visual_only``."""
    v, t = config.vision_config, config.text_config
    if not visual_only and v.hidden_act != t.hidden_act:
        raise ValueError(f"the image tower uses {v.hidden_act} and the text tower {t.hidden_act}: open_clip's config "
                         "has one activation for both; write the image tower alone (--visual-only)")
    vision = {"image_size": v.image_size, "layers": v.num_hidden_layers, "width": v.hidden_size,
              "head_width": v.hidden_size // v.num_attention_heads, "patch_size": v.patch_size}
    if v.intermediate_size != 4 * v.hidden_size:
        vision["mlp_ratio"] = v.intermediate_size / v.hidden_size
    text = {"context_length": t.max_position_embeddings, "vocab_size": t.vocab_size, "width": t.hidden_size,
            "heads": t.num_attention_heads, "layers": t.num_hidden_layers}
    if t.intermediate_size != 4 * t.hidden_size:
        text["mlp_ratio"] = t.intermediate_size / t.hidden_size
    cfg: dict[str, Any] = {"embed_dim": config.projection_dim, "vision_cfg": vision, "text_cfg": text}
    if v.hidden_act == "quick_gelu":
        cfg["quick_gelu"] = True
    return cfg


def expected_shapes(config, *, visual_only: bool = False) -> dict[str, tuple[int, ...]]:
    """{open_clip key: shape} of a ``CLIPConfig``'s model, computed on the meta device (no memory)."""
    from transformers import CLIPModel

    with torch.device("meta"):
        model = CLIPModel(config)
    state = hf_to_openclip(model.state_dict(), visual_only=visual_only)
    return {k: tuple(v.shape) for k, v in state.items()}


def check_shapes(state: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]], *, what: str,
                 show: int = 5) -> None:
    """Refuse ``state`` unless it has exactly the keys and shapes of ``expected``, listing the first mismatches."""
    problems = []
    for key, shape in expected.items():
        if key not in state:
            problems.append(f"{key}: missing (config {shape})")
        elif tuple(state[key].shape) != shape:
            problems.append(f"{key}: checkpoint {tuple(state[key].shape)} vs config {shape}")
    problems += [f"{key}: not in the config" for key in state if key not in expected]
    if problems:
        more = f" (and {len(problems) - show} more)" if len(problems) > show else ""
        raise ValueError(f"the checkpoint does not match {what}: {len(problems)} mismatched key(s), first: "
                         + "; ".join(problems[:show]) + more)


# -- files ---------------------------------------------------------------------------------------------

def checkpoint_file(path: str | Path) -> Path:
    """The weight file of ``path``: the file itself, or in an open_clip Hub folder its weights."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        for name in OPENCLIP_WEIGHT_FILES:
            if (path / name).is_file():
                return path / name
        found = sorted(p for p in path.iterdir() if p.suffix in CHECKPOINT_SUFFIXES)
        if len(found) == 1:
            return found[0]
        raise FileNotFoundError(f"{path} holds no open_clip checkpoint (expected one of "
                                f"{', '.join(OPENCLIP_WEIGHT_FILES)}, or a single {'/'.join(CHECKPOINT_SUFFIXES)} file)")
    raise FileNotFoundError(f"{path}: no such checkpoint file or folder")


def is_openclip_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a checkpoint file or an open_clip Hub folder (not a HF model folder)."""
    path = Path(path)
    if path.is_file():
        return path.suffix in CHECKPOINT_SUFFIXES
    return path.is_dir() and not (path / "config.json").exists() and (
        (path / OPENCLIP_CONFIG_FILE).exists() or any((path / n).is_file() for n in OPENCLIP_WEIGHT_FILES))


def read_state_dict(path: str | Path) -> dict[str, Any]:
    """Safetensors, or ``torch.load(weights_only=True)``: never an arbitrary pickle. An empty or unreadable file
    is a ``ValueError`` naming it."""
    path = checkpoint_file(path)
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty (0 bytes): not a checkpoint")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:  # safetensors raises its own error type for a damaged header
            raise ValueError(f"{path} is not a readable safetensors file: {_first_line(err)}") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a TorchScript archive or a pickle with code in it
        if "TorchScript" in str(err) or "constants.pkl" in str(err):
            raise ValueError(f"{path} is a TorchScript archive (the OpenAI `clip` package's JIT file): load it "
                             f"once with torch.jit.load and save its state_dict(), which this reads") from None
        raise ValueError(f"{path} cannot be read with torch.load(weights_only=True) (only tensors and plain "
                         f"containers are allowed): {_first_line(err)}") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
    return state


def _first_line(err: BaseException) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def write_state_dict(state: dict[str, torch.Tensor], path: str | Path, *, metadata: dict[str, str] | None = None) -> Path:
    """Write a state dict: safetensors for ``.safetensors``, else ``torch.save`` (``.pt``/``.bin``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path), metadata=metadata)
    else:
        torch.save(state, path)
    return path


# -- a ClipModel from an open_clip-layout checkpoint ---------------------------------------------------

def read_sidecar(path: str | Path) -> dict[str, Any] | None:
    """The ``open_clip_config.json`` beside a checkpoint (or in its folder), if there is one."""
    path = Path(path)
    side = (path if path.is_dir() else path.parent) / OPENCLIP_CONFIG_FILE
    return json.loads(side.read_text(encoding="utf-8")) if side.is_file() else None


def choose_activation(*, explicit: str | None, config: dict[str, Any] | None, config_is_file: bool,
                      config_name: str | None, base_act: str | None, arch_name: str | None,
                      config_what: str = "the config file") -> tuple[str, str]:
    """The MLP activation of a checkpoint's towers and where it comes from, first that applies: ``explicit``
    (--activation); a config file's ``quick_gelu`` (open_clip's default: GELU); a config name (``-quickgelu``:
    QuickGELU, else GELU, as open_clip reads its names); the base model's image tower; QuickGELU for the
    architectures OpenAI released; else GELU."""
    if explicit:
        if explicit not in ("quick_gelu", "gelu"):
            raise ValueError(f"activation must be quick_gelu or gelu, got {explicit!r}")
        return explicit, "--activation"
    if config is not None and config_is_file:
        return ("quick_gelu" if config.get("quick_gelu") else "gelu"), f"the quick_gelu field of {config_what}"
    if config_name:
        quick = config_name.endswith(QUICKGELU_SUFFIX)
        return ("quick_gelu" if quick else "gelu"), (f"the config name {config_name} "
                                                     f"({'with' if quick else 'without'} {QUICKGELU_SUFFIX})")
    if base_act:
        return base_act, "the base model's image tower"
    if arch_name in OPENAI_ARCHITECTURES:
        return "quick_gelu", f"OpenAI's release of {arch_name}"
    return "gelu", "open_clip's default"


def config_activation(cfg: dict[str, Any]) -> str:
    """The activation an open_clip model config names: ``quick_gelu`` when its ``quick_gelu`` is set, else GELU."""
    return "quick_gelu" if cfg.get("quick_gelu") else "gelu"


def build_clip(state: dict[str, torch.Tensor], cfg: dict[str, Any], *, hidden_act: str, tokenizer: Any,
               processing: Any, text_ids: dict[str, int], base_text: dict[str, torch.Tensor] | None = None,
               what: str = "the config", text_act: str | None = None):
    """A ClipModel from an open_clip-layout ``state`` of architecture ``cfg``.

    A visual-only ``state`` takes its text tower and logit scale from ``base_text`` (HF names:
    ``text_model.*``, ``text_projection.weight``, ``logit_scale``), whose activation ``text_act`` is the base's
    (``hidden_act`` is the image tower's). Shapes are checked against ``cfg`` first.
    """
    from transformers import CLIPModel

    from un2clip.models.clip import ClipMeta, ClipModel

    full = has_text_tower(state)
    if not full and base_text is None:
        raise ValueError("a visual-only checkpoint needs a base model whose text tower completes it")
    config = hf_config(cfg, hidden_act=hidden_act, text_overrides=text_ids, text_act=text_act)
    check_shapes(state, expected_shapes(config, visual_only=not full), what=what)
    weights = openclip_to_hf(state)
    if not full:
        weights.update(base_text)
    model = CLIPModel(config)
    model.load_state_dict(weights, strict=True)
    meta = ClipMeta(family="clip", processing=processing, context_length=int(config.text_config.max_position_embeddings))
    return ClipModel(model.eval(), tokenizer, meta)


def matching_shapes(a: dict[str, Any], b: dict[str, Any], *, text: bool) -> bool:
    """Whether two open_clip configs give the same tensor shapes (image tower, and text tower if ``text``)."""
    def vision(c):
        v = c["vision_cfg"]
        return (c["embed_dim"], v["image_size"], v["layers"], v["width"], v["patch_size"],
                int(v["width"] * v.get("mlp_ratio", 4.0)))

    def txt(c):
        t = c["text_cfg"]
        return (t["context_length"], t["vocab_size"], t["width"], t["layers"], int(t["width"] * t.get("mlp_ratio", 4.0)))

    return vision(a) == vision(b) and (not text or txt(a) == txt(b))
