"""ldm.shapes: the meta-device trace against real forward passes (shapes), sum(p.numel()) (parameters),
torch's FlopCounterMode and closed forms (MACs), and the command line."""
import subprocess
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from ldm import fast, shapes
from ldm.layers import Attention

KINDS = ("vae", "unet", "vq")

# The real forward passes here are tiny: one torch thread is faster than many on a busy machine (conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def traced(kind: str, preset: str, **sizes):
    model = shapes.build_model(kind, preset)
    args, kwargs = shapes.example_inputs(model, **sizes)
    return model, shapes.trace(model, *args, **kwargs)


def by_name(rows):
    return {row.name: row for row in rows}


def run_cli(capsys, *argv):
    """(exit status, stdout, stderr) of ``python -m ldm.shapes argv``, in process."""
    try:
        status = shapes.main(list(argv))
    except SystemExit as exit_:
        status = exit_.code
    out, err = capsys.readouterr()
    return status, out, err


# ---- the required shapes ----------------------------------------------------------------------------------------


def test_microdoppler_vae_maps_256x256_to_a_32x32x4_latent():
    model, rows = traced("vae", "microdoppler")
    rows = by_name(rows)
    assert rows[""].inputs == ((1, 1, 256, 256),)                        # the preset's sample_size, 1 channel
    assert rows["encoder"].outputs == ((1, 8, 32, 32),)                  # mean and logvar
    assert rows["decoder"].inputs == ((1, 4, 32, 32),)                   # the latent
    assert rows[""].outputs == ((1, 1, 256, 256), "DiagonalGaussian(1, 4, 32, 32)")
    assert shapes.headline(model, list(rows.values()))[0] == \
        "input (1, 1, 256, 256) -> latent (1, 4, 32, 32) -> output (1, 1, 256, 256)"


@pytest.mark.parametrize("preset", ["tiny", "microdoppler", "sd15"])
def test_unet_output_shape_equals_its_input(preset):
    model, rows = traced("unet", preset, batch=2)
    root = rows[0]
    assert root.name == "" and root.outputs == (root.inputs[0],)
    context = model.config.cross_attention_dim
    assert root.inputs[1:3] == ((2,), (2, shapes.DEFAULT_TOKENS, context))   # timestep, 4 ID tokens
    if model.config.num_class_embeds is not None:
        assert root.inputs[3] == (2,)


def test_unet_size_is_pixels_and_latent_size_is_latents():
    _, rows = traced("unet", "microdoppler", size=(256, 128))
    assert rows[0].inputs[0] == (1, 4, 32, 16)
    _, rows = traced("unet", "microdoppler", latent_size=(12, 20))
    assert rows[0].inputs[0] == rows[0].outputs[0] == (1, 4, 12, 20)
    _, rows = traced("unet", "microdoppler")
    assert rows[0].inputs[0] == (1, 4, 32, 32)                           # the preset's sample_size latents


# ---- against a real forward pass ---------------------------------------------------------------------------------


def real_model_and_inputs(kind: str):
    """A ``tiny`` model with initialised weights on the CPU, and random inputs of the traced shapes."""
    torch.manual_seed(0)
    model = shapes.build_model(kind, "tiny", device="cpu")
    args, kwargs = shapes.example_inputs(model, batch=2)             # uninitialised floats, zero labels
    return model, [_randomised(a) for a in args], {k: _randomised(v) for k, v in kwargs.items()}


def _randomised(t: torch.Tensor) -> torch.Tensor:
    return torch.randn_like(t) if t.is_floating_point() else t


def record_with_plain_hooks(model, args, kwargs) -> dict:
    """name -> (input tensor shapes, output tensor shapes) of every module call, from plain forward hooks on an
    untouched model (its fused attention projections included). List arguments (the skip stack) are left out."""
    names = {module: name for name, module in model.named_modules()}
    seen = {}

    def tensor_shapes(values, into_sequences: bool) -> list:
        found = []
        for v in values:
            if isinstance(v, torch.Tensor):
                found.append(tuple(v.shape))
            elif into_sequences and isinstance(v, (list, tuple)):
                found.extend(tensor_shapes(v, True))
        return found

    def hook(module, args_, kwargs_, output):
        seen[names[module]] = (tensor_shapes([*args_, *kwargs_.values()], False), tensor_shapes([output], True))

    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in names]
    with torch.no_grad():
        model(*args, **kwargs)
    for handle in handles:
        handle.remove()
    return seen


@pytest.mark.parametrize("kind", KINDS)
def test_meta_trace_has_the_shapes_of_a_real_forward(kind):
    model, args, kwargs = real_model_and_inputs(kind)
    real = record_with_plain_hooks(model, args, kwargs)
    meta_model = shapes.build_model(kind, "tiny")
    meta_args, meta_kwargs = shapes.example_inputs(meta_model, batch=2)
    meta = by_name(shapes.trace(meta_model, *meta_args, **meta_kwargs))
    assert all(row.called and row.call == 0 for row in meta.values())
    for name, (inputs, outputs) in real.items():
        row = meta[name]
        assert [e for e in row.inputs if isinstance(e, tuple)] == inputs, name
        assert [e for e in row.outputs if isinstance(e, tuple)] == outputs, name
    assert set(meta) == set(real)   # every module the plain forward calls, and nothing else
    # the same trace on the real model gives identical rows (shapes, parameters, MACs)
    assert shapes.trace(model, *args, **kwargs) == list(meta.values())


def test_trace_leaves_the_model_as_it_was_and_computes_the_same_output():
    model, args, kwargs = real_model_and_inputs("unet")
    model.train()
    with torch.no_grad():
        expected = model.eval()(*args, **kwargs)
    model.train()
    captured = []
    handle = model.register_forward_hook(lambda module, inputs, output: captured.append(output))
    fast.optimize(model)
    rows = shapes.trace(model, *args, **kwargs)                          # traced on the plain classes
    handle.remove()
    torch.testing.assert_close(captured[0], expected)
    assert all(m.training for m in model.modules())
    assert fast.is_optimized(model)
    assert any(row.name.endswith("attn1.to_k") for row in rows)          # the Linears' hooks fired


@pytest.mark.parametrize("kind", KINDS)
def test_parameter_counts_equal_numel_sums(kind):
    model, rows = traced(kind, "tiny")
    total = sum(p.numel() for p in model.parameters())
    assert rows[0].params == total
    assert sum(row.own_params for row in rows if row.call == 0) == total
    for row in rows:
        module = model.get_submodule(row.name)
        assert row.params == sum(p.numel() for p in module.parameters())
        assert row.own_params == sum(p.numel() for p in module.parameters(recurse=False))


# ---- MACs --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_macs_equal_torch_flop_counter(kind):
    model, rows = traced(kind, "tiny")
    args, kwargs = shapes.example_inputs(model)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(*args, **kwargs)
    expected = counter.get_total_flops() // 2                           # one MAC = two FLOPs
    if kind == "vq":                                                     # FlopCounterMode skips cdist: N x K x D
        quantize = model.quantize
        latent = by_name(rows)["quantize"].inputs[0]
        expected += latent[0] * latent[2] * latent[3] * quantize.num_embeddings * quantize.embed_dim
    assert rows[0].macs == expected
    assert rows[0].macs == sum(row.own_macs for row in rows)


def test_attention_macs_closed_form():
    torch.manual_seed(0)
    cross = Attention(16, context_dim=24, heads=2, head_dim=8)           # B=2, L=5 queries, S=3 keys
    rows = by_name(shapes.trace(cross, torch.randn(2, 5, 16), torch.randn(2, 3, 24)))
    assert rows["to_k"].inputs == ((2, 3, 24),) and rows["to_k"].outputs == ((2, 3, 16),)
    projections = 2 * 5 * 16 * 16 + 2 * (2 * 3 * 24 * 16) + 2 * 5 * 16 * 16   # q, k and v, out
    assert rows[""].own_macs == 2 * 2 * 5 * 3 * 16                      # q k^T and attn v
    assert rows[""].macs == projections + 2 * 2 * 5 * 3 * 16

    spatial = Attention(8, heads=1, head_dim=8, bias=True, residual=True, norm_groups=4)   # the VAE mid block's
    rows = by_name(shapes.trace(spatial, torch.randn(1, 8, 3, 4)))      # L = S = 12 pixels
    assert rows[""].outputs == ((1, 8, 3, 4),)
    assert rows[""].macs == 4 * (12 * 8 * 8) + 2 * 12 * 12 * 8


# ---- the table and the command line --------------------------------------------------------------------------------


def test_depth_limits_the_table():
    _, rows = traced("unet", "tiny")
    table = shapes.format_table(rows, depth=1, flops=True)
    names = [line.split()[0] for line in table.splitlines()[2:]]
    assert names[:3] == ["(model)", "time_embedding", "conv_in"]
    assert "down_blocks.0" in names and "mid_block" in names and "up_blocks.1" in names
    assert not any(name.count(".") > 1 for name in names)
    assert table.splitlines()[0].split() == ["module", "class", "input", "output", "params", "MACs"]
    assert len(shapes.format_table(rows).splitlines()) == len(rows) + 2


def test_cli_prints_the_microdoppler_vae_latent(capsys):
    status, out, _ = run_cli(capsys, "--model", "vae", "--preset", "microdoppler", "--flops")
    lines = out.splitlines()
    assert status == 0
    assert lines[1] == "input (1, 1, 256, 256) -> latent (1, 4, 32, 32) -> output (1, 1, 256, 256)"
    assert any(line.startswith("encoder.down_blocks.0.resnets.0.conv1 ") for line in lines)


def test_cli_sizes(capsys):
    _, out, _ = run_cli(capsys, "--model", "vae", "--size", "128x64", "--depth", "0")
    assert "latent (1, 4, 16, 8)" in out
    _, out, _ = run_cli(capsys, "--model", "unet", "--size", "256", "--batch", "3", "--tokens", "2", "--depth", "0")
    assert "sample (3, 4, 32, 32), timestep (3,), encoder_hidden_states (3, 2, 768), class_labels (3,) -> " \
           "output (3, 4, 32, 32)" in out


def test_cli_help_lists_every_option(capsys):
    status, out, _ = run_cli(capsys, "--help")
    assert status == 0
    for option in ("--model", "--preset", "--size", "--latent-size", "--batch", "--tokens", "--depth", "--flops"):
        assert option in out


@pytest.mark.parametrize("argv, named", [
    (["--model", "transformer"], "transformer"),
    (["--model", "vae", "--preset", "nope"], "nope"),
    (["--model", "unet", "--preset", "sd"], "'sd'"),                    # a VAE preset name, not a UNet one
    (["--model", "vae", "--size", "250"], "250x250"),
    (["--model", "vae", "--size", "big"], "big"),
    (["--model", "vq", "--latent-size", "32"], "--latent-size"),
    ([], "--model"),
])
def test_cli_errors_are_one_line_and_exit_2(capsys, argv, named):
    status, out, err = run_cli(capsys, *argv)
    assert status == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("python -m ldm.shapes: error: ") and named in err


def test_python_dash_m_entry_point():
    done = subprocess.run([sys.executable, "-m", "ldm.shapes", "--model", "unet", "--depth", "1"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "-> output (1, 4, 32, 32)" in done.stdout.splitlines()[1]
    done = subprocess.run([sys.executable, "-m", "ldm.shapes", "--model", "vae", "--preset", "nope"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1


@pytest.mark.parametrize("model, depth", [("vae", "1"), ("unet", "1")])
def test_the_architecture_doc_shows_what_the_tool_prints(capsys, model, depth):
    """The shape tables of docs/architecture.md are this tool's output, so they cannot drift from the code."""
    from pathlib import Path
    assert shapes.main(["--model", model, "--preset", "microdoppler", "--depth", depth, "--flops"]) == 0
    printed = capsys.readouterr().out.rstrip()
    doc = (Path(__file__).resolve().parents[1] / "docs" / "architecture.md").read_text()
    command = f"$ python -m ldm.shapes --model {model} --preset microdoppler --depth {depth} --flops\n"
    assert command + printed + "\n" in doc, f"docs/architecture.md: regenerate the block after {command.strip()!r}"
