"""The DreamBooth objective: instance loss + prior weight × class-prior loss, each optionally min-SNR-γ weighted.

The batch holds instance samples first and class samples after them. Each term is weighted
with the SNR of *its own* samples' timesteps, then averaged within its half — the diffusers
example weights a chunked prediction with the whole batch's SNR, which mixes the halves up.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class DreamBoothLoss:
    total: torch.Tensor
    instance: torch.Tensor
    prior: torch.Tensor | None  # None when the batch holds no class samples


def snr(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio ᾱ_t / (1 − ᾱ_t) of each timestep."""
    alpha_bar = alphas_cumprod.to(timesteps.device)[timesteps].float()
    return alpha_bar / (1.0 - alpha_bar)


def min_snr_weights(snr_values: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-γ loss weights (Hang et al., 2023): min(SNR, γ)/SNR for ε, min(SNR, γ)/(SNR + 1) for v."""
    clipped = torch.clamp(snr_values, max=gamma)
    if prediction_type == "v_prediction":
        return clipped / (snr_values + 1.0)
    # SNR = 0 (a zero-terminal-SNR schedule's last step) would divide by zero; its weight limit is 1.
    return torch.where(snr_values > 0, clipped / snr_values.clamp(min=1e-12), torch.ones_like(snr_values))


def dreambooth_loss(
    prediction: torch.Tensor,
    target: torch.Tensor,
    timesteps: torch.Tensor,
    num_instance: int,
    prior_weight: float,
    alphas_cumprod: torch.Tensor | None = None,
    min_snr_gamma: float | None = None,
    prediction_type: str = "epsilon",
) -> DreamBoothLoss:
    """Loss of one batch whose first ``num_instance`` samples are instance samples."""
    per_sample = F.mse_loss(prediction.float(), target.float(), reduction="none")
    per_sample = per_sample.mean(dim=tuple(range(1, per_sample.ndim)))
    if min_snr_gamma is not None:
        if alphas_cumprod is None:
            raise ValueError("min-SNR weighting needs the scheduler's alphas_cumprod")
        per_sample = per_sample * min_snr_weights(snr(alphas_cumprod, timesteps), min_snr_gamma, prediction_type)
    instance = per_sample[:num_instance].mean()
    if num_instance == per_sample.shape[0]:
        return DreamBoothLoss(total=instance, instance=instance, prior=None)
    prior = per_sample[num_instance:].mean()
    return DreamBoothLoss(total=instance + prior_weight * prior, instance=instance, prior=prior)
