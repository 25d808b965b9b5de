"""``--device``: checked in one line, CPU artifacts unchanged by it, and every tensor of the run on the device.

No GPU is needed: the plumbing is checked on the ``meta`` device (shapes only, no data), and the
CUDA-vs-CPU comparison runs only where ``torch.cuda.is_available()``. Its tolerance (see
docs/CALIBRATION.md, "Calibrating on a GPU"): settings, layers and tensor shapes identical; at least
99% of the integer weights equal and the others one grid step apart (AdaRound's hard rounding is a
threshold, alpha >= 0, that reduction-order differences can flip); every float tensor within 2%
relative L2 (an MSE-searched weight scale can move to the neighbouring 1% candidate); the simulated
outputs of the two artifacts within 2% relative L2 of each other.
"""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from tests.calibration.test_adaround import micro_model
from tfmq_export.artifact import JSON_NAME, TENSORS_NAME, load_artifact
from tfmq_export.calibration.data import CalibrationData, device_denoiser
from tfmq_export.calibration.pipeline import calibrate
from tfmq_export.calibration.qdiff import attach_live_temporal_branch, quantize_temporal_branch
from tfmq_export.calibration.tfmq import quantize_branch
from tfmq_export.cli import cli
from tfmq_export.config import CalibrationSettings
from tfmq_export.device import check_device_syntax, cpu_tensors, resolve_device, to_device
from tfmq_export.errors import TfmqError
from tfmq_export.quant import grids
from tfmq_export.quant.simulate import quantize_model
from tfmq_export.temporal import TemporalBranch, TemporalTableUNet

META = torch.device("meta")
NO_CUDA = not torch.cuda.is_available()

pytestmark = pytest.mark.usefixtures("one_thread")


def _settings(method: str = "tfmq", wbits: int = 8) -> CalibrationSettings:
    return CalibrationSettings(method=method, wbits=wbits, abits=8, steps=3, num_samples=4, batch_size=16, iters=8,
                               seed=3, extra={"act_iters": 2})


def _all_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(module.named_parameters()), **dict(module.named_buffers())}


# 1. the value ------------------------------------------------------------------------------------


@pytest.mark.parametrize("good", ["cpu", "cuda", "cuda:0", "cuda:12"])
def test_device_syntax_accepts_cpu_cuda_and_an_index(good):
    assert check_device_syntax(good) == good


@pytest.mark.parametrize("bad", ["gpu", "cuda:", "cuda:-1", "cuda:x", "CPU", "cuda:0:1", "", "meta", "mps"])
def test_malformed_device_is_one_line(bad):
    with pytest.raises(TfmqError, match="choose cpu, cuda or cuda:N") as info:
        resolve_device(bad)
    assert "\n" not in str(info.value)


@pytest.mark.skipif(not NO_CUDA, reason="CUDA is available here")
@pytest.mark.parametrize("spec", ["cuda", "cuda:1"])
def test_unavailable_cuda_names_the_torch_build(spec):
    major_minor = ".".join(torch.__version__.split("+")[0].split(".")[:2])
    with pytest.raises(TfmqError, match=rf"CUDA is not available \(torch {major_minor} built for ") as info:
        resolve_device(spec)
    built_for_cpu = torch.version.cuda is None
    assert ("built for CPU)" in str(info.value)) == built_for_cpu
    assert resolve_device(None) == resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("value", ["gpu", "cuda:1:2"] + (["cuda", "cuda:0"] if NO_CUDA else []))
def test_cli_refuses_a_bad_device_in_one_line_writing_nothing(tmp_path, value):
    out = tmp_path / "art"
    result = CliRunner().invoke(cli, ["calibrate", "digits", "--out", str(out), "--method", "minmax",
                                      "--device", value])
    assert result.exit_code in (1, 2)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:") and "--device" in lines[0], result.output
    assert not out.exists()


@pytest.mark.parametrize("command", ["calibrate", "evaluate", "sample", "bench", "demo"])
def test_every_torch_command_has_the_device_option(command):
    option = next((p for p in cli.commands[command].params if p.name == "device"), None)
    assert option is not None and option.default == "cpu" and option.show_default


# 2. CPU: the option changes nothing in the artifact -----------------------------------------------


def test_cli_device_cpu_writes_the_artifact_of_no_option(unet2d_dir, tmp_path):
    args = ["calibrate", str(unet2d_dir), "--method", "minmax", "--wbits", "8", "--abits", "8", "--steps", "3",
            "--num-samples", "2", "--quiet"]
    for name, extra in (("plain", []), ("cpu", ["--device", "cpu"])):
        result = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / name), *extra])
        assert result.exit_code == 0, result.output
    assert (tmp_path / "plain" / TENSORS_NAME).read_bytes() == (tmp_path / "cpu" / TENSORS_NAME).read_bytes()
    plain, cpu = (json.loads((tmp_path / n / JSON_NAME).read_text()) for n in ("plain", "cpu"))
    assert plain["settings"] == cpu["settings"] and "device" not in cpu["settings"]
    assert plain["timings"]["device"] == cpu["timings"]["device"] == "cpu"


@pytest.mark.parametrize("method", ["tfmq", "qdiff"])
def test_device_cpu_gives_the_same_tensors_byte_for_byte(tmp_path, method):
    model = micro_model()
    calibrate(model, _settings(method, wbits=4), tmp_path / "none", progress=False)
    calibrate(model, _settings(method, wbits=4), tmp_path / "cpu", progress=False, device="cpu")
    a, b = load_file(str(tmp_path / "none" / TENSORS_NAME)), load_file(str(tmp_path / "cpu" / TENSORS_NAME))
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
    assert (tmp_path / "none" / TENSORS_NAME).read_bytes() == (tmp_path / "cpu" / TENSORS_NAME).read_bytes()
    assert load_artifact(tmp_path / "cpu").settings == load_artifact(tmp_path / "none").settings
    assert next(model.unet.parameters()).device.type == "cpu"  # the caller's model stays where it was


# 3. plumbing: every tensor where it was asked to be (meta: shapes only) ---------------------------


def test_to_device_and_calibration_data_move_every_tensor():
    data = CalibrationData(torch.zeros(6, 1, 8, 8), torch.arange(6) % 3, torch.zeros(6, 2, 4), [9, 5, 1])
    moved = data.to(META)
    assert {t.device for t in (moved.samples, moved.step_index, moved.conditions)} == {META}
    assert moved.timesteps == [9, 5, 1]
    nested = to_device({"a": torch.ones(2), "b": [torch.ones(1), (torch.ones(1), 3)], "c": None}, META)
    assert nested["a"].is_meta and nested["b"][0].is_meta and nested["b"][1][0].is_meta
    assert nested["b"][1][1] == 3 and nested["c"] is None
    copies = cpu_tensors({"x": torch.ones(2, 3).t()})
    assert copies["x"].device.type == "cpu" and copies["x"].is_contiguous()


def test_denoiser_runs_on_the_model_device_and_answers_on_the_cpu():
    seen = {}
    on_meta = torch.nn.Linear(2, 2).to(META)

    def denoise(x, rows, feed):
        seen.update(x=x.device, rows=rows.device, feed={k: v.device for k, v in feed.items()})
        return torch.zeros(x.shape)

    out = device_denoiser(on_meta, denoise)(torch.ones(2, 2), torch.zeros(2, dtype=torch.int64),
                                            {"encoder_hidden_states": torch.ones(2, 3, 4)})
    assert seen == {"x": META, "rows": META, "feed": {"encoder_hidden_states": META}}
    assert out.device.type == "cpu"


def test_simulation_quantizers_and_tables_follow_the_unet_device():
    unet = micro_model().unet.to(META)
    sim = TemporalTableUNet(unet, _tables_for(unet), [9, 5, 1])  # the tables come from the CPU
    layers = quantize_model(sim, 4, 8)
    assert layers and {t.device for t in _all_tensors(sim).values()} == {META}
    layer = next(iter(layers.values()))
    layer.weight_quantizer.freeze_integers(torch.zeros(layer.weight.shape, dtype=torch.int8))  # from a checkpoint
    assert layer.weight_quantizer.weight_int.is_meta
    assert grids.mse_weight_scale(layer.weight, 4).is_meta  # the 80 candidates on the weight's device


def test_temporal_branch_and_live_qdiff_branch_follow_the_unet_device():
    unet = micro_model().unet.to(META)
    branch = TemporalBranch(unet, [9, 5, 1])
    quantize_branch(branch, 4, 8)
    assert {t.device for t in _all_tensors(branch).values()} == {META}
    sim = TemporalTableUNet(unet, _tables_for(unet), [9, 5, 1])
    attach_live_temporal_branch(sim, unet)
    quantize_temporal_branch(sim, unet, 4, 8)
    assert {t.device for t in _all_tensors(sim).values()} == {META}


def _resnets(unet: torch.nn.Module) -> list[str]:
    return [name for name, m in unet.named_modules() if getattr(m, "time_emb_proj", None) is not None]


def _tables_for(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Zero tables [T, C] on the CPU, C each ResBlock's projection width (what ``table()`` hands over)."""
    return {name: torch.zeros(3, unet.get_submodule(name).time_emb_proj.out_features) for name in _resnets(unet)}


# 4. CUDA against CPU (only where a GPU is) -------------------------------------------------------


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp(min=1e-12))


@pytest.mark.skipif(NO_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("wbits", [8, 4])
def test_cuda_calibration_matches_cpu_within_the_stated_tolerance(tmp_path, wbits):
    from tfmq_export.quant.state import simulation_from_artifact

    model = micro_model()
    cpu = calibrate(model, _settings("tfmq", wbits), tmp_path / "cpu", progress=False, device="cpu")
    gpu = calibrate(model, _settings("tfmq", wbits), tmp_path / "cuda", progress=False, device="cuda")
    assert gpu.timings["device"] == "cuda:0" and gpu.settings == cpu.settings and gpu.layers == cpu.layers
    assert gpu.tensors.keys() == cpu.tensors.keys()
    for key, ref in cpu.tensors.items():
        got = gpu.tensors[key]
        assert got.device.type == "cpu" and got.dtype == ref.dtype and got.shape == ref.shape, key
        if key.endswith("weight_int"):
            diff = (got.int() - ref.int()).abs()
            assert int(diff.max()) <= 1 and float((diff > 0).float().mean()) <= 0.01, key
        elif ref.is_floating_point() and torch.isfinite(ref).all():
            assert _rel(got, ref) <= 2e-2, key
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    rows = torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        out_cpu = simulation_from_artifact(model.unet, load_artifact(tmp_path / "cpu"))(x, rows)
        out_gpu = simulation_from_artifact(model.unet, load_artifact(tmp_path / "cuda"))(x, rows)
    assert _rel(out_gpu, out_cpu) <= 2e-2
