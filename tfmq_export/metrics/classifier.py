"""A small CNN digit classifier: the feature extractor behind digits-FID.

Why our own network: FID needs features from a network that knows the image domain. Inception
features of 16x16 grey digits say little, and downloading weights is not allowed, so we train a
tiny CNN on the real digits (seconds on a CPU) and use its penultimate layer, as FID uses
Inception's pool layer. Augmentation (small affine jitter, pixel noise) keeps the features
stable on generated images, which are never quite as clean as the training data.

The checkpoint is ``classifier.safetensors`` plus ``classifier.json`` (architecture, training
settings, the held-out split and its accuracy), loaded without pickle.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from tfmq_export.errors import TfmqError
from tfmq_export.models.digits import DIGITS_DIR, digits_images

__all__ = [
    "ClassifierConfig",
    "DigitsClassifier",
    "digits_labels",
    "digits_split",
    "evaluate_classifier",
    "load_digits_classifier",
    "train_digits_classifier",
]

DEFAULT_CLASSIFIER_PATH = DIGITS_DIR / "classifier.safetensors"


@dataclass(frozen=True)
class ClassifierConfig:
    """The architecture; written into the JSON beside the weights so the loader can rebuild it."""

    size: int = 16
    width: int = 32
    feature_dim: int = 128
    num_classes: int = 10


class DigitsClassifier(nn.Module):
    """Two conv stages (size -> size/2 -> size/4), a hidden Linear layer (the features), a head."""

    def __init__(self, config: ClassifierConfig | None = None) -> None:
        super().__init__()
        self.config = config or ClassifierConfig()
        c, w = self.config, self.config.width
        if c.size % 4:
            raise TfmqError(f"DigitsClassifier: size {c.size} must be divisible by 4.")
        self.conv = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.hidden = nn.Linear(2 * w * (c.size // 4) ** 2, c.feature_dim)
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(c.feature_dim, c.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations [N, feature_dim] (after ReLU): the FID feature space."""
        return F.relu(self.hidden(self.conv(x).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits [N, num_classes]."""
        return self.head(self.dropout(self.features(x)))


def digits_labels() -> np.ndarray:
    """The 1,797 labels (0..9) in the order of ``digits_images``."""
    from sklearn.datasets import load_digits

    return load_digits().target.astype(np.int64)


def digits_split(seed: int = 0, test_fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (train, held-out) index arrays; the same ``seed`` always gives the same split."""
    if not 0.0 < test_fraction < 1.0:
        raise TfmqError(f"digits_split: test_fraction {test_fraction} must be in (0, 1).")
    from sklearn.model_selection import train_test_split

    labels = digits_labels()
    train, test = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, random_state=seed, stratify=labels
    )
    return np.sort(train), np.sort(test)


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random rotation (+-12 deg), scale (0.9..1.1), shift (+-1.5 px) and pixel noise (sigma <= 0.15).

    Resampling works on ``x + 1`` with zero padding so pixels pulled in from outside are
    background (-1), as in the real images.
    """
    n, size = len(x), x.shape[-1]
    angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(12)
    scale = 0.9 + 0.2 * torch.rand(n, generator=gen)
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * (1.5 * 2 / size)  # grid units are 2/size
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x + 1.0, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1.0
    sigma = 0.15 * torch.rand(n, 1, 1, 1, generator=gen)
    return (out + sigma * torch.randn(out.shape, generator=gen)).clamp(-1.0, 1.0)


@torch.no_grad()
def evaluate_classifier(model: DigitsClassifier, images: torch.Tensor, labels: np.ndarray) -> float:
    """Top-1 accuracy of ``model`` on ``images`` (in [-1, 1]) against ``labels``."""
    model.eval()
    pred = torch.cat([model(b).argmax(1) for b in images.split(500)])
    return float((pred.numpy() == labels).mean())


def train_digits_classifier(
    out_path: Path = DEFAULT_CLASSIFIER_PATH,
    seed: int = 0,
    epochs: int = 40,
    batch_size: int = 64,
    lr: float = 1e-3,
    split_seed: int = 0,
    test_fraction: float = 0.2,
    config: ClassifierConfig | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train the classifier on the train split, save weights + JSON, return the JSON record.

    Refuses to save a model under 95% held-out accuracy: digits-FID from a weak classifier
    would not mean much.
    """
    out_path = Path(out_path)
    if out_path.suffix != ".safetensors":
        raise TfmqError(f"train_digits_classifier: out_path {out_path} must end in .safetensors.")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    config = config or ClassifierConfig()
    images, labels = digits_images(config.size), digits_labels()
    train_idx, test_idx = digits_split(split_seed, test_fraction)
    x_train, y_train = images[train_idx], torch.from_numpy(labels[train_idx])

    model = DigitsClassifier(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = math.ceil(len(x_train) / batch_size)
    lr_sched = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    start = time.perf_counter()
    for _ in tqdm(range(epochs), desc="train digits classifier", disable=not progress):
        model.train()
        order = torch.randperm(len(x_train), generator=gen)
        for b in order.split(batch_size):
            loss = F.cross_entropy(model(_augment(x_train[b], gen)), y_train[b])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            lr_sched.step()
    seconds = time.perf_counter() - start
    model.eval()
    accuracy = evaluate_classifier(model, images[test_idx], labels[test_idx])
    if accuracy < 0.95:
        raise TfmqError(f"the digits classifier reached only {accuracy:.3f} held-out accuracy (< 0.95); "
                        "train it longer (--classifier-epochs).")

    from safetensors.torch import save_file

    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out_path))
    record = {
        "config": asdict(config),
        "heldout_accuracy": round(accuracy, 4),
        "num_heldout": len(test_idx),
        "split_seed": split_seed,
        "test_fraction": test_fraction,
        "seed": seed,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "train_seconds": round(seconds, 1),
    }
    out_path.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def load_digits_classifier(path: Path = DEFAULT_CLASSIFIER_PATH) -> DigitsClassifier:
    """Load a classifier saved by ``train_digits_classifier`` (safetensors, no pickle), in eval mode."""
    path = Path(path)
    meta_path = path.with_suffix(".json")
    if not path.is_file() or not meta_path.is_file():
        raise TfmqError(f"digits classifier {path} (or its {meta_path.name}) is missing; train it with "
                        "`tfmq-export train-digits --out DIR`.")
    try:
        from safetensors.torch import load_file

        meta = json.loads(meta_path.read_text())
        model = DigitsClassifier(ClassifierConfig(**meta["config"]))
        model.load_state_dict(load_file(str(path)))
    except TfmqError:
        raise
    except Exception as err:  # damaged JSON, damaged tensors, or a mismatched architecture
        raise TfmqError(f"could not read the digits classifier {path}: {err}") from err
    return model.eval()
