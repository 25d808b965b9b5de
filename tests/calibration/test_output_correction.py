"""The per-step output correction: what it measures, what the gate keeps, and that the simulation
and the exported graph subtract the same table row."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnxruntime as ort
import pytest
import torch

from tfmq_export.artifact import OUTPUT_CORRECTION_KEY, artifact_problem
from tfmq_export.calibration.data import CalibrationData, collect_calibration_data
from tfmq_export.calibration.output_correction import measure_output_correction
from tfmq_export.calibration.pipeline import calibrate
from tfmq_export.config import CalibrationSettings, ExtraOptions
from tfmq_export.errors import TfmqError
from tfmq_export.export.onnx_export import build_onnx, table_rows
from tfmq_export.quant.state import simulation_from_artifact
from tfmq_export.temporal import build_table_unet

pytestmark = pytest.mark.usefixtures("one_thread")


def _data(steps: int, per_step: int, shape=(2, 4, 4)) -> CalibrationData:
    gen = torch.Generator().manual_seed(0)
    rows = torch.arange(steps).repeat(per_step)
    return CalibrationData(torch.randn(len(rows), *shape, generator=gen), rows, None, list(range(steps)))


def test_the_gate_keeps_a_fixed_pattern_and_zeroes_a_step_of_pure_noise():
    """Step 0: the same pattern in every output plus noise -> its mean is kept; step 1: zero-mean noise
    -> the row stays zero (subtracting an estimate of nothing would add its noise)."""
    data = _data(steps=2, per_step=64)
    pattern = torch.linspace(-1, 1, 32).reshape(2, 4, 4)
    gen = torch.Generator().manual_seed(1)

    def fp(x, step):
        return x

    def sim(x, step):
        offset = torch.where(step.view(-1, 1, 1, 1) == 0, pattern, torch.zeros_like(pattern))
        return x + offset + 0.3 * torch.randn(x.shape, generator=gen)

    table = measure_output_correction(sim, fp, data, "pixel")
    assert table.shape == (2, 2, 4, 4)
    assert torch.allclose(table[0], pattern, atol=0.15)  # 64 samples, noise 0.3: about 0.04 per element
    assert torch.count_nonzero(table[1]) == 0
    channel = measure_output_correction(sim, fp, data, "channel")
    assert channel.shape == (2, 2, 1, 1)
    assert torch.allclose(channel[0].flatten(), pattern.mean(dim=(1, 2)), atol=0.05)
    with pytest.raises(TfmqError, match="choose channel or pixel"):
        measure_output_correction(sim, fp, data, "none")


@pytest.fixture(scope="module")
def corrected(loaded_unet2d):
    settings = CalibrationSettings(method="minmax", wbits=4, abits=8, steps=4, num_samples=32,
                                   extra={"output_correction": "pixel"})
    return loaded_unet2d, calibrate(loaded_unet2d, settings, progress=False)


def test_the_artifact_carries_the_mean_error_of_its_own_simulation_per_step(corrected):
    model, artifact = corrected
    table = artifact.tensors[OUTPUT_CORRECTION_KEY]
    assert table.shape == (4, *model.sample_shape)
    plain = replace(artifact, tensors={k: v for k, v in artifact.tensors.items() if k != OUTPUT_CORRECTION_KEY})
    without = simulation_from_artifact(model.unet, plain)
    with_correction = simulation_from_artifact(model.unet, artifact)
    fp = build_table_unet(model.unet, artifact.timesteps).eval()
    data = collect_calibration_data(lambda x, s, _c: fp(x, s), model.scheduler_config, artifact.timesteps,
                                    model.sample_shape, 32, 0, 32, progress=False)
    with torch.no_grad():
        x, step = data.samples, data.step_index
        assert torch.allclose(with_correction(x, step), without(x, step) - table[step], atol=1e-6)
        # measured again from the artifact's simulation: the same table (the gate may zero rows; both agree)
        again = measure_output_correction(without, fp, data, "pixel")
    assert torch.allclose(again, table, atol=1e-5)
    assert torch.count_nonzero(table) > 0  # 4-bit min-max on a random UNet leaves a mean error worth a row


def test_the_exported_graph_subtracts_the_same_row(corrected):
    """The graph with the correction = the graph without it minus the step's row (Gather + Sub)."""
    model, artifact = corrected
    plain = replace(artifact, tensors={k: v for k, v in artifact.tensors.items() if k != OUTPUT_CORRECTION_KEY})
    graph = build_onnx(model, artifact, "onnxruntime")
    assert any(init.name.endswith("output_correction.table") for init in graph.graph.initializer)
    sample = np.random.default_rng(0).normal(size=(4, *model.sample_shape)).astype(np.float32)
    rows = np.array([3, 0, 2, 1], dtype=np.int64)
    outputs = []
    for g in (graph, build_onnx(model, plain, "onnxruntime")):
        session = ort.InferenceSession(g.SerializeToString(), providers=["CPUExecutionProvider"])
        outputs.append(session.run(["noise_pred"], {"sample": sample, "step_index": rows})[0])
    table = artifact.tensors[OUTPUT_CORRECTION_KEY].numpy()
    np.testing.assert_allclose(outputs[0], outputs[1] - table[rows], atol=1e-5)
    # the per-pixel table fixes the graph's height and width (the plain graph keeps them dynamic)
    dims = [d.dim_value or d.dim_param for d in graph.graph.input[0].type.tensor_type.shape.dim]
    assert dims[2:] == list(model.sample_shape[1:])
    with pytest.raises(TfmqError, match=r"^--timesteps all: this artifact corrects the output per calibrated step"):
        table_rows(model, artifact, "all")


def test_a_per_pixel_correction_refuses_another_resolution_and_a_wrong_table_is_refused(corrected):
    model, artifact = corrected
    sim = simulation_from_artifact(model.unet, artifact)
    channels, height, width = model.sample_shape
    with torch.no_grad(), pytest.raises(TfmqError, match="needs the calibration's resolution"):
        sim(torch.zeros(1, channels, height * 2, width * 2), torch.zeros(1, dtype=torch.int64))
    broken = replace(artifact, tensors={**artifact.tensors, OUTPUT_CORRECTION_KEY: torch.zeros(3, channels, 1, 1)})
    assert "correction.output has shape [3, " in artifact_problem(broken)
    with pytest.raises(TfmqError):
        ExtraOptions.parse({"output_correction": "per-pixel"})


def test_with_per_step_factors_the_correction_is_measured_on_the_deployed_grids(loaded_unet2d):
    """tfmq's ``step_factors`` quantize each step on its own grid; the correction must be the mean error of
    that simulation (the one the artifact deploys), not of the static-scale one the method ends with."""
    settings = CalibrationSettings(method="tfmq", wbits=4, abits=8, steps=4, num_samples=32, iters=2,
                                   extra={"output_correction": "pixel", "step_factors": True, "tiar_iters": 2,
                                          "recon_batch_size": 16})
    artifact = calibrate(loaded_unet2d, settings, progress=False)
    assert any(k.endswith(".input_step_factor") for k in artifact.tensors)
    table = artifact.tensors[OUTPUT_CORRECTION_KEY]
    plain = replace(artifact, tensors={k: v for k, v in artifact.tensors.items() if k != OUTPUT_CORRECTION_KEY})
    static = replace(plain, tensors={k: v for k, v in plain.tensors.items() if not k.endswith(".input_step_factor")})
    fp = build_table_unet(loaded_unet2d.unet, artifact.timesteps).eval()
    data = collect_calibration_data(lambda x, s, _c: fp(x, s), loaded_unet2d.scheduler_config, artifact.timesteps,
                                    loaded_unet2d.sample_shape, 32, 0, 32, progress=False)
    with torch.no_grad():
        deployed = measure_output_correction(simulation_from_artifact(loaded_unet2d.unet, plain), fp, data, "pixel")
        static_grid = measure_output_correction(simulation_from_artifact(loaded_unet2d.unet, static), fp, data,
                                                "pixel")
    assert torch.allclose(deployed, table, atol=1e-5)
    assert not torch.allclose(static_grid, table, atol=1e-5)  # the factors change the error it corrects
