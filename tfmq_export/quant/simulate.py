"""Build the torch simulation: a table UNet whose quantizable layers are QuantConv2d / QuantLinear.

Where quantizers go is the adapter's business (``quantizable_layers``); which algorithm sets
their scales is the calibrator's. ``quantize_model`` only swaps modules.
"""

from __future__ import annotations

from collections.abc import Mapping

from tfmq_export.config import check_bits
from tfmq_export.models.adapter import UNetAdapter, replace_submodule
from tfmq_export.quant.modules import ActMode, QuantLayer, make_quant_layer
from tfmq_export.temporal import TemporalTableUNet


def quantize_model(table_unet: TemporalTableUNet, wbits: int, abits: int,
                   layer_bits: Mapping[str, tuple[int, int]] | None = None,
                   linear_act_grid: str = "int8") -> dict[str, QuantLayer]:
    """Swap every quantizable layer of ``table_unet.unet`` for a quantized one, in place.

    Returns {layer name (relative to the UNet): quantized layer}. Quantizers start
    uncalibrated and disabled; a calibrator sets them. ``layer_bits``: {layer: (wbits, abits)}
    for the layers that differ from the model's bits (mixed precision: 8-bit weights where 4 bits
    hurt most; (16, 16) keeps a layer float). Such a layer still gets a quantized stand-in, with
    disabled quantizers, so every method and the artifact list the same layers.
    ``linear_act_grid``: the input grid of the Linear layers (``config.ACT_GRIDS``; convs: int8).
    """
    check_bits(wbits, abits)
    layer_bits = dict(layer_bits or {})
    for w, a in layer_bits.values():
        check_bits(w, a)
    adapter = UNetAdapter(table_unet.unet)
    layers: dict[str, QuantLayer] = {}
    for name, module in adapter.quantizable_layers().items():
        w, a = layer_bits.get(name, (wbits, abits))
        qlayer = make_quant_layer(module, w, a, table_unet.num_steps, linear_act_grid)
        replace_submodule(table_unet.unet, name, qlayer)
        layers[name] = qlayer
    return layers


def quant_layers(table_unet: TemporalTableUNet) -> dict[str, QuantLayer]:
    """{name: quantized layer} of a simulation model, names relative to the UNet."""
    return {name: m for name, m in table_unet.unet.named_modules() if isinstance(m, QuantLayer)}


def set_act_mode(layers: dict[str, QuantLayer], mode: ActMode) -> None:
    for layer in layers.values():
        layer.input_quantizer.mode = mode


__all__ = ["quant_layers", "quantize_model", "set_act_mode"]
