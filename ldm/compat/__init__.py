"""diffusers' calling convention on ldm's classes: research code written for diffusers runs by changing its imports.

    # from diffusers import AutoencoderKL, UNet2DConditionModel, DDPMScheduler
    from ldm.compat import AutoencoderKL, UNet2DConditionModel, DDPMScheduler

    vae = AutoencoderKL.from_pretrained("sd", subfolder="vae", torch_dtype=torch.float16)   # a local folder
    latents = vae.encode(images).latent_dist.sample(generator) * vae.config.scaling_factor
    noise_pred = unet(noisy, t, encoder_hidden_states=context).sample
    x = scheduler.step(noise_pred, t, x, generator=g).prev_sample

Every class here subclasses the plain ldm class of the same name (``ldm.vae``, ``ldm.vq``, ``ldm.unet``, ``ldm.ddpm``,
``ldm.samplers``), so weights, state-dict keys and numbers are identical to the plain classes' (and to diffusers' on
CPU float32); only constructors, configs, return values and the extra diffusers methods differ. The plain model
files stay free of this convention layer. What is offered and what is not (with the reasons) is in docs/compat.md.
"""
from ldm.compat.configuration import (AutoencoderKLOutput, BaseOutput, ConfigDict, ConfigMixin, DDIMSchedulerOutput,
                                      DDPMSchedulerOutput, DecoderOutput, EulerAncestralDiscreteSchedulerOutput,
                                      EulerDiscreteSchedulerOutput, SchedulerOutput, UNet2DConditionOutput,
                                      VQEncoderOutput)
from ldm.compat.models import AttnProcessor, AttnProcessor2_0, AutoencoderKL, ModelMixin, UNet2DConditionModel, VQModel
from ldm.compat.schedulers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler,
                                   EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, SchedulerMixin)

__all__ = [
    "AutoencoderKL", "VQModel", "UNet2DConditionModel", "DDPMScheduler", "DDIMScheduler",
    "DPMSolverMultistepScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
    "AttnProcessor", "AttnProcessor2_0", "ModelMixin", "SchedulerMixin", "ConfigMixin", "ConfigDict", "BaseOutput",
    "AutoencoderKLOutput", "DecoderOutput", "VQEncoderOutput", "UNet2DConditionOutput", "SchedulerOutput",
    "DDPMSchedulerOutput", "DDIMSchedulerOutput", "EulerDiscreteSchedulerOutput",
    "EulerAncestralDiscreteSchedulerOutput",
]
