"""The one runner registry (``open_runner``) and the contract feed every runner builds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.backends.tiny_graph import make_inputs, reference
from tfmq_export.backends.base import RUNNERS, feed_for, open_runner, runner_denoiser
from tfmq_export.contract import BACKENDS
from tfmq_export.errors import TfmqError


def test_every_contract_backend_has_one_runner():
    assert tuple(RUNNERS) == BACKENDS


@pytest.mark.int8_exact
def test_open_runner_runs_the_graph(models):
    feed = make_inputs(1)[0]
    runner = open_runner("onnxruntime", models["trt"], "w8a8", threads=1)
    assert (runner.backend, runner.precision, runner.threads) == ("onnxruntime", "w8a8", 1)
    with runner:
        denoise = runner_denoiser(runner)
        got = denoise(*(torch.from_numpy(feed[k]) for k in ("sample", "step_index", "encoder_hidden_states")))
    np.testing.assert_allclose(got.numpy(), reference(models["trt"], feed), rtol=1e-2, atol=0.1)


@pytest.mark.parametrize(("backend", "source", "message"), [
    ("tpu", "unet.onnx", "unknown backend 'tpu'"),
    ("onnxruntime", "unet.xml", r"onnxruntime runs \.onnx files"),
    ("tensorrt", "unet.onnx", r"tensorrt runs \.plan or \.engine files"),
])
def test_open_runner_refuses_with_one_line(backend, source, message):
    with pytest.raises(TfmqError, match=message) as err:
        open_runner(backend, source, "fp32")
    assert "\n" not in str(err.value)


def test_feed_for_keeps_declared_inputs_only():
    x, step = np.zeros((1, 4, 8, 8), np.float32), np.zeros(1, np.int64)
    assert list(feed_for(["sample", "step_index"], x, step, np.ones((1, 2, 3), np.float32))) == ["sample", "step_index"]
    with pytest.raises(TfmqError, match="encoder_hidden_states"):
        feed_for(["sample", "step_index", "encoder_hidden_states"], x, step, None)
    with pytest.raises(TfmqError, match="timestep"):
        feed_for(["sample", "timestep"], x, step, None)
