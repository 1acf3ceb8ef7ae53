"""Learned priors over a head model's latents: `diffusion.DiffusionPrior`, a denoising-diffusion prior."""
