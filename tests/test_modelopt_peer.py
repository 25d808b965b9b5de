"""ModelOpt peers: real nvidia-modelopt on tiny random UNets (skipped where it is not installed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("modelopt.torch.quantization")

from tests.conftest import rel_l2
from tfmq_export.calibration.modelopt_peer import (
    FP_LAYERS,
    PEER_METHODS,
    calibration_loop,
    enabled_quantizers,
    peer_table_unet,
)
from tfmq_export.config import CalibrationSettings
from tfmq_export.errors import TfmqError
from tfmq_export.workflows import evaluate_peers
from tfmq_export.workflows.evaluate_peers import peer_samples, table_prompt_images

SETTINGS = CalibrationSettings(steps=3, num_samples=4, batch_size=4, seed=0)


@pytest.fixture(scope="module")
def peers(loaded_unet2d):
    """Both peers of the tiny UNet2DModel, calibrated once."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield {m: peer_table_unet(loaded_unet2d, m, SETTINGS) for m in PEER_METHODS}
    finally:
        torch.set_num_threads(threads)


def _quantizable(unet: torch.nn.Module) -> list[str]:
    """Conv/Linear layers the peers quantize: all but the ones the diffusers example keeps in FP."""
    return [name for name, m in unet.named_modules()
            if isinstance(m, torch.nn.Conv2d | torch.nn.Linear) and not FP_LAYERS.match(name)]


def test_int8_peer_quantizes_weights_and_inputs_at_8_bits(peers):
    peer = peers["modelopt-int8"]
    enabled = enabled_quantizers(peer.unet)
    layers = _quantizable(peer.unet)
    assert layers and set(enabled) == {f"{n}.{q}" for n in layers for q in ("weight_quantizer", "input_quantizer")}
    assert set(enabled.values()) == {8}
    # the diffusers example's FP layers
    assert not any("conv_in" in n or "conv_out" in n or "conv_shortcut" in n for n in enabled)


def test_w4a16_peer_leaves_activations_unquantized(peers):
    unet = peers["modelopt-w4a16"].unet
    enabled = enabled_quantizers(unet)
    assert set(enabled) == {f"{n}.weight_quantizer" for n in _quantizable(unet)}
    assert set(enabled.values()) == {4}
    # what docs/PEERS.md says of the grain: blocks along a Conv2d weight's last axis = one scale per kernel row
    convs = [m for n, m in unet.named_modules()
             if isinstance(m, torch.nn.Conv2d) and f"{n}.weight_quantizer" in enabled]
    assert convs and all(m.weight_quantizer.amax.numel() == m.weight.numel() // m.weight.shape[-1] for m in convs)


@pytest.mark.parametrize(("method", "bound"), [("modelopt-int8", 0.05), ("modelopt-w4a16", 0.2)])
def test_peer_output_differs_from_fp_but_stays_close(loaded_unet2d, peers, method, bound):
    from tfmq_export.temporal import build_table_unet

    peer = peers[method]
    fp = build_table_unet(loaded_unet2d.unet, peer.timesteps).eval()
    x = torch.randn(4, *loaded_unet2d.sample_shape, generator=torch.Generator().manual_seed(3))
    rows = torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        ref, out = fp(x, rows), peer.unet(x, rows)
    assert 1e-4 < rel_l2(out, ref) < bound
    assert peer.calibration_seconds > 0


def test_calibration_loop_feeds_every_input():
    from tfmq_export.calibration.data import CalibrationData

    data = CalibrationData(torch.zeros(5, 1, 2, 2), torch.arange(5), None, [9, 8, 7, 6, 5])
    seen = []
    calibration_loop(data, 2)(lambda _x, rows, _c: seen.append(rows.tolist()))
    assert seen == [[0, 1], [2, 3], [4]]


def test_peer_samples_shape_and_determinism(loaded_unet2d, one_thread):
    kwargs = {"num_images": 3, "calib_seed": 0, "steps": 3, "batch_size": 2, "progress": False}
    first = peer_samples(loaded_unet2d, "modelopt-int8", seed=5, **kwargs)
    assert first.images.shape == (3, *loaded_unet2d.sample_shape) and first.images.dtype == np.float32
    assert "sampled in torch" in first.note and first.calibration_seconds > 0
    evaluate_peers._CACHE.clear()  # recalibrate: the same calibration seed gives the same peer
    again = peer_samples(loaded_unet2d, "modelopt-int8", seed=5, **kwargs)
    np.testing.assert_array_equal(first.images, again.images)
    other = peer_samples(loaded_unet2d, "modelopt-int8", seed=6, **kwargs)
    assert not np.allclose(first.images, other.images)


def test_unknown_peer_method_is_one_line(loaded_unet2d):
    with pytest.raises(TfmqError, match="unknown ModelOpt peer 'modelopt-fp8'; choose from modelopt-int8"):
        peer_samples(loaded_unet2d, "modelopt-fp8", num_images=1, seed=0, calib_seed=0, steps=3, batch_size=1,
                     progress=False)


def test_text_pipeline_peer_samples_a_prompt(tmp_path_factory, one_thread):
    from tests.pipelines.tiny_pipeline import build_sd_pipeline
    from tfmq_export.models.loading import load_model
    from tfmq_export.temporal import build_table_unet

    model = load_model(build_sd_pipeline(tmp_path_factory.mktemp("sd-peer") / "pipe"))
    prompt = "a handwritten digit seven"
    out = peer_samples(model, "modelopt-w4a16", num_images=2, seed=1, calib_seed=0, steps=3, batch_size=2,
                       progress=False, prompt=prompt, guidance_scale=2.0)
    assert out.images.shape == (2, 16, 16, 3) and out.images.min() >= 0.0 and out.images.max() <= 1.0
    peer = evaluate_peers.peer_unet(model, "modelopt-w4a16", calib_seed=0, steps=3, calib_guidance=2.0)  # cached
    fp = build_table_unet(model.unet, peer.timesteps).eval()
    reference = table_prompt_images(model, fp, peer.timesteps, peer.scheduler, prompt, 2.0, 2, 1, 3, 2)
    assert np.abs(out.images - reference).max() > 0 and np.sqrt(np.mean((out.images - reference) ** 2)) < 0.05
    with pytest.raises(TfmqError, match="samples need a prompt"):
        peer_samples(model, "modelopt-w4a16", num_images=1, seed=0, calib_seed=0, steps=3, batch_size=1,
                     progress=False)
