"""digits-FID: the Frechet distance formula and the classifier-feature metric on real vs noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tfmq_export.errors import TfmqError
from tfmq_export.metrics.fid import (
    digits_features,
    digits_fid,
    feature_statistics,
    frechet_distance,
    real_floor_fid,
)
from tfmq_export.models.digits import digits_images


def _random_stats(d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(4 * d, d))
    return rng.normal(size=d), np.cov(a, rowvar=False)


def test_identical_statistics_give_zero() -> None:
    mu, sigma = _random_stats(16, 0)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-6)


def test_mean_shift_adds_squared_norm() -> None:
    mu, sigma = _random_stats(16, 1)
    shift = np.full(16, 0.5)
    d1 = frechet_distance(mu, sigma, mu + shift, sigma)
    d2 = frechet_distance(mu, sigma, mu + 2 * shift, sigma)
    assert d1 == pytest.approx(float(shift @ shift), rel=1e-5)
    assert d2 > d1 > 0


def test_known_gaussians() -> None:
    """N(0, I) vs N(0, 4I) in d dims: d * (1 + 4 - 2*2) = d."""
    eye = np.eye(5)
    assert frechet_distance(np.zeros(5), eye, np.zeros(5), 4 * eye) == pytest.approx(5.0, rel=1e-6)


def test_singular_covariances_are_handled() -> None:
    a = np.zeros((8, 8))
    a[0, 0] = 1.0  # rank one
    b = np.zeros((8, 8))
    b[1, 1] = 1.0
    value = frechet_distance(np.zeros(8), a, np.zeros(8), b)
    assert np.isfinite(value) and value == pytest.approx(2.0, abs=1e-2)


def test_shape_mismatch_raises() -> None:
    with pytest.raises(TfmqError, match="shapes"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_real_images_score_far_below_noise() -> None:
    real = digits_images(16)
    gen = torch.Generator().manual_seed(0)
    noise = torch.rand((1000, 1, 16, 16), generator=gen) * 2 - 1
    fid_real = digits_fid(real[::2])
    fid_noise = digits_fid(noise)
    floor = real_floor_fid(0)
    assert fid_real < 0.1 * fid_noise
    assert 0 < floor < 0.1 * fid_noise
    # a half of the data against all of it shares images, so it sits below two disjoint halves
    assert fid_real < floor


def test_degraded_images_score_worse_than_real() -> None:
    real = digits_images(16)[:1000]
    noisy = real + 0.5 * torch.randn(real.shape, generator=torch.Generator().manual_seed(1))
    assert digits_fid(noisy) > digits_fid(real)


def test_out_of_range_images_are_clipped() -> None:
    x = digits_images(16)[:10]
    assert np.allclose(digits_features(x.numpy() * 5), digits_features(torch.clamp(x * 5, -1, 1)))


def test_bad_images_raise() -> None:
    with pytest.raises(TfmqError, match="shape"):
        digits_fid(np.zeros((10, 3, 16, 16), np.float32))
    with pytest.raises(TfmqError, match="NaN"):
        digits_fid(torch.full((4, 1, 16, 16), float("nan")))
    with pytest.raises(TfmqError, match="16x16"):
        digits_features(torch.zeros(4, 1, 8, 8))
    with pytest.raises(TfmqError, match="2"):
        feature_statistics(np.zeros((1, 4)))
