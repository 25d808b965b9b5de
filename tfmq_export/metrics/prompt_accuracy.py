"""Prompt accuracy: how often the bundled digit classifier sees the digit a prompt asked for.

Why beside digits-FID: FID judges whether images look like digits, not whether they are the digit
the prompt named; a quantized text-to-image model can keep FID and lose the prompt (a guidance or
cross-attention error). The classifier is the FID classifier (held-out accuracy in docs/MODEL.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from tfmq_export.errors import TfmqError
from tfmq_export.metrics.classifier import DEFAULT_CLASSIFIER_PATH, load_digits_classifier

__all__ = ["pipeline_to_digits", "predicted_digits", "prompt_accuracy"]


def pipeline_to_digits(images: np.ndarray) -> np.ndarray:
    """Pipeline images [N, H, W, 3] in [0, 1] -> digits images [N, 1, H, W] in [-1, 1] (channel mean)."""
    x = np.asarray(images, dtype=np.float32)
    if x.ndim != 4 or x.shape[-1] != 3 or len(x) == 0:
        raise TfmqError(f"pipeline images must have shape [N, H, W, 3] with N >= 1, got {list(x.shape)}")
    return np.ascontiguousarray(x.mean(axis=-1)[:, None] * 2.0 - 1.0)


@torch.no_grad()
def predicted_digits(images: np.ndarray, classifier_path: Path = DEFAULT_CLASSIFIER_PATH) -> np.ndarray:
    """The classifier's digit [N] for digits images [N, 1, 16, 16] in [-1, 1] (clipped)."""
    x = torch.from_numpy(np.clip(np.asarray(images, dtype=np.float32), -1.0, 1.0))
    if not torch.isfinite(x).all():
        raise TfmqError("images contain NaN or infinite values; the sampler diverged")
    model = load_digits_classifier(Path(classifier_path))
    return torch.cat([model(chunk).argmax(dim=1) for chunk in x.split(500)]).numpy()


def prompt_accuracy(images: np.ndarray, digits: Sequence[int],
                    classifier_path: Path = DEFAULT_CLASSIFIER_PATH) -> float:
    """Fraction of ``images`` (digits format) whose predicted digit equals the prompted one."""
    wanted = np.asarray(digits)
    if len(wanted) != len(images):
        raise TfmqError(f"prompt_accuracy: {len(images)} images but {len(wanted)} prompted digits")
    return float(np.mean(predicted_digits(images, classifier_path) == wanted))
