"""Move calibration results between a simulation model and an artifact.

``artifact_tensors`` reads what a calibrator set on the quantizers (integers, scales, per-step
statistics) and the temporal tables; ``simulation_from_artifact`` rebuilds the exact simulation
from a model and an artifact, which is what export and evaluation start from.
"""

from __future__ import annotations

import torch

from tfmq_export.artifact import OUTPUT_CORRECTION_KEY, CalibrationArtifact, LayerRecord
from tfmq_export.contract import default_attention
from tfmq_export.errors import TfmqError
from tfmq_export.quant.attention import attention_sites, install_attention_quantizers
from tfmq_export.quant.modules import (
    ActMode,
    QuantConv2d,
    QuantLayer,
    install_split_quantizers,
    install_step_factor_quantizers,
)
from tfmq_export.quant.output_quant import output_quantize_hook, output_scale
from tfmq_export.quant.simulate import quant_layers, quantize_model
from tfmq_export.temporal import TemporalTableLookup, TemporalTableUNet


def temporal_tables(sim: TemporalTableUNet) -> dict[str, torch.Tensor]:
    """{resnet name: table [T, C]} of a table UNet."""
    return {
        name.removesuffix(".time_emb_proj"): module.table
        for name, module in sim.unet.named_modules()
        if isinstance(module, TemporalTableLookup)
    }


def artifact_tensors(sim: TemporalTableUNet) -> tuple[dict[str, torch.Tensor], dict[str, LayerRecord]]:
    """Tensors and layer records of a calibrated simulation."""
    tensors: dict[str, torch.Tensor] = {}
    records: dict[str, LayerRecord] = {}
    for name, layer in quant_layers(sim).items():
        wq, aq = layer.weight_quantizer, layer.input_quantizer
        if wq.enabled:
            tensors[f"{name}.weight_int"] = wq.integer_weight(layer.weight)
            tensors[f"{name}.weight_scale"] = wq.scale.float()
        if aq.enabled:
            tensors[f"{name}.input_scale"] = aq.scale.float()
        tensors[f"{name}.input_step_min"] = aq.step_min.float()
        tensors[f"{name}.input_step_max"] = aq.step_max.float()
        tensors[f"{name}.output_absmax"] = layer.output_absmax.float()
        records[name] = LayerRecord(
            kind="conv" if isinstance(layer, QuantConv2d) else "linear",
            weight_shape=list(layer.weight.shape),
            wbits=wq.bits,
            abits=aq.bits,
        )
    for resnet, table in temporal_tables(sim).items():
        tensors[f"temporal.{resnet}"] = table.float()
    return {k: v.detach().clone().contiguous() for k, v in tensors.items()}, records


def load_layer_state(name: str, layer: QuantLayer, artifact: CalibrationArtifact) -> None:
    """Set one quantized layer from the artifact, checking that shapes match the model."""
    record = artifact.layers[name]
    if list(layer.weight.shape) != record.weight_shape:
        raise TfmqError(
            f"layer {name}: artifact weight shape {record.weight_shape} != model {list(layer.weight.shape)}"
        )
    wq, aq = layer.weight_quantizer, layer.input_quantizer
    if wq.enabled:
        wq.set_scale(artifact.layer_tensor(name, "weight_scale"), f"artifact layer {name}")
        wq.freeze_integers(artifact.layer_tensor(name, "weight_int"), f"artifact layer {name}")
    if aq.enabled:
        aq.set_scale(artifact.layer_tensor(name, "input_scale"), f"artifact layer {name}")
        aq.mode = ActMode.QUANTIZING
    aq.step_min.copy_(artifact.layer_tensor(name, "input_step_min"))
    aq.step_max.copy_(artifact.layer_tensor(name, "input_step_max"))
    layer.output_absmax.copy_(artifact.layer_tensor(name, "output_absmax"))


def conv_output_scale(layer: str, artifact: CalibrationArtifact) -> float | None:
    """Scale of the Q/DQ that ``--target onnxruntime`` puts on a quantized Conv's output, or None."""
    record = artifact.layers[layer]
    if record.kind != "conv" or record.wbits >= 16 or record.abits >= 16:
        return None
    return output_scale(artifact, layer)


def simulation_from_artifact(
    unet: torch.nn.Module, artifact: CalibrationArtifact, target: str = "tensorrt", attention: str | None = None
) -> TemporalTableUNet:
    """The torch simulation that the artifact describes, for the UNet it was calibrated on.

    ``target="onnxruntime"`` also simulates the Q/DQ that target adds on Conv outputs, and
    ``attention`` (default: the target's, ``contract.DEFAULT_ATTENTION``; ``int8`` for openvino) the
    int8 query / key of the attention score MatMul (``quant.attention``), so the simulation computes
    what that target's graph computes.
    """
    attention = default_attention(target, attention)
    sim = TemporalTableUNet(unet, artifact.temporal_tables(), artifact.timesteps,
                            output_correction=artifact.tensors.get(OUTPUT_CORRECTION_KEY))
    if artifact.wbits >= 16 and artifact.abits >= 16:
        return sim.eval()
    bits = {name: (r.wbits, r.abits) for name, r in artifact.layers.items()}  # mixed precision, float layers
    layers = quantize_model(sim, artifact.wbits, artifact.abits, bits, artifact.linear_act_grid)
    extra = set(artifact.layers) - set(layers)
    missing = set(layers) - set(artifact.layers)
    if extra or missing:
        raise TfmqError(
            f"artifact layers do not match the model (missing {sorted(missing)[:2]}, unknown {sorted(extra)[:2]})"
        )
    for name, layer in layers.items():
        load_layer_state(name, layer, artifact)
        factored = f"{name}.input_step_factor" in artifact.tensors  # no output Q/DQ there (export.qdq)
        scale = conv_output_scale(name, artifact) if target == "onnxruntime" and not factored else None
        if scale is not None:
            layer.register_forward_hook(output_quantize_hook(scale))
    install_split_quantizers(layers, artifact.tensors)  # qdiff's split skip inputs (none otherwise)
    install_step_factors(sim, layers, artifact.tensors)  # tfmq's per-step factors (none otherwise)
    if attention == "int8":
        install_attention_quantizers(sim.unet, attention_sites(sim.unet, artifact))
    return sim.eval()


def install_step_factors(sim: TemporalTableUNet, layers: dict[str, QuantLayer],
                         tensors: dict[str, torch.Tensor]) -> None:
    """Give the layers with ``{name}.input_step_factor`` in ``tensors`` their per-step quantizers, and make
    ``sim`` declare each call's steps to them (they refuse to run otherwise): the two go together."""
    if install_step_factor_quantizers(layers, tensors):
        sim.declares_steps = True


__all__ = ["artifact_tensors", "conv_output_scale", "install_step_factors", "load_layer_state",
           "simulation_from_artifact", "temporal_tables"]
