"""calibrate --prompts: guided full-precision pass, both halves kept, settings recorded; bad input refused."""

from __future__ import annotations

import torch
from click.testing import CliRunner

from tests.test_bad_input import _refused
from tfmq_export.cli import cli
from tfmq_export.contract import INPUT_CONDITIONS

TINY = ("--steps", "3", "--num-samples", "2", "--quiet")


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_guided_data_keeps_both_halves_every_step(sd_pipeline_dir):
    from tfmq_export.calibration.guided_data import guided_calibration_data
    from tfmq_export.config import CalibrationSettings
    from tfmq_export.models.loading import load_model
    from tfmq_export.models.prompts import encode_guided
    from tfmq_export.temporal import build_table_unet

    loaded = load_model(sd_pipeline_dir)
    loaded.guided = encode_guided(loaded.pipeline, ["a digit seven", "a digit one", "a digit two"], "blurry", 4.0, 8)
    settings = CalibrationSettings(steps=3, num_samples=2, batch_size=2)
    timesteps = [int(t) for t in torch.tensor([667, 334, 1])]
    fp_sim = build_table_unet(loaded.unet, timesteps).eval()
    data = guided_calibration_data(fp_sim, loaded, timesteps, settings, progress=False)
    assert len(data) == 2 * 2 * 3  # (uncond + cond) x trajectories x steps, one pass
    assert data.step_index.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    first = data.conditions[:4]
    torch.testing.assert_close(first[0], loaded.guided.uncond[INPUT_CONDITIONS][0])  # uncond half first
    torch.testing.assert_close(first[2], loaded.guided.cond[INPUT_CONDITIONS][0])
    torch.testing.assert_close(first[3], loaded.guided.cond[INPUT_CONDITIONS][1])
    assert torch.equal(data.samples[0], data.samples[2])  # both halves see the same x_t


def test_calibrate_with_prompts_records_them(sd_pipeline_dir, tmp_path):
    from tfmq_export.artifact import load_artifact

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a handwritten digit seven\na handwritten digit one\n")
    out = tmp_path / "art"
    result = _run("calibrate", sd_pipeline_dir, "--out", out, "--prompts", prompts, "--negative-prompt", "blurry",
                  "--guidance-scale", "5", "--wbits", "8", "--abits", "8", "--scheduler", "euler", *TINY)
    assert result.exit_code == 0, result.output
    settings = load_artifact(out).settings
    assert settings["prompts"] == ["a handwritten digit seven", "a handwritten digit one"]
    assert settings["negative_prompt"] == "blurry" and settings["guidance_scale"] == 5.0
    assert settings["scheduler"] == "euler"


def test_calibrate_prompts_bad_input(sd_pipeline_dir, unet_cond_dir, tmp_path):
    out = tmp_path / "art"
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    _refused(_run("calibrate", sd_pipeline_dir, "--out", out, "--prompts", empty, *TINY), "holds no prompt",
             left=(out,))
    binary = tmp_path / "bin.txt"
    binary.write_bytes(bytes(range(256)))
    _refused(_run("calibrate", sd_pipeline_dir, "--out", out, "--prompts", binary, *TINY), "not a text file",
             left=(out,))
    good = tmp_path / "p.txt"
    good.write_text("a digit\n")
    _refused(_run("calibrate", sd_pipeline_dir, "--out", out, "--prompts", good, "--guidance-scale", "0.5", *TINY),
             "--guidance-scale 0.5", "at least 1", left=(out,))
    _refused(_run("calibrate", sd_pipeline_dir, "--out", out, "--guidance-scale", "3", *TINY), "need --prompts",
             left=(out,))
    _refused(_run("calibrate", unet_cond_dir, "--out", out, "--prompts", good, *TINY), "text-to-image pipeline",
             left=(out,))
