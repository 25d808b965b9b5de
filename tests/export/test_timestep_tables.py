"""``export-onnx --timesteps sampler|all``: one engine for any step count, rows mapped by timestep."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import onnxruntime as ort
import pytest
import torch

from tests.conftest import rel_l2
from tfmq_export.calibration.pipeline import calibrate
from tfmq_export.config import CalibrationSettings
from tfmq_export.errors import TfmqError
from tfmq_export.export.onnx_export import build_onnx, describe_onnx, export_onnx, read_metadata, table_rows
from tfmq_export.sampling import SamplingSpec, generate, sampler_timesteps
from tfmq_export.temporal import build_table_unet
from tfmq_export.workflows.sample import runner_for, sample_with


def _session(graph):
    return ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def digits_all(tmp_path_factory):
    """The bundled digits model, full precision, exported with a row per training timestep."""
    from tfmq_export.models.loading import load_model

    model = load_model("digits")
    artifact = calibrate(model, CalibrationSettings(wbits=16, abits=16, steps=10), progress=False)
    out = export_onnx(model, artifact, tmp_path_factory.mktemp("all") / "digits-all.onnx", "onnxruntime",
                      timesteps="all")
    return model, out


@pytest.mark.parametrize(("name", "steps"), [("ddim", 10), ("ddim", 25), ("pndm", 10), ("euler", 10)])
def test_all_rows_graph_runs_any_integer_schedule_like_the_torch_table_unet(digits_all, name, steps):
    model, path = digits_all
    runner, info = runner_for(path, "onnxruntime", scheduler=name, steps=steps)
    images = sample_with(runner, info.spec, 3, 0, 3, progress=False)
    own = sampler_timesteps(model.scheduler_config, steps, name)  # the table UNet for exactly this schedule
    table_unet = build_table_unet(model.unet, own).eval()
    spec = SamplingSpec(own, model.scheduler_config, model.sample_shape, scheduler=name, num_steps=steps)
    with torch.no_grad():
        expected = generate(lambda x, s, c: table_unet(x, s, c), spec, 3, 0, 3, progress=False)
    assert np.isfinite(images).all() and images.std() > 0.05
    assert np.abs(images - expected).max() < 2e-3


def test_all_rows_table_is_every_training_timestep_times_the_row_width(digits_all):
    """The figure docs/BENCHMARKS.md gives for digits (``benchmarks/table_size.py``): 1000 x 608 x 4 bytes."""
    import onnx

    from tfmq_export.models.adapter import UNetAdapter

    model, path = digits_all
    tables = [t for t in onnx.load(str(path)).graph.initializer if t.name.endswith("time_emb_proj.table")]
    assert {t.dims[0] for t in tables} == {1000}
    width = sum(p.resnet.time_emb_proj.out_features for p in UNetAdapter(model.unet).temporal_projections())
    assert sum(t.dims[1] for t in tables) == width == 608


def test_fp_all_rows_equal_diffusers_at_any_integer_timestep(loaded_unet_cond):
    model = loaded_unet_cond
    artifact = calibrate(model, CalibrationSettings(wbits=16, abits=16, steps=4), progress=False)
    graph = build_onnx(model, artifact, "onnxruntime", timesteps="all")
    meta = read_metadata(graph)
    assert json.loads(meta["tfmq.timesteps"]) == list(range(1000))
    assert meta["tfmq.scheduler"] == "ddim" and meta["tfmq.steps"] == "4"
    rows = np.array([0, 500, 999], dtype=np.int64)
    gen = torch.Generator().manual_seed(3)
    sample, ehs = torch.randn((3, *model.sample_shape), generator=gen), torch.randn(3, 7, 16, generator=gen)
    out = _session(graph).run(["noise_pred"], {"sample": sample.numpy(), "step_index": rows,
                                               "encoder_hidden_states": ehs.numpy()})[0]
    with torch.no_grad():
        expected = model.unet(sample, torch.from_numpy(rows), encoder_hidden_states=ehs).sample.numpy()
    assert rel_l2(out, expected) < 1e-5


def test_a_sampler_graph_refuses_another_step_count_and_keeps_its_own_pndm_schedule(loaded_unet2d, tmp_path):
    model = loaded_unet2d
    artifact = calibrate(model, CalibrationSettings(wbits=16, abits=16, steps=4, scheduler="pndm"), progress=False)
    assert artifact.settings["scheduler"] == "pndm"
    assert artifact.timesteps == sampler_timesteps(model.scheduler_config, 4, "pndm")  # PRK: more calls than steps
    path = export_onnx(model, artifact, tmp_path / "pndm.onnx", "onnxruntime")
    described = describe_onnx(path)
    assert (described.scheduler, described.steps) == ("pndm", 4)
    runner, info = runner_for(path, "onnxruntime")  # the recorded schedule by default
    assert (info.spec.scheduler, info.spec.num_steps) == ("pndm", 4)
    assert np.isfinite(sample_with(runner, info.spec, 2, 0, 2, progress=False)).all()
    with pytest.raises(TfmqError, match=rf"^timestep \d+ has no row in the table of {path}; re-export with "
                                        "--timesteps all, or sample with the schedule it was exported for$"):
        runner_for(path, "onnxruntime", steps=25)
    ddim = sampler_timesteps(model.scheduler_config, 4, "ddim")  # a subset of PNDM's: found by value
    assert set(ddim) < set(artifact.timesteps)
    assert runner_for(path, "onnxruntime", scheduler="ddim")[1].spec.num_steps == 4


def test_quantized_all_rows_keep_the_static_scales_at_the_calibrated_rows(loaded_unet2d):
    """W8A8 minmax calibrated on Euler's steps: the all-rows graph at those timesteps is the sampler graph."""
    model = loaded_unet2d
    settings = CalibrationSettings(method="minmax", wbits=8, abits=8, steps=4, num_samples=4, scheduler="euler")
    artifact = calibrate(model, settings, progress=False)
    assert artifact.timesteps == sampler_timesteps(model.scheduler_config, 4, "euler")
    sampler, every = (_session(build_onnx(model, artifact, "onnxruntime", timesteps=k)) for k in ("sampler", "all"))
    sample = np.random.default_rng(0).normal(size=(4, *model.sample_shape)).astype(np.float32)
    mine = sampler.run(["noise_pred"], {"sample": sample, "step_index": np.arange(4, dtype=np.int64)})[0]
    rows = np.array(artifact.timesteps, dtype=np.int64)
    shared = every.run(["noise_pred"], {"sample": sample, "step_index": rows})[0]
    assert rel_l2(shared, mine) < 1e-3


def test_fractional_schedule_needs_a_sampler_table_and_step_tied_artifacts_refuse_all(loaded_unet2d, tmp_path):
    model = replace(loaded_unet2d, scheduler_config={**loaded_unet2d.scheduler_config, "use_karras_sigmas": True})
    artifact = calibrate(model, CalibrationSettings(wbits=16, abits=16, steps=5, scheduler="euler"), progress=False)
    assert any(isinstance(t, float) for t in artifact.timesteps)
    path = export_onnx(model, artifact, tmp_path / "euler.onnx", "onnxruntime")
    assert describe_onnx(path).timesteps == artifact.timesteps
    runner, info = runner_for(path, "onnxruntime")
    assert np.isfinite(sample_with(runner, info.spec, 2, 0, 2, progress=False)).all()
    every = export_onnx(model, artifact, tmp_path / "all.onnx", "onnxruntime", timesteps="all")
    with pytest.raises(TfmqError, match=r"^timestep \d+\.\d+ has no row in the table of .*all\.onnx; re-export with "
                                        r"--timesteps sampler for this scheduler$"):
        runner_for(every, "onnxruntime")
    factors = replace(artifact, tensors={**artifact.tensors, "conv_in.input_step_factor": torch.ones(5)})
    with pytest.raises(TfmqError, match=r"^--timesteps all: this artifact keeps per-step activation factors"):
        table_rows(model, factors, "all")
    with pytest.raises(TfmqError, match=r"^--timesteps all: this artifact's temporal table is 'quantized'"):
        table_rows(model, replace(artifact, temporal_table="quantized"), "all")
    with pytest.raises(TfmqError, match=r"^unknown --timesteps 'every'"):
        table_rows(model, artifact, "every")


def test_bench_samples_an_all_rows_graph_with_its_recorded_schedule(loaded_unet2d, unet2d_dir, tmp_path):
    """Not 1000 steps (one per row): the recorded 3 DDIM steps, rows mapped by timestep, equal to torch's."""
    from click.testing import CliRunner

    from tfmq_export.cli import cli

    artifact = calibrate(loaded_unet2d, CalibrationSettings(wbits=16, abits=16, steps=3), progress=False)
    graph = export_onnx(loaded_unet2d, artifact, tmp_path / "all.onnx", "onnxruntime", timesteps="all")
    out = tmp_path / "bench.json"
    args = ["bench", unet2d_dir, "--onnx", graph, "--backends", "torch,onnxruntime", "--timed-calls", "1",
            "--warmup", "0", "--threads", "1", "--sampling-runs", "1", "--no-memory", "--json", out, "--quiet"]
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    runs = {r["backend"]: r for r in json.loads(out.read_text())["runs"]}
    assert runs["onnxruntime"]["sampling_steps"] == 3
    assert runs["onnxruntime"]["rel_error_vs_reference"] < 1e-4


def test_cli_export_all_then_sample_any_schedule_and_a_sampler_graph_refuses_in_one_line(loaded_unet2d, tmp_path):
    from click.testing import CliRunner

    from tfmq_export.cli import cli

    def run(*args):
        return CliRunner().invoke(cli, [str(a) for a in args])

    calibrate(loaded_unet2d, CalibrationSettings(wbits=16, abits=16, steps=3), tmp_path / "fp", progress=False)
    for kind in ("sampler", "all"):
        result = run("export-onnx", tmp_path / "fp", "--out", tmp_path / f"{kind}.onnx", "--target", "onnxruntime",
                     "--timesteps", kind)
        assert result.exit_code == 0 and f"{kind} rows" in result.output, result.output
    result = run("sample", tmp_path / "all.onnx", "--out", tmp_path / "grid.png", "--num-images", "2",
                 "--scheduler", "pndm", "--steps", "7")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "grid.png").is_file()
    result = run("sample", tmp_path / "sampler.onnx", "--out", tmp_path / "no.png", "--num-images", "2", "--steps", "7")
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert lines[0].startswith("Error: timestep ") and "has no row in the table of" in lines[0]
    assert not (tmp_path / "no.png").exists()
