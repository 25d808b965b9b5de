"""``train-digits`` as a workflow: the digits UNet and its FID classifier, with the settings recorded."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["train_digits_model"]


def train_digits_model(out_dir: Path | None = None, *, iters: int = 3000, batch_size: int = 64, lr: float = 1.5e-3,
                       seed: int = 0, classifier_epochs: int = 40, threads: int = 2,
                       skip_unet: bool = False, echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train into ``out_dir`` (default: the bundled assets/digits); returns the settings and each record.

    ``threads`` is ``torch.set_num_threads``: results are reproducible for a fixed thread count.
    ``echo`` gets the settings before training starts (so a log records how the weights were made)
    and each record as it is made.
    """
    import torch

    from tfmq_export.metrics.classifier import train_digits_classifier
    from tfmq_export.models.digits import DIGITS_DIR, train_digits_unet

    say = echo or (lambda _line: None)
    out_dir = DIGITS_DIR if out_dir is None else Path(out_dir)
    torch.set_num_threads(threads)
    start = time.perf_counter()
    result: dict[str, Any] = {"settings": {"out": str(out_dir), "iters": iters, "batch_size": batch_size, "lr": lr,
                                           "seed": seed, "classifier_epochs": classifier_epochs, "threads": threads,
                                           "skip_unet": skip_unet}}
    say("train_digits settings: " + json.dumps(result["settings"]))
    if not skip_unet:
        result["unet"] = train_digits_unet(out_dir, iters=iters, batch_size=batch_size, seed=seed, lr=lr,
                                           num_threads=threads)
        say("unet: " + json.dumps(result["unet"]))
    result["classifier"] = train_digits_classifier(out_dir / "classifier.safetensors", seed=seed,
                                                   epochs=classifier_epochs)
    say("classifier: " + json.dumps(result["classifier"]))
    result["seconds"] = time.perf_counter() - start
    say(f"total training time: {result['seconds']:.0f} s")
    return result
