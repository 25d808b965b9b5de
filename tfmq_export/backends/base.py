"""The runner interface shared by every backend.

A runner evaluates the exported UNet contract: ``noise_pred = f(sample, step_index,
encoder_hidden_states)``, where ``step_index`` is the row of the temporal table (0 = the
sampler's first step). Arrays are numpy float32 / int64 so that the sampling loop and the
benchmarks never touch a backend's own tensor type. Modelled on Polygraphy's runners:
``activate`` loads (sessions, engines), ``infer`` runs, ``deactivate`` frees; runners are
context managers.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod

import numpy as np


class Runner(ABC):
    """One backend that can evaluate the UNet contract."""

    #: backend name as used in bench JSON: torch, onnxruntime, openvino or tensorrt
    backend: str = ""

    def __init__(self, precision: str) -> None:
        self.precision = precision
        self.is_active = False
        self.last_inference_ms: float = 0.0

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
        """Run one UNet call and record its wall time in ``last_inference_ms``."""
        start = time.perf_counter()
        out = self._infer(
            np.ascontiguousarray(sample, dtype=np.float32),
            np.ascontiguousarray(step_index, dtype=np.int64),
            None if encoder_hidden_states is None else np.ascontiguousarray(encoder_hidden_states, dtype=np.float32),
        )
        self.last_inference_ms = (time.perf_counter() - start) * 1000.0
        return out

    @abstractmethod
    def _infer(
        self, sample: np.ndarray, step_index: np.ndarray, encoder_hidden_states: np.ndarray | None
    ) -> np.ndarray:
        """Backend-specific forward; inputs are contiguous float32/int64 arrays."""

    def model_bytes(self) -> int:
        """Size of the model or engine the runner executes, in bytes (0 when unknown)."""
        return 0
