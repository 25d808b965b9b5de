"""OpenVINO: the IR engine of our Q/DQ graph, the runner on .onnx and .xml, and the NNCF peer."""

from __future__ import annotations

import numpy as np
import pytest

from tests.backends.tiny_graph import make_inputs, reference
from tfmq_export.backends.manifest import manifest_path
from tfmq_export.errors import TfmqError
from tfmq_export.metrics.error import rel_l2

pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'tfmq-export[openvino]')")

from tfmq_export.backends.openvino.build import build_openvino_engine
from tfmq_export.backends.openvino.nncf import quantize_with_nncf
from tfmq_export.backends.openvino.runner import OpenVINORunner

INT8 = ("i8", "u8")


def int8_layers(precisions: dict[str, int]) -> dict[str, int]:
    """Weight layers per type that run in int8 (i8 or u8, the CPU plugin's per-CPU choice)."""
    counts: dict[str, int] = {}
    for key, n in precisions.items():
        layer, precision = key.split(":")
        if precision in INT8:
            counts[layer] = counts.get(layer, 0) + n
    return counts


def test_int8_layers_counts_both_kernel_kinds():
    # the two CPUs the issue names: AMX (all i8) and AVX512-VNNI without AMX (Convolution:u8)
    assert int8_layers({"Convolution:i8": 2, "FullyConnected:i8": 2}) == {"Convolution": 2, "FullyConnected": 2}
    assert int8_layers({"Convolution:u8": 2, "FullyConnected:i8": 2}) == {"Convolution": 2, "FullyConnected": 2}
    assert int8_layers({"Convolution:f32": 2, "FullyConnected:i8": 2}) == {"FullyConnected": 2}


@pytest.mark.int8_exact
def test_openvino_engine_runs_int8_and_matches(models, tmp_path):
    out = tmp_path / "unet.xml"
    manifest = build_openvino_engine(models["trt"], out)
    assert out.is_file() and out.with_suffix(".bin").is_file() and manifest_path(out).is_file()
    for key in ("source_onnx_sha256", "openvino_version", "engine_sha256", "machine", "op_counts"):
        assert key in manifest, key
    assert manifest["compress_to_fp16"] is False
    assert manifest["FakeQuantize"] == 4  # one per activation Q/DQ pair
    # the contract: both Convs and both MatMuls run in int8. Whether the CPU plugin picks i8 or u8
    # kernels depends on the CPU (AMX: i8; AVX512-VNNI without AMX: Convolution:u8), so both count
    assert int8_layers(manifest["compiled_cpu_layer_precisions"]) == {"Convolution": 2, "FullyConnected": 2}

    # the IR, the ONNX read directly, and the onnxruntime-target graph (uint8, Conv-output Q/DQ:
    # OpenVINO reads both targets; core.read_model of that one would not compile, see the runner)
    for path, source in ((out, models["trt"]), (models["trt"], models["trt"]), (models["ort"], models["ort"])):
        with OpenVINORunner(path, "w8a8", threads=2) as runner:
            assert runner.input_names == ["sample", "step_index", "encoder_hidden_states"]
            for feed in make_inputs():
                got = runner.infer(**feed)
                ref = reference(source, feed)
                # int8 kernels vs float rounding, as for onnxruntime (measured: max 0.027, rel 4e-4)
                assert rel_l2(got, ref) < 5e-3 and np.abs(got - ref).max() < 0.1
    with OpenVINORunner(out, "w8a8") as runner:
        assert runner.model_bytes() == out.stat().st_size + out.with_suffix(".bin").stat().st_size


def test_nncf_peer_quantizes_fp32_graph(models, tmp_path):
    out = tmp_path / "nncf.xml"
    manifest = quantize_with_nncf(models["fp32"], out, make_inputs(n=8, batch=2, seed=3))
    assert manifest["precision"] == "nncf-int8"
    assert manifest["nncf_settings"]["model_type"] == "transformer"
    assert manifest["FakeQuantize"] > 0
    assert int8_layers(manifest["compiled_cpu_layer_precisions"])
    with OpenVINORunner(out, "nncf-int8") as runner:
        for feed in make_inputs(seed=4):
            # NNCF's INT8 against the float model: its quantization error on a tiny random net
            # calibrated with 16 samples (measured 0.11; our hand-set W8A8 grid gives 0.026)
            assert rel_l2(runner.infer(**feed), reference(models["fp32"], feed)) < 0.25
    with pytest.raises(TfmqError, match="already holds Q/DQ"):
        quantize_with_nncf(models["trt"], tmp_path / "x.xml", make_inputs(1))


def test_failed_builds_leave_no_file(tmp_path):
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(b"\x08\x07 this is not an ONNX model \xff\xfe")
    out_dir = tmp_path / "engines"
    with pytest.raises(TfmqError, match="not a readable ONNX model"):
        build_openvino_engine(bad, out_dir / "b.xml")
    with pytest.raises(TfmqError, match=r"must end in \.xml"):
        build_openvino_engine(bad, out_dir / "d.bin")
    assert not out_dir.exists() or list(out_dir.iterdir()) == []
