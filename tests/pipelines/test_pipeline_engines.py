"""build-engine DIR: every stage of an exported pipeline built per backend, used by sample DIR."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from tests.test_bad_input import _refused
from tfmq_export.cli import cli

PROMPT = "a handwritten digit seven"


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _sample(pipe, backend, out):
    result = _run("sample", pipe, "--prompt", PROMPT, "--negative-prompt", "blurry", "--seed", "3", "--num-images", "2",
                  "--backend", backend, "--out", out / "grid.png", "--npy", out / "images.npy")
    assert result.exit_code == 0, result.output
    return np.load(out / "images.npy")


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_build_engine_dir_builds_every_stage(backend, sd_exported_pair, tmp_path):
    if backend == "openvino":
        pytest.importorskip("openvino")
    import shutil

    pipe = tmp_path / "pipe"
    shutil.copytree(sd_exported_pair["w8a8"], pipe)
    (tmp_path / "onnx").mkdir()
    from_onnx = _sample(pipe, backend, tmp_path / "onnx")
    result = _run("build-engine", pipe, "--backend", backend)
    assert result.exit_code == 0, result.output
    described = json.loads((pipe / "pipeline.json").read_text())
    suffix = {"onnxruntime": ".onnx", "openvino": ".xml"}[backend]
    engines = described["engines"][backend]
    assert sorted(engines) == ["text_encoder", "unet", "vae_decoder"]
    for stage, file in engines.items():
        assert file == f"engines/{backend}/{stage}{suffix}" and (pipe / file).is_file()
        manifest = json.loads((pipe / file).with_suffix(".manifest.json").read_text())
        assert manifest["backend"] == backend and manifest["source_onnx"].endswith(f"{stage}.onnx")
    if backend == "openvino":  # the quantized UNet runs int8 layers from the IR
        unet = json.loads((pipe / engines["unet"]).with_suffix(".manifest.json").read_text())
        assert any(":i8" in k or ":u8" in k for k in unet["compiled_cpu_layer_precisions"]), unet
    assert not [p for p in (pipe / "engines").iterdir() if p.name.startswith(".")]
    (tmp_path / "engines").mkdir()
    from_engines = _sample(pipe, backend, tmp_path / "engines")
    assert from_engines.shape == (2, 16, 16, 3)
    assert float(np.abs(from_engines - from_onnx).max()) <= 1e-4
    # the engines are what runs: a damaged engine file makes sampling fail
    (pipe / engines["vae_decoder"]).write_text("not a model")
    assert _run("sample", pipe, "--prompt", PROMPT, "--backend", backend, "--out", tmp_path / "x.png").exit_code == 1


def test_build_engine_dir_bad_input(sd_exported_pair, tmp_path):
    import shutil

    from tfmq_export.backends.tensorrt.availability import check_tensorrt_available

    pipe = tmp_path / "pipe"
    shutil.copytree(sd_exported_pair["fp32"], pipe)
    before = sorted(p.name for p in pipe.iterdir())
    text = (pipe / "pipeline.json").read_text()
    if check_tensorrt_available() is not None:
        line = _refused(_run("build-engine", pipe, "--backend", "tensorrt"), "cannot build TensorRT engines")
        assert sorted(p.name for p in pipe.iterdir()) == before and (pipe / "pipeline.json").read_text() == text
        out = tmp_path / "elsewhere" / "trt"
        _refused(_run("build-engine", pipe, "--backend", "tensorrt", "--out", out), line.split(": ", 1)[1][:30],
                 left=(out.parent,))
    from tfmq_export.errors import TfmqError
    from tfmq_export.workflows.build_pipeline import build_pipeline_engines

    with pytest.raises(TfmqError, match="unknown backend 'tvm'"):
        build_pipeline_engines(pipe, "tvm")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "mine.txt").write_text("mine")
    _refused(_run("build-engine", pipe, "--out", taken), "refusing to replace")
    assert (taken / "mine.txt").read_text() == "mine"
    (pipe / "vae_decoder.onnx").unlink()
    _refused(_run("build-engine", pipe, "--backend", "onnxruntime"), "missing its vae_decoder stage",
             left=(pipe / "engines",))
    _refused(_run("build-engine", pipe / "unet.onnx"), "--out is required")
