"""``tfmq-export train-digits``: reproduce the shipped ``digits`` model (UNet + FID classifier).

Prints the settings first so a log records how the weights were made.
"""

from __future__ import annotations

from pathlib import Path

import click

from tfmq_export.cli.errors import friendly
from tfmq_export.cli.options import output_options


@click.command("train-digits")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              show_default="the bundled assets/digits",
              help="Folder to write unet/, scheduler/ and classifier.* into.")
@click.option("--iters", type=click.IntRange(min=1), default=3000, show_default=True,
              help="UNet training iterations (optimiser steps).")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Samples per training step (minibatch).")
@click.option("--lr", type=click.FloatRange(min=0.0, min_open=True), default=1.5e-3, show_default=True,
              help="Adam learning rate.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed of both networks' training.")
@click.option("--classifier-epochs", type=click.IntRange(min=1), default=40, show_default=True,
              help="Epochs of the FID classifier.")
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True,
              help="torch.set_num_threads; results are reproducible for a fixed thread count.")
@click.option("--skip-unet", is_flag=True, help="Train only the classifier.")
@output_options
@friendly
def train_digits(out_dir: Path, iters: int, batch_size: int, lr: float, seed: int, classifier_epochs: int,
                 threads: int, skip_unet: bool) -> None:
    """Train the digits UNet and its FID classifier.

    \b
    Example:
      tfmq-export train-digits --out /tmp/digits --iters 200
    """
    from tfmq_export.workflows.train_digits import train_digits_model

    train_digits_model(out_dir, iters=iters, batch_size=batch_size, lr=lr, seed=seed,
                       classifier_epochs=classifier_epochs, threads=threads, skip_unet=skip_unet, echo=click.echo)
