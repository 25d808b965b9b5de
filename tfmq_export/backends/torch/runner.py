"""Torch runner: the full-precision table UNet or the quantization simulation, on the CPU or a CUDA GPU."""

from __future__ import annotations

import numpy as np
import torch

from tfmq_export.backends.base import Runner
from tfmq_export.device import exact_float32, resolve_device, synchronize
from tfmq_export.temporal import TemporalTableUNet

__all__ = ["TorchRunner"]


class TorchRunner(Runner):
    """Runs a ``TemporalTableUNet`` (FP or with quantized layers) under ``torch.no_grad`` on ``device``
    (cpu, cuda, cuda:N; the module is moved there in place), in FP32 without TF32; arrays in and out
    stay NumPy on the CPU, so a call's time includes the copies to and from the GPU."""

    backend = "torch"

    def __init__(self, table_unet: TemporalTableUNet, precision: str = "fp32", threads: int | None = None,
                 device: str | None = None) -> None:
        super().__init__(precision)
        self.device = resolve_device(device)
        self.table_unet = table_unet.eval().to(self.device)
        self.threads = threads

    def activate(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)
        super().activate()

    def _infer(
        self, sample: np.ndarray, step_index: np.ndarray, encoder_hidden_states: np.ndarray | None
    ) -> np.ndarray:
        with torch.no_grad(), exact_float32(self.device):
            ehs = None if encoder_hidden_states is None else torch.from_numpy(encoder_hidden_states).to(self.device)
            out = self.table_unet(torch.from_numpy(sample).to(self.device), torch.from_numpy(step_index), ehs)
            synchronize(self.device)
        return out.cpu().numpy()

    def model_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.table_unet.parameters())

