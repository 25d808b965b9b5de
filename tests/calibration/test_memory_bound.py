"""Bounded memory: a calibration run holds the float weights once (the caller's UNet, shared by its
float references) plus the simulation's quantized layers, and the sharing changes no result.

Copies are counted as the bytes of distinct parameter storages alive while a block is reconstructed,
beyond those that existed before the run (``calibration.memory.float_parameter_storages``). Before
the references shared the caller's weights, a tfmq run held ~2.9 extra copies here (the float table
UNet, the simulation and the reference table UNet); now the simulation's quantized copy alone (~1).
"""

from __future__ import annotations

import copy
import gc

import pytest
import torch

from tests.calibration.test_adaround import micro_model
from tfmq_export import temporal
from tfmq_export.calibration import pipeline, qdiff, reconstruction
from tfmq_export.calibration.memory import float_parameter_storages
from tfmq_export.calibration.pipeline import run_calibration
from tfmq_export.config import CalibrationSettings

pytestmark = pytest.mark.usefixtures("one_thread")


def _settings(method: str) -> CalibrationSettings:
    return CalibrationSettings(method=method, wbits=4, abits=8, steps=3, num_samples=2, batch_size=2, iters=2,
                               seed=0, extra={"act_iters": 1})


def _ptr(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().data_ptr()


@pytest.mark.parametrize("method", ["tfmq", "qdiff"])
def test_a_reconstruction_run_holds_the_float_weights_once(method, monkeypatch):
    model = micro_model()
    weights = {k: v.clone() for k, v in model.unet.state_dict().items()}
    unet_bytes = sum(p.untyped_storage().nbytes() for p in model.unet.parameters())
    gc.collect()
    baseline = set(float_parameter_storages())
    extra_copies: list[float] = []
    shared: list[bool] = []
    real = reconstruction.reconstruct_block

    def spy(sim, fp_ref, *args, **kwargs):
        new = {k: n for k, n in float_parameter_storages().items() if k not in baseline}
        extra_copies.append(sum(new.values()) / unet_bytes)
        caller = {n: _ptr(p) for n, p in model.unet.named_parameters()}
        ref = {n: _ptr(p) for n, p in fp_ref.unet.named_parameters() if n in caller}
        shared.append(len(ref) > len(caller) // 2 and all(ptr == caller[n] for n, ptr in ref.items()))
        return real(sim, fp_ref, *args, **kwargs)

    monkeypatch.setattr(reconstruction, "reconstruct_block", spy)
    run_calibration(model, _settings(method), None, progress=False)
    assert extra_copies, "no block was reconstructed"
    # the simulation's quantized layers (every Conv2d / Linear but the time MLP): under one copy;
    # each float reference (table UNet, tfmq's TIB, qdiff's live branch) would add up to one more
    assert 0.5 < max(extra_copies) < 1.05, extra_copies
    assert all(shared)  # the reference computes with the caller's tensors (all it has: the time MLP is a table)
    for name, value in model.unet.state_dict().items():  # and nothing wrote into them
        assert torch.equal(value, weights[name]), name


def test_sharing_the_weights_changes_no_result(monkeypatch):
    """The artifact is bit-identical to one computed with deep copies (the code before the sharing)."""
    shared = run_calibration(micro_model(), _settings("tfmq"), None, progress=False).artifact
    for module in (temporal, pipeline, qdiff):
        monkeypatch.setattr(module, "shared_copy", copy.deepcopy)
    copied = run_calibration(micro_model(), _settings("tfmq"), None, progress=False).artifact
    assert shared.tensors.keys() == copied.tensors.keys()
    for key, value in shared.tensors.items():
        assert torch.equal(value, copied.tensors[key]), key
