"""The DreamBooth loss against hand-computed numbers."""

import pytest
import torch

from dbexp.losses import dreambooth_loss, min_snr_weights, snr


def _batch():
    # 2 instance + 2 class samples, 1×1×2 "latents"; squared errors per sample: 1, 4, 9, 16 (mean over 2 values).
    target = torch.zeros(4, 1, 1, 2)
    prediction = torch.tensor([1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0]).reshape(4, 1, 1, 2)
    return prediction, target


def test_instance_and_prior_terms_split_and_weighted():
    prediction, target = _batch()
    loss = dreambooth_loss(prediction, target, torch.zeros(4, dtype=torch.long), num_instance=2, prior_weight=0.5)
    assert loss.instance.item() == pytest.approx((1 + 4) / 2)
    assert loss.prior.item() == pytest.approx((9 + 16) / 2)
    assert loss.total.item() == pytest.approx(2.5 + 0.5 * 12.5)


def test_without_class_samples_the_loss_is_the_instance_loss():
    prediction, target = _batch()
    loss = dreambooth_loss(prediction, target, torch.zeros(4, dtype=torch.long), num_instance=4, prior_weight=1.0)
    assert loss.prior is None
    assert loss.total.item() == pytest.approx((1 + 4 + 9 + 16) / 4)


def test_min_snr_weights_each_term_with_its_own_timesteps():
    prediction, target = _batch()
    # ᾱ chosen so SNR = ᾱ/(1-ᾱ) is 1, 3, 9 at t = 0, 1, 2.
    alphas_cumprod = torch.tensor([0.5, 0.75, 0.9])
    timesteps = torch.tensor([0, 2, 1, 2])  # instance: SNR 1, 9 — class: SNR 3, 9
    gamma = 5.0
    loss = dreambooth_loss(
        prediction,
        target,
        timesteps,
        num_instance=2,
        prior_weight=2.0,
        alphas_cumprod=alphas_cumprod,
        min_snr_gamma=gamma,
        prediction_type="epsilon",
    )
    # ε weights min(SNR, 5)/SNR: 1, 5/9 | 1, 5/9
    assert loss.instance.item() == pytest.approx((1 * 1 + 4 * 5 / 9) / 2)
    assert loss.prior.item() == pytest.approx((9 * 1 + 16 * 5 / 9) / 2)
    assert loss.total.item() == pytest.approx(loss.instance.item() + 2.0 * loss.prior.item())
    # v-prediction weights min(SNR, 5)/(SNR + 1): 1/2, 5/10 | 3/4, 5/10
    v = dreambooth_loss(
        prediction,
        target,
        timesteps,
        num_instance=2,
        prior_weight=2.0,
        alphas_cumprod=alphas_cumprod,
        min_snr_gamma=gamma,
        prediction_type="v_prediction",
    )
    assert v.instance.item() == pytest.approx((1 * 0.5 + 4 * 0.5) / 2)
    assert v.prior.item() == pytest.approx((9 * 0.75 + 16 * 0.5) / 2)


def test_snr_and_weight_edge_cases():
    assert snr(torch.tensor([0.5]), torch.tensor([0])).item() == pytest.approx(1.0)
    weights = min_snr_weights(torch.tensor([0.0, 2.0, 10.0]), 5.0, "epsilon")
    assert weights.tolist() == pytest.approx([1.0, 1.0, 0.5])
