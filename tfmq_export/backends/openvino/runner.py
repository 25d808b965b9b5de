"""OpenVINO runner (CPU) for the exported UNet: an .onnx file or an IR .xml (with its .bin)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from tfmq_export.backends.base import Runner, feed_for
from tfmq_export.backends.manifest import onnx_model_bytes
from tfmq_export.backends.openvino.ir import contract_input_name, fp16_hint, ov_message
from tfmq_export.errors import TfmqError

__all__ = ["OpenVINORunner"]

class OpenVINORunner(Runner):
    """Compiles the model for OpenVINO's CPU plugin, batch dimension left dynamic (no reshape).

    ``threads`` sets ``INFERENCE_NUM_THREADS``. ``inference_precision`` defaults to ``"f32"``:
    on CPUs with AVX512-BF16/AMX OpenVINO otherwise runs every float layer in bf16 (its
    default ``INFERENCE_PRECISION_HINT`` there), which is not what the calibration simulated and
    would make an "fp32" timing a bf16 one. Quantized layers still run in int8. Pass ``None``
    to keep OpenVINO's choice.
    """

    backend = "openvino"

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        precision: str,
        threads: int | None = None,
        *,
        inference_precision: str | None = "f32",
    ) -> None:
        super().__init__(precision)
        self.model_path = Path(model_path)
        if self.model_path.suffix not in (".onnx", ".xml"):
            raise TfmqError(f"{self.model_path} is neither an .onnx file nor OpenVINO IR (.xml)")
        if not self.model_path.is_file():
            raise TfmqError(f"{self.model_path} does not exist")
        if self.model_path.suffix == ".xml" and not self.model_path.with_suffix(".bin").is_file():
            raise TfmqError(f"{self.model_path.with_suffix('.bin')} is missing; the IR needs its .bin beside the .xml")
        if threads is not None and threads < 1:
            raise TfmqError(f"threads must be a positive number, not {threads}")
        self.threads = threads
        self.inference_precision = inference_precision
        self.compiled: Any = None
        self.request: Any = None
        self.input_names: list[str] = []

    def compile_config(self) -> dict[str, Any]:
        """The CPU plugin properties this runner compiles with."""
        config: dict[str, Any] = {}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = self.threads
        if self.inference_precision:
            config["INFERENCE_PRECISION_HINT"] = self.inference_precision
        return config

    def activate(self) -> None:
        import openvino as ov

        core = ov.Core()
        try:
            # .onnx goes through convert_model (the same conversion as build_openvino_engine):
            # core.read_model of some Q/DQ ONNX graphs (uint8 Q/DQ on a Conv output feeding the
            # temporal-table Add, then a Q/DQ MatMul) converts but fails to compile on
            # OpenVINO 2026.4 ("convert->constant_fold" check), convert_model's output compiles
            if self.model_path.suffix == ".onnx":
                model = ov.convert_model(str(self.model_path))
            else:
                model = core.read_model(str(self.model_path))
            self.compiled = core.compile_model(model, "CPU", self.compile_config())
        except RuntimeError as exc:
            hint = fp16_hint(self.model_path) if self.model_path.suffix == ".onnx" else ""
            raise TfmqError(f"OpenVINO could not load {self.model_path}: {ov_message(exc)}{hint}") from exc
        self.input_names = [contract_input_name(i) for i in self.compiled.inputs]
        self.request = self.compiled.create_infer_request()
        super().activate()

    def deactivate(self) -> None:
        self.request = None
        self.compiled = None
        super().deactivate()

    def _infer(
        self, sample: np.ndarray, step_index: np.ndarray, encoder_hidden_states: np.ndarray | None
    ) -> np.ndarray:
        if self.request is None:
            raise TfmqError("the OpenVINO runner is not active; use it as a context manager")
        feed = feed_for(self.input_names, sample, step_index, encoder_hidden_states)
        self.request.infer(feed)
        # the output tensor is reused by the next call: copy it out
        return np.array(self.request.get_output_tensor(0).data, dtype=np.float32, copy=True)

    def model_bytes(self) -> int:
        if self.model_path.suffix == ".xml":
            return self.model_path.stat().st_size + self.model_path.with_suffix(".bin").stat().st_size
        return onnx_model_bytes(self.model_path)
