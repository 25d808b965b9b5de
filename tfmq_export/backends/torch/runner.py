"""Torch runner: the full-precision table UNet or the quantization simulation, on the CPU."""

from __future__ import annotations

import numpy as np
import torch

from tfmq_export.backends.base import Runner
from tfmq_export.temporal import TemporalTableUNet


class TorchRunner(Runner):
    """Runs a ``TemporalTableUNet`` (FP or with quantized layers) under ``torch.no_grad``."""

    backend = "torch"

    def __init__(self, table_unet: TemporalTableUNet, precision: str = "fp32", threads: int | None = None) -> None:
        super().__init__(precision)
        self.table_unet = table_unet.eval()
        self.threads = threads

    def activate(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)
        super().activate()

    def _infer(
        self, sample: np.ndarray, step_index: np.ndarray, encoder_hidden_states: np.ndarray | None
    ) -> np.ndarray:
        with torch.no_grad():
            ehs = None if encoder_hidden_states is None else torch.from_numpy(encoder_hidden_states)
            out = self.table_unet(torch.from_numpy(sample), torch.from_numpy(step_index), ehs)
        return out.numpy()

    def model_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.table_unet.parameters())


def runner_denoiser(runner: Runner):
    """Adapt a runner to the sampling loop's torch-tensor denoiser signature."""

    def denoise(x: torch.Tensor, step_index: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        out = runner.infer(x.numpy(), step_index.numpy(), None if cond is None else cond.numpy())
        return torch.from_numpy(out)

    return denoise
