"""Int8 query and key for the attention score MatMul: where, at what scale, and its simulation.

Why: OpenVINO's CPU plugin runs a diffusers attention (``softmax(q k^T / sqrt(d)) v``, one
``ScaledDotProductAttention``) as an i8 MHA kernel when its query and key arrive through
FakeQuantize, as NNCF's INT8 IR has them; with float inputs it runs the f32 kernel
(docs/BENCHMARKS.md). The score MatMul then multiplies int8 query by int8 key; the probabilities
and the value MatMul stay float.

What is quantized, per attention whose ``to_q`` and ``to_k`` are activation-quantized layers of the artifact:
the ``to_q`` output and the ``to_k`` output, per tensor, symmetric int8, scale = the output range
calibration recorded for that layer (``output_absmax / 127``, the min-max rule). A per-tensor
scale commutes with the head split (reshape, transpose) and with SDPA's positive scalar
``d ** -0.25`` on each side, so the simulation quantizes the Linear outputs (a forward hook) and
the graph may place the query's Q/DQ after that scalar Mul (where OpenVINO needs it) with the scale
multiplied by it (``export.attention_qdq``); both compute the same values up to float rounding.

Only attentions that run diffusers' ``AttnProcessor2_0`` without query/key norms qualify (their
graph is the one ``export.attention_qdq`` knows); others, and layers calibration never observed,
stay float in the simulation and the graph alike.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from tfmq_export.artifact import CalibrationArtifact
from tfmq_export.quant.output_quant import output_quantize_hook, output_scale

__all__ = ["AttentionSite", "attention_sites", "install_attention_quantizers"]

#: the attention processor whose traced graph ``export.attention_qdq`` matches
_PROCESSOR = "AttnProcessor2_0"


@dataclass(frozen=True)
class AttentionSite:
    """One attention whose score MatMul gets int8 inputs (names relative to the UNet)."""

    name: str
    query_layer: str
    key_layer: str
    head_dim: int
    query_scale: float
    key_scale: float

    @property
    def sdpa_factor(self) -> float:
        """The scalar SDPA multiplies query and key by each (``head_dim ** -0.25``)."""
        return float(self.head_dim) ** -0.25


def attention_sites(unet: nn.Module, artifact: CalibrationArtifact) -> list[AttentionSite]:
    """The attentions of ``unet`` whose query and key the artifact can quantize, in module order."""
    sites: list[AttentionSite] = []
    for name, module in unet.named_modules():
        if type(module).__name__ != "Attention" or type(getattr(module, "processor", None)).__name__ != _PROCESSOR:
            continue
        if getattr(module, "norm_q", None) is not None or getattr(module, "norm_k", None) is not None:
            continue
        query, key = f"{name}.to_q", f"{name}.to_k"
        if query not in artifact.layers or key not in artifact.layers:
            continue
        if artifact.layers[query].abits >= 16 or artifact.layers[key].abits >= 16:
            continue  # a weight-only (A16) layer keeps float activations around it
        scales = output_scale(artifact, query), output_scale(artifact, key)
        if scales[0] is None or scales[1] is None:
            continue
        head_dim = int(module.to_k.weight.shape[0]) // int(module.heads)
        sites.append(AttentionSite(name, query, key, head_dim, scales[0], scales[1]))
    return sites


def install_attention_quantizers(unet: nn.Module, sites: list[AttentionSite]) -> None:
    """Quantize the query and key outputs of ``sites`` in ``unet`` (the simulation of int8 attention)."""
    modules = dict(unet.named_modules())
    for site in sites:
        modules[site.query_layer].register_forward_hook(output_quantize_hook(site.query_scale))
        modules[site.key_layer].register_forward_hook(output_quantize_hook(site.key_scale))
