"""Helpers shared by the parity tests: perturbed reference weights, the relative error measure, TF32 off."""
import contextlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def perturb_(model: torch.nn.Module, seed: int = 0, scale: float = 0.1) -> torch.nn.Module:
    """Add seeded Gaussian noise to every parameter and float buffer, in place.

    diffusers initialises some layers to zero or one (norm affines, zero-init output convs); perturbing them
    makes sure no path through the model is trivially zero or the identity, so parity tests see every term.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in list(model.parameters()) + list(model.buffers()):
            if tensor.is_floating_point():
                tensor.add_(scale * torch.randn(tensor.shape, generator=g, dtype=tensor.dtype))
    return model


def cuda_pair(ref_cls, ours_cls, config, scale: float = 0.01):
    """(ours, diffusers') full-size models on CUDA in eval mode: diffusers' built from config.to_diffusers() with
    seeded perturbed weights, ours loading its state dict with strict=True."""
    torch.manual_seed(0)
    ref = perturb_(ref_cls(**config.to_diffusers()), scale=scale).cuda().eval()
    ours = ours_cls(config).cuda().eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours, ref


def sd15_inputs() -> dict:
    """SD 1.5 UNet inputs on CUDA: batch 2 of 64x64x4 latents, timesteps 1 and 999, 77 context tokens of width 768."""
    g = torch.Generator(device="cuda").manual_seed(0)
    return dict(sample=torch.randn(2, 4, 64, 64, device="cuda", generator=g), timestep=torch.tensor([1, 999]).cuda(),
                encoder_hidden_states=torch.randn(2, 77, 768, device="cuda", generator=g))


def png_folder(root: Path, per_user: int, size: int) -> Path:
    """root/alice/<i>.png and root/bob/<i>.png: per_user random size x size grayscale PNGs each (seeded)."""
    rng = np.random.default_rng(0)
    for user in ("alice", "bob"):
        (root / user).mkdir()
        for i in range(per_user):
            Image.fromarray((rng.random((size, size)) * 255).astype(np.uint8)).save(root / user / f"{i}.png")
    return root


SHAPES = ("circle", "square", "triangle", "cross")


def shapes_folder(root: Path, per_class: int, size: int = 32, seed: int = 0) -> Path:
    """root/<shape>/<i>.png: data that is not the simulator. One class per shape of SHAPES, drawn with PIL at a
    random position (+-size/8), size (about 0.3-0.45 of the side) and brightness on a noisy dark background."""
    from PIL import ImageDraw
    rng = np.random.default_rng(seed)
    for shape in SHAPES:
        (root / shape).mkdir(parents=True)
        for i in range(per_class):
            image = Image.fromarray((rng.random((size, size)) * 40).astype(np.uint8))
            draw = ImageDraw.Draw(image)
            cx, cy = size / 2 + rng.uniform(-size / 8, size / 8, 2)
            r = size * rng.uniform(0.15, 0.22)
            fill = int(rng.integers(170, 256))
            if shape == "circle":
                draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
            elif shape == "square":
                draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
            elif shape == "triangle":
                draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
            else:
                w = r / 3
                draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
                draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)
            image.save(root / shape / f"{i:03d}.png")
    return root


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Relative max-abs error: max|actual - expected| / max|expected|."""
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    actual, expected = actual.detach().double(), expected.detach().double()
    denom = expected.abs().max().clamp_min(1e-30)
    return float((actual - expected).abs().max() / denom)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: float = 1e-5, what: str = "output"):
    err = rel_err(actual, expected)
    assert err <= tol, f"{what}: relative max-abs error {err:.3e} > {tol:.0e}"


def assert_same_keys(ours: torch.nn.Module, reference: torch.nn.Module):
    """Identical state-dict key sets and shapes (order may differ: compare sets, not lists)."""
    a = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    b = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    missing, extra = sorted(b.keys() - a.keys()), sorted(a.keys() - b.keys())
    assert not missing and not extra, f"missing in ours: {missing[:10]}; extra in ours: {extra[:10]}"
    wrong = {k: (a[k], b[k]) for k in a if a[k] != b[k]}
    assert not wrong, f"shape mismatches (ours, reference): {wrong}"


@contextlib.contextmanager
def tf32_off():
    """True float32 on a GPU: TF32 off for matmuls and convolutions (cuDNN enables it by default), restored after."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
