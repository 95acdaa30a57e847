"""ldm: a from-scratch, pure-PyTorch reference implementation of the Stable Diffusion latent-diffusion stack.

Modules (import what you need; nothing here imports diffusers):
    ldm.layers        blocks shared by the autoencoders and the UNet, and their input checks
    ldm.vae           AutoencoderKL and its diagonal Gaussian posterior
    ldm.vq            VQModel and its vector quantizer
    ldm.unet          the conditional UNet (UNet2DConditionModel)
    ldm.transformer   its Transformer2D and BasicTransformerBlock (self-attention, cross-attention, GEGLU)
    ldm.ddpm          beta schedules, DDPM/DDIM schedulers
    ldm.samplers      DPM-Solver++ (orders 1-3), Euler and Euler ancestral samplers (diffusers-exact)
    ldm.sampling      the guided sampling loop and the diffusion training loss
    ldm.conditioning  the user-ID embedder (with the null ID for guidance) and the UNet it conditions
    ldm.pipeline      a trained pipeline folder: loading, saving, samplers, generate (latents in and out)
    ldm.fast          opt-in speed devices applied from outside the models: fast.optimize(model)
    ldm.cuda_graph    opt-in CUDA-graph replay of a model call (outside the models)
    ldm.microdoppler  a walking-person radar micro-Doppler simulator (the built-in dataset; docs/microdoppler.md)
    ldm.radar         raw radar I/Q to spectrograms, and converters for public radar data sets (docs/radar.md)
    ldm.data          spectrogram/image folder datasets with user IDs, and the one split every stage shares
    ldm.metrics       PSNR, SSIM, the identity classifier, distances, intervals, memorisation (docs/evaluation.md)
    ldm.augment       classic spectrogram augmentation and filters for synthetic samples (docs/augmentation.md)
    ldm.io            diffusers folders, pipelines and original checkpoints, loaded safely (ldm.convert: key tables)
    ldm.losses        stage-1 losses: reconstruction, KL, LPIPS, PatchGAN
    ldm.training      what the training scripts share: checkpoints, EMA with warm-up, DDP, splits, logs
    ldm.shapes        `python -m ldm.shapes`: every module's shapes, parameters and MACs for a preset (meta device)
"""

__version__ = "0.1.0"
