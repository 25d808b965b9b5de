"""TensorRT runner: a plan from ``build_tensorrt_engine`` run through Polygraphy's ``TrtRunner``.

Timing uses CUDA events recorded on the runner's stream around each Polygraphy call, so
``last_inference_ms`` is measured by the GPU clock and covers the input copies, the engine and the
output copy back to the host (what a sampler step waits for), plus the small host-side setup
Polygraphy does between its enqueues; it excludes our own Python before and after the call.
``last_wall_ms`` keeps the host wall time. TensorRT and the CUDA runtime are imported only when
the runner is activated.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Any

import numpy as np

from tfmq_export.backends.base import Runner, feed_for
from tfmq_export.backends.tensorrt.availability import check_tensorrt_available
from tfmq_export.contract import OUTPUT_NOISE_PRED
from tfmq_export.errors import TfmqError

__all__ = ["TensorRTRunner"]


class _CudaEvents:
    """A start/end pair of CUDA events through the CUDA runtime that Polygraphy already loaded."""

    def __init__(self) -> None:
        from polygraphy import cuda

        self._cuda = cuda.wrapper()
        self.start = ctypes.c_void_p()
        self.end = ctypes.c_void_p()
        self._cuda.check(self._cuda.handle.cudaEventCreate(ctypes.byref(self.start)))
        self._cuda.check(self._cuda.handle.cudaEventCreate(ctypes.byref(self.end)))

    def record(self, event: ctypes.c_void_p, stream_ptr: int) -> None:
        self._cuda.check(self._cuda.handle.cudaEventRecord(event, ctypes.c_void_p(stream_ptr)))

    def elapsed_ms(self) -> float:
        self._cuda.check(self._cuda.handle.cudaEventSynchronize(self.end))
        ms = ctypes.c_float(0.0)
        self._cuda.check(self._cuda.handle.cudaEventElapsedTime(ctypes.byref(ms), self.start, self.end))
        return float(ms.value)

    def destroy(self) -> None:
        for event in (self.start, self.end):
            if event.value:
                self._cuda.handle.cudaEventDestroy(event)
                event.value = None


class TensorRTRunner(Runner):
    """Runs a TensorRT plan (.plan/.engine) of the exported UNet on GPU 0."""

    backend = "tensorrt"

    def __init__(self, engine_path: str | os.PathLike[str], precision: str) -> None:
        super().__init__(precision)
        self.engine_path = Path(engine_path)
        if not self.engine_path.is_file():
            raise TfmqError(
                f"{self.engine_path} does not exist; build it with `tfmq-export build-engine --backend tensorrt`"
            )
        self.input_names: list[str] = []
        self._input_dtypes: dict[str, np.dtype] = {}
        self._runner: Any = None
        self._events: _CudaEvents | None = None

    def as_polygraphy_runner(self) -> Any:
        """A Polygraphy ``TrtRunner`` over this plan (inactive; for ``Comparator``)."""
        reason = check_tensorrt_available()
        if reason is not None:
            raise TfmqError(f"cannot run {self.engine_path.name}: {reason}")
        from polygraphy.backend.common import BytesFromPath
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner

        return TrtRunner(EngineFromBytes(BytesFromPath(str(self.engine_path))), name=f"trt:{self.engine_path.name}")

    def activate(self) -> None:
        from polygraphy.exception import PolygraphyException

        runner = self.as_polygraphy_runner()
        try:
            runner.activate()
        except PolygraphyException as exc:
            raise TfmqError(f"TensorRT could not load {self.engine_path}: {str(exc).strip().splitlines()[0]}") from exc
        self._runner = runner
        meta = runner.get_input_metadata(use_numpy_dtypes=False)
        self.input_names = list(meta.keys())
        # the engine may declare step_index as int32 (TensorRT casts int64 where it can)
        self._input_dtypes = {name: np.dtype(meta[name].dtype.numpy()) for name in self.input_names}
        self._events = _CudaEvents()
        super().activate()

    def deactivate(self) -> None:
        if self._events is not None:
            self._events.destroy()
            self._events = None
        if self._runner is not None:
            self._runner.deactivate()
            self._runner = None
        super().deactivate()

    def _device_ms(self) -> float:
        """The CUDA-event time of the call (the GPU clock), or the wall time before activation."""
        return self.last_wall_ms if self._events is None else self._events.elapsed_ms()

    def _infer(
        self, sample: np.ndarray, step_index: np.ndarray, encoder_hidden_states: np.ndarray | None
    ) -> np.ndarray:
        if self._runner is None or self._events is None:
            raise TfmqError("the TensorRT runner is not active; use it as a context manager")
        feed = {
            name: np.ascontiguousarray(value, dtype=self._input_dtypes[name])
            for name, value in feed_for(self.input_names, sample, step_index, encoder_hidden_states).items()
        }
        stream = self._runner.stream.ptr
        self._events.record(self._events.start, stream)
        outputs = self._runner.infer(feed)  # copies to host and synchronizes the stream
        self._events.record(self._events.end, stream)
        out = outputs[OUTPUT_NOISE_PRED] if OUTPUT_NOISE_PRED in outputs else next(iter(outputs.values()))
        # Polygraphy reuses its host buffers: copy; a strongly typed FP16 graph may return half
        return np.array(out, dtype=np.float32, copy=True)

    def run_named(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Any engine by input name (a pipeline's text encoder or VAE decoder): every input the
        engine declares, cast to its dtype (ids may be int32); float outputs as float32 copies."""
        if self._runner is None:
            raise TfmqError("the TensorRT runner is not active; use it as a context manager")
        inputs = {}
        for name, dtype in self._input_dtypes.items():
            if name not in feed:
                raise TfmqError(f"{self.engine_path} takes input {name!r}, which was not given")
            inputs[name] = np.ascontiguousarray(feed[name], dtype=dtype)
        outputs = self._runner.infer(inputs)  # copies to host and synchronizes the stream
        # Polygraphy reuses its host buffers: copy; an FP16 engine may return half
        return {name: np.array(value, dtype=np.float32 if np.asarray(value).dtype.kind == "f" else None, copy=True)
                for name, value in outputs.items()}

    def model_bytes(self) -> int:
        return self.engine_path.stat().st_size
