"""``--offload``: top-level blocks visit the device only while they run (``calibration.offload``).

Without a GPU the mechanism is checked with the CPU as the "device": loading a block always copies
its tensors (``copy=True``), so a block runs on other storage than it rests on, exactly as on a GPU.
Checked here: a forward answers what the plain module answers, every parameter is back on the very
tensor it rested on, what a forward writes into buffers (activation statistics) comes back, the
resident block stays where it is, and a whole tfmq / qdiff calibration through the mechanism gives
the artifact of a plain run bit for bit. The pipeline refuses ``--offload`` on the CPU in one line.
The peak-memory test needs CUDA and is skipped without it.
"""

from __future__ import annotations

import copy

import pytest
import torch
from click.testing import CliRunner
from diffusers import UNet2DModel

from tests.calibration.test_adaround import micro_model
from tfmq_export.calibration import pipeline
from tfmq_export.calibration.offload import BlockOffload, top_level_blocks
from tfmq_export.calibration.pipeline import run_calibration
from tfmq_export.cli import cli
from tfmq_export.config import CalibrationSettings
from tfmq_export.errors import TfmqError
from tfmq_export.models.loading import LoadedModel
from tfmq_export.quant.modules import ActMode
from tfmq_export.quant.simulate import quant_layers, quantize_model, set_act_mode
from tfmq_export.quant.steps import observing_steps
from tfmq_export.temporal import build_table_unet

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")
X = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
STEP = torch.tensor([0, 2])


def _ptr(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().data_ptr()


def _table():
    return build_table_unet(micro_model().unet, [999, 500, 0]).eval()


def _settings(method: str, **extra) -> CalibrationSettings:
    return CalibrationSettings(method=method, wbits=4, abits=8, steps=3, num_samples=2, batch_size=2, iters=2,
                               seed=0, extra={"act_iters": 1, **extra})


@torch.no_grad()
def test_an_offloaded_forward_answers_as_the_plain_one_and_puts_every_tensor_back():
    table = _table()
    plain = table(X, STEP)
    rest = {n: (p, _ptr(p)) for n, p in table.named_parameters()}
    conv = table.unet.down_blocks[0].resnets[0].conv1
    during: list[int] = []
    conv.register_forward_pre_hook(lambda module, _args: during.append(_ptr(module.weight)))
    offload = BlockOffload(CPU)
    offload.attach(table.unet)
    assert torch.equal(table(X, STEP), plain)
    assert during[-1] != rest["unet.down_blocks.0.resnets.0.conv1.weight"][1]  # it ran on the moved copy
    assert not offload._loaded  # every block went back after it ran
    for name, param in table.named_parameters():
        assert param is rest[name][0] and _ptr(param) == rest[name][1], name
    offload.detach(table.unet)
    assert not table.unet._forward_pre_hooks
    assert all(not b._forward_pre_hooks and not b._forward_hooks for b in top_level_blocks(table.unet))


@torch.no_grad()
def test_what_a_forward_writes_comes_back_and_the_resident_block_stays():
    sim = _table()
    layers = quantize_model(sim, 8, 8)
    set_act_mode(layers, ActMode.OBSERVING)
    twin = copy.deepcopy(sim)
    with observing_steps(STEP):
        twin(X, STEP)
    offload = BlockOffload(CPU)
    offload.attach(sim.unet)
    block = sim.unet.get_submodule("down_blocks.1.attentions.0")
    seen: list[int] = []
    block.register_forward_pre_hook(lambda module, _args: seen.append(_ptr(module.to_q.weight)))
    with offload.resident(block):
        resident = _ptr(block.to_q.weight)
        with observing_steps(STEP):
            sim(X, STEP)
        assert seen == [resident]  # the pass did not move the block being learned
    for name, layer in quant_layers(twin).items():
        for buffer in ("step_min", "step_max", "step_count"):
            assert torch.equal(getattr(layers[name].input_quantizer, buffer),
                               getattr(layer.input_quantizer, buffer)), (name, buffer)


@pytest.mark.parametrize("method", ["tfmq", "qdiff"])
def test_a_calibration_through_the_offload_gives_the_plain_artifact(method, monkeypatch):
    plain = run_calibration(micro_model(), _settings(method), None, progress=False).artifact
    monkeypatch.setattr(pipeline, "check_offload", lambda *_: None)  # the CPU stands in for the GPU
    model = micro_model()
    offloaded = run_calibration(model, _settings(method, offload=True), None, progress=False).artifact
    assert offloaded.settings["extra"]["offload"] is True
    assert plain.tensors.keys() == offloaded.tensors.keys()
    for key, value in plain.tensors.items():
        assert torch.equal(value, offloaded.tensors[key]), key
    assert not model.unet._forward_pre_hooks


def test_offload_on_the_cpu_is_one_line(tmp_path):
    with pytest.raises(TfmqError, match=r"^--offload .* needs --device cuda \(this run is on cpu"):
        run_calibration(micro_model(), _settings("tfmq", offload=True), None, progress=False)
    result = CliRunner().invoke(cli, ["calibrate", "digits", "--method", "tfmq", "--offload", "--out",
                                      str(tmp_path / "out")])
    assert result.exit_code != 0
    assert result.output.strip().startswith("Error: --offload keeps the UNets in CPU memory")
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def _wide_model() -> LoadedModel:
    """Weights (~12 MB) far above the activations of 2 inputs at 8x8, so the UNet's copies dominate."""
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(128, 256),
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), layers_per_block=1, norm_num_groups=8,
                       attention_head_dim=8).eval()
    return LoadedModel("wide", unet, dict(micro_model().scheduler_config), "test")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_offload_lowers_the_peak_cuda_memory():
    plain = run_calibration(_wide_model(), _settings("tfmq"), None, progress=False, device="cuda").artifact
    offloaded = run_calibration(_wide_model(), _settings("tfmq", offload=True), None, progress=False,
                                device="cuda").artifact
    for stage in ("data", "method"):
        assert offloaded.timings[f"peak_cuda_mb_{stage}"] < plain.timings[f"peak_cuda_mb_{stage}"], stage
