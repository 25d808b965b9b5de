"""Command-line contract: --help, and bad input -> exit 1 with one line, nothing half-written."""

from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner

from tfmq_export.cli import cli


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _one_line_error(result):
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output
    return lines[0]


def test_help_lists_commands():
    result = _run("--help")
    assert result.exit_code == 0
    for command in ("calibrate", "export-onnx", "build-engine", "sample", "bench", "lint"):
        assert command in result.output


def test_bad_usage_exits_2():
    assert _run("calibrate").exit_code == 2
    assert _run("calibrate", "digits", "--out", "x", "--method", "nope").exit_code == 2


def test_missing_model_folder(tmp_path):
    out = tmp_path / "art"
    line = _one_line_error(_run("calibrate", tmp_path / "nope", "--out", out))
    assert "nope" in line
    assert not out.exists()


def test_corrupt_model_folder(tmp_path, unet2d_dir):
    bad = tmp_path / "bad"
    shutil.copytree(unet2d_dir, bad)
    (bad / "config.json").write_text("{not json")
    out = tmp_path / "art"
    assert "config.json" in _one_line_error(_run("calibrate", bad, "--out", out))
    assert not out.exists()
    bad2 = tmp_path / "bad2"
    shutil.copytree(unet2d_dir, bad2)
    (bad2 / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00garbage")
    _one_line_error(_run("calibrate", bad2, "--out", out))
    assert not out.exists()


@pytest.mark.parametrize("bits", [("--wbits", "3"), ("--abits", "4"), ("--wbits", "32")])
def test_unsupported_bits(tmp_path, unet2d_dir, bits):
    """Typed choices: click refuses them as bad usage (exit 2) naming the option and the supported widths."""
    out = tmp_path / "art"
    result = _run("calibrate", unet2d_dir, "--out", out, *bits)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"Invalid value for '{bits[0]}': '{bits[1]}' is not one of" in result.output
    assert not out.exists()


def test_artifact_from_another_model_is_refused(tmp_path, unet2d_dir):
    art = tmp_path / "art"
    result = _run("calibrate", unet2d_dir, "--out", art, "--wbits", "8", "--abits", "8", "--steps", "3",
                  "--num-samples", "2", "--quiet")
    assert result.exit_code == 0, result.output
    assert (art / "artifact.json").is_file()
    # another model: same architecture, different weights
    other = tmp_path / "other"
    shutil.copytree(unet2d_dir, other)
    from diffusers import UNet2DModel

    model = UNet2DModel.from_pretrained(other)
    for p in model.parameters():
        p.data.add_(0.01)
    model.save_pretrained(other, safe_serialization=True)
    onnx_path = tmp_path / "x.onnx"
    line = _one_line_error(_run("export-onnx", art, "--out", onnx_path, "--model", other))
    assert "calibrate" in line
    assert not onnx_path.exists()
    assert not list(tmp_path.glob(".x.onnx*"))


def test_not_an_artifact(tmp_path):
    line = _one_line_error(_run("export-onnx", tmp_path, "--out", tmp_path / "x.onnx"))
    assert "artifact" in line


def test_corrupt_artifact_tensors(tmp_path, unet2d_dir):
    art = tmp_path / "art"
    assert _run("calibrate", unet2d_dir, "--out", art, "--steps", "3", "--num-samples", "2", "--quiet").exit_code == 0
    (art / "tensors.safetensors").write_bytes(b"\x01\x02")
    line = _one_line_error(_run("export-onnx", art, "--out", tmp_path / "x.onnx", "--model", unet2d_dir))
    assert "corrupt" in line


def test_build_engine_missing_onnx(tmp_path):
    _one_line_error(_run("build-engine", tmp_path / "none.onnx", "--out", tmp_path / "e.onnx"))


def test_build_engine_tensorrt_absent_is_one_line(tmp_path, unet2d_dir):
    pytest.importorskip("onnx")
    try:
        import tensorrt  # noqa: F401

        pytest.skip("tensorrt is installed here")
    except ImportError:
        pass
    art = tmp_path / "art"
    assert _run("calibrate", unet2d_dir, "--out", art, "--wbits", "16", "--abits", "16", "--quiet").exit_code == 0
    onnx_path = tmp_path / "fp.onnx"
    assert _run("export-onnx", art, "--out", onnx_path, "--model", unet2d_dir).exit_code == 0
    plan = tmp_path / "e.plan"
    line = _one_line_error(_run("build-engine", onnx_path, "--out", plan, "--backend", "tensorrt"))
    assert "TensorRT" in line or "tensorrt" in line
    assert not plan.exists()


@pytest.mark.parametrize(("method", "reg", "correction"), [("tfmq", 0.3, "pixel"), ("qdiff", 0.01, "none")])
def test_verbose_calibrate_prints_the_method_options_with_its_defaults(tmp_path, method, reg, correction):
    """--verbose shows what the method will run with, tfmq's no-recipe defaults included (before any work:
    here the model does not exist, so the run then stops with one line)."""
    result = _run("calibrate", tmp_path / "missing", "--verbose", "--method", method, "--wbits", 4, "--abits", 8,
                  "--out", tmp_path / "out")
    assert result.exit_code == 1
    options = next(line for line in result.output.splitlines() if line.startswith("method options:"))
    assert f"'adaround_reg': {reg}" in options and f"'output_correction': '{correction}'" in options
    assert not (tmp_path / "out").exists()
