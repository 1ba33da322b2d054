"""Generative model zoo behind one registry: DCGAN, conditional GAN, AC-GAN, a compact StyleGAN2,
class-conditional diffusion in pixel space (ddpm) and in an autoencoder's latent space (ldm), and two-stage
mask-then-image generation (twostage: a mask GAN, then pix2pix painting an image for each mask).

    cfg = GANConfig("stylegan2", size=64, channels=1, num_classes=5, width=32)
    G, D = build_gan(cfg)
    x = G(torch.randn(8, cfg.z_dim), y)        # (8, 1, 64, 64) in [-1, 1]; y: (8, 5) multi-hot float
    logits, class_logits = D(x, y)             # (8,), None (class_logits only for acgan)
    save_generator(G, run_dir); G2 = load_generator(run_dir)

Supported sizes (all models): 16, 32, 64, 128, 256 (4x4 start) and 28, 56, 112, 224 (7x7 start).
"""

from medsyn.models.augment import AdaptiveAugment, diff_augment
from medsyn.models.base import Discriminator, Generator
from medsyn.models.checkpoint import FORMAT_VERSION, load_generator, save_generator
from medsyn.models.config import MODELS, SUPPORTED_SIZES, GANConfig, ModelInfo
from medsyn.models.registry import build_gan

__all__ = [
    "FORMAT_VERSION",
    "MODELS",
    "SUPPORTED_SIZES",
    "AdaptiveAugment",
    "Discriminator",
    "GANConfig",
    "Generator",
    "ModelInfo",
    "build_gan",
    "diff_augment",
    "load_generator",
    "save_generator",
]
