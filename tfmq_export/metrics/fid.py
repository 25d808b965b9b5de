"""digits-FID: Frechet distance in the penultimate feature space of our digit classifier.

Why: the project compares quantization methods by how far their samples drift from the data,
as the paper does with Inception FID. On 16x16 digits the same formula (Heusel et al. 2017,
"GANs trained by a two time-scale update rule", eq. (6)) is computed on the features of
``tfmq_export.metrics.classifier``:

    d^2 = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))

Notation: mu = mean feature vector, S = feature covariance (unbiased, np.cov). The reference set
is all 1,797 real digits; ``real_floor_fid`` gives the value two halves of the real data reach,
the floor below which no sampler can be told apart from the data with this many images.
"""

from __future__ import annotations

import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import scipy.linalg
import torch

from tfmq_export.errors import TfmqError
from tfmq_export.metrics.classifier import DEFAULT_CLASSIFIER_PATH, DigitsClassifier, load_digits_classifier
from tfmq_export.models.digits import digits_images

__all__ = [
    "digits_features",
    "digits_fid",
    "feature_statistics",
    "frechet_distance",
    "real_floor_fid",
]


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """Frechet distance between two Gaussians N(mu1, sigma1) and N(mu2, sigma2).

    ``sqrtm`` of a product of (nearly) singular covariances can fail or return a complex matrix
    with tiny imaginary parts from rounding; as is standard (pytorch-fid, TTUR), we then add
    ``eps`` to both diagonals and drop imaginary parts below 1e-3, and refuse larger ones.
    """
    mu1, mu2 = (np.atleast_1d(np.asarray(m, np.float64)) for m in (mu1, mu2))
    sigma1, sigma2 = (np.atleast_2d(np.asarray(s, np.float64)) for s in (sigma1, sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise TfmqError(f"frechet_distance: shapes do not match: mu {mu1.shape} / {mu2.shape}, "
                        f"sigma {sigma1.shape} / {sigma2.shape}.")
    diff = mu1 - mu2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on singular products; handled below
        covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(mu1)) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            worst = np.max(np.abs(covmean.imag))
            raise TfmqError(f"frechet_distance: sqrtm has an imaginary component {worst:.3g}; "
                            "the covariances are not valid (NaN features or too few samples?).")
        covmean = covmean.real
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean)
    return float(max(value, 0.0))  # rounding can give -1e-12 for identical statistics


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of a [N, D] feature matrix."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise TfmqError(f"feature_statistics: need a [N >= 2, D] matrix, got shape {features.shape}.")
    return features.mean(0), np.cov(features, rowvar=False)


@lru_cache(maxsize=4)
def _classifier(path: str) -> DigitsClassifier:
    """One loaded classifier per checkpoint path for the whole process."""
    return load_digits_classifier(Path(path))


def _as_images(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Check shape [N, 1, H, W], convert to float32 torch and clip to [-1, 1]."""
    x = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.asarray(images))
    x = x.detach().to("cpu", torch.float32)
    if x.ndim != 4 or x.shape[1] != 1 or len(x) == 0:
        raise TfmqError(f"digits images must have shape [N, 1, 16, 16] with N >= 1, got {tuple(x.shape)}.")
    if not torch.isfinite(x).all():
        raise TfmqError("digits images contain NaN or infinite values; the sampler diverged.")
    return x.clamp(-1.0, 1.0)


@torch.no_grad()
def digits_features(
    images: np.ndarray | torch.Tensor,
    batch_size: int = 500,
    classifier_path: Path = DEFAULT_CLASSIFIER_PATH,
) -> np.ndarray:
    """Penultimate classifier features [N, D] (float64) of images [N, 1, 16, 16] in [-1, 1]."""
    x = _as_images(images)
    model = _classifier(str(classifier_path))
    size = model.config.size
    if x.shape[-2:] != (size, size):
        raise TfmqError(f"digits images must be {size}x{size}, got {tuple(x.shape[-2:])}.")
    return torch.cat([model.features(b) for b in x.split(batch_size)]).double().numpy()


@lru_cache(maxsize=4)
def _real_statistics(classifier_path: str) -> tuple[np.ndarray, np.ndarray]:
    """Statistics of all 1,797 real digits, computed once per process."""
    return feature_statistics(digits_features(digits_images(16), classifier_path=Path(classifier_path)))


def digits_fid(images: np.ndarray | torch.Tensor, classifier_path: Path = DEFAULT_CLASSIFIER_PATH) -> float:
    """digits-FID of ``images`` [N, 1, 16, 16] (in [-1, 1]; clipped) against all real digits."""
    x = _as_images(images)
    if len(x) < 2:
        raise TfmqError(f"digits_fid needs at least 2 images, got {len(x)}.")
    mu, sigma = feature_statistics(digits_features(x, classifier_path=classifier_path))
    mu_r, sigma_r = _real_statistics(str(classifier_path))
    return frechet_distance(mu, sigma, mu_r, sigma_r)


def real_floor_fid(seed: int = 0, classifier_path: Path = DEFAULT_CLASSIFIER_PATH) -> float:
    """FID between two random halves (898 / 899 images) of the real digits: the metric's floor."""
    feats = digits_features(digits_images(16), classifier_path=classifier_path)
    perm = np.random.default_rng(seed).permutation(len(feats))
    half = len(feats) // 2
    a, b = feats[perm[:half]], feats[perm[half:]]
    return frechet_distance(*feature_statistics(a), *feature_statistics(b))
