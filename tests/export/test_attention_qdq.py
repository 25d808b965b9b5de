"""``--attention int8`` (``quant.attention`` + ``export.attention_qdq``): the query and key of every
attention's score MatMul get int8 Q/DQ at the calibrated scales, OpenVINO runs those attentions as int8
kernels, and what has no activation quantization (weight-only artifacts, ``--attention float``) is left
alone. That the graph computes the simulation of the same setting: tests/export/test_qdq.py (digits)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tfmq_export.calibration.pipeline import calibrate
from tfmq_export.config import CalibrationSettings
from tfmq_export.contract import META_ATTENTION, parse_metadata
from tfmq_export.errors import TfmqError
from tfmq_export.export.onnx_export import build_onnx
from tfmq_export.export.qdq import onnx_scope
from tfmq_export.quant.attention import attention_sites

pytestmark = pytest.mark.usefixtures("one_thread")


def _settings(wbits: int = 8, abits: int = 8) -> CalibrationSettings:
    return CalibrationSettings(method="minmax", wbits=wbits, abits=abits, steps=5, num_samples=8, batch_size=8)


@pytest.fixture(scope="module")
def w8a8(loaded_unet_cond):
    return calibrate(loaded_unet_cond, _settings(), progress=False)


def _attention_pairs(graph: onnx.ModelProto) -> dict[str, float]:
    """{QuantizeLinear name: its scale} of the attention Q/DQ."""
    inits = {t.name: numpy_helper.to_array(t) for t in graph.graph.initializer}
    return {n.name: float(inits[n.input[1]]) for n in graph.graph.node
            if n.op_type == "QuantizeLinear" and n.name.endswith(("/query_QuantizeLinear", "/key_QuantizeLinear"))}


def test_every_attention_gets_query_and_key_qdq_at_the_calibrated_scales(w8a8, loaded_unet_cond):
    graph = build_onnx(loaded_unet_cond, w8a8, "openvino")
    sites = attention_sites(loaded_unet_cond.unet, w8a8)
    attentions = [n for n, m in loaded_unet_cond.unet.named_modules() if type(m).__name__ == "Attention"]
    assert len(sites) == len(attentions) > 0  # self- and cross-attention alike
    pairs = _attention_pairs(graph)
    assert len(pairs) == 2 * len(sites)
    for site in sites:
        scope = onnx_scope(site.name)
        query_absmax = float(w8a8.layer_tensor(site.query_layer, "output_absmax"))
        key_absmax = float(w8a8.layer_tensor(site.key_layer, "output_absmax"))
        # the query's pair sits after SDPA's d ** -0.25 factor, so its scale carries that factor
        np.testing.assert_allclose(pairs[f"{scope}query_QuantizeLinear"], query_absmax / 127 * site.head_dim ** -0.25,
                                   rtol=1e-6)
        np.testing.assert_allclose(pairs[f"{scope}key_QuantizeLinear"], key_absmax / 127, rtol=1e-6)
    assert parse_metadata({p.key: p.value for p in graph.metadata_props}, "graph").attention == "int8"


def test_float_attention_and_other_targets_add_nothing(w8a8, loaded_unet_cond):
    plain = build_onnx(loaded_unet_cond, w8a8, "openvino", attention="float")
    assert not _attention_pairs(plain) and META_ATTENTION not in {p.key for p in plain.metadata_props}
    for target in ("tensorrt", "onnxruntime"):  # their default: float (slower or unmeasured there)
        assert not _attention_pairs(build_onnx(loaded_unet_cond, w8a8, target, precision="fp32"))
    with pytest.raises(TfmqError, match="unknown --attention 'int4'"):
        build_onnx(loaded_unet_cond, w8a8, "openvino", attention="int4")


def test_weight_only_artifact_keeps_float_attention(loaded_unet_cond):
    w4a16 = calibrate(loaded_unet_cond, _settings(4, 16), progress=False)
    assert attention_sites(loaded_unet_cond.unet, w4a16) == []
    graph = build_onnx(loaded_unet_cond, w4a16, "openvino", attention="int8")
    assert not _attention_pairs(graph) and META_ATTENTION not in {p.key for p in graph.metadata_props}


@pytest.mark.int8_exact
def test_openvino_runs_the_attentions_in_int8(w8a8, loaded_unet_cond, tmp_path):
    """The point of the option: OpenVINO's CPU plugin fuses each quantized attention into an int8
    subgraph (none without it)."""
    pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'tfmq-export[openvino]')")
    from tfmq_export.backends.openvino.build import build_openvino_engine

    counts = {}
    for mode in ("int8", "float"):
        path = tmp_path / f"{mode}.onnx"
        onnx.save(build_onnx(loaded_unet_cond, w8a8, "openvino", attention=mode), path)
        precisions = build_openvino_engine(path, tmp_path / f"{mode}.xml")["compiled_cpu_layer_precisions"]
        counts[mode] = sum(n for k, n in precisions.items() if k.startswith("Subgraph:"))
    assert counts == {"int8": len(attention_sites(loaded_unet_cond.unet, w8a8)), "float": 0}
