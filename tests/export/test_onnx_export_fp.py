"""Full-precision export equals the diffusers UNet at the same timestep, for both UNet classes."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from tests.conftest import rel_l2
from tfmq_export.calibration.pipeline import calibrate
from tfmq_export.config import CalibrationSettings
from tfmq_export.export.onnx_export import build_onnx, read_metadata


def _session(graph):
    return ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("fixture", ["loaded_unet2d", "loaded_unet_cond"])
def test_fp_export_matches_diffusers(fixture, request):
    model = request.getfixturevalue(fixture)
    artifact = calibrate(model, CalibrationSettings(wbits=16, abits=16, steps=10), progress=False)
    graph = build_onnx(model, artifact, "tensorrt")
    session = _session(graph)
    rows = np.array([0, 4, 9], dtype=np.int64)  # several table rows, batch > 1
    gen = torch.Generator().manual_seed(3)
    sample = torch.randn((3, *model.sample_shape), generator=gen)
    feed = {"sample": sample.numpy(), "step_index": rows}
    timesteps = torch.tensor([artifact.timesteps[i] for i in rows])
    with torch.no_grad():
        if model.is_conditional:
            ehs = torch.randn(3, 7, 16, generator=gen)
            feed["encoder_hidden_states"] = ehs.numpy()
            expected = model.unet(sample, timesteps, encoder_hidden_states=ehs).sample.numpy()
        else:
            expected = model.unet(sample, timesteps).sample.numpy()
    out = session.run(["noise_pred"], feed)[0]
    assert out.shape == expected.shape
    assert rel_l2(out, expected) < 1e-5


def test_contract_inputs_and_metadata(loaded_unet2d):
    artifact = calibrate(loaded_unet2d, CalibrationSettings(wbits=16, abits=16, steps=6), progress=False)
    graph = build_onnx(loaded_unet2d, artifact, "onnxruntime")
    inputs = {i.name: i.type.tensor_type.elem_type for i in graph.graph.input}
    assert inputs == {"sample": 1, "step_index": 7}  # float32, int64
    assert [o.name for o in graph.graph.output] == ["noise_pred"]
    meta = read_metadata(graph)
    assert json.loads(meta["tfmq.timesteps"]) == artifact.timesteps
    assert len(artifact.timesteps) == 6 and artifact.timesteps[0] > artifact.timesteps[-1]
    assert meta["tfmq.wbits"] == "16" and meta["tfmq.abits"] == "16" and meta["tfmq.method"] == "fp"
    assert "tfmq.version" in meta
    # the time MLP is gone: no sinusoid, and every table is a constant gathered by step_index
    ops = {n.op_type for n in graph.graph.node}
    assert not ops & {"Sin", "Cos", "Exp"}
    inits = {t.name for t in graph.graph.initializer}
    assert not any("time_embedding" in name or name.endswith("time_emb_proj.weight") for name in inits)
    tables = [n for n in graph.graph.node if n.op_type == "Gather" and n.input[0].endswith("time_emb_proj.table")]
    assert len(tables) == len([n for n in inits if n.endswith("time_emb_proj.table")]) > 0


def test_graph_over_the_protobuf_limit_is_written_with_external_weights(monkeypatch, loaded_unet2d, tmp_path):
    """Above the limit (2 GB in real life, lowered here) the weights go to ``<name>.onnx.data``, the
    graph is checked from disk, nothing temporary is left, and onnxruntime runs it unchanged."""
    from tfmq_export.export import onnx_export

    artifact = calibrate(loaded_unet2d, CalibrationSettings(wbits=16, abits=16, steps=4), progress=False)
    small = build_onnx(loaded_unet2d, artifact, "onnxruntime")
    assert not onnx_export.is_large(small)
    monkeypatch.setattr(onnx_export, "_PROTOBUF_LIMIT", 10_000)
    assert onnx_export.is_large(small)
    out = onnx_export.export_onnx(loaded_unet2d, artifact, tmp_path / "unet.onnx", "onnxruntime")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unet.onnx", "unet.onnx.data"]
    assert (tmp_path / "unet.onnx").stat().st_size < 0.2 * (tmp_path / "unet.onnx.data").stat().st_size
    feed = {"sample": np.random.default_rng(0).normal(size=(2, *loaded_unet2d.sample_shape)).astype(np.float32),
            "step_index": np.array([0, 3], dtype=np.int64)}
    from_disk = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(["noise_pred"], feed)[0]
    in_memory = _session(small).run(["noise_pred"], feed)[0]
    assert np.array_equal(from_disk, in_memory)
