"""Prompt accuracy: the bundled classifier judges real digits by their labels, and refuses bad input."""

from __future__ import annotations

import numpy as np
import pytest

from tfmq_export.errors import TfmqError
from tfmq_export.metrics.classifier import digits_labels
from tfmq_export.metrics.prompt_accuracy import pipeline_to_digits, predicted_digits, prompt_accuracy
from tfmq_export.models.digits import digits_images


def _as_pipeline_images(digits: np.ndarray) -> np.ndarray:
    """Digits images [N, 1, H, W] in [-1, 1] -> what a pipeline returns: [N, H, W, 3] in [0, 1]."""
    return np.repeat(np.transpose((digits + 1.0) / 2.0, (0, 2, 3, 1)), 3, axis=-1)


def test_real_digits_score_high_with_their_labels_and_low_with_wrong_ones() -> None:
    images = pipeline_to_digits(_as_pipeline_images(digits_images(16).numpy()[:400]))
    labels = digits_labels()[:400]
    assert prompt_accuracy(images, labels) > 0.95
    assert prompt_accuracy(images, (labels + 1) % 10) < 0.05


def test_pipeline_images_round_trip_to_the_digits_format() -> None:
    digits = digits_images(16).numpy()[:8]
    back = pipeline_to_digits(_as_pipeline_images(digits))
    assert back.shape == (8, 1, 16, 16)
    np.testing.assert_allclose(back, digits, atol=1e-6)
    np.testing.assert_array_equal(predicted_digits(back), predicted_digits(digits))


@pytest.mark.parametrize("shape", [(4, 16, 16), (4, 16, 16, 1), (0, 16, 16, 3)])
def test_images_of_the_wrong_shape_are_refused(shape) -> None:
    with pytest.raises(TfmqError, match="pipeline images must have shape"):
        pipeline_to_digits(np.zeros(shape, dtype=np.float32))


def test_labels_must_match_the_images_and_images_must_be_finite() -> None:
    images = np.zeros((3, 1, 16, 16), dtype=np.float32)
    with pytest.raises(TfmqError, match="3 images but 2"):
        prompt_accuracy(images, [1, 2])
    images[0, 0, 0, 0] = np.nan
    with pytest.raises(TfmqError, match="NaN"):
        predicted_digits(images)
