"""GAN objectives and regularisers. Logits arrive in float32 (cast after autocast) so losses never underflow.

Gradient penalties follow the PyTorch AMP recipe: differentiate the *scaled* output and divide by the
scale, so the penalty is correct under fp16 loss scaling and unchanged (scale 1) otherwise.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

WGAN_GP_LAMBDA = 10.0  # Gulrajani et al. 2017


def d_loss(kind: str, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator loss: non-saturating (logistic), hinge, or the Wasserstein critic loss."""
    if kind == "ns":
        return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
    if kind == "hinge":
        return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()
    if kind == "wgan-gp":
        return fake_logits.mean() - real_logits.mean()
    raise ValueError(f"unknown loss {kind!r}")


def g_loss(kind: str, fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator loss: non-saturating -log D(G(z)) for 'ns'; -E[D(G(z))] for hinge and WGAN."""
    if kind == "ns":
        return F.softplus(-fake_logits).mean()
    if kind in ("hinge", "wgan-gp"):
        return -fake_logits.mean()
    raise ValueError(f"unknown loss {kind!r}")


def class_loss(class_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """AC-GAN auxiliary loss: multi-label BCE; NaN labels (masked, e.g. CheXpert uncertain) are left out."""
    known = ~torch.isnan(labels)
    per_label = F.binary_cross_entropy_with_logits(
        class_logits.float(), torch.nan_to_num(labels, nan=0.0), reduction="none"
    )
    return (per_label * known).sum() / known.sum().clamp(min=1)


def _input_grad(outputs: torch.Tensor, inputs: torch.Tensor, scale: float) -> torch.Tensor:
    (grad,) = torch.autograd.grad(outputs=outputs.sum() * scale, inputs=inputs, create_graph=True)
    return grad.float() / scale


def r1_penalty(real_logits: torch.Tensor, real: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """R1 (Mescheder et al. 2018): E ||grad_x D(x)||^2 on real images; `real` must require grad."""
    return _input_grad(real_logits, real, scale).square().sum(dim=(1, 2, 3)).mean()


def gradient_penalty(
    critic: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor, fake: torch.Tensor, scale: float = 1.0
) -> torch.Tensor:
    """WGAN-GP: E (||grad D(x_hat)|| - 1)^2 on random interpolates of real and fake images."""
    eps = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)
    x_hat = torch.lerp(fake.detach().to(real.dtype), real.detach(), eps).requires_grad_(True)
    grad = _input_grad(critic(x_hat), x_hat, scale)
    return (grad.flatten(1).norm(dim=1) - 1.0).square().mean()
