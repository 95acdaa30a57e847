"""ldm: a from-scratch, pure-PyTorch reference implementation of the Stable Diffusion latent-diffusion stack.

Modules (import what you need; nothing here imports diffusers):
    ldm.layers        blocks shared by the autoencoders and the UNet
    ldm.vae           AutoencoderKL and its diagonal Gaussian posterior
    ldm.vq            VQModel and its vector quantizer
    ldm.unet          the conditional UNet (UNet2DConditionModel)
    ldm.transformer   its Transformer2D and BasicTransformerBlock (self-attention, cross-attention, GEGLU)
    ldm.ddpm          beta schedules, DDPM/DDIM schedulers, the sampling loop and the training loss
    ldm.microdoppler  a walking-person radar micro-Doppler simulator (the built-in dataset)
    ldm.data          spectrogram/image folder datasets with user IDs
    ldm.metrics       PSNR, SSIM and the identity evaluation
    ldm.io            diffusers folders, pipelines and original checkpoints, loaded safely (ldm.convert: key tables)
    ldm.losses        stage-1 losses: reconstruction, KL, LPIPS, PatchGAN
    ldm.training      what the training scripts share: checkpoints, EMA, DDP, logs
"""

__version__ = "0.1.0"
