"""Key mapping between the original CompVis / Stability checkpoints and diffusers' (= our) state-dict layout.

The original LDM code names modules by position (``input_blocks.4.1``, ``decoder.up.0``); diffusers names them
by role (``down_blocks.1.attentions.0``, ``decoder.up_blocks.3``). Each mapping below is a table of name-prefix
pairs ``(original, diffusers)`` generated from the model's config: a key is renamed by its longest matching
prefix, in either direction. Three things need more than a rename:

* the autoencoder decoder's levels are stored in reverse order (LDM ``up.0`` is the full-resolution level,
  diffusers ``up_blocks.0`` the lowest-resolution one);
* the autoencoder mid-block attention is 1x1 convolutions in LDM and Linear layers in diffusers
  (weights (C, C, 1, 1) <-> (C, C));
* old diffusers checkpoints used ``query/key/value/proj_attn`` for that attention (``rename_legacy_attention``).

Public names: ``original_to_diffusers(state_dict, kind, config)`` and ``diffusers_to_original(state_dict, kind,
config)`` with kind "vae", "vq" or "unet"; state dicts of one model, without the ``first_stage_model.`` /
``model.diffusion_model.`` prefix. ``config`` is our config object or a diffusers config mapping.

The translation of diffusers' config.json into our configs lives here too, at the end, beside the key tables:
the config classes' ``from_diffusers`` / ``to_diffusers`` call it. This module imports no model file.
"""
from __future__ import annotations

import dataclasses

# ----------------------------------------------------------------------------------------------------------------
# Autoencoders (AutoencoderKL and VQModel share the LDM encoder/decoder)
# ----------------------------------------------------------------------------------------------------------------

# Inside a resnet, only the shortcut is renamed.
AUTOENCODER_RESNET_RENAMES = [("nin_shortcut.", "conv_shortcut.")]

# The mid block; the attention's q/k/v/proj_out are 1x1 convs in LDM, Linear layers in diffusers.
AUTOENCODER_MID_RENAMES = [
    ("mid.block_1.", "mid_block.resnets.0."),
    ("mid.block_2.", "mid_block.resnets.1."),
    ("mid.attn_1.norm.", "mid_block.attentions.0.group_norm."),
    ("mid.attn_1.q.", "mid_block.attentions.0.to_q."),
    ("mid.attn_1.k.", "mid_block.attentions.0.to_k."),
    ("mid.attn_1.v.", "mid_block.attentions.0.to_v."),
    ("mid.attn_1.proj_out.", "mid_block.attentions.0.to_out.0."),
]

# Names used by diffusers before 0.14 for the same attention (accepted when reading).
LEGACY_DIFFUSERS_ATTENTION_RENAMES = [
    ("query.", "to_q."), ("key.", "to_k."), ("value.", "to_v."), ("proj_attn.", "to_out.0."),
]


def autoencoder_table(num_levels: int, layers_per_block: int, kind: str) -> list[tuple[str, str]]:
    """(original prefix, diffusers prefix) pairs for an LDM autoencoder with ``num_levels`` resolutions."""
    table = [
        ("encoder.conv_in.", "encoder.conv_in."), ("encoder.conv_out.", "encoder.conv_out."),
        ("encoder.norm_out.", "encoder.conv_norm_out."),
        ("decoder.conv_in.", "decoder.conv_in."), ("decoder.conv_out.", "decoder.conv_out."),
        ("decoder.norm_out.", "decoder.conv_norm_out."),
        ("quant_conv.", "quant_conv."), ("post_quant_conv.", "post_quant_conv."),
    ]
    if kind == "vq":
        table.append(("quantize.embedding.", "quantize.embedding."))
    for part in ("encoder.", "decoder."):
        table += [(part + original, part + ours) for original, ours in AUTOENCODER_MID_RENAMES]
    for level in range(num_levels):
        for j in range(layers_per_block):
            table.append((f"encoder.down.{level}.block.{j}.", f"encoder.down_blocks.{level}.resnets.{j}."))
        table.append((f"encoder.down.{level}.downsample.conv.", f"encoder.down_blocks.{level}.downsamplers.0.conv."))
        reversed_level = num_levels - 1 - level      # LDM's up.0 is diffusers' last up block
        for j in range(layers_per_block + 1):
            table.append((f"decoder.up.{reversed_level}.block.{j}.", f"decoder.up_blocks.{level}.resnets.{j}."))
        table.append((f"decoder.up.{reversed_level}.upsample.conv.", f"decoder.up_blocks.{level}.upsamplers.0.conv."))
    resnet_prefixes = [(o, d) for o, d in table if ".block" in o]
    for original, ours in resnet_prefixes:
        table += [(original + o, ours + d) for o, d in AUTOENCODER_RESNET_RENAMES]
    return table


def rename_legacy_attention(state_dict: dict) -> dict:
    """Rename pre-0.14 diffusers autoencoder attention keys (``mid_block.attentions.0.query.weight``) to the
    current names (``...to_q.weight``); 4-D 1x1-conv weights become (C, C). Other keys pass unchanged."""
    out = {}
    for key, tensor in state_dict.items():
        for legacy, new in LEGACY_DIFFUSERS_ATTENTION_RENAMES:
            marker = ".mid_block.attentions.0." + legacy
            if marker in key:
                key = key.replace(marker, ".mid_block.attentions.0." + new)
                if key.endswith(".weight") and tensor.ndim > 2:
                    tensor = tensor.reshape(tensor.shape[0], tensor.shape[1])
        out[key] = tensor
    return out


def _is_attention_projection(diffusers_key: str) -> bool:
    return ".mid_block.attentions.0.to_" in diffusers_key and diffusers_key.endswith(".weight")


# ----------------------------------------------------------------------------------------------------------------
# UNet
# ----------------------------------------------------------------------------------------------------------------

UNET_RESNET_RENAMES = [
    ("in_layers.0.", "norm1."), ("in_layers.2.", "conv1."), ("emb_layers.1.", "time_emb_proj."),
    ("out_layers.0.", "norm2."), ("out_layers.3.", "conv2."), ("skip_connection.", "conv_shortcut."),
]


def unet_table(down_has_attention: list[bool], up_has_attention: list[bool], mid_has_attention: bool,
               layers_per_block: int) -> list[tuple[str, str]]:
    """(original prefix, diffusers prefix) pairs for an LDM UNet (``openaimodel.UNetModel``).

    ``input_blocks`` holds, per level, ``layers_per_block`` (resnet[, transformer]) pairs and then a downsampler;
    ``output_blocks`` holds ``layers_per_block + 1`` pairs per level, the upsampler riding in the last one
    (at index 1, or 2 when the level has attention). Transformer internals have the same names in both.
    """
    n = len(down_has_attention)
    per_level = layers_per_block + 1
    table = [
        ("time_embed.0.", "time_embedding.linear_1."), ("time_embed.2.", "time_embedding.linear_2."),
        ("label_emb.", "class_embedding."),
        ("input_blocks.0.0.", "conv_in."),
        ("out.0.", "conv_norm_out."), ("out.2.", "conv_out."),
    ]
    resnets = []
    for level in range(n):
        for j in range(layers_per_block):
            k = 1 + level * per_level + j
            resnets.append((f"input_blocks.{k}.0.", f"down_blocks.{level}.resnets.{j}."))
            if down_has_attention[level]:
                table.append((f"input_blocks.{k}.1.", f"down_blocks.{level}.attentions.{j}."))
        if level < n - 1:
            table.append((f"input_blocks.{(level + 1) * per_level}.0.op.", f"down_blocks.{level}.downsamplers.0.conv."))
    resnets.append(("middle_block.0.", "mid_block.resnets.0."))
    if mid_has_attention:
        table.append(("middle_block.1.", "mid_block.attentions.0."))
        resnets.append(("middle_block.2.", "mid_block.resnets.1."))
    for level in range(n):
        for j in range(per_level):
            k = level * per_level + j
            resnets.append((f"output_blocks.{k}.0.", f"up_blocks.{level}.resnets.{j}."))
            if up_has_attention[level]:
                table.append((f"output_blocks.{k}.1.", f"up_blocks.{level}.attentions.{j}."))
        if level < n - 1:
            k = level * per_level + layers_per_block
            slot = 2 if up_has_attention[level] else 1
            table.append((f"output_blocks.{k}.{slot}.conv.", f"up_blocks.{level}.upsamplers.0.conv."))
    for original, ours in resnets:
        table += [(original + o, ours + d) for o, d in UNET_RESNET_RENAMES]
    return table


# ----------------------------------------------------------------------------------------------------------------
# Conversion
# ----------------------------------------------------------------------------------------------------------------


def _diffusers_config(config) -> dict:
    return dict(config) if isinstance(config, dict) else config.to_diffusers()


def table_for(kind: str, config) -> list[tuple[str, str]]:
    """The prefix table for a model of ``kind`` ("vae", "vq" or "unet") with this config."""
    cfg = _diffusers_config(config)
    if kind in ("vae", "vq"):
        if cfg.get("norm_type", "group") != "group":
            raise ValueError(f"a {kind} with norm_type={cfg['norm_type']!r} has no original LDM checkpoint layout")
        return autoencoder_table(len(cfg["block_out_channels"]), cfg.get("layers_per_block", 1), kind)
    if kind == "unet":
        layers = cfg.get("layers_per_block", 2)
        if not isinstance(layers, int):
            raise ValueError(f"per-level layers_per_block={layers} has no original LDM checkpoint layout")
        return unet_table([t.startswith("CrossAttn") for t in cfg["down_block_types"]],
                          [t.startswith("CrossAttn") for t in cfg["up_block_types"]],
                          cfg.get("mid_block_type", "UNetMidBlock2DCrossAttn") == "UNetMidBlock2DCrossAttn",
                          layers)
    raise ValueError(f"kind must be 'vae', 'vq' or 'unet', got {kind!r}")


def _rename(state_dict: dict, table: list[tuple[str, str]], direction: str) -> dict:
    """Rename every key by its longest matching prefix; a key that matches none is an error naming it."""
    pairs = sorted(table, key=lambda pair: -len(pair[0]))
    out, unmatched = {}, []
    for key, tensor in state_dict.items():
        for source, target in pairs:
            if key.startswith(source):
                out[target + key[len(source):]] = tensor
                break
        else:
            unmatched.append(key)
    if unmatched:
        raise ValueError(f"{len(unmatched)} keys have no {direction} mapping for this config, e.g. {unmatched[:5]}")
    return out


def original_to_diffusers(state_dict: dict, kind: str, config) -> dict:
    """Rename an original (CompVis/Stability) state dict of one model to diffusers' layout (tensors are shared,
    except the autoencoder attention weights, which become (C, C) views)."""
    table = table_for(kind, config)
    converted = _rename(state_dict, table, "original -> diffusers")
    for key, tensor in converted.items():
        if kind in ("vae", "vq") and _is_attention_projection(key) and tensor.ndim > 2:
            converted[key] = tensor.reshape(tensor.shape[0], tensor.shape[1])      # (C, C, 1, 1) -> (C, C)
    return converted


def diffusers_to_original(state_dict: dict, kind: str, config) -> dict:
    """Rename a diffusers-layout state dict of one model to the original (CompVis/Stability) layout."""
    table = [(d, o) for o, d in table_for(kind, config)]
    converted = {}
    for key, tensor in state_dict.items():
        if kind in ("vae", "vq") and _is_attention_projection(key) and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]                                      # (C, C) -> (C, C, 1, 1)
        converted[key] = tensor
    return _rename(converted, table, "diffusers -> original")


def infer_autoencoder_config(state_dict: dict, kind: str) -> dict:
    """A diffusers config mapping read off an original autoencoder state dict's shapes.

    The GroupNorm group count cannot be read from shapes; 32 (every LDM/SD autoencoder) is assumed.
    """
    try:
        levels = sorted({int(k.split(".")[2]) for k in state_dict if k.startswith("encoder.down.")})
        widths = [state_dict[f"encoder.down.{i}.block.0.conv2.weight"].shape[0] for i in levels]
        layers = len({k.split(".")[4] for k in state_dict if k.startswith("encoder.down.0.block.")})
        in_channels = state_dict["encoder.conv_in.weight"].shape[1]
        out_channels = state_dict["decoder.conv_out.weight"].shape[0]
        latent_channels = state_dict["decoder.conv_in.weight"].shape[1]
    except (KeyError, IndexError, ValueError) as error:
        raise ValueError(f"cannot read an LDM {kind} config off this state dict (missing {error}); pass config=") from None
    config = dict(in_channels=in_channels, out_channels=out_channels, latent_channels=latent_channels,
                  block_out_channels=widths, layers_per_block=layers, norm_num_groups=32,
                  down_block_types=["DownEncoderBlock2D"] * len(widths), up_block_types=["UpDecoderBlock2D"] * len(widths),
                  mid_block_add_attention=any(k.startswith("encoder.mid.attn_1.") for k in state_dict))
    if kind == "vae":
        config["use_quant_conv"] = "quant_conv.weight" in state_dict
        config["use_post_quant_conv"] = "post_quant_conv.weight" in state_dict
    else:
        config["num_vq_embeddings"] = state_dict["quantize.embedding.weight"].shape[0]
        config["vq_embed_dim"] = state_dict["quantize.embedding.weight"].shape[1]
    return config


# ----------------------------------------------------------------------------------------------------------------
# diffusers config.json translation: autoencoders (VAEConfig / VQConfig.from_diffusers)
# ----------------------------------------------------------------------------------------------------------------

DIFFUSERS_VAE_DEFAULTS = {   # AutoencoderKL.__init__ defaults in diffusers 0.42
    "in_channels": 3, "out_channels": 3, "down_block_types": ("DownEncoderBlock2D",),
    "up_block_types": ("UpDecoderBlock2D",), "block_out_channels": (64,), "layers_per_block": 1, "act_fn": "silu",
    "latent_channels": 4, "norm_num_groups": 32, "sample_size": 32, "scaling_factor": 0.18215, "shift_factor": None,
    "latents_mean": None, "latents_std": None, "force_upcast": True, "use_quant_conv": True,
    "use_post_quant_conv": True, "mid_block_add_attention": True,
}

def autoencoder_values_from_diffusers(mapping: dict, defaults: dict, class_name: str) -> dict:
    """The constructor values of an autoencoder config from a diffusers config mapping (shared by VAEConfig and
    VQConfig): missing keys take diffusers' ``defaults``, keys starting with "_" are ignored, an unknown key is a
    ValueError naming it, and the block types and activation are checked and dropped (ours are fixed)."""
    values = dict(defaults)
    for key, value in mapping.items():
        if key.startswith("_"):
            continue
        if key not in values:
            raise ValueError(f"diffusers {class_name} config key {key!r} is not supported by ldm")
        values[key] = value
    n = len(values["block_out_channels"])
    for key, block in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
        types = list(values.pop(key))
        if types != [block] * n:
            raise ValueError(f"diffusers config {key}={types} is not supported: expected {n} x {block!r} "
                             f"(one per entry of block_out_channels)")
    act_fn = values.pop("act_fn")
    if act_fn not in ("silu", "swish"):
        raise ValueError(f"diffusers config act_fn={act_fn!r} is not supported: ldm's autoencoders use 'silu'")
    return values


DIFFUSERS_VQ_DEFAULTS = {   # VQModel.__init__ defaults in diffusers 0.42
    "in_channels": 3, "out_channels": 3, "down_block_types": ("DownEncoderBlock2D",),
    "up_block_types": ("UpDecoderBlock2D",), "block_out_channels": (64,), "layers_per_block": 1, "act_fn": "silu",
    "latent_channels": 3, "sample_size": 32, "num_vq_embeddings": 256, "norm_num_groups": 32, "vq_embed_dim": None,
    "scaling_factor": 0.18215, "norm_type": "group", "mid_block_add_attention": True, "lookup_from_codebook": False,
    "force_upcast": False,
}


# ----------------------------------------------------------------------------------------------------------------
# diffusers config.json translation: UNet2DConditionModel (UNetConfig.from_diffusers / to_diffusers)
# ----------------------------------------------------------------------------------------------------------------

# Where our names differ from diffusers':
#   attention_head_dim   -> num_heads. diffusers' UNet2DConditionModel passes its `attention_head_dim` on as the
#                           NUMBER OF HEADS of every cross-attention block (a naming slip kept for compatibility,
#                           diffusers issue #2011): SD 1.5's 8 means 8 heads of 40..160 channels, SD 2's
#                           [5, 10, 20, 20] means heads of 64 channels. Its `num_attention_heads` must stay unset.
#   down_block_types     -> down_attention: "CrossAttnDownBlock2D" is True, "DownBlock2D" False, per level.
#   up_block_types       -> up_attention, re-indexed by level: up block i runs at level n-1-i.
#   mid_block_type       -> mid_block: "UNetMidBlock2DCrossAttn" -> "cross_attention", "UNetMidBlock2D" (which
#                           the UNet builds with a single resnet) -> "resnet", None -> None.


def unet_values_from_diffusers(mapping: dict) -> dict:
    """The UNetConfig field values of a diffusers ``UNet2DConditionModel`` config mapping (its config.json): missing
    keys take diffusers' defaults, "_" keys are ignored, a key that would change the computation but is not
    implemented is a ValueError naming it; the translations are listed above."""
    values = dict(_DIFFUSERS_UNET_DEFAULTS)
    for key, value in mapping.items():
        if key.startswith("_"):
            continue
        if key not in values:
            raise ValueError(f"diffusers UNet2DConditionModel config key {key!r} is not supported by ldm.unet")
        values[key] = value
    for key, default in _DIFFUSERS_UNSUPPORTED.items():
        if values.pop(key) != default:
            raise ValueError(f"diffusers config {key}={mapping[key]!r} is not supported by ldm.unet "
                             f"(only {default!r})")
    for key in _DIFFUSERS_NO_EFFECT:
        values.pop(key)
    if values.pop("act_fn") not in ("silu", "swish"):
        raise ValueError(f"diffusers config act_fn={mapping['act_fn']!r} is not supported: ldm.unet uses 'silu'")
    if values.pop("num_attention_heads") is not None:
        raise ValueError("diffusers config num_attention_heads must be unset: diffusers refuses it and reads "
                         "attention_head_dim as the number of heads")
    for key in ("cross_attention_dim", "only_cross_attention"):   # per-level lists only when all equal
        value = values[key]
        if isinstance(value, (list, tuple)):
            if len(set(value)) != 1:
                raise ValueError(f"diffusers config {key}={list(value)} is not supported: ldm.unet uses one "
                                 f"value for every level")
            values[key] = value[0]
    layers = values["transformer_layers_per_block"]
    if isinstance(layers, (list, tuple)) and any(isinstance(v, (list, tuple)) for v in layers):
        raise ValueError("diffusers config transformer_layers_per_block with a list per resnet is not supported")
    if values["norm_num_groups"] is None:
        raise ValueError("diffusers config norm_num_groups=None (no output norm) is not supported by ldm.unet")

    n = len(values["block_out_channels"])
    down_types = list(values.pop("down_block_types"))
    up_types = list(values.pop("up_block_types"))
    if len(down_types) != n or len(up_types) != n:
        raise ValueError(f"diffusers config down_block_types/up_block_types need {n} entries each (one per "
                         f"block_out_channels level), got {down_types} and {up_types}")
    values["down_attention"] = tuple(_block_has_attention("down_block_types", t, _DOWN_BLOCKS) for t in down_types)
    values["up_attention"] = tuple(_block_has_attention("up_block_types", t, _UP_BLOCKS)
                                   for t in reversed(up_types))
    mid_type = values.pop("mid_block_type")
    if mid_type not in _MID_BLOCKS:
        raise ValueError(f"diffusers config mid_block_type={mid_type!r} is not supported: expected one of "
                         f"{sorted(_MID_BLOCKS, key=str)}")
    values["mid_block"] = _MID_BLOCKS[mid_type]
    values["num_heads"] = values.pop("attention_head_dim")   # see the comment above
    return values


def unet_config_to_diffusers(config) -> dict:
    """The diffusers ``UNet2DConditionModel`` config mapping of a UNetConfig."""
    values = dataclasses.asdict(config)
    n = len(config.block_out_channels)
    values["block_out_channels"] = list(config.block_out_channels)
    values["down_block_types"] = [_DOWN_BLOCKS[a] for a in config.down_attention]
    values["up_block_types"] = [_UP_BLOCKS[a] for a in reversed(config.up_attention)]
    values["mid_block_type"] = {v: k for k, v in _MID_BLOCKS.items()}[values.pop("mid_block")]
    values["attention_head_dim"] = values.pop("num_heads")   # see the comment above
    for key in ("layers_per_block", "attention_head_dim", "transformer_layers_per_block"):
        entries = list(values[key])
        values[key] = entries[0] if entries == entries[:1] * n else entries   # one int when all levels agree
    del values["down_attention"], values["up_attention"]
    values["act_fn"] = "silu"
    return values


def _block_has_attention(key: str, block_type: str, known: dict) -> bool:
    has_attention = {name: attention for attention, name in known.items()}
    if block_type not in has_attention:
        raise ValueError(f"diffusers config {key} entry {block_type!r} is not supported: expected one of "
                         f"{sorted(has_attention)}")
    return has_attention[block_type]


_DOWN_BLOCKS = {True: "CrossAttnDownBlock2D", False: "DownBlock2D"}
_UP_BLOCKS = {True: "CrossAttnUpBlock2D", False: "UpBlock2D"}
_MID_BLOCKS = {"UNetMidBlock2DCrossAttn": "cross_attention", "UNetMidBlock2D": "resnet", None: None}

# Keys we translate or take over, with UNet2DConditionModel.__init__'s defaults in diffusers 0.42.
_DIFFUSERS_UNET_DEFAULTS = {
    "sample_size": None, "in_channels": 4, "out_channels": 4, "flip_sin_to_cos": True, "freq_shift": 0,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",), "mid_block_type": "UNetMidBlock2DCrossAttn",
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, "only_cross_attention": False,
    "block_out_channels": (320, 640, 1280, 1280), "layers_per_block": 2, "downsample_padding": 1,
    "mid_block_scale_factor": 1, "dropout": 0.0, "act_fn": "silu", "norm_num_groups": 32, "norm_eps": 1e-5,
    "cross_attention_dim": 1280, "transformer_layers_per_block": 1, "attention_head_dim": 8,
    "num_attention_heads": None, "use_linear_projection": False, "num_class_embeds": None, "upcast_attention": False,
    "resnet_time_scale_shift": "default",
}
# Features of diffusers' UNet that ldm.unet does not implement: accepted only at these (default) values.
_DIFFUSERS_UNSUPPORTED = {
    "center_input_sample": False, "reverse_transformer_layers_per_block": None, "encoder_hid_dim": None,
    "encoder_hid_dim_type": None, "dual_cross_attention": False, "class_embed_type": None,
    "addition_embed_type": None, "resnet_skip_time_act": False, "time_embedding_type": "positional",
    "time_embedding_dim": None, "time_embedding_act_fn": None, "timestep_post_act": None, "time_cond_proj_dim": None,
    "conv_in_kernel": 3, "conv_out_kernel": 3, "projection_class_embeddings_input_dim": None,
    "attention_type": "default", "class_embeddings_concat": False,
}
# Keys that only configure blocks or embeddings we do not build (SimpleCrossAttn / Resnet*sample blocks, the
# "text"/"text_time" addition embeddings), so any value computes the same model here.
_DIFFUSERS_NO_EFFECT = {
    "resnet_out_scale_factor": 1.0, "mid_block_only_cross_attention": None, "cross_attention_norm": None,
    "addition_time_embed_dim": None, "addition_embed_type_num_heads": 64,
}
_DIFFUSERS_UNET_DEFAULTS.update(_DIFFUSERS_UNSUPPORTED, **_DIFFUSERS_NO_EFFECT)
