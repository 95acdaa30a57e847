"""Losses for training the autoencoders (stage 1): reconstruction + KL, an optional LPIPS perceptual term, and a
PatchGAN discriminator with the hinge loss and the adaptive generator weight of Esser et al. 2021 (VQGAN, Eq. 7),
as used for the Stable Diffusion VAE (``LPIPSWithDiscriminator`` in the LDM code).

The LDM code divides the reconstruction term by exp(logvar) for a "learned" logvar, but never gives that
parameter to an optimizer, so it stays at its initial 0 and drops out; we leave it out.

Reduction, stated once: like the LDM code, per-image terms are **summed** over pixels (or latent elements) and
**averaged** over the batch. So ``kl_weight=1e-6`` means what it means in the LDM configs: KL summed over the
(Cz, h, w) latent per image, against the reconstruction error summed over (C, H, W). Reported metrics
(``rec_l1``, ``psnr``) are per-pixel means, which is what people compare.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# ----------------------------------------------------------------------------------------------------------------
# Reconstruction
# ----------------------------------------------------------------------------------------------------------------


def reconstruction_loss(x: torch.Tensor, x_rec: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """Per-image error summed over (C, H, W), averaged over the batch: scalar. kind: "l1" or "l2"."""
    if kind == "l1":
        error = (x - x_rec).abs()
    elif kind == "l2":
        error = (x - x_rec).pow(2)
    else:
        raise ValueError(f"reconstruction loss must be 'l1' or 'l2', got {kind!r}")
    return error.sum(dim=(1, 2, 3)).mean()


# ----------------------------------------------------------------------------------------------------------------
# Perceptual loss (LPIPS, Zhang et al. 2018), only from a weights file the user provides
# ----------------------------------------------------------------------------------------------------------------

VGG16_CHANNELS = (64, 128, 256, 512, 512)
# (first index, last index + 1) of torchvision's vgg16().features in each of LPIPS' five slices
VGG16_SLICES = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))
VGG16_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)


class LPIPS(nn.Module):
    """Learned perceptual distance with a VGG16 trunk: unit-normalise each slice's features over channels,
    square the difference, weight channels with a learned 1x1 conv, average over space, sum over slices.

    Key names equal the ``lpips`` package's ``LPIPS(net="vgg")`` state dict (``net.slice1.0.weight``,
    ``lin0.model.1.weight``, ``scaling_layer.shift``), so a file saved from it loads with strict=True. Nothing is
    downloaded: build it with ``LPIPS.from_file(path)``. Inputs are in [-1, 1]; single-channel images are
    repeated to three channels.
    """

    def __init__(self):
        super().__init__()
        self.scaling_layer = _ScalingLayer()
        self.net = _VGG16Slices()
        for i, channels in enumerate(VGG16_CHANNELS):
            setattr(self, f"lin{i}", _LinearLayer(channels))   # the lpips package's names: lin0 .. lin4
        self.requires_grad_(False)

    @classmethod
    def from_file(cls, path) -> "LPIPS":
        from ldm.io import read_state_dict   # deferred: ldm.io is only needed when a file is given
        model = cls()
        # the lpips package also lists its lin layers a second time under "lins."; they are the same tensors
        state_dict = {k: v for k, v in read_state_dict(path).items() if not k.startswith("lins.")}
        missing = sorted(model.state_dict().keys() - state_dict.keys())
        unexpected = sorted(state_dict.keys() - model.state_dict().keys())
        if missing or unexpected:
            raise ValueError(f"{path}: not an LPIPS(net='vgg') weights file: {len(missing)} missing keys {missing[:3]}, "
                             f"{len(unexpected)} unexpected keys {unexpected[:3]}")
        model.load_state_dict(state_dict, strict=True)
        return model.eval()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x, y: (B, C, H, W) in [-1, 1], C in {1, 3} -> (B,) distances."""
        if x.shape[1] == 1:
            x, y = x.repeat(1, 3, 1, 1), y.repeat(1, 3, 1, 1)
        features_x, features_y = self.net(self.scaling_layer(x)), self.net(self.scaling_layer(y))
        total = 0.0
        for i, (fx, fy) in enumerate(zip(features_x, features_y)):
            fx = fx / (fx.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)      # unit length over channels
            fy = fy / (fy.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            total = total + getattr(self, f"lin{i}")((fx - fy).pow(2)).mean(dim=(2, 3))   # (B, 1)
        return total.flatten()


class _ScalingLayer(nn.Module):
    """Maps [-1, 1] images to the ImageNet-normalised input LPIPS' VGG expects (the lpips package's constants)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None])
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.shift) / self.scale


class _VGG16Slices(nn.Module):
    """torchvision's vgg16().features, cut after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3."""

    def __init__(self):
        super().__init__()
        layers, channels = [], 3
        for entry in VGG16_CONFIG:
            if entry == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(channels, entry, kernel_size=3, padding=1), nn.ReLU(inplace=False)]
                channels = entry
        for n, (start, end) in enumerate(VGG16_SLICES, start=1):
            block = nn.Sequential()
            for index in range(start, end):
                block.add_module(str(index), layers[index])   # keep torchvision's indices in the keys
            setattr(self, f"slice{n}", block)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for n in range(1, 6):
            x = getattr(self, f"slice{n}")(x)
            features.append(x)
        return features


class _LinearLayer(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, kernel_size=1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


# ----------------------------------------------------------------------------------------------------------------
# PatchGAN discriminator (Isola et al. 2017) with the hinge loss
# ----------------------------------------------------------------------------------------------------------------


class PatchDiscriminator(nn.Module):
    """A fully convolutional classifier that scores overlapping patches real (>0) or fake (<0).

    ``num_layers`` stride-2 4x4 convolutions (LeakyReLU 0.2, BatchNorm after all but the first), one stride-1
    conv, and a 1-channel stride-1 output: (B, C, H, W) -> (B, 1, ~H/2^n, ~W/2^n) logits. Weights are drawn
    from N(0, 0.02) (BatchNorm scales from N(1, 0.02)) as in pix2pix and the LDM code; biases start at 0.
    """

    def __init__(self, in_channels: int = 3, channels: int = 64, num_layers: int = 3,
                 generator: torch.Generator | None = None):
        super().__init__()
        layers = [nn.Conv2d(in_channels, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        width = channels
        for n in range(1, num_layers + 1):
            previous, width = width, channels * min(2 ** n, 8)
            stride = 2 if n < num_layers else 1
            layers += [nn.Conv2d(previous, width, 4, stride=stride, padding=1, bias=False),
                       nn.BatchNorm2d(width), nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(width, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.Conv2d):
                    module.weight.normal_(0.0, 0.02, generator=generator)
                    if module.bias is not None:   # zero instead of torch's default, so `generator` decides all
                        module.bias.zero_()
                elif isinstance(module, nn.BatchNorm2d):
                    module.weight.normal_(1.0, 0.02, generator=generator)
                    module.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


def hinge_discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """0.5 * (mean(relu(1 - D(x))) + mean(relu(1 + D(x_rec))))."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def adaptive_generator_weight(rec_loss: torch.Tensor, gen_loss: torch.Tensor, last_layer: torch.Tensor,
                              max_weight: float = 1e4) -> torch.Tensor:
    """lambda = ||grad_L rec_loss|| / (||grad_L gen_loss|| + 1e-4) at the decoder's last layer L (VQGAN, Eq. 7),
    clamped to [0, max_weight] and detached: it balances the two gradients wherever training is."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    gen_grad = torch.autograd.grad(gen_loss, last_layer, retain_graph=True)[0]
    weight = rec_grad.norm() / (gen_grad.norm() + 1e-4)
    return weight.clamp(0.0, max_weight).detach()
