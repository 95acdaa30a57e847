"""ldm: a from-scratch, pure-PyTorch reference implementation of the Stable Diffusion latent-diffusion stack.

Import what you need; nothing here imports diffusers. Read in this order:

The model stack
    ldm.layers            the blocks the autoencoders and the UNet share (resnet, attention, up/down samplers)
    ldm.vae               AutoencoderKL and its diagonal Gaussian posterior
    ldm.vq                VQModel and its vector quantizer (the experimental stage 1)
    ldm.transformer       the UNet's Transformer2D: self-attention, cross-attention, GEGLU
    ldm.unet              the conditional UNet (UNet2DConditionModel)
    ldm.conditioning      the user-ID embedder (with the null ID for guidance)
    ldm.ddpm              noise schedules, the DDPM and DDIM schedulers
    ldm.samplers          DPM-Solver++ (orders 1-3), Euler and Euler ancestral
    ldm.guided_sampling   the sampling loop with classifier-free guidance
    ldm.diffusion_loss    the diffusion training loss (epsilon / v / x0, Min-SNR)
    ldm.autoencoder_losses  stage-1 losses: reconstruction, LPIPS, PatchGAN, adaptive GAN weight

Around the models
    ldm.pipeline          a trained pipeline folder: load, save, generate (latents in and out), provenance
    ldm.enrollment        new people added to a trained pipeline from k images each (only their ID rows train)
    ldm.compat            diffusers' calling convention on ldm's classes, for code written for diffusers
    ldm.io, ldm.convert   diffusers folders, safetensors, original checkpoints and their key tables
    ldm.files             atomic writes, JSON read with one-line errors, outputs kept apart from inputs
    ldm.fast, ldm.cuda_graph   opt-in speed applied from outside the models
    ldm.shapes            python -m ldm.shapes: every module's shapes, parameters and MACs for a preset
    ldm.training          what happens inside a training step: DDP/FSDP, EMA, non-finite guard, checkpoints
    ldm.runs              a training run's life: start-up, run folders, the loop and its estimate, Ctrl-C
    ldm.logs              what a run leaves to read: log.jsonl, loss curves, sample grids
    ldm.lock              one writer per run folder (a lock a killed process does not leave behind)
    ldm.cli               options, parsing and the error-to-exit-status wrapper (imports no torch)

Data and measurement
    ldm.data              image/.npy folders with user IDs (ldm.jet: jet-coloured images back to levels)
    ldm.splits            the one split of a folder (split.json) every stage shares
    ldm.metrics           PSNR, SSIM, distances between feature sets, intervals, memorisation
    ldm.fewshot           the few-shot identification experiment: person splits, variants, statistics
    ldm.radar             the radar domain: simulator (kinematics, echo, data set), signal chain, data-set
                          readers, physics features, spectrogram augmentation, the identity classifier
                          (see ldm/radar/__init__.py)
"""

__version__ = "0.1.0"
