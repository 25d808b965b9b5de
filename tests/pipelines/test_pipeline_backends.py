"""sample DIR per backend: OpenVINO's float stages at its default precision, TensorRT's engines, torch's simulation."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tests.test_bad_input import _refused
from tfmq_export.cli import cli

PROMPT, NEGATIVE, GUIDANCE = "a handwritten digit seven", "blurry", 5.0


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def latents_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("latents") / "latents.npy"
    np.save(path, torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(3)).numpy())
    return path


def _sample(source, out, *options):
    """The images and the summary line of ``sample SOURCE --prompt ...``."""
    result = _run("sample", source, "--prompt", PROMPT, "--negative-prompt", NEGATIVE, "--guidance-scale", GUIDANCE,
                  "--out", out.with_suffix(".png"), "--npy", out, *options)
    assert result.exit_code == 0, result.output
    summary = result.output[result.output.rindex('{"source"'):]  # after any progress bar of the weight loading
    return np.load(out), json.loads(summary)


def test_openvino_float_stages_default_precision(sd_exported_pair, latents_file, tmp_path):
    """build-engine DIR --backend openvino records the float stages at OpenVINO's default precision and
    sample runs them so; --float-stages fp32 forces FP32 (bf16 on AMX CPUs changes the images)."""
    ov = pytest.importorskip("openvino")
    pipe = tmp_path / "pipe"
    shutil.copytree(sd_exported_pair["w8a8"], pipe)
    result = _run("build-engine", pipe, "--backend", "openvino")
    assert result.exit_code == 0, result.output
    assert "text_encoder: text_encoder.xml (openvino, ov-default" in result.output
    described = json.loads((pipe / "pipeline.json").read_text())
    default = {"text_encoder": "ov-default", "unet": "w8a8", "vae_decoder": "ov-default"}
    assert described["engine_precisions"] == {"openvino": default}
    for stage, file in described["engines"]["openvino"].items():
        manifest = json.loads((pipe / file).with_suffix(".manifest.json").read_text())
        assert manifest["stage_precision"] == default[stage]
    ours, summary = _sample(pipe, tmp_path / "default.npy", "--latents", latents_file, "--backend", "openvino")
    assert summary["stage_precisions"] == default
    forced, summary = _sample(pipe, tmp_path / "fp32.npy", "--latents", latents_file, "--backend", "openvino",
                              "--float-stages", "fp32")
    assert summary["stage_precisions"] == {**default, "text_encoder": "fp32", "vae_decoder": "fp32"}
    cpu_default = str(ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT"))
    difference = float(np.abs(ours - forced).max())
    default_is_f32 = cpu_default == "f32" or "float32" in cpu_default  # "<Type: 'float32'>" on some versions
    assert (difference > 1e-4) if not default_is_f32 else (difference <= 1e-6), (cpu_default, difference)
    # the FP32 choice is recorded when built so, and then it is sample's default
    result = _run("build-engine", pipe, "--backend", "openvino", "--float-stages", "fp32")
    assert result.exit_code == 0, result.output
    assert json.loads((pipe / "pipeline.json").read_text())["engine_precisions"]["openvino"]["vae_decoder"] == "fp32"
    again, summary = _sample(pipe, tmp_path / "again.npy", "--latents", latents_file, "--backend", "openvino")
    assert summary["stage_precisions"]["vae_decoder"] == "fp32" and float(np.abs(again - forced).max()) <= 1e-5


def test_sample_pipeline_tensorrt_refused_where_missing(sd_exported_pair, tmp_path):
    from tfmq_export.backends.tensorrt.availability import check_tensorrt_available

    reason = check_tensorrt_available()
    if reason is None:
        pytest.skip("TensorRT and a GPU are here: the refusal does not apply")
    out = tmp_path / "grid.png"
    line = _refused(_run("sample", sd_exported_pair["w8a8"], "--prompt", PROMPT, "--backend", "tensorrt",
                         "--out", out), "with TensorRT: ", left=(out,))
    assert line.endswith(reason), line


def test_torch_pipeline_matches_onnxruntime(sd_exported_pair, latents_file, tmp_path):
    """sample ARTIFACT --prompt --backend torch: the artifact's simulation in its pipeline folder.
    Full precision: the exported pipeline's images to 2e-3 (the parity contract's tolerance). W8A8:
    fake-quant vs onnxruntime's int8 kernels, max 0.1 and mean 0.02 apart (measured 0.049 / 0.010;
    OpenVINO's int8 and onnxruntime's differ by 0.064 max on the same folder)."""
    for name, max_tol, mean_tol in (("fp32", 2e-3, 2e-4), ("w8a8", 0.1, 0.02)):
        artifact = sd_exported_pair[name].parent / f"art-{name}"
        ours, summary = _sample(artifact, tmp_path / f"torch-{name}.npy", "--latents", latents_file, "--backend",
                                "torch")
        assert summary["precision"] == name and summary["stage_precisions"]["vae_decoder"] == "fp32"
        reference, _ = _sample(sd_exported_pair[name], tmp_path / f"ort-{name}.npy", "--latents", latents_file)
        assert ours.shape == reference.shape == (2, 16, 16, 3)
        difference = np.abs(ours - reference)
        assert float(difference.max()) <= max_tol and float(difference.mean()) <= mean_tol, name
    out = tmp_path / "refused.png"
    (tmp_path / "empty").mkdir()
    _refused(_run("sample", tmp_path / "empty", "--prompt", PROMPT, "--backend", "torch", "--out", out),
             "needs an artifact folder", left=(out,))
    _refused(_run("sample", sd_exported_pair["w8a8"], "--prompt", PROMPT, "--model", "digits", "--out", out),
             "--model goes with --backend torch", left=(out,))


def test_long_prompt_warning_is_one_line(sd_exported_pair, tmp_path):
    """sample with a prompt beyond the tokenizer's limit runs, with one warning line on stderr (no source
    echo). A real process: pytest's log capture would take the line from a CliRunner run."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    command = [sys.executable, "cli.py", "sample", str(sd_exported_pair["fp32"]), "--prompt", " ".join(["seven"] * 20),
               "--out", str(tmp_path / "grid.png")]
    result = subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(repo)})
    assert result.returncode == 0, result.stderr
    warned = [line for line in result.stderr.splitlines() if "longer than" in line]
    assert len(warned) == 1 and warned[0].startswith("warning: the prompt 'seven seven"), result.stderr
    assert "cut off: 'seven" in warned[0] and "UserWarning" not in result.stderr
