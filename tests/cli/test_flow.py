"""The command-line flow on local folders: pipeline folder + conditions, export, sample."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
from click.testing import CliRunner
from PIL import Image

from tfmq_export.cli import cli


def _ok(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def test_pipeline_folder_with_conditions(tmp_path, unet_cond_dir):
    pipe = tmp_path / "pipe"
    shutil.copytree(unet_cond_dir, pipe / "unet")
    (pipe / "scheduler").mkdir()
    sched = {"_class_name": "DDPMScheduler", "num_train_timesteps": 500, "beta_schedule": "scaled_linear",
             "beta_start": 0.00085, "beta_end": 0.012, "prediction_type": "epsilon"}
    (pipe / "scheduler" / "scheduler_config.json").write_text(json.dumps(sched))
    conds = tmp_path / "conds.npy"
    np.save(conds, np.random.default_rng(0).standard_normal((3, 5, 16)).astype(np.float32))
    art = tmp_path / "art"
    _ok("calibrate", pipe, "--out", art, "--steps", "4", "--num-samples", "3", "--conditions", conds, "--quiet")
    meta = json.loads((art / "artifact.json").read_text())
    assert meta["scheduler_config"]["num_train_timesteps"] == 500
    assert max(meta["timesteps"]) < 500 and len(meta["timesteps"]) == 4
    onnx_path = tmp_path / "m.onnx"
    _ok("export-onnx", art, "--out", onnx_path, "--model", pipe)
    graph = onnx.load(onnx_path)
    assert [i.name for i in graph.graph.input] == ["sample", "step_index", "encoder_hidden_states"]
    _ok("lint", onnx_path)


def test_conditional_without_conditions_is_refused(tmp_path, unet_cond_dir):
    result = CliRunner().invoke(cli, ["calibrate", str(unet_cond_dir), "--out", str(tmp_path / "a"), "--quiet"])
    assert result.exit_code == 1 and "--conditions" in result.output


def test_sample_writes_grid_and_json(tmp_path, unet2d_dir):
    art = tmp_path / "art"
    _ok("calibrate", unet2d_dir, "--out", art, "--steps", "3", "--num-samples", "2", "--quiet")
    onnx_path = tmp_path / "m.onnx"
    _ok("export-onnx", art, "--out", onnx_path, "--model", unet2d_dir, "--target", "onnxruntime")
    png, js = tmp_path / "grid.png", tmp_path / "s.json"
    _ok("sample", onnx_path, "--out", png, "--num-images", "9", "--json", js)
    image = Image.open(png)
    assert image.size[0] > 16 * 3 and image.mode == "L"
    summary = json.loads(js.read_text())
    assert summary["num_images"] == 9 and summary["precision"] == "w8a8" and "digits_fid" not in summary
    # the torch simulation of the same artifact samples through the same loop
    png2 = tmp_path / "grid2.png"
    _ok("sample", art, "--backend", "torch", "--model", unet2d_dir, "--out", png2, "--num-images", "4")
    assert png2.is_file()
