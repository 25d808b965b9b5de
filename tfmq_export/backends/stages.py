"""Named-input, named-output calls of any exported stage (text encoder, UNet, VAE decoder).

A pipeline stage is not the UNet contract, so ``Runner.infer`` does not fit; ``StageRunner``
opens the registry's runner for the file (``open_runner``: the same sessions and compile options
as every other workflow) and runs it with a dict of named arrays, returning every output by name.

``float_stage_precision`` is the one place that says what precision the float stages (text
encoder(s), VAE decoder) run at per backend: ``--float-stages default`` is what the backend gives
without asking (OpenVINO's own inference precision, bf16 on CPUs with AMX; TensorRT FP16;
onnxruntime FP32), ``fp32`` forces FP32 (the parity contract with diffusers needs it).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from tfmq_export.backends.base import Runner, open_runner
from tfmq_export.contract import FLOAT_STAGES, OV_DEFAULT
from tfmq_export.errors import TfmqError

__all__ = ["STAGE_BACKENDS", "StageRunner", "float_stage_precision"]

#: backends that run an exported stage file (.onnx, or the engine built from it) with named inputs and outputs
STAGE_BACKENDS = ("onnxruntime", "openvino", "tensorrt")
#: backend -> the precision label of its float stages under ``--float-stages default``
_DEFAULT_FLOAT = {"openvino": OV_DEFAULT, "tensorrt": "fp16"}


def float_stage_precision(backend: str, float_stages: str = "default") -> str:
    """The precision label the text encoder(s) and VAE decoder run at on ``backend``."""
    if float_stages not in FLOAT_STAGES:
        raise TfmqError(f"--float-stages {float_stages!r} is not one of {', '.join(FLOAT_STAGES)}")
    return _DEFAULT_FLOAT.get(backend, "fp32") if float_stages == "default" else "fp32"


class StageRunner:
    """``run({input name: array}) -> {output name: array}`` for one stage file; a context manager.

    The file is the exported ``.onnx`` or an engine built from it (onnxruntime's optimised
    ``.onnx``, OpenVINO's ``.xml``, TensorRT's ``.plan``). ``precision`` ``ov-default`` compiles an OpenVINO stage with
    OpenVINO's own inference precision (bf16 on CPUs with AMX) instead of forcing f32; so does
    ``ov_default=True`` for a quantized stage (its int8 layers stay int8, its float parts follow).
    """

    def __init__(self, backend: str, path: Path, precision: str = "fp32", threads: int | None = None, *,
                 ov_default: bool = False) -> None:
        if backend not in STAGE_BACKENDS:
            raise TfmqError(f"--backend {backend} cannot run pipeline stages; choose {' or '.join(STAGE_BACKENDS)}")
        self.backend = backend
        self.path = Path(path)
        self.runner: Runner = open_runner(backend, self.path, precision, threads=threads)
        if precision == OV_DEFAULT or ov_default:
            if backend != "openvino":
                raise TfmqError(f"precision {OV_DEFAULT} is OpenVINO's default; {backend} has none")
            self.runner.inference_precision = None  # type: ignore[attr-defined]
        self.last_ms = 0.0

    def __enter__(self) -> StageRunner:
        self.runner.activate()
        return self

    def __exit__(self, *exc: object) -> None:
        self.runner.deactivate()

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        run = {"onnxruntime": self._run_onnxruntime, "openvino": self._run_openvino,
               "tensorrt": self._run_tensorrt}[self.backend]
        out = run(feed)
        self.last_ms = (time.perf_counter() - start) * 1000.0
        return out

    def model_bytes(self) -> int:
        """Bytes of the stage's model on disk (an IR's .xml and .bin, an ONNX file and its data)."""
        return self.runner.model_bytes()

    def _run_onnxruntime(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        session: Any = self.runner.session  # type: ignore[attr-defined]
        names = [o.name for o in session.get_outputs()]
        wanted = {i.name for i in session.get_inputs()}
        values = session.run(names, {k: v for k, v in feed.items() if k in wanted})
        return {name: np.asarray(value) for name, value in zip(names, values)}

    def _run_openvino(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        compiled: Any = self.runner.compiled  # type: ignore[attr-defined]
        request: Any = self.runner.request  # type: ignore[attr-defined]
        inputs = {}
        for port in compiled.inputs:
            names = set(port.get_names()) & set(feed)
            if not names:
                raise TfmqError(f"{self.path} takes input {port.get_any_name()!r}, which was not given")
            inputs[port] = feed[names.pop()]
        request.infer(inputs)
        out = {}
        for port in compiled.outputs:
            value = np.array(request.get_tensor(port).data, copy=True)
            for name in port.get_names():
                out[name] = value
        return out

    def _run_tensorrt(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.runner.run_named(feed)  # type: ignore[attr-defined]
