"""onnxruntime runner for the exported UNet (a source .onnx or an optimised one from the builder)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tfmq_export.backends.base import Runner, feed_for
from tfmq_export.backends.manifest import onnx_model_bytes
from tfmq_export.contract import OUTPUT_NOISE_PRED
from tfmq_export.errors import TfmqError

__all__ = ["OnnxRuntimeRunner"]

_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


class OnnxRuntimeRunner(Runner):
    """Runs an ONNX UNet with onnxruntime (CPU by default, all graph optimisations on).

    ``threads`` sets ``intra_op_num_threads`` (None: onnxruntime's default, one per core).
    ``providers`` is the execution-provider list, e.g. ``["CUDAExecutionProvider",
    "CPUExecutionProvider"]``. ``optimization`` is onnxruntime's graph optimisation level:
    ``"all"`` (deployment: Q/DQ fused into int8 kernels), or ``"disable"`` to evaluate the Q/DQ
    graph literally in float (the reference the fused kernels are compared against).
    """

    backend = "onnxruntime"

    def __init__(
        self,
        onnx_path: str | os.PathLike[str],
        precision: str,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        *,
        optimization: str = "all",
    ) -> None:
        super().__init__(precision)
        if optimization not in _LEVELS:
            raise TfmqError(f"optimization {optimization!r} is not one of {', '.join(_LEVELS)}")
        self.optimization = optimization
        self.onnx_path = Path(onnx_path)
        if not self.onnx_path.is_file():
            raise TfmqError(f"{self.onnx_path} does not exist; pass an exported .onnx file")
        if threads is not None and threads < 1:
            raise TfmqError(f"threads must be a positive number, not {threads}")
        self.threads = threads
        self.providers = list(providers) if providers else ["CPUExecutionProvider"]
        self.session: Any = None
        self.input_names: list[str] = []
        self.output_name = OUTPUT_NOISE_PRED

    def make_session(self) -> Any:
        """A new ``onnxruntime.InferenceSession`` with this runner's settings."""
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _LEVELS[self.optimization])
        if self.threads:
            so.intra_op_num_threads = self.threads
        try:
            return ort.InferenceSession(str(self.onnx_path), so, providers=self.providers)
        except Exception as exc:  # onnxruntime's own exception types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TfmqError(f"onnxruntime could not load {self.onnx_path}: {first}") from exc

    def activate(self) -> None:
        self.session = self.make_session()
        self.input_names = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        self.output_name = OUTPUT_NOISE_PRED if OUTPUT_NOISE_PRED in outputs else outputs[0]
        super().activate()

    def deactivate(self) -> None:
        self.session = None
        super().deactivate()

    def _infer(
        self, sample: np.ndarray, step_index: np.ndarray, encoder_hidden_states: np.ndarray | None
    ) -> np.ndarray:
        if self.session is None:
            raise TfmqError("the onnxruntime runner is not active; use it as a context manager")
        feed = feed_for(self.input_names, sample, step_index, encoder_hidden_states)
        (out,) = self.session.run([self.output_name], feed)
        return np.asarray(out, dtype=np.float32)

    def model_bytes(self) -> int:
        return onnx_model_bytes(self.onnx_path)

    def as_polygraphy_runner(self) -> Any:
        """The same model as a Polygraphy ``OnnxrtRunner`` (for ``Comparator``-based checks)."""
        from polygraphy.backend.onnxrt import OnnxrtRunner

        return OnnxrtRunner(self.make_session, name=f"onnxrt:{self.onnx_path.name}")
