"""The command line of the openvino target: calibrate --linear-act-grid uint8-127 -> export-onnx
--target openvino (int8 attention by default, --attention float without) -> build-engine --backend
openvino; --target tensorrt refuses in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from tfmq_export.cli import cli


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.mark.int8_exact
def test_calibrate_export_build_openvino(tmp_path, unet_cond_dir):
    conds = tmp_path / "conds.npy"
    np.save(conds, np.random.default_rng(0).standard_normal((2, 5, 16)).astype(np.float32))
    art = tmp_path / "art"
    result = _run("calibrate", unet_cond_dir, "--out", art, "--steps", "3", "--num-samples", "2", "--conditions",
                  conds, "--linear-act-grid", "uint8-127", "--quiet")
    assert result.exit_code == 0, result.output
    meta = json.loads((art / "artifact.json").read_text())
    assert meta["linear_act_grid"] == "uint8-127" and meta["settings"]["extra"] == {"linear_act_grid": "uint8-127"}

    refused = _run("export-onnx", art, "--out", tmp_path / "trt.onnx", "--target", "tensorrt")
    assert refused.exit_code == 1 and "Traceback" not in refused.output
    assert len(refused.output.strip().splitlines()) == 1 and "uint8-127" in refused.output
    assert not (tmp_path / "trt.onnx").exists()

    onnx_path = tmp_path / "ov.onnx"
    result = _run("export-onnx", art, "--out", onnx_path, "--target", "openvino")
    assert result.exit_code == 0, result.output
    assert "(openvino, minmax W8A8, fp32," in result.output  # fp32 float parts: the target's default
    pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'tfmq-export[openvino]')")
    xml = tmp_path / "ov.xml"
    result = _run("build-engine", onnx_path, "--out", xml, "--backend", "openvino")
    assert result.exit_code == 0, result.output
    manifest = json.loads(xml.with_name("ov.manifest.json").read_text())
    linears = sum(r["kind"] == "linear" for r in meta["layers"].values())
    gated = sum(name.endswith(".ff.net.0.proj") for name in meta["layers"])  # each split in two (openvino_folds)
    assert gated > 0 and manifest["compiled_cpu_layer_precisions"]["FullyConnected:u8"] == linears + gated
    attentions = sum(name.endswith(".to_q") for name in meta["layers"])
    assert manifest["compiled_cpu_layer_precisions"]["Subgraph:i8"] == attentions > 0  # --attention int8

    float_path = tmp_path / "ov-float.onnx"
    result = _run("export-onnx", art, "--out", float_path, "--target", "openvino", "--attention", "float")
    assert result.exit_code == 0, result.output
    result = _run("build-engine", float_path, "--out", tmp_path / "ov-float.xml", "--backend", "openvino")
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "ov-float.manifest.json").read_text())
    assert "Subgraph:i8" not in manifest["compiled_cpu_layer_precisions"]


def test_bad_grid_is_a_usage_error(tmp_path):
    result = _run("calibrate", "digits", "--out", tmp_path / "a", "--linear-act-grid", "uint8")
    assert result.exit_code == 2 and "uint8-127" in result.output
