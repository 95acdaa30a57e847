"""Every module's input and output shapes, parameter count and (optionally) multiply-accumulates, for any preset.

    python -m ldm.shapes --model vae  --preset microdoppler            # 256x256 pixels -> 32x32x4 latents
    python -m ldm.shapes --model unet --preset microdoppler --depth 1  # the UNet's levels on 32x32x4 latents
    python -m ldm.shapes --model vq   --preset tiny --size 64 --flops

The model is built on the ``meta`` device (tensors with a shape and a dtype but no storage: no memory, no weights,
no arithmetic), one forward pass runs with a hook on every submodule, and the table lists, in the order the modules
are called (a parent before its children, as the tensor flows):

    module   the state-dict prefix (``decoder.up_blocks.0.resnets.1``; ``(model)`` for the model itself)
    class    the module's class
    input    the shape of every tensor argument; a list argument (the UNet's skip stack) as ``name[len]``
    output   the shape of every tensor returned (a tuple's tensors one after the other)
    params   the module's parameters INCLUDING its submodules' (``Row.own_params`` has its own alone); a sum of the
             column counts a parameter once per enclosing module, the ``(model)`` row has the total
    MACs     (with --flops) multiply-accumulates of this call, including the submodules it calls. Counted:
             Conv2d (output elements x in_channels/groups x kernel area), Linear (output elements x in_features),
             attention's two matmuls q.k^T and softmax.v (2 x B x L x S x heads*head_dim, L queries, S keys) and
             the VQ codebook distances (N vectors x K codes x D). Not counted: norms, activations, softmax,
             additions, interpolation, embedding look-ups (elementwise or memory-bound, a few percent at most).

``--size`` is in pixels for every model: the image side for ``vae`` and ``vq`` (default: the preset's
sample_size), and for ``unet`` the side of the image whose latents it denoises, so the latents are
``size / 8`` (f = 8, the downsampling of the sd and microdoppler VAEs; default: the preset's sample_size
latents). ``--latent-size`` gives the UNet's latent side directly. The UNet also gets a timestep (B,),
``encoder_hidden_states`` (B, --tokens, cross_attention_dim) (4 user-ID tokens, as train_ldm.py's default
--num-tokens) and class labels (B,) when the preset has a class embedding.

In Python::

    from ldm.shapes import build_model, example_inputs, trace, format_table
    model = build_model("vae", "microdoppler")                 # on the meta device
    args, kwargs = example_inputs(model, batch=1, size=(256, 256))
    rows = trace(model, *args, **kwargs)                       # list of Row, works on any device
    print(format_table(rows, depth=2, flops=True))

MACs equal torch.utils.flop_counter.FlopCounterMode's FLOPs / 2 for the VAE and the UNet (tests/test_shapes.py);
for the VQModel, FlopCounterMode does not count the cdist. A run takes about 2 s on a CPU, most of it importing
torch and, on the first GroupNorm of meta tensors (which torch runs as a Python decomposition), torch._dynamo.

The trace follows the plain model code. A model optimized with ``ldm.fast.optimize`` (whose attention computes
to_q/to_k/to_v as one stacked matmul, so those Linears' hooks would never fire) is traced on its plain classes and
optimized again afterwards. The trace runs in eval mode, as the models are used at inference (the training flags are
restored afterwards). Everything else (the class-label range check, the VQ argmin) runs on meta tensors as it is.
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import math
import os
import sys
from dataclasses import dataclass

import torch
from torch import nn

from ldm import fast
from ldm.layers import Attention
from ldm.unet import UNet2DConditionModel, UNetConfig
from ldm.vae import AutoencoderKL, DiagonalGaussian, VAEConfig
from ldm.vq import VectorQuantizer, VQConfig, VQModel

MODELS = {"vae": (AutoencoderKL, VAEConfig), "unet": (UNet2DConditionModel, UNetConfig), "vq": (VQModel, VQConfig)}

# The UNet runs on latents of the sd / microdoppler VAEs, which downsample by f = 8 (VAEConfig.downsample_factor):
# --size in pixels becomes latents of size / 8. Use --latent-size for a VAE with another factor.
PIXELS_PER_LATENT = 8

# Context tokens per sample: train_ldm.py's default --num-tokens (user-ID tokens).
DEFAULT_TOKENS = 4


# ----------------------------------------------------------------------------------------------------------------
# Building a model and its inputs
# ----------------------------------------------------------------------------------------------------------------


def build_model(kind: str, preset: str, device: str | torch.device = "meta") -> nn.Module:
    """The model of ``kind`` ("vae", "unet" or "vq") built from its named preset on ``device``, in eval mode.

    The microdoppler autoencoders get 1 image channel in and out, as ``train_vae.py --channels 1`` builds them.
    On the meta device (the default) this allocates nothing; elsewhere the weights are freshly initialised.
    Raises ValueError for an unknown kind or preset.
    """
    if kind not in MODELS:
        raise ValueError(f"unknown model {kind!r}; expected one of {sorted(MODELS)}")
    model_class, config_class = MODELS[kind]
    config = config_class.preset(preset)
    if kind in ("vae", "vq") and preset == "microdoppler":
        config = dataclasses.replace(config, in_channels=1, out_channels=1)
    with torch.device(device):
        model = model_class(config)
    return model.eval()


def example_inputs(model: nn.Module, batch: int = 1, size: tuple[int, int] | None = None,
                   latent_size: tuple[int, int] | None = None, tokens: int = DEFAULT_TOKENS):
    """The ``(args, kwargs)`` of one forward call of ``model``, as uninitialised tensors on the model's device.

    Autoencoders: ``x`` (B, in_channels, H, W), with (H, W) = ``size`` in pixels (default: config.sample_size).
    UNet: ``sample`` (B, in_channels, h, w) with (h, w) = ``latent_size``, or ``size`` / 8, or config.sample_size;
    ``timestep`` (B,) int64; ``encoder_hidden_states`` (B, tokens, cross_attention_dim) if the UNet cross-attends;
    ``class_labels`` (B,) int64 (zeros) if it has a class embedding.
    Values are only real on a real device, and then arbitrary (torch.empty / zeros): use these for shapes only.
    Raises ValueError for sizes the model cannot take.
    """
    device = next(model.parameters()).device
    config = model.config
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if isinstance(model, UNet2DConditionModel):
        if latent_size is None and size is not None:
            if size[0] % PIXELS_PER_LATENT or size[1] % PIXELS_PER_LATENT:
                raise ValueError(f"size {size[0]}x{size[1]} pixels must be a multiple of {PIXELS_PER_LATENT} (the "
                                 f"VAE's downsampling) for the UNet; or give the latent size itself")
            latent_size = (size[0] // PIXELS_PER_LATENT, size[1] // PIXELS_PER_LATENT)
        if latent_size is None:
            side = config.sample_size or 64
            latent_size = tuple(side) if isinstance(side, tuple) else (side, side)
        if tokens < 1:
            raise ValueError(f"tokens must be >= 1, got {tokens}")
        kwargs = {}
        if config.has_cross_attention:
            kwargs["encoder_hidden_states"] = torch.empty(batch, tokens, config.cross_attention_dim, device=device)
        if config.num_class_embeds is not None:
            kwargs["class_labels"] = torch.zeros(batch, dtype=torch.long, device=device)
        sample = torch.empty(batch, config.in_channels, *latent_size, device=device)
        timestep = torch.zeros(batch, dtype=torch.long, device=device)
        return (sample, timestep), kwargs
    if latent_size is not None:
        raise ValueError("latent_size is for the UNet; give an autoencoder its image size in pixels")
    size = size or (config.sample_size, config.sample_size)
    factor = config.downsample_factor
    if size[0] % factor or size[1] % factor:
        raise ValueError(f"size {size[0]}x{size[1]} pixels must be a multiple of the downsampling factor {factor} "
                         f"of this {type(model).__name__}")
    return (torch.empty(batch, config.in_channels, *size, device=device),), {}


# ----------------------------------------------------------------------------------------------------------------
# Tracing
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Row:
    """One call of one module during a traced forward pass.

    ``depth`` is the nesting of calls: 0 for the model, 1 for the modules it calls, and so on (containers such as
    the ModuleList ``down_blocks`` are never called, so ``down_blocks.0`` has depth 1 in the UNet).
    ``inputs`` and ``outputs`` hold one entry per tensor: its shape as a tuple of ints (``()`` for a 0-d tensor);
    a list argument appears as the string ``"name[len]"``, a DiagonalGaussian output as
    ``"DiagonalGaussian(B, Cz, h, w)"``, None and plain numbers not at all. ``params`` and ``macs`` include the
    submodules; ``own_params`` and ``own_macs`` do not. A module called twice gets two rows (``call`` 0 and 1,
    its parameters counted in both);
    a module with parameters that is never called gets one row with ``called=False`` and no shapes.
    """

    name: str
    cls: str
    depth: int
    inputs: tuple = ()
    outputs: tuple = ()
    own_params: int = 0
    params: int = 0
    own_macs: int = 0
    macs: int = 0
    call: int = 0
    called: bool = True


def trace(model: nn.Module, *args, **kwargs) -> list[Row]:
    """Run ``model(*args, **kwargs)`` once, in eval mode without gradients, and record every module's call.

    Works on any device; on ``meta`` nothing is computed. Returns the rows in call order (a module's row comes
    before those of the submodules it calls), then a row for every module with parameters that was not called.
    The model's training flags are restored afterwards.
    """
    names = {module: name for name, module in model.named_modules()}
    rows: list[Row] = []
    stack: list[Row] = []
    calls: dict[str, int] = {}

    def before(module, args, kwargs):
        name = names[module]
        bound = _bind(module, args, kwargs)
        own = sum(p.numel() for p in module.parameters(recurse=False))
        row = Row(name, type(module).__name__, len(stack),
                  inputs=_describe_arguments(bound), own_params=own,
                  params=sum(p.numel() for p in module.parameters()), call=calls.get(name, 0))
        calls[name] = row.call + 1
        row.own_macs = _own_macs_before(module, bound)
        rows.append(row)
        stack.append(row)

    def after(module, args, kwargs, output):
        row = stack.pop()
        row.outputs = tuple(_describe(output))
        row.own_macs += _own_macs_after(module, output)
        row.macs += row.own_macs                    # children have already added theirs
        if stack:
            stack[-1].macs += row.macs

    training = {module: module.training for module in model.modules()}
    optimized = fast.is_optimized(model)
    handles = []
    try:
        for module in names:
            handles.append(module.register_forward_pre_hook(before, with_kwargs=True))
            handles.append(module.register_forward_hook(after, with_kwargs=True))
        if optimized:                          # see the module docstring: make to_q/to_k/to_v visible to hooks
            fast.restore(model)
        model.eval()
        with torch.no_grad():
            model(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
        if optimized:
            fast.optimize(model)
        for module, flag in training.items():
            module.training = flag

    depths = {row.name: row.depth for row in rows}
    for module, name in names.items():
        own = sum(p.numel() for p in module.parameters(recurse=False))
        if name not in calls and own:
            parent = max((n for n in depths if name.startswith(n + ".") or not n), key=len)   # nearest called one
            rows.append(Row(name, type(module).__name__, depths[parent] + 1, own_params=own,
                            params=sum(p.numel() for p in module.parameters()), called=False))
    return rows


def _bind(module: nn.Module, args: tuple, kwargs: dict) -> dict:
    """The forward arguments by name (positional ones as arg0, arg1, ... if the signature cannot bind them)."""
    try:
        return dict(inspect.signature(module.forward).bind(*args, **kwargs).arguments)
    except (TypeError, ValueError):
        return {**{f"arg{i}": a for i, a in enumerate(args)}, **kwargs}


def _describe_arguments(bound: dict) -> tuple:
    entries = []
    for name, value in bound.items():
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, torch.Tensor) for v in value):
            entries.append(f"{name}[{len(value)}]")   # a list read or grown inside (the skip stack)
        else:
            entries.extend(_describe(value))
    return tuple(entries)


def _describe(value) -> list:
    """The shapes of the tensors in ``value`` (tensor, tuple/list of them, DiagonalGaussian), in order."""
    if isinstance(value, torch.Tensor):
        return [tuple(value.shape)]
    if isinstance(value, (list, tuple)):
        return [entry for v in value for entry in _describe(v)]
    if isinstance(value, DiagonalGaussian):
        return [f"DiagonalGaussian{_fmt_shape(tuple(value.mean.shape))}"]
    return []


def _own_macs_before(module: nn.Module, bound: dict) -> int:
    """MACs of the arithmetic a module does itself (not in a submodule) that the inputs determine."""
    if isinstance(module, Attention):
        x, context = bound.get("x"), bound.get("context")
        if x is None:
            return 0
        batch = x.shape[0]
        queries = math.prod(x.shape[2:]) if x.ndim == 4 else x.shape[1]     # (B, C, H, W) or (B, L, C)
        keys = context.shape[1] if context is not None else queries          # (B, S, D), or self-attention
        inner = module.to_q.out_features                                     # nh * hd
        return 2 * batch * queries * keys * inner                            # q k^T and softmax(.) v
    if isinstance(module, VectorQuantizer):
        z = bound.get("z")                                                   # (B, D, h, w)
        if z is None:
            return 0
        vectors = z.shape[0] * math.prod(z.shape[2:])
        return vectors * module.num_embeddings * module.embed_dim            # cdist: (N, D) x (K, D)
    return 0


def _own_macs_after(module: nn.Module, output) -> int:
    """MACs of a Conv2d or Linear, from its output: every output element is one dot product."""
    if isinstance(module, nn.Conv2d):
        return output.numel() * module.in_channels // module.groups * math.prod(module.kernel_size)
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    return 0


# ----------------------------------------------------------------------------------------------------------------
# Formatting
# ----------------------------------------------------------------------------------------------------------------


def format_table(rows: list[Row], depth: int | None = None, flops: bool = False) -> str:
    """The rows as an aligned text table (module, class, input, output, params[, MACs]), down to ``depth`` levels
    of nesting (0: the model alone, 1: its direct submodules, ...; None: all)."""
    header = ["module", "class", "input", "output", "params"] + (["MACs"] if flops else [])
    lines = [header]
    for row in rows:
        if depth is not None and row.depth > depth:
            continue
        name = row.name or "(model)"
        if row.call:
            name += f" (call {row.call + 1})"
        shapes_in = ", ".join(_fmt_entry(e) for e in row.inputs) if row.called else "not called"
        shapes_out = ", ".join(_fmt_entry(e) for e in row.outputs) if row.called else ""
        line = [name, row.cls, shapes_in, shapes_out, f"{row.params:,}"]
        if flops:
            line.append(_fmt_count(row.macs) if row.called else "")
        lines.append(line)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    right = {"params", "MACs"}
    out = []
    for line in lines:
        cells = [cell.rjust(w) if h in right else cell.ljust(w) for cell, w, h in zip(line, widths, header)]
        out.append("  ".join(cells).rstrip())
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def headline(model: nn.Module, rows: list[Row]) -> list[str]:
    """The model's top-level shapes, from a trace of its forward pass: pixels -> latent -> pixels for the
    autoencoders, inputs -> output for the UNet."""
    by_name = {row.name: row for row in rows if row.call == 0 and row.called}
    root = by_name[""]
    total = f"{root.params:,} parameters ({root.params / 1e6:.2f}M)"
    if isinstance(model, AutoencoderKL):
        moments, latent = by_name["encoder"].outputs[0], by_name["decoder"].inputs[0]
        return [f"input {_fmt_shape(root.inputs[0])} -> latent {_fmt_shape(latent)} -> output "
                f"{_fmt_shape(by_name['decoder'].outputs[0])}",
                f"encoder output {_fmt_shape(moments)}: posterior mean and log-variance, {moments[1] // 2} channels "
                f"each; f = {model.config.downsample_factor}; {total}"]
    if isinstance(model, VQModel):
        z_q, _, indices = by_name["quantize"].outputs
        return [f"input {_fmt_shape(root.inputs[0])} -> latent h {_fmt_shape(by_name['quant_conv'].outputs[0])} "
                f"-> codes {_fmt_shape(indices)} of K = {model.config.num_vq_embeddings} -> z_q {_fmt_shape(z_q)} "
                f"-> output {_fmt_shape(by_name['decoder'].outputs[0])}",
                f"f = {model.config.downsample_factor}; {total}"]
    if isinstance(model, UNet2DConditionModel):
        config = model.config
        names = (["sample", "timestep"] + ["encoder_hidden_states"] * config.has_cross_attention
                 + ["class_labels"] * (config.num_class_embeds is not None))
        given = ", ".join(f"{n} {_fmt_shape(s)}" for n, s in zip(names, root.inputs))
        return [f"{given} -> output {_fmt_shape(root.outputs[0])}", total]
    inputs = ", ".join(_fmt_entry(e) for e in root.inputs)
    return [f"{inputs} -> {', '.join(_fmt_entry(e) for e in root.outputs)}", total]


def _fmt_shape(shape: tuple) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def _fmt_entry(entry) -> str:
    return entry if isinstance(entry, str) else _fmt_shape(entry)


def _fmt_count(n: int) -> str:
    """3 significant digits with a K/M/G/T suffix: 1234567 -> '1.23M'."""
    for value, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if n >= value:
            return f"{n / value:.3g}{suffix}"
    return str(n)


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        """A one-line error (no usage block) and exit status 2, as argparse's own."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _parse_size(text: str) -> tuple[int, int]:
    """'256' -> (256, 256); '256x128' -> (256, 128) (height x width)."""
    parts = text.lower().split("x")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) not in (1, 2) or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected N or HxW with positive integers, got {text!r}")
    return values * 2 if len(values) == 1 else values


def main(argv: list[str] | None = None) -> int:
    p = _Parser(prog="python -m ldm.shapes",
                description="Trace one forward pass of a preset on the meta device (no memory, no weights) and print "
                            "every module's input/output shapes and parameters (with --flops: MACs).",
                epilog="example: python -m ldm.shapes --model unet --depth 1 --flops")
    p.add_argument("--model", required=True, choices=sorted(MODELS), help="which model (required)")
    p.add_argument("--preset", default="microdoppler",
                   help="a name of ldm.vae.VAE_PRESETS / ldm.unet.UNET_PRESETS / ldm.vq.VQ_PRESETS "
                        "(default: microdoppler; its autoencoders get 1 image channel)")
    p.add_argument("--size", type=_parse_size, default=None,
                   help="image size in pixels, N or HxW; the UNet gets latents of size/8 (default: the preset's "
                        "sample_size, in pixels for vae/vq, in latent pixels for unet)")
    p.add_argument("--latent-size", type=_parse_size, default=None,
                   help="unet only: the latent size itself, N or HxW, instead of --size (default: unset)")
    p.add_argument("--batch", type=int, default=1, help="batch size B (default: 1)")
    p.add_argument("--tokens", type=int, default=DEFAULT_TOKENS,
                   help=f"unet only: context tokens S in encoder_hidden_states (B, S, cross_attention_dim) "
                        f"(default: {DEFAULT_TOKENS}, train_ldm.py's --num-tokens)")
    p.add_argument("--depth", type=int, default=None,
                   help="show calls down to this nesting level: 0 the model, 1 what it calls, ... (default: all)")
    p.add_argument("--flops", action="store_true",
                   help="add a MACs column: Conv2d, Linear, attention matmuls, VQ distances, see ldm/shapes.py "
                        "(default: off)")
    args = p.parse_args(argv)
    if args.model != "unet" and args.latent_size is not None:
        p.error("--latent-size is for --model unet; give an autoencoder its image size with --size")
    if args.size is not None and args.latent_size is not None:
        p.error("give --size or --latent-size, not both")
    if args.depth is not None and args.depth < 0:
        p.error(f"--depth must be >= 0, got {args.depth}")
    try:
        model = build_model(args.model, args.preset)
        call_args, call_kwargs = example_inputs(model, args.batch, args.size, args.latent_size, args.tokens)
    except ValueError as err:
        p.error(str(err))
    rows = trace(model, *call_args, **call_kwargs)

    h, w = call_args[0].shape[-2:]
    if args.model == "unet":
        where = f"{h}x{w} latents ({h * PIXELS_PER_LATENT}x{w * PIXELS_PER_LATENT} pixels at f = {PIXELS_PER_LATENT})"
    else:
        channels = model.config.in_channels
        where = f"{h}x{w} pixels, {channels} channel{'s' if channels > 1 else ''}"
    print(f"{type(model).__name__}, preset {args.preset!r}, batch {args.batch}, {where}; traced on the meta device")
    for line in headline(model, rows):
        print(line)
    if args.flops:
        print(f"{_fmt_count(rows[0].macs)} multiply-accumulates per forward pass")
    print()
    print(format_table(rows, args.depth, args.flops))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:                       # `| head` closed stdout: stop quietly (Python's documented recipe)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
