"""The runner interface shared by every backend.

A runner evaluates the exported UNet contract: ``noise_pred = f(sample, step_index,
encoder_hidden_states)``, where ``step_index`` is the row of the temporal table (0 = the
sampler's first step). Arrays are numpy float32 / int64 so that the sampling loop and the
benchmarks never touch a backend's own tensor type. Modelled on Polygraphy's runners:
``activate`` loads (sessions, engines), ``infer`` runs, ``deactivate`` frees; runners are
context managers.

``open_runner`` is the one registry: every workflow (sample, bench, evaluate, demo) gets its
runner from it, and each backend's module is imported only when that backend is asked for
(OpenVINO and TensorRT are optional). ``runner_denoiser`` adapts any runner to the sampling
loop's denoiser signature, so ``sampling.py`` never sees a runner.
"""

from __future__ import annotations

import importlib
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tfmq_export.contract import BACKENDS, INPUT_CONDITIONS, INPUT_SAMPLE, INPUT_STEP_INDEX
from tfmq_export.errors import TfmqError

if TYPE_CHECKING:
    import torch

__all__ = ["RUNNERS", "Runner", "RunnerEntry", "feed_for", "open_runner", "runner_denoiser"]


class Runner(ABC):
    """One backend that can evaluate the UNet contract."""

    #: backend name as used in bench JSON: torch, onnxruntime, openvino or tensorrt
    backend: str = ""

    def __init__(self, precision: str) -> None:
        self.precision = precision
        self.is_active = False
        #: the time of the last call: wall time, or the device's own clock where it has one
        self.last_inference_ms: float = 0.0
        #: the host wall time of the last call (input conversion, the call, the copy back)
        self.last_wall_ms: float = 0.0

    def activate(self) -> None:
        """Load what the runner needs (session, compiled model, engine)."""
        self.is_active = True

    def deactivate(self) -> None:
        """Free what ``activate`` loaded."""
        self.is_active = False

    def __enter__(self) -> Runner:
        self.activate()
        return self

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    def infer(
        self,
        sample: np.ndarray,
        step_index: np.ndarray,
        encoder_hidden_states: np.ndarray | None = None,
    ) -> np.ndarray:
        """Run one UNet call and record its time in ``last_inference_ms`` (see ``_device_ms``)."""
        start = time.perf_counter()
        out = self._infer(
            np.ascontiguousarray(sample, dtype=np.float32),
            np.ascontiguousarray(step_index, dtype=np.int64),
            None if encoder_hidden_states is None else np.ascontiguousarray(encoder_hidden_states, dtype=np.float32),
        )
        self.last_wall_ms = (time.perf_counter() - start) * 1000.0
        self.last_inference_ms = self._device_ms()
        return out

    def _device_ms(self) -> float:
        """The time of the call just made: the wall time, unless the device measures its own."""
        return self.last_wall_ms

    @abstractmethod
    def _infer(
        self, sample: np.ndarray, step_index: np.ndarray, encoder_hidden_states: np.ndarray | None
    ) -> np.ndarray:
        """Backend-specific forward; inputs are contiguous float32/int64 arrays."""

    def model_bytes(self) -> int:
        """Size of the model or engine the runner executes, in bytes (0 when unknown)."""
        return 0


def feed_for(
    names: Sequence[str], sample: np.ndarray, step_index: np.ndarray, encoder_hidden_states: np.ndarray | None
) -> dict[str, np.ndarray]:
    """The contract's arrays restricted to the inputs a model declares.

    An unconditional UNet has no ``encoder_hidden_states`` input: it is skipped even when given.
    A conditional one without it is a caller error.
    """
    available = {INPUT_SAMPLE: sample, INPUT_STEP_INDEX: step_index, INPUT_CONDITIONS: encoder_hidden_states}
    feed: dict[str, np.ndarray] = {}
    for name in names:
        if name not in available:
            raise TfmqError(f"the model declares input {name!r}, which is not part of the UNet contract")
        value = available[name]
        if value is None:
            raise TfmqError(f"the model needs {name!r} (a conditional UNet); pass {INPUT_CONDITIONS}")
        feed[name] = value
    return feed


@dataclass(frozen=True)
class RunnerEntry:
    """Where a backend's runner lives and what it runs (imported lazily by ``open_runner``)."""

    module: str
    cls: str
    #: model files the runner reads; empty: it runs an in-memory torch module
    suffixes: tuple[str, ...]
    takes_threads: bool = True


#: the one registry of runners, keyed by the contract's backend names
RUNNERS: dict[str, RunnerEntry] = {
    "torch": RunnerEntry("tfmq_export.backends.torch.runner", "TorchRunner", ()),
    "onnxruntime": RunnerEntry("tfmq_export.backends.onnxruntime.runner", "OnnxRuntimeRunner", (".onnx",)),
    "openvino": RunnerEntry("tfmq_export.backends.openvino.runner", "OpenVINORunner", (".onnx", ".xml")),
    "tensorrt": RunnerEntry("tfmq_export.backends.tensorrt.runner", "TensorRTRunner", (".plan", ".engine"),
                            takes_threads=False),
}


def open_runner(backend: str, source: Any, precision: str, *, threads: int | None = None,
                device: str | None = None) -> Runner:
    """The (inactive) runner of ``backend`` for ``source`` at the ``precision`` label.

    ``source`` is a model file for onnxruntime (.onnx), openvino (.onnx/.xml) and tensorrt
    (.plan/.engine), and a ``TemporalTableUNet`` for torch. ``threads`` is the intra-op thread
    count (TensorRT runs on the GPU and has none). ``device`` (torch only): cpu, cuda or cuda:N.
    """
    entry = RUNNERS.get(backend)
    if entry is None:
        raise TfmqError(f"unknown backend {backend!r} (choose {', '.join(BACKENDS)})")
    if entry.suffixes and Path(source).suffix not in entry.suffixes:
        raise TfmqError(f"{backend} runs {' or '.join(entry.suffixes)} files, not {source}")
    runner_cls = getattr(importlib.import_module(entry.module), entry.cls)
    if backend == "torch":
        return runner_cls(source, precision, threads=threads, device=device)
    if device not in (None, "cpu"):
        raise TfmqError(f"--device {device} applies to the torch backend; {backend} picks its own device")
    if entry.takes_threads:
        return runner_cls(source, precision, threads=threads)
    return runner_cls(source, precision)


def runner_denoiser(runner: Runner):
    """Adapt an active runner to the sampling loop's torch-tensor denoiser signature."""

    import torch

    def denoise(x: torch.Tensor, step_index: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        out = runner.infer(x.numpy(), step_index.numpy(), None if cond is None else cond.numpy())
        return torch.from_numpy(out)

    return denoise
