"""The Python API: one function per command, options named as on the command line, same results, TfmqError."""

from __future__ import annotations

import inspect
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

import tfmq_export
from tfmq_export import TfmqError
from tfmq_export.cli import cli

#: the command-line parameter names that the function spells differently (a path argument is `out`, ...)
RENAMED: dict = {"out_dir": "out", "out_path": "out", "table": "timesteps", "onnx_paths": "onnx",
                 "variant_specs": "variant", "batch_sizes": "batch_size", "json_path": "json", "doc_path": "doc",
                 "latents_path": "latents", "npy_path": "npy", ("build-engine", "onnx_path"): "onnx_or_dir"}
#: command-line options with no function keyword, and why
NOT_MIRRORED = {("sample", "json"): "the function returns the images; the summary JSON is the command's output",
                ("calibrate", "workers"): "relaunches the command as N processes; a Python caller runs under torchrun",
                ("calibrate", "cache_budget"): "sets the recipe's extra options (disk_cache, cache_mb); pass a recipe",
                ("calibrate", "offload"): "sets the recipe's extra option offload; pass a recipe",
                **{(command, "verbose"): "the command's log level and timing lines; callers configure logging"
                   for command in ("calibrate", "export-onnx", "export-pipeline", "build-engine", "lint", "sample",
                                   "bench", "evaluate", "demo", "train-digits", "train-digits-text")},
                **{(command, "quiet"): "no progress bars to hide: the function prints nothing"
                   for command in ("export-onnx", "export-pipeline", "build-engine", "lint", "train-digits",
                                   "train-digits-text")}}
COMMANDS = {"calibrate": "calibrate", "export-onnx": "export_onnx", "export-pipeline": "export_pipeline",
            "build-engine": "build_engine", "lint": "lint", "sample": "sample", "bench": "bench",
            "evaluate": "evaluate", "demo": "demo", "train-digits": "train_digits",
            "train-digits-text": "train_digits_text"}


@pytest.fixture(scope="module")
def sd_pipeline_dir(tmp_path_factory):
    """The tiny StableDiffusionPipeline folder of tests/pipelines (built here: that conftest is not in scope)."""
    from tests.pipelines.tiny_pipeline import build_sd_pipeline

    return build_sd_pipeline(tmp_path_factory.mktemp("api-sd") / "pipe")


def test_import_is_light_and_lazy():
    code = ("import sys, tfmq_export; heavy = [m for m in ('torch', 'diffusers', 'onnxruntime', 'numpy') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    assert sorted(tfmq_export.__all__) == sorted({*COMMANDS.values(), "EngineUNet", "TfmqError", "__version__"})
    for name in tfmq_export.__all__:
        assert getattr(tfmq_export, name) is not None
    with pytest.raises(AttributeError, match="no_such_thing"):
        tfmq_export.no_such_thing  # noqa: B018


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_option_is_a_keyword_of_its_function(command):
    function = getattr(tfmq_export, COMMANDS[command])
    assert function.__doc__ and f"tfmq-export {command}" in function.__doc__
    keywords = set(inspect.signature(function).parameters)
    options = {RENAMED.get((command, p.name), RENAMED.get(p.name, p.name)) for p in cli.commands[command].params}
    missing = {o for o in options - keywords if (command, o) not in NOT_MIRRORED}
    assert not missing, f"{command}: {sorted(missing)} have no keyword in tfmq_export.{COMMANDS[command]}"


def test_calibrate_export_lint_build_sample_a_unet(unet2d_dir, tmp_path):
    art = tfmq_export.calibrate(unet2d_dir, tmp_path / "art", method="minmax", wbits=8, abits=8, steps=3,
                                num_samples=2, quiet=True)
    assert (art.method, art.wbits, art.abits, len(art.timesteps)) == ("minmax", 8, 8, 3)
    onnx = tfmq_export.export_onnx(tmp_path / "art", tmp_path / "unet.onnx", target="tensorrt")
    assert onnx.is_file() and tfmq_export.lint(onnx) == []
    manifest = tfmq_export.build_engine(onnx, tmp_path / "unet.ort.onnx", backend="onnxruntime")
    assert (tmp_path / "unet.ort.onnx").is_file() and isinstance(manifest, dict)
    images = tfmq_export.sample(onnx, num_images=3, seed=1, out=tmp_path / "grid.png", npy=tmp_path / "x.npy",
                                quiet=True)
    assert images.dtype == np.float32 and images.ndim == 4 and images.shape[0] == 3  # [N, H, W, C]
    assert images.min() >= 0 and images.max() <= 1 and images.std() > 0
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), images)
    assert (tmp_path / "grid.png").stat().st_size > 0
    again = tfmq_export.sample(onnx, num_images=3, seed=1, quiet=True)
    np.testing.assert_array_equal(again, images)  # same seed, same images
    assert np.abs(tfmq_export.sample(onnx, num_images=3, seed=2, quiet=True) - images).max() > 1e-3


def test_pipeline_api_equals_the_command_line(sd_pipeline_dir, tmp_path):
    """calibrate (a list of prompts) -> export_pipeline -> sample: the same images as `sample DIR --npy`."""
    prompt = "a handwritten digit seven"
    tfmq_export.calibrate(sd_pipeline_dir, tmp_path / "art", wbits=16, abits=16, steps=3,
                          prompts=[prompt, "a handwritten digit one"], guidance_scale=5.0, quiet=True)
    described = tfmq_export.export_pipeline(tmp_path / "art", tmp_path / "pipe")
    assert described["guidance_scale"] == 5.0 and described["precision"] == "fp32"
    latents = np.random.default_rng(0).standard_normal((2, 4, 8, 8)).astype(np.float32)
    np.save(tmp_path / "latents.npy", latents)
    images = tfmq_export.sample(tmp_path / "pipe", prompt=prompt, negative_prompt="blurry", latents=latents)
    result = CliRunner().invoke(cli, ["sample", str(tmp_path / "pipe"), "--prompt", prompt, "--negative-prompt",
                                      "blurry", "--latents", str(tmp_path / "latents.npy"),
                                      "--out", str(tmp_path / "grid.png"), "--npy", str(tmp_path / "cli.npy")])
    assert result.exit_code == 0, result.output
    assert images.shape == (2, 16, 16, 3)
    np.testing.assert_array_equal(images, np.load(tmp_path / "cli.npy"))
    from_file = tfmq_export.sample(tmp_path / "pipe", prompt=prompt, negative_prompt="blurry",
                                   latents=tmp_path / "latents.npy")
    np.testing.assert_array_equal(from_file, images)


def test_api_errors_are_one_line_tfmq_errors(sd_pipeline_dir, unet2d_dir, tmp_path):
    with pytest.raises(TfmqError, match="method 'nope' is not supported"):
        tfmq_export.calibrate(unet2d_dir, tmp_path / "a", method="nope")
    with pytest.raises(TfmqError, match="list of strings"):
        tfmq_export.calibrate(sd_pipeline_dir, tmp_path / "b", prompts=[1, 2])
    with pytest.raises(TfmqError, match="holds no prompt"):
        tfmq_export.calibrate(sd_pipeline_dir, tmp_path / "b", prompts=[" "])
    with pytest.raises(TfmqError, match="out is required"):
        tfmq_export.build_engine(tmp_path / "missing.onnx")
    with pytest.raises(TfmqError, match=r"has no pipeline\.json"):
        tfmq_export.sample(tmp_path, prompt="a digit")
    with pytest.raises(TfmqError, match="does not exist"):
        tfmq_export.sample(tmp_path / "missing.onnx")
    with pytest.raises(TfmqError, match="nothing to time"):  # backends="" is no backend, not the default
        tfmq_export.bench("digits", backends="", no_memory=True, quiet=True)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
