"""Weights in and out: diffusers model folders, pipeline folders and original single-file checkpoints.

Loading never runs code from a file: safetensors holds only tensors, and pickled formats (.bin, .ckpt, .pt)
are read with ``torch.load(weights_only=True)``, which refuses any object other than tensors and plain
containers. Models are built on the ``meta`` device and the loaded tensors are assigned to them, so a model
is never held twice in memory. Files are written with ldm.files' ``atomic_write`` (a temporary name beside them,
fsynced, renamed into place) and folders replaced with its ``replace_folder``, so an interrupted save or a full disk
leaves the previous file or folder intact.

    model = load_pretrained("sd/unet")                 # a diffusers model folder -> our model, by _class_name
    model.save_pretrained("out/unet")                  # a folder diffusers' from_pretrained loads
    vae = load_original("v1-5.safetensors", "vae")     # the first_stage_model of an original SD checkpoint
"""
from __future__ import annotations

import importlib
import json
import math
import os
import pickle
import re
from pathlib import Path

import safetensors.torch
import torch
from safetensors import SafetensorError

from ldm import convert
from ldm.files import atomic_write, first_line, read_json, write_json

DIFFUSERS_VERSION = "0.42.1"     # written into saved configs; the version our parity tests run against
CONFIG_NAME = "config.json"
SCHEDULER_CONFIG_NAME = "scheduler_config.json"
PIPELINE_INDEX_NAME = "model_index.json"
SAFE_WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
PICKLE_WEIGHTS_NAME = "diffusion_pytorch_model.bin"

# diffusers class name -> (our module, our class). Our class names equal diffusers' on purpose.
MODEL_CLASSES = {
    "AutoencoderKL": ("ldm.vae", "AutoencoderKL"),
    "VQModel": ("ldm.vq", "VQModel"),
    "UNet2DConditionModel": ("ldm.unet", "UNet2DConditionModel"),
}
SCHEDULER_CLASSES = {
    "DDPMScheduler": ("ldm.ddpm", "DDPMScheduler"),
    "DDIMScheduler": ("ldm.ddpm", "DDIMScheduler"),
}
# Pipeline components that only ldm knows (stored as ["ldm", name] in model_index.json).
LDM_COMPONENT_CLASSES: dict[str, tuple[str, str]] = {
    "UserIDEmbedder": ("ldm.conditioning", "UserIDEmbedder"),
}

# Prefixes of each model inside an original single-file checkpoint, tried in order.
ORIGINAL_PREFIXES = {
    "vae": ("first_stage_model.", "vae.", ""),
    "vq": ("first_stage_model.", ""),
    "unet": ("model.diffusion_model.",),
}
# Original training checkpoints also hold the discriminator/perceptual loss; never part of the model.
ORIGINAL_TRAINING_ONLY_PREFIXES = ("loss.",)


def _import(table: dict, name, source) -> type:
    if not isinstance(name, str) or name not in table:
        raise ValueError(f"{source}: unknown _class_name {name!r}; expected one of {sorted(table)}")
    module, attribute = table[name]
    return getattr(importlib.import_module(module), attribute)


# ----------------------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------------------


def read_state_dict(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read tensors from a .safetensors file, or from a .bin/.ckpt/.pt/.pth file with ``weights_only=True``.

    A pickle that asks for anything but tensors and plain containers (the way malicious checkpoints run code)
    is refused with a ValueError that names the file and what the pickle asked for.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file")
    if path.suffix == ".safetensors":
        try:
            return safetensors.torch.load_file(str(path), device=str(device))
        except (SafetensorError, OSError, ValueError, RuntimeError) as error:
            raise ValueError(f"{path}: not a readable safetensors file ({error})") from None
    if path.suffix in (".bin", ".ckpt", ".pt", ".pth"):
        data = torch_load_weights_only(path, device)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a dict of tensors, got {type(data).__name__}")
        if isinstance(data.get("state_dict"), dict):   # Lightning / original LDM training checkpoints
            data = data["state_dict"]
        return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    raise ValueError(f"{path}: unsupported weights format {path.suffix!r}; expected .safetensors, .bin, .ckpt, .pt or .pth")


def torch_load_weights_only(path: Path, device: str | torch.device = "cpu"):
    """``torch.load(path, weights_only=True)`` (memory-mapped when the file allows it), with one-line errors:
    a pickle that asks for a Python object other than tensors and plain containers is refused (that is how a
    malicious checkpoint runs code), and a file that is not a checkpoint at all says so."""
    try:
        try:   # memory-map when the file allows it (the zip format of torch>=1.6), to avoid a second copy
            return torch.load(path, map_location=device, weights_only=True, mmap=True)
        except RuntimeError as error:
            if "mmap" not in str(error):
                raise
            return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as error:
        match = re.search(r"unsupported GLOBAL:? (?:GLOBAL )?([\w.]+)", str(error), flags=re.IGNORECASE)
        if match:
            raise ValueError(f"{path}: refused to load: the pickle asks for the Python object {match.group(1)}, and "
                             "ldm only unpickles tensors and plain containers (weights_only=True). Convert the file "
                             "to safetensors in an environment you trust") from None
        raise ValueError(f"{path}: not a readable PyTorch checkpoint (the weights-only unpickler stopped: "
                         f"{_unpickler_reason(error)})") from None
    except (RuntimeError, EOFError, OSError) as error:
        reason = first_line(error) or ("the file is empty" if Path(path).stat().st_size == 0
                                        else type(error).__name__)
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({reason})") from None


def _unpickler_reason(error: Exception) -> str:
    """What torch's weights-only unpickler objected to, without its advice to load with weights_only=False (that
    advice is how a malicious file runs its code)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    lines = [line for line in lines if "weights_only" not in line and not line.startswith("Check the documentation")]
    reason = lines[0] if lines else "not a weights-only pickle"
    return reason.removeprefix("WeightsUnpickler error:").strip()


def write_safetensors(state_dict: dict[str, torch.Tensor], path: str | os.PathLike,
                      metadata: dict[str, str] | None = None) -> None:
    """Write tensors to a safetensors file atomically (``{"format": "pt"}`` metadata, as diffusers)."""
    tensors = {k: v.detach().contiguous() for k, v in state_dict.items()}
    meta = {"format": "pt", **(metadata or {})}
    atomic_write(path, lambda tmp: safetensors.torch.save_file(tensors, str(tmp), metadata=meta))


def _add_variant(name: str, variant: str | None) -> str:
    """diffusion_pytorch_model.safetensors -> diffusion_pytorch_model.fp16.safetensors (diffusers' rule)."""
    if variant is None:
        return name
    parts = name.split(".")
    return ".".join(parts[:-1] + [variant] + parts[-1:])


def _parse_size(size: int | str) -> int:
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+)\s*(B|KB|MB|GB|KiB|MiB|GiB)\s*", size)
    if not match:
        raise ValueError(f"max_shard_size={size!r}: expected bytes as an int or a string like '10GB' or '500MiB'")
    units = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}
    return int(match.group(1)) * units[match.group(2)]


# ----------------------------------------------------------------------------------------------------------------
# Config values read from disk: checked like command-line options, one line naming the file and the key
# ----------------------------------------------------------------------------------------------------------------
def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _positive_ints(v) -> bool:
    return isinstance(v, list) and len(v) > 0 and all(_positive_int(x) for x in v)


# kind -> (test, what is expected); the tests take the JSON value as read
CONFIG_VALUE_KINDS = {
    "positive int": (_positive_int, "a positive integer"),
    "int >= 0": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "an integer >= 0"),
    "positive ints": (_positive_ints, "a non-empty list of positive integers"),
    "positive int or ints": (lambda v: _positive_int(v) or _positive_ints(v),
                             "a positive integer or a list of them"),
    "positive int or ints or null": (lambda v: v is None or _positive_int(v) or _positive_ints(v),
                                     "a positive integer, a list of them, or null"),
    "positive int or null": (lambda v: v is None or _positive_int(v), "a positive integer or null"),
    "size": (lambda v: v is None or _positive_int(v) or (_positive_ints(v) and len(v) == 2),
             "a positive integer, [height, width] of them, or null"),
    "positive number": (lambda v: _number(v) and v > 0, "a positive finite number"),
    "number or null": (lambda v: v is None or _number(v), "a finite number or null"),
    "beta_start": (lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1) (Stable Diffusion: 0.00085)"),
    "beta_end": (lambda v: _number(v) and 0 < v <= 1, "a number in (0, 1] (Stable Diffusion: 0.012)"),
    "betas or null": (lambda v: v is None or (isinstance(v, list) and all(_number(x) and 0 < x <= 1 for x in v)),
                      "null or a list of numbers in (0, 1]"),
    "string": (lambda v: isinstance(v, str), "a string"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "user map": (lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v)
                 and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in v.values()),
                 "a map of user names to IDs 0, 1, ..."),
}
# The keys of model, scheduler and embedder configs whose values we check before building anything; the builders
# (from_diffusers) then check how the values fit together.
MODEL_CONFIG_VALUES = {
    "in_channels": "positive int", "out_channels": "positive int", "latent_channels": "positive int",
    "norm_num_groups": "positive int", "layers_per_block": "positive int or ints",
    "block_out_channels": "positive ints", "sample_size": "size", "scaling_factor": "positive number",
    "shift_factor": "number or null", "num_vq_embeddings": "positive int", "vq_embed_dim": "positive int or null",
    "cross_attention_dim": "positive int or ints", "attention_head_dim": "positive int or ints or null",
    "num_attention_heads": "positive int or ints or null", "num_class_embeds": "positive int or null",
    "norm_eps": "positive number", "transformer_layers_per_block": "positive int or ints",
}
SCHEDULER_CONFIG_VALUES = {
    "num_train_timesteps": "positive int", "beta_start": "beta_start", "beta_end": "beta_end",
    "beta_schedule": "string", "trained_betas": "betas or null", "prediction_type": "string",
    "steps_offset": "int >= 0", "clip_sample": "bool", "clip_sample_range": "positive number",
    "timestep_spacing": "string", "variance_type": "string", "set_alpha_to_one": "bool",
    "rescale_betas_zero_snr": "bool", "thresholding": "bool",
}
EMBEDDER_CONFIG_VALUES = {"num_users": "positive int", "dim": "positive int", "num_tokens": "positive int",
                          "route": "string", "class_to_idx": "user map"}


def check_config_values(mapping: dict, path, kinds: dict[str, str]) -> None:
    """ValueError "PATH: KEY is VALUE; expected ..." for the first value of ``mapping`` (a config read from
    ``path``) that is not of its kind in ``kinds`` (MODEL_CONFIG_VALUES, ...). Keys not in ``kinds`` are left to
    the config's builder."""
    for key, kind in kinds.items():
        if key in mapping:
            test, expected = CONFIG_VALUE_KINDS[kind]
            if not test(mapping[key]):
                raise ValueError(f"{path}: {key} is {json.dumps(mapping[key])[:60]}; expected {expected}")


def _from_config(build, mapping: dict, path):
    """``build(mapping)``, with any error it raises on the config's values as one line naming ``path``."""
    try:
        return build(mapping)
    except (ValueError, TypeError, KeyError) as error:
        text = first_line(error)
        raise ValueError(text if str(path) in text else f"{path}: {text}") from None


# ----------------------------------------------------------------------------------------------------------------
# diffusers model folders
# ----------------------------------------------------------------------------------------------------------------


def read_model_folder(path: str | os.PathLike, variant: str | None = None,
                      device: str | torch.device = "cpu") -> tuple[dict, dict[str, torch.Tensor]]:
    """Read ``config.json`` and the weights of a diffusers model folder: single safetensors, .bin, or sharded
    (``*.safetensors.index.json``), optionally of a ``variant`` such as "fp16". Returns (config, state_dict)."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a model folder")
    config = read_json(folder / CONFIG_NAME)
    candidates = [_add_variant(SAFE_WEIGHTS_NAME, variant), _add_variant(SAFE_WEIGHTS_NAME + ".index.json", variant),
                  _add_variant(PICKLE_WEIGHTS_NAME, variant), _add_variant(PICKLE_WEIGHTS_NAME + ".index.json", variant)]
    for name in candidates:
        file = folder / name
        if not file.is_file():
            continue
        if not name.endswith(".json"):
            return config, read_state_dict(file, device)
        index = read_json(file)
        if not isinstance(index.get("weight_map"), dict):
            raise ValueError(f"{file}: no 'weight_map' in the shard index")
        state_dict = {}
        for shard in sorted(set(index["weight_map"].values())):
            state_dict.update(read_state_dict(folder / shard, device))
        missing = sorted(set(index["weight_map"]) - set(state_dict))
        if missing:
            raise ValueError(f"{file}: {len(missing)} tensors listed in the index are in no shard, e.g. {missing[:5]}")
        return config, state_dict
    raise FileNotFoundError(f"{folder}: no weights file; looked for {', '.join(candidates)}")


def check_state_dict(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source) -> None:
    """Raise a readable ValueError if keys or shapes differ from the model's (instead of torch's key dump)."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(expected.keys() - state_dict.keys())
    unexpected = sorted(state_dict.keys() - expected.keys())
    if missing or unexpected:
        raise ValueError(f"{source}: state dict does not fit {type(model).__name__}: {len(missing)} missing keys "
                         f"{missing[:5]}, {len(unexpected)} unexpected keys {unexpected[:5]}")
    for key, shape in expected.items():
        if tuple(state_dict[key].shape) != shape:
            raise ValueError(f"{source}: {key} has shape {tuple(state_dict[key].shape)}, the model expects {shape}")


def build_model(cls: type, config, state_dict: dict[str, torch.Tensor], source,
                dtype: torch.dtype | None = None, device: str | torch.device | None = None) -> torch.nn.Module:
    """Instantiate ``cls(config)`` on the meta device and assign the state dict's tensors to it (no second copy).

    Floating tensors are cast to ``dtype`` (default float32, as diffusers' from_pretrained without torch_dtype).
    The model comes back in eval mode, as diffusers' from_pretrained returns it (train mode changes the numbers:
    ResnetBlock2D makes its input contiguous in training, as diffusers does); call ``.train()`` to train it.
    """
    dtype = dtype or torch.float32
    state_dict = {k: v.to(dtype=dtype) if v.is_floating_point() else v for k, v in state_dict.items()}
    with torch.device("meta"):
        model = cls(config)
    check_state_dict(model, state_dict, source)
    model.load_state_dict(state_dict, strict=True, assign=True)
    left_on_meta = [name for name, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left_on_meta:
        raise RuntimeError(f"{cls.__name__} has tensors that are not in its state dict: {left_on_meta[:5]}")
    model.eval()
    return model.to(device) if device is not None else model


def load_pretrained(path: str | os.PathLike, dtype: torch.dtype | None = None,
                    device: str | torch.device | None = None, variant: str | None = None):
    """Load a diffusers model folder (``config.json`` + weights) as our model, or a scheduler folder
    (``scheduler_config.json``) as our scheduler, chosen by ``_class_name``."""
    folder = Path(path)
    if (folder / SCHEDULER_CONFIG_NAME).is_file() and not (folder / CONFIG_NAME).is_file():
        mapping = read_json(folder / SCHEDULER_CONFIG_NAME)
        cls = _import(SCHEDULER_CLASSES, mapping.get("_class_name"), folder / SCHEDULER_CONFIG_NAME)
        check_config_values(mapping, folder / SCHEDULER_CONFIG_NAME, SCHEDULER_CONFIG_VALUES)
        return _from_config(cls.from_diffusers, mapping, folder / SCHEDULER_CONFIG_NAME)
    config, state_dict = read_model_folder(folder, variant, device or "cpu")
    cls = _import(MODEL_CLASSES, config.get("_class_name"), folder / CONFIG_NAME)
    check_config_values(config, folder / CONFIG_NAME, MODEL_CONFIG_VALUES)
    if cls.__name__ in ("AutoencoderKL", "VQModel"):
        state_dict = convert.rename_legacy_attention(state_dict)
    model_config = _from_config(cls.config_class.from_diffusers, config, folder / CONFIG_NAME)
    return build_model(cls, model_config, state_dict, folder, dtype, device)


def save_pretrained(model: torch.nn.Module, path: str | os.PathLike, variant: str | None = None,
                    max_shard_size: int | str = "10GB", safe_serialization: bool = True) -> None:
    """Write ``model`` as a diffusers model folder: config.json (with ``_class_name`` and ``_diffusers_version``)
    and its weights in their current dtype, sharded above ``max_shard_size``."""
    folder = Path(path)
    state_dict = model.state_dict()
    weights_name = _add_variant(SAFE_WEIGHTS_NAME if safe_serialization else PICKLE_WEIGHTS_NAME, variant)

    # Greedy sharding in key order, as diffusers/huggingface_hub do.
    limit, shards, current, size = _parse_size(max_shard_size), [], {}, 0
    for key, tensor in state_dict.items():
        nbytes = tensor.numel() * tensor.element_size()
        if current and size + nbytes > limit:
            shards.append(current)
            current, size = {}, 0
        current[key] = tensor
        size += nbytes
    shards.append(current)

    def write(tensors: dict, file: Path):
        if safe_serialization:
            write_safetensors(tensors, file)
        else:
            atomic_write(file, lambda tmp: torch.save({k: v.contiguous() for k, v in tensors.items()}, tmp))

    if len(shards) == 1:
        write(shards[0], folder / weights_name)
    else:
        stem, extension = weights_name.rsplit(".", 1)
        weight_map = {}
        for i, shard in enumerate(shards, start=1):
            name = f"{stem}-{i:05d}-of-{len(shards):05d}.{extension}"
            write(shard, folder / name)
            weight_map.update({key: name for key in shard})
        total = sum(t.numel() * t.element_size() for t in state_dict.values())
        index_name = _add_variant(("diffusion_pytorch_model.safetensors" if safe_serialization
                                   else "diffusion_pytorch_model.bin") + ".index.json", variant)
        write_json({"metadata": {"total_size": total}, "weight_map": weight_map}, folder / index_name)
    write_json(diffusers_config(model), folder / CONFIG_NAME)


def diffusers_config(model) -> dict:
    """The config.json mapping of a model: its config in diffusers' names plus ``_class_name``/``_diffusers_version``."""
    return {"_class_name": type(model).__name__, "_diffusers_version": DIFFUSERS_VERSION, **model.config.to_diffusers()}


class PretrainedMixin:
    """Gives a model ``from_pretrained(path)`` and ``save_pretrained(path)`` in diffusers' folder format.

    The class sets ``config_class`` (its config dataclass, which has ``from_diffusers``/``to_diffusers``).
    """

    config_class: type

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, dtype: torch.dtype | None = None,
                        device: str | torch.device | None = None, variant: str | None = None):
        """Load a diffusers folder of this class (``config.json`` + weights)."""
        model = load_pretrained(path, dtype=dtype, device=device, variant=variant)
        if not isinstance(model, cls):
            raise ValueError(f"{path}: holds a {type(model).__name__}, not a {cls.__name__}")
        return model

    def save_pretrained(self, path: str | os.PathLike, variant: str | None = None,
                        max_shard_size: int | str = "10GB", safe_serialization: bool = True) -> None:
        """Write a diffusers model folder that diffusers' ``from_pretrained`` loads with identical outputs."""
        save_pretrained(self, path, variant=variant, max_shard_size=max_shard_size,
                        safe_serialization=safe_serialization)


# ----------------------------------------------------------------------------------------------------------------
# Pipelines
# ----------------------------------------------------------------------------------------------------------------


def save_pipeline(path: str | os.PathLike, components: dict, *, pipeline_class: str) -> None:
    """Write a pipeline folder in diffusers' layout: ``model_index.json`` and one subfolder per component.

    Models and schedulers go in as diffusers components (``["diffusers", "UNet2DConditionModel"]``), so
    ``diffusers.UNet2DConditionModel.from_pretrained(path, subfolder="unet")`` loads them; other components
    must have ``save_pretrained`` and be registered in ``LDM_COMPONENT_CLASSES``.
    """
    folder = Path(path)
    index = {"_class_name": pipeline_class, "_diffusers_version": DIFFUSERS_VERSION}
    for name, component in components.items():
        class_name = type(component).__name__
        library = "diffusers" if class_name in MODEL_CLASSES or class_name in SCHEDULER_CLASSES else "ldm"
        if library == "ldm" and class_name not in LDM_COMPONENT_CLASSES:
            raise ValueError(f"pipeline component {name!r}: {class_name} is not a known component class")
        component.save_pretrained(folder / name)
        index[name] = [library, class_name]
    write_json(index, folder / PIPELINE_INDEX_NAME)
    # diffusers knows neither the pipeline class nor ldm's components: the files that let it open the folder with
    # DiffusionPipeline.from_pretrained(path, custom_pipeline="pipeline", trust_remote_code=True) (docs/compat.md)
    from ldm.compat.pipeline_file import write_diffusers_files
    write_diffusers_files(folder, pipeline_class, list(components),
                          {name: LDM_COMPONENT_CLASSES[entry[1]] for name, entry in index.items()
                           if isinstance(entry, list) and entry[0] == "ldm"},
                          lambda text, file: atomic_write(file, lambda tmp: tmp.write_text(text, encoding="utf-8")))


def load_pipeline(path: str | os.PathLike, dtype: torch.dtype | None = None,
                  device: str | torch.device | None = None) -> dict:
    """Read a pipeline folder written by ``save_pipeline`` (or the vae/unet/scheduler parts of a diffusers one).

    Returns {component name: object}. Components of libraries other than diffusers/ldm (text encoders,
    tokenizers) are skipped; ``None`` entries are left out.
    """
    folder = Path(path)
    index = read_json(folder / PIPELINE_INDEX_NAME)
    components = {}
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list):         # pipeline flags, e.g. requires_safety_checker
            continue
        if not (len(entry) == 2 and all(v is None or isinstance(v, str) for v in entry)):
            raise ValueError(f"{folder / PIPELINE_INDEX_NAME}: entry {name!r} is {json.dumps(entry)}; expected "
                             '["library", "ClassName"] (or [null, null] for a missing component)')
        library, class_name = entry
        if library is None or class_name is None:
            continue
        if library == "diffusers" and (class_name in MODEL_CLASSES or class_name in SCHEDULER_CLASSES):
            components[name] = load_pretrained(folder / name, dtype=dtype, device=device)
        elif library == "ldm":
            cls = _import(LDM_COMPONENT_CLASSES, class_name, folder / PIPELINE_INDEX_NAME)
            if class_name == "UserIDEmbedder" and (folder / name / CONFIG_NAME).is_file():
                check_config_values(read_json(folder / name / CONFIG_NAME), folder / name / CONFIG_NAME,
                                    EMBEDDER_CONFIG_VALUES)
            components[name] = cls.from_pretrained(folder / name, device=device)
    return components


# ----------------------------------------------------------------------------------------------------------------
# Original (CompVis / Stability) single-file checkpoints
# ----------------------------------------------------------------------------------------------------------------


def _strip_prefix(state_dict: dict, kind: str, source) -> dict:
    for prefix in ORIGINAL_PREFIXES[kind]:
        if prefix and any(k.startswith(prefix) for k in state_dict):
            return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if "" in ORIGINAL_PREFIXES[kind]:
        return {k: v for k, v in state_dict.items() if not k.startswith(ORIGINAL_TRAINING_ONLY_PREFIXES)}
    raise ValueError(f"{source}: no keys start with {' or '.join(ORIGINAL_PREFIXES[kind])}; is this a {kind} checkpoint?")


def load_original(path: str | os.PathLike, kind: str, config=None, dtype: torch.dtype | None = None,
                  device: str | torch.device | None = None):
    """Load one model from an original single-file checkpoint (.ckpt or .safetensors).

    Args:
        kind: "vae" (``first_stage_model.*`` of an SD checkpoint, or a bare VAE file), "vq" (an LDM VQ
            autoencoder) or "unet" (``model.diffusion_model.*``).
        config: our config object or a diffusers config mapping. Autoencoder configs are read off the
            tensor shapes when omitted; a UNet needs one (head counts are not visible in the weights).
    """
    if kind not in ORIGINAL_PREFIXES:
        raise ValueError(f"kind must be one of {sorted(ORIGINAL_PREFIXES)}, got {kind!r}")
    state_dict = _strip_prefix(read_state_dict(path, device or "cpu"), kind, path)
    if config is None:
        if kind == "unet":
            raise ValueError(f"{path}: loading an original UNet needs config= (e.g. UNetConfig.preset('sd15'))")
        config = convert.infer_autoencoder_config(state_dict, kind)
    class_name = {"vae": "AutoencoderKL", "vq": "VQModel", "unet": "UNet2DConditionModel"}[kind]
    cls = _import(MODEL_CLASSES, class_name, path)
    model_config = config if isinstance(config, cls.config_class) else cls.config_class.from_diffusers(config)
    converted = convert.original_to_diffusers(state_dict, kind, model_config)
    return build_model(cls, model_config, converted, path, dtype, device)


def save_original(model: torch.nn.Module, path: str | os.PathLike, kind: str) -> None:
    """Write one model as an original-layout safetensors file, with the prefix an SD checkpoint uses."""
    prefix = ORIGINAL_PREFIXES[kind][0]
    converted = convert.diffusers_to_original(model.state_dict(), kind, model.config)
    write_safetensors({prefix + k: v for k, v in converted.items()}, path)
