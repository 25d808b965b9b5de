"""TFMQ (TIB, TIAR, FSC, static-scale rules) and qdiff: behaviour on tiny random UNets, and that both
methods' artifacts export to ONNX graphs that onnxruntime runs like the simulation."""

from __future__ import annotations

import copy

import numpy as np
import onnxruntime as ort
import pytest
import torch

from tests.calibration.test_adaround import micro_model
from tests.conftest import rel_l2, tiny_unet2d, tiny_unet_cond
from tfmq_export import config
from tfmq_export.calibration.activations import mse_static_scale
from tfmq_export.calibration.pipeline import calibrate, run_calibration
from tfmq_export.calibration.reconstruction import ReconstructionOptions
from tfmq_export.calibration.tfmq import finite_set_calibration, quantize_branch, temporal_error, tiar
from tfmq_export.calibration.weights import init_weight_scales
from tfmq_export.config import CalibrationSettings
from tfmq_export.errors import TfmqError
from tfmq_export.export.onnx_export import build_onnx
from tfmq_export.models.loading import DEFAULT_SCHEDULER_CONFIG
from tfmq_export.quant.state import simulation_from_artifact
from tfmq_export.sampling import sampler_timesteps
from tfmq_export.temporal import TemporalBranch, compute_temporal_features

#: W4A16: no activation rounding, so the tensorrt-target graph computes the simulation's function up
#: to float accumulation order (integers, scales and the table are checked exactly by this bound).
#: onnxruntime's graph optimisations are off for this check: its fused INT4 MatMul kernel
#: (MatMulNBits) approximates the blocked-INT4 DequantizeLinear + MatMul (measured 0.0025).
EXACT_BOUND = 1e-5
#: W4A8: an activation that lands within float error of a rounding boundary rounds to the other
#: integer in the graph (one quantization step); a random 4-bit UNet amplifies that: one such flip
#: at the first layer measured 0.027 at the output. A wrong scale or wrong integers give O(0.3-1).
A8_BOUND = 0.1


#: one intra-op thread for every test here (fixture in tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread")


def _settings(method: str, **kw) -> CalibrationSettings:
    base = dict(method=method, wbits=4, abits=8, steps=4, num_samples=4, batch_size=16, iters=10,
                extra={"act_iters": 5})
    base.update(kw)
    return CalibrationSettings(**base)


def calibrate_with_result(model, settings):
    """``calibrate`` plus the ``MethodResult`` the method returned (kept by ``run_calibration``)."""
    run = run_calibration(model, settings, progress=False)
    return run.artifact, run.result


@pytest.fixture(scope="module")
def micro():
    return micro_model()


@pytest.mark.parametrize("make", [tiny_unet2d, tiny_unet_cond])
def test_temporal_branch_computes_the_table(make):
    unet = make()
    timesteps = [999, 500, 20, 0]
    expected = compute_temporal_features(unet, timesteps)
    got = TemporalBranch(unet, timesteps).table()
    assert list(got) == list(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_tiar_lowers_the_temporal_feature_error(micro):
    """TIAR's learned rounding beats round-to-nearest on sum_i ||g_i(h(t)) - g^_i(h^(t))||^2."""
    timesteps = sampler_timesteps(DEFAULT_SCHEDULER_CONFIG, 10)
    targets = TemporalBranch(micro.unet, timesteps).table()
    branch = TemporalBranch(micro.unet, timesteps).requires_grad_(False)
    layers = quantize_branch(branch, 4, 8)
    assert "time_embedding.linear_1" not in layers and "time_embedding.linear_2" in layers  # linear_1 stays FP
    assert len(layers) == 1 + len(targets)
    init_weight_scales(layers)
    rtn_error = temporal_error(branch, targets)
    result, _ = tiar(branch, layers, targets, ReconstructionOptions(iters=300), 300, 0, progress=False)
    assert result.error_before == pytest.approx(rtn_error)
    assert result.error_after < 0.7 * rtn_error
    assert all(layer.weight_quantizer.weight_int.numel() for layer in layers.values())  # frozen


def test_fsc_quantizes_every_step_with_its_own_range(micro):
    timesteps = sampler_timesteps(DEFAULT_SCHEDULER_CONFIG, 6)
    branch = TemporalBranch(micro.unet, timesteps).requires_grad_(False)
    layers = quantize_branch(branch, 16, 8)  # activations only: the error below is the per-step A8 error
    finite_set_calibration(branch, layers)
    for layer in layers.values():
        aq = layer.input_quantizer
        assert aq.step_count.tolist() == [1] * len(timesteps)  # one observation per step, all steps
        assert torch.isfinite(aq.step_scales()).all() and (aq.step_scales() > 0).all()
        assert len(set(aq.step_scales().tolist())) > 1  # the ranges do differ between steps
    fsc_error = temporal_error(branch, TemporalBranch(micro.unet, timesteps).table())
    # one static scale (the largest step's) instead: coarser for every other step
    for layer in layers.values():
        aq = layer.input_quantizer
        top = aq.step_absmax().max()
        aq.step_min.fill_(-float(top))
        aq.step_max.fill_(float(top))
    static_error = temporal_error(branch, TemporalBranch(micro.unet, timesteps).table())
    assert fsc_error < static_error


def test_per_step_statistics_have_one_entry_per_table_row(micro):
    settings = _settings("tfmq", steps=5, temporal_table="quantized")
    artifact, extras = calibrate_with_result(micro, settings)
    steps = len(artifact.timesteps)
    assert steps == 5
    for name in artifact.layers:
        lo, hi = artifact.layer_tensor(name, "input_step_min"), artifact.layer_tensor(name, "input_step_max")
        assert lo.shape == hi.shape == (steps,), name
        assert torch.isfinite(lo).all() and torch.isfinite(hi).all() and (lo <= hi).all(), name
    tables = artifact.temporal_tables()
    for resnet, rows in tables.items():
        assert rows.shape[0] == steps
        assert torch.equal(extras.tensors[f"fsc.{resnet}.step_min"], rows.amin(dim=1))
        assert torch.equal(extras.tensors[f"fsc.{resnet}.step_max"], rows.amax(dim=1))
    tib = [k for k in extras.tensors if k.startswith("tib.") and k.endswith("input_step_min")]
    assert tib and all(extras.tensors[k].shape == (steps,) for k in tib)
    assert set(extras.timings) >= {"method_seconds", "tiar_seconds", "weight_recon_seconds"}


def test_temporal_table_choice(micro):
    fp_table = compute_temporal_features(micro.unet, sampler_timesteps(DEFAULT_SCHEDULER_CONFIG, 4))
    fp_art = calibrate(micro, _settings("tfmq", temporal_table="fp"), progress=False)
    q_art = calibrate(micro, _settings("tfmq", temporal_table="quantized"), progress=False)
    qdiff_art = calibrate(micro, _settings("qdiff"), progress=False)
    assert fp_art.temporal_table == "fp" and q_art.temporal_table == "quantized"
    assert qdiff_art.temporal_table == "quantized"  # the baseline always deploys its quantized time path
    for resnet, rows in fp_table.items():
        assert torch.equal(fp_art.temporal_tables()[resnet], rows)
    diff_q = sum(float((q_art.temporal_tables()[r] - rows).pow(2).sum()) for r, rows in fp_table.items())
    diff_qdiff = sum(float((qdiff_art.temporal_tables()[r] - rows).pow(2).sum()) for r, rows in fp_table.items())
    assert diff_q > 0 and diff_qdiff > 0
    with pytest.raises(TfmqError, match="temporal-table"):
        calibrate(micro, _settings("tfmq", temporal_table="int8"), progress=False)


def test_mse_rule_clips_outliers_and_keeps_dense_ranges():
    bins, limit = 4096, 10.0
    centres = torch.linspace(-limit, limit, bins + 1)[:-1] + limit / bins
    # two steps: one narrow Gaussian, one with a single far outlier per 10^5 values
    narrow = torch.exp(-0.5 * (centres / 0.5) ** 2) * 1e5
    outlier = narrow.clone()
    outlier[-1] += 1
    hist = torch.stack([narrow, outlier]).double()
    scale = float(mse_static_scale(hist, limit, (-128, 127)))
    assert scale < 0.5 * limit / 127  # the max rule would keep the outlier and round everything coarsely
    uniform = torch.ones(2, bins, dtype=torch.float64)
    assert float(mse_static_scale(uniform, limit, (-128, 127))) > 0.9 * limit / 127


@pytest.mark.parametrize("method", ["minmax", "tfmq"])
def test_mse_rule_in_calibration(micro, method):
    static = {"joint_act": False}  # the rule's scales as they are (tfmq's default learns from them)
    max_art = calibrate(micro, _settings(method, static_scale_rule="max", extra=static), progress=False)
    mse_art = calibrate(micro, _settings(method, static_scale_rule="mse", extra=static), progress=False)
    max_scales = {n: float(max_art.layer_tensor(n, "input_scale")) for n in max_art.layers}
    mse_scales = {n: float(mse_art.layer_tensor(n, "input_scale")) for n in mse_art.layers}
    assert all(mse_scales[n] <= max_scales[n] * (1 + 1e-6) for n in max_scales)
    assert any(mse_scales[n] < 0.95 * max_scales[n] for n in max_scales)
    assert mse_art.static_scale_rule == "mse"
    with pytest.raises(TfmqError, match="static-scale-rule"):
        calibrate(micro, _settings(method, static_scale_rule="p99"), progress=False)


def test_default_iteration_budget_is_recorded(monkeypatch, micro):
    """--iters left out (0) runs the default budget, and the artifact says which number that was."""
    monkeypatch.setattr(config, "DEFAULT_ITERS", 7)
    artifact, extras = calibrate_with_result(micro, _settings("tfmq", iters=0))
    assert artifact.settings["iters"] == 7
    assert {r.iters for r in extras.weights} == {7}


@pytest.mark.parametrize("method", ["qdiff", "tfmq"])
@pytest.mark.parametrize(("abits", "targets", "bound"), [
    (16, ("tensorrt",), EXACT_BOUND),
    (8, ("tensorrt", "onnxruntime"), A8_BOUND),
])
def test_artifacts_export_and_onnxruntime_agrees_with_simulation(micro, method, abits, targets, bound):
    split = method == "qdiff" and abits < 16  # qdiff with its split skip inputs, end to end through both targets
    extra = {"act_iters": 5, "split_skip": split}
    artifact = calibrate(micro, _settings(method, abits=abits, temporal_table="quantized", extra=extra),
                         progress=False)
    assert any(k.endswith(".input_split") for k in artifact.tensors) == split
    gen = torch.Generator().manual_seed(3)
    sample = torch.randn((3, *micro.sample_shape), generator=gen)
    rows = torch.tensor([0, 2, 3])
    options = ort.SessionOptions()
    if abits == 16:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    for target in targets:
        with torch.no_grad():
            expected = simulation_from_artifact(micro.unet, artifact, target)(sample, rows).numpy()
        graph = build_onnx(micro, artifact, target)
        assert any(n.op_type == "Split" for n in graph.graph.node) == split
        session = ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])
        out = session.run(["noise_pred"], {"sample": sample.numpy(), "step_index": rows.numpy()})[0]
        assert np.isfinite(out).all()
        assert rel_l2(out, expected) < bound, target


def test_bad_options_are_refused(micro):
    with pytest.raises(TfmqError, match="unknown calibration option"):
        calibrate(micro, _settings("tfmq", extra={"iterations": 5}), progress=False)
    with pytest.raises(TfmqError, match="non-negative"):
        calibrate(micro, _settings("qdiff", extra={"act_iters": -1}), progress=False)
    with pytest.raises(TfmqError, match="true or false"):
        calibrate(micro, _settings("qdiff", extra={"split_skip": "yes"}), progress=False)
    with pytest.raises(TfmqError, match="iters"):
        calibrate(micro, _settings("tfmq", iters=-3), progress=False)
    with pytest.raises(TfmqError, match="qdrop is a probability"):
        calibrate(micro, _settings("tfmq", extra={"qdrop": 1.5}), progress=False)


def test_split_skip_quantization_exports_exactly(micro):
    """qdiff's split_skip: two scales for the concatenated up-block inputs, rebuilt in the simulation
    and written as Split -> (Q/DQ -> Conv) x 2 -> Add; teacher-forced, each split layer of the graph
    computes exactly what the simulated layer computes."""
    import onnx

    from tfmq_export.export.qdq import onnx_scope
    from tfmq_export.quant.modules import SplitActQuantizer
    from tfmq_export.quant.simulate import quant_layers

    settings = _settings("qdiff", extra={"act_iters": 5, "split_skip": True})
    artifact, extras = calibrate_with_result(micro, settings)
    split = {k.removesuffix(".input_split"): int(v) for k, v in extras.tensors.items() if k.endswith(".input_split")}
    assert set(split) == {f"up_blocks.{b}.resnets.{r}.{c}" for b in (0, 1) for r in (0, 1)
                          for c in ("conv1", "conv_shortcut")}
    assert split["up_blocks.0.resnets.0.conv1"] == 32  # h (32 channels) comes first, then the skip
    artifact.tensors.update(extras.tensors)  # what the pipeline is to do with the method's tensors
    sim = simulation_from_artifact(micro.unet, artifact)  # installs the split quantizers itself
    split_in_sim = {n for n, layer in quant_layers(sim).items() if isinstance(layer.input_quantizer, SplitActQuantizer)}
    assert split_in_sim == set(split)
    graph = build_onnx(micro, artifact, "tensorrt")  # applies the split Q/DQ and passes the TensorRT lint
    onnx.checker.check_model(graph)
    probes = []
    for name in split:
        scope = onnx_scope(name)
        node = {n.name: n for n in graph.graph.node}
        probes.append((name, node[f"{scope}input_Split"].input[0], node[f"{scope}split_Add"].output[0]))
    for _, a, b in probes:
        graph.graph.output.extend(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in (a, b))
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    sample = torch.randn((2, *micro.sample_shape), generator=torch.Generator().manual_seed(4))
    names = [t for _, a, b in probes for t in (a, b)]
    values = dict(zip(names, session.run(names, {"sample": sample.numpy(), "step_index": np.array([0, 3])})))
    for name, a, b in probes:
        layer = sim.unet.get_submodule(name)
        assert isinstance(layer.input_quantizer, SplitActQuantizer)
        assert float(layer.input_quantizer.scale_split) != float(layer.input_quantizer.scale)
        with torch.no_grad():
            expected = layer(torch.from_numpy(values[a])).numpy()
        assert rel_l2(values[b], expected) < EXACT_BOUND, name


def test_calibration_recipes_are_valid():
    """Every shipped recipe (tfmq_export/recipes/*.json, package data) is a CalibrationSettings (+ model,
    notes) whose options the methods accept."""
    import json
    from dataclasses import fields
    from pathlib import Path

    import tfmq_export.recipes

    recipes = sorted(Path(tfmq_export.recipes.__file__).parent.glob("*.json"))
    names = {p.name for p in recipes}
    assert {"digits-w8a8.json", "digits-w4a8.json", "ldm-bedroom-w4a8.json", "sd-v1-4-w4a8.json"} <= names
    known = {f.name for f in fields(CalibrationSettings)}
    for path in recipes:
        recipe = json.loads(path.read_text())
        assert recipe.pop("model") and recipe.pop("notes"), path.name
        assert set(recipe) <= known, path.name
        settings = CalibrationSettings(**recipe)
        assert settings == config.settings_from(config.load_recipe(path.stem))  # by name, strictly checked
        options = ReconstructionOptions.from_settings(settings)
        assert options.iters == settings.iters > 0
        assert settings.static_scale_rule in ("max", "mse") and settings.temporal_table in ("fp", "quantized")
    paper = [json.loads(p.read_text()) for p in recipes if not p.name.startswith("digits")]
    assert all(r["iters"] == 20000 for r in paper)  # the authors' iterations per block


def test_bounded_cache_spreads_iterations_over_chunks(micro):
    """With a tiny ``cache_mb`` the block inputs are cached chunk by chunk (and activation
    quantization can be on during reconstruction); every block still gets its iterations."""
    settings = _settings("tfmq", extra={"cache_mb": 0.02, "recon_batch_size": 4, "recon_act_quant": True})
    artifact, extras = calibrate_with_result(micro, settings)
    results = extras.weights
    assert results and all(r.iters == settings.iters for r in results)
    assert max(r.chunks for r in results) > 1
    assert all(np.isfinite(r.loss_after) for r in results)
    assert all(torch.isfinite(t).all() for t in artifact.tensors.values())


def test_step_factors_export_and_match_the_simulation(micro):
    """tfmq's step_factors: every activation quantizer on its own step's min-max grid around one
    static scale; the graph (Mul(1/r_t) -> Q/DQ -> layer -> Mul(r_t) -> bias) computes the simulation,
    for both targets."""
    import onnx

    from tfmq_export.quant.modules import StepFactorActQuantizer
    from tfmq_export.quant.simulate import quant_layers

    # split skip inputs keep their two static scales (no factors); off here so every quantizer is factored;
    # static scales (joint_act off) so the factors are the steps' ranges around the rule's scale
    # (and every layer 4-bit, as when this was written: the micro model's steps then differ by more than 1.5x)
    extra = {"step_factors": True, "split_skip": False, "joint_act": False, "w8_classes": []}
    artifact = calibrate(micro, _settings("tfmq", extra=extra), progress=False)
    factors = {k: v for k, v in artifact.tensors.items() if k.endswith(".input_step_factor")}
    assert factors and all(v.numel() == len(artifact.timesteps) for v in factors.values())
    assert any(float(v.max() / v.min()) > 1.5 for v in factors.values())  # the steps' ranges differ
    sim = simulation_from_artifact(micro.unet, artifact)
    installed = [q for q in quant_layers(sim).values() if isinstance(q.input_quantizer, StepFactorActQuantizer)]
    assert len(installed) == len(factors)
    plain = copy.copy(artifact)
    plain.tensors = {k: v for k, v in artifact.tensors.items() if k not in factors}
    sample = torch.randn((3, *micro.sample_shape), generator=torch.Generator().manual_seed(3))
    rows = torch.tensor([0, 2, 3])
    with torch.no_grad():
        expected = sim(sample, rows).numpy()
        static = simulation_from_artifact(micro.unet, plain)(sample, rows).numpy()
    assert rel_l2(expected, static) > 1e-3  # the factors change what is computed
    graph = build_onnx(micro, artifact, "tensorrt")  # passes the TensorRT lint
    onnx.checker.check_model(graph)
    assert sum(n.op_type == "Mul" and "step_factor" in n.name for n in graph.graph.node) == 2 * len(factors)
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    out = session.run(["noise_pred"], {"sample": sample.numpy(), "step_index": rows.numpy()})[0]
    assert rel_l2(out, expected) < A8_BOUND
    assert rel_l2(out, expected) < rel_l2(static, expected)
    # --target onnxruntime: the same factors, no output Q/DQ on factored layers (they run in float there)
    graph = build_onnx(micro, artifact, "onnxruntime")
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    out = session.run(["noise_pred"], {"sample": sample.numpy(), "step_index": rows.numpy()})[0]
    with torch.no_grad():
        expected = simulation_from_artifact(micro.unet, artifact, "onnxruntime")(sample, rows).numpy()
    assert rel_l2(out, expected) < A8_BOUND


def test_joint_act_learns_scales_with_the_rounding(micro):
    """tfmq's joint_act: the activation scales start from the FSC statistics (the static rule) and
    are learned in the same block loop as the rounding, with activation quantization on; the
    learned scales are what the artifact (and so the exported graph) carries."""
    extra = {"split_skip": False}
    static = calibrate(micro, _settings("tfmq", extra={**extra, "joint_act": False}), progress=False)
    artifact, result = calibrate_with_result(micro, _settings("tfmq", extra={**extra, "joint_act": True,
                                                                              "qdrop": 0.5}))
    assert result.weights and not result.act  # one pass: no separate activation stage
    assert all(np.isfinite(r.loss_after) for r in result.weights if r.iters)
    keys = [k for k in artifact.tensors if k.endswith(".input_scale")]
    assert keys
    moved = [k for k in keys if not torch.allclose(artifact.tensors[k], static.tensors[k])]
    assert len(moved) >= len(keys) // 2  # learned, not the static rule's values
    sample = torch.randn((3, *micro.sample_shape), generator=torch.Generator().manual_seed(3))
    rows = torch.tensor([0, 2, 3])
    with torch.no_grad():
        expected = simulation_from_artifact(micro.unet, artifact)(sample, rows).numpy()
    graph = build_onnx(micro, artifact, "tensorrt")
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    out = session.run(["noise_pred"], {"sample": sample.numpy(), "step_index": rows.numpy()})[0]
    assert rel_l2(out, expected) < A8_BOUND


def test_tfmq_splits_the_skip_inputs_like_qdiff(micro):
    """split_skip (on by default) applies to tfmq too: two scales for the concatenated inputs."""
    on = calibrate(micro, _settings("tfmq"), progress=False)
    off = calibrate(micro, _settings("tfmq", extra={"split_skip": False}), progress=False)
    assert any(k.endswith(".input_split") for k in on.tensors)
    assert not any(k.endswith(".input_split") for k in off.tensors)


def test_qdrop_mixes_float_and_quantized_activations_only_under_autograd():
    """QDrop: with drop_prob p, about p of the elements keep their float value in the loss pass;
    inference (no autograd) is always fully quantized, and the same generator seed repeats the mask."""
    from tfmq_export.quant.modules import ActMode, ActQuantizer

    aq = ActQuantizer(8, 1)
    aq.set_scale(0.1)
    aq.mode = ActMode.QUANTIZING
    x = torch.rand(4000) * 3
    quantized = aq(x)
    aq.drop_prob, aq.drop_generator = 0.5, torch.Generator().manual_seed(0)
    with torch.no_grad():
        assert torch.equal(aq(x), quantized)
    with torch.enable_grad():
        mixed = aq(x)
        aq.drop_generator = torch.Generator().manual_seed(0)
        again = aq(x)
    kept = (mixed == x) & (quantized != x)
    assert 0.4 < kept.float().mean() / (quantized != x).float().mean() < 0.6
    assert torch.equal(mixed, again)
