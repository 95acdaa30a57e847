"""Full-size checks of the speed paths on a CUDA device (all `gpu`-marked; skipped without one; run by
scripts/gpu_check.sh): bf16 accuracy against diffusers, channels-last in fp32, no host-device sync in the UNet's
forward, a 2048x2048 tiled VAE decode within 8 GB, and CUDA-graph sampling equal to eager sampling.

bf16 bound (documented in scripts/README.md): against the float32 output (TF32 off), ldm in bf16 may be at most
1.5x as far off as diffusers in bf16 plus 1e-3, and never more than BF16_TOL. Both run the same bf16 kernels in
nearly the same order, so their errors are of one size; the factor leaves room for a different GEMM split (the fused
q/k/v projection of ldm.fast). Each check runs on the plain model and on the ldm.fast path.
"""
import copy

import pytest
import torch
from diffusers import AutoencoderKL as RefAutoencoderKL
from diffusers import UNet2DConditionModel as RefUNet

from ldm import fast
from ldm.cuda_graph import CUDAGraphModel
from ldm.ddpm import DDIMScheduler
from ldm.guided_sampling import sample
from ldm.unet import UNet2DConditionModel, UNetConfig
from ldm.vae import AutoencoderKL, VAEConfig
from tests.helpers import assert_close, cuda_pair, perturb_, rel_err, sd15_inputs, tf32_off

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("no_tf32")]
BF16_TOL = 5e-2
PATHS = pytest.mark.parametrize("path", ["plain", "fast"])


def on_path(model, path: str):
    return fast.optimize(model) if path == "fast" else model
TILED_DECODE_BUDGET_GB = 8.0


@pytest.fixture(scope="module")
def sd15_pair():
    """The SD 1.5 UNet in both libraries and diffusers' float32 output. A module-scoped fixture is set up before the
    tests' function-scoped no_tf32 fixture, so it switches TF32 off itself (with TF32 on, the reference is off by
    ~1e-3 and the fp32 comparisons fail)."""
    ours, ref = cuda_pair(RefUNet, UNet2DConditionModel, UNetConfig.preset("sd15"))
    x = sd15_inputs()
    with torch.no_grad(), tf32_off():
        expected = ref(**x).sample
    return ours, ref, x, expected


@PATHS
@torch.no_grad()
def test_sd15_unet_bf16_is_as_accurate_as_diffusers_bf16(sd15_pair, path):
    ours, ref, x, expected = sd15_pair
    x16 = {k: v.bfloat16() if v.is_floating_point() else v for k, v in x.items()}
    ours16, ref16 = on_path(copy.deepcopy(ours).bfloat16(), path), copy.deepcopy(ref).bfloat16()
    err_ours = rel_err(ours16(**x16).float(), expected)
    err_ref = rel_err(ref16(**x16).sample.float(), expected)
    print(f"bf16 relative max-abs error vs fp32 ({path}): ldm {err_ours:.3e}, diffusers {err_ref:.3e}")
    assert err_ours <= 1.5 * err_ref + 1e-3, f"ldm bf16 error {err_ours:.3e} vs diffusers' {err_ref:.3e}"
    assert err_ours <= BF16_TOL


@PATHS
@torch.no_grad()
def test_sd15_unet_channels_last_matches_diffusers_in_fp32(sd15_pair, path):
    ours, _, x, expected = sd15_pair
    ours_cl = on_path(copy.deepcopy(ours), path).to(memory_format=torch.channels_last)
    out = ours_cl(**dict(x, sample=x["sample"].contiguous(memory_format=torch.channels_last)))
    assert_close(out, expected, tol=1e-4, what="channels-last SD 1.5 UNet")


@PATHS
@torch.no_grad()
def test_unet_forward_makes_no_host_device_sync(path):
    unet = on_path(UNet2DConditionModel(UNetConfig.preset("microdoppler")), path).cuda().eval()   # class labels
    x = torch.randn(2, 4, 32, 32, device="cuda")
    t = torch.tensor([5, 700], device="cuda")
    context = torch.randn(2, 1, 768, device="cuda")
    labels = torch.tensor([0, 63], device="cuda")
    unet(x, t, context, class_labels=labels)   # warm-up: kernel selection may query the device once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        unet(x, t, context, class_labels=labels)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


@torch.no_grad()
def test_tiled_decode_at_2048_fits_in_8_gb_and_matches_diffusers():
    ours, ref = cuda_pair(RefAutoencoderKL, AutoencoderKL, VAEConfig.preset("sd"))
    ours.enable_tiling()
    ref.enable_tiling()
    z = torch.randn(1, 4, 256, 256, device="cuda", generator=torch.Generator(device="cuda").manual_seed(0))
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    out = ours.decode(z)
    torch.cuda.synchronize()
    peak_gb = (torch.cuda.max_memory_allocated() - before) / 2**30
    print(f"tiled 2048x2048 decode: {peak_gb:.2f} GB above the weights")
    assert out.shape == (1, 3, 2048, 2048)
    assert peak_gb < TILED_DECODE_BUDGET_GB
    assert_close(out, ref.decode(z).sample, tol=1e-4, what="tiled 2048x2048 decode")


@PATHS
@torch.no_grad()
def test_cuda_graph_sampling_equals_eager_sampling(path):
    cfg = UNetConfig.preset("microdoppler")   # class labels + one context token, as train_ldm.py samples
    torch.manual_seed(0)
    unet = on_path(perturb_(UNet2DConditionModel(cfg), scale=0.01), path).cuda().eval()
    context = torch.randn(4, 1, cfg.cross_attention_dim, device="cuda")   # (2B, S, D): guidance doubles the batch
    labels, null = torch.tensor([3, 17], device="cuda"), torch.zeros(2, dtype=torch.long, device="cuda")

    def model(x, t, c):
        return unet(x, t, context, class_labels=c)

    def run(cuda_graph: bool) -> torch.Tensor:
        return sample(model, DDIMScheduler(), (2, 4, 32, 32), cond=labels, uncond=null, guidance_scale=3.0,
                      num_steps=8, generator=torch.Generator("cuda").manual_seed(0), progress=False, device="cuda",
                      cuda_graph=cuda_graph)

    eager, graphed = run(False), run(True)
    print(f"CUDA-graph sampling vs eager: relative max-abs difference {rel_err(graphed, eager):.3e}")
    assert_close(graphed, eager, tol=1e-5, what="CUDA-graph sampling")

    # one graph per input shape; returned outputs are copies that later replays do not overwrite
    graphed_unet = CUDAGraphModel(unet)
    x1, t1 = torch.randn(1, 4, 32, 32, device="cuda"), torch.tensor([10], device="cuda")
    first = graphed_unet(x1, t1, context[:1], class_labels=labels[:1])
    graphed_unet(x1 * 2, t1, context[:1], class_labels=labels[:1])
    assert_close(first, unet(x1, t1, context[:1], class_labels=labels[:1]), tol=1e-5, what="graphed forward")
    graphed_unet(torch.randn(2, 4, 16, 16, device="cuda"), t1.expand(2), context[:2], class_labels=labels)
    assert len(graphed_unet.graphs) == 2
    # an in-place weight change (an EMA step, say) reaches the replays (on the fast path: the stacked q/k/v too)
    unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q.weight.mul_(1.5)
    assert_close(graphed_unet(x1, t1, context[:1], class_labels=labels[:1]),
                 unet(x1, t1, context[:1], class_labels=labels[:1]), tol=1e-5, what="graphed forward after a change")
