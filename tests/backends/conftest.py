"""The tiny contract graphs every backend test runs: both export targets, FP32, unconditional."""

from __future__ import annotations

import onnx
import pytest

from tests.backends.tiny_graph import make_tiny_unet


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("models")
    paths = {}
    for name, target, cond in [
        ("trt", "tensorrt", True),
        ("ort", "onnxruntime", True),
        ("fp32", "fp32", True),
        ("uncond", "tensorrt", False),
    ]:
        paths[name] = str(root / f"{name}.onnx")
        onnx.save(make_tiny_unet(target, cond), paths[name])
    return paths
