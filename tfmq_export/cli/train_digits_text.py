"""``tfmq-export train-digits-text``: reproduce the shipped ``digits-text`` pipeline (VAE, text encoder, UNet).

Prints the settings first so a log records how the weights were made.
"""

from __future__ import annotations

from pathlib import Path

import click

from tfmq_export.cli.errors import friendly
from tfmq_export.cli.options import output_options


@click.command("train-digits-text")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Pipeline folder to write (replaced atomically when complete); the shipped one is "
                   "tfmq_export/assets/digits-text.")
@click.option("--vae-iters", type=click.IntRange(min=1), default=1000, show_default=True,
              help="VAE training iterations (optimiser steps).")
@click.option("--unet-iters", type=click.IntRange(min=1), default=5000, show_default=True,
              help="Training iterations (optimiser steps) of the UNet and text encoder, trained together.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Samples per training step (minibatch).")
@click.option("--lr", type=click.FloatRange(min=0.0, min_open=True), default=1e-3, show_default=True,
              help="Adam learning rate.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed of the training.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="torch.set_num_threads; results are reproducible for a fixed thread count.")
@output_options
@friendly
def train_digits_text(out_dir: Path, vae_iters: int, unet_iters: int, batch_size: int, lr: float, seed: int,
                      threads: int) -> None:
    """Train the digits-text StableDiffusionPipeline on scikit-learn's digits, offline.

    \b
    Example:
      tfmq-export train-digits-text --out /tmp/digits-text --vae-iters 50 --unet-iters 100
    """
    from tfmq_export.models.digits_text_training import train_digits_text as train

    train(out_dir, vae_iters=vae_iters, unet_iters=unet_iters, batch_size=batch_size, lr=lr, seed=seed,
          threads=threads, echo=click.echo)
