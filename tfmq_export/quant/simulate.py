"""Build the torch simulation: a table UNet whose quantizable layers are QuantConv2d / QuantLinear.

Where quantizers go is the adapter's business (``quantizable_layers``); which algorithm sets
their scales is the calibrator's. ``quantize_model`` only swaps modules.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from tfmq_export.errors import TfmqError
from tfmq_export.models.adapter import UNetAdapter, replace_submodule
from tfmq_export.quant.grids import SUPPORTED_ACT_BITS, SUPPORTED_WEIGHT_BITS
from tfmq_export.quant.modules import ActMode, QuantLayer, make_quant_layer
from tfmq_export.temporal import TemporalTableUNet


def check_bits(wbits: int, abits: int) -> None:
    """Refuse bit widths the deployment targets cannot express."""
    if wbits not in SUPPORTED_WEIGHT_BITS:
        raise TfmqError(f"--wbits {wbits} is not supported (choose from {', '.join(map(str, SUPPORTED_WEIGHT_BITS))})")
    if abits not in SUPPORTED_ACT_BITS:
        raise TfmqError(f"--abits {abits} is not supported (choose from {', '.join(map(str, SUPPORTED_ACT_BITS))})")


def quantize_model(table_unet: TemporalTableUNet, wbits: int, abits: int) -> dict[str, QuantLayer]:
    """Swap every quantizable layer of ``table_unet.unet`` for a quantized one, in place.

    Returns {layer name (relative to the UNet): quantized layer}. Quantizers start
    uncalibrated and disabled; a calibrator sets them.
    """
    check_bits(wbits, abits)
    adapter = UNetAdapter(table_unet.unet)
    layers: dict[str, QuantLayer] = {}
    for name, module in adapter.quantizable_layers().items():
        qlayer = make_quant_layer(module, wbits, abits, table_unet.num_steps)
        replace_submodule(table_unet.unet, name, qlayer)
        layers[name] = qlayer
    return layers


def quant_layers(table_unet: TemporalTableUNet) -> dict[str, QuantLayer]:
    """{name: quantized layer} of a simulation model, names relative to the UNet."""
    return {name: m for name, m in table_unet.unet.named_modules() if isinstance(m, QuantLayer)}


def set_act_mode(layers: dict[str, QuantLayer], mode: ActMode) -> None:
    for layer in layers.values():
        layer.input_quantizer.mode = mode


def iter_weight_quantizers(layers: dict[str, QuantLayer]) -> Iterator[tuple[str, torch.nn.Module]]:
    for name, layer in layers.items():
        yield name, layer.weight_quantizer


def check_calibrated(layers: dict[str, QuantLayer]) -> None:
    """Fail before export when a quantizer has no valid scale, naming the layer."""
    for name, layer in layers.items():
        wq, aq = layer.weight_quantizer, layer.input_quantizer
        if wq.enabled and not wq.is_calibrated:
            raise TfmqError(f"layer {name}: weight quantizer is not calibrated (zero or missing scale)")
        if aq.enabled and not (torch.isfinite(aq.scale) and aq.scale > 0):
            raise TfmqError(f"layer {name}: activation quantizer is not calibrated (scale {float(aq.scale)})")
