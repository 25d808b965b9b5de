"""Reproduce the shipped ``digits`` model: ``python -m tfmq_export.models.train_digits``.

Trains the DDPM UNet and the FID classifier into one folder (default: the package's
``assets/digits``), printing the settings first so a log records how the weights were made.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
import torch

from tfmq_export.errors import TfmqError
from tfmq_export.metrics.classifier import train_digits_classifier
from tfmq_export.models.digits import DIGITS_DIR, train_digits_unet


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=DIGITS_DIR,
              show_default=True, help="Folder to write unet/, scheduler/ and classifier.* into.")
@click.option("--iters", type=click.IntRange(min=1), default=3000, show_default=True,
              help="UNet training iterations.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0.0, min_open=True), default=1.5e-3, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for both networks.")
@click.option("--classifier-epochs", type=click.IntRange(min=1), default=40, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True,
              help="torch.set_num_threads; results are reproducible for a fixed thread count.")
@click.option("--skip-unet", is_flag=True, help="Train only the classifier.")
def main(out_dir: Path, iters: int, batch_size: int, lr: float, seed: int, classifier_epochs: int,
         threads: int, skip_unet: bool) -> None:
    """Train the digits UNet and its FID classifier.

    \b
    Example:
      python -m tfmq_export.models.train_digits --out /tmp/digits --iters 200
    """
    torch.set_num_threads(threads)
    settings = {"out": str(out_dir), "iters": iters, "batch_size": batch_size, "lr": lr, "seed": seed,
                "classifier_epochs": classifier_epochs, "threads": threads, "skip_unet": skip_unet}
    click.echo("train_digits settings: " + json.dumps(settings))
    start = time.perf_counter()
    try:
        if not skip_unet:
            record = train_digits_unet(out_dir, iters=iters, batch_size=batch_size, seed=seed, lr=lr,
                                       num_threads=threads)
            click.echo("unet: " + json.dumps(record))
        record = train_digits_classifier(out_dir / "classifier.safetensors", seed=seed,
                                         epochs=classifier_epochs)
        click.echo("classifier: " + json.dumps(record))
    except TfmqError as err:
        raise click.ClickException(str(err)) from err
    click.echo(f"total training time: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
