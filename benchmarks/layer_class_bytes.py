"""What keeping a class of layers out of 4 bits costs in weight bytes, before any calibration.

Why: tfmq's no-recipe default at 4-bit weights keeps the 1x1 shortcut convs and the downsample convs at
8-bit weights (``config.W4_METHOD_DEFAULTS``); the TFMQ-DM authors keep them float. This prints, per model,
the share of the quantized weights those layers hold and the weight bytes of all-4-bit (half a byte per
weight), of those layers at 8 bits (one byte) and float32 (four bytes), relative to all-4-bit. Layers the
exporter keeps float anyway (``conv_in``, ``conv_out``, the temporal branch) are outside the count.

Usage: python benchmarks/layer_class_bytes.py [--models digits,digits-text] [--classes shortcuts,downsamplers]
       [--json benchmarks/results/layer_class_bytes.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tfmq_export.calibration.sensitivity import keep_fp_layers
from tfmq_export.io import atomic_write_text
from tfmq_export.models.adapter import UNetAdapter
from tfmq_export.models.loading import load_model

#: bytes per weight at each storage
BYTES = {"int4": 0.5, "int8": 1.0, "float32": 4.0}


def class_bytes(model: str, classes: tuple[str, ...]) -> dict[str, Any]:
    """Weight counts and bytes of ``model``'s quantized layers with ``classes`` at each storage."""
    layers = UNetAdapter(load_model(model).unet).quantizable_layers()
    chosen = keep_fp_layers(list(layers), classes)
    total = sum(m.weight.numel() for m in layers.values())
    held = sum(layers[n].weight.numel() for n in chosen)
    all4 = total * BYTES["int4"]
    out: dict[str, Any] = {"model": model, "classes": list(classes), "layers": len(layers), "class_layers": len(chosen),
                           "weights": total, "class_weights": held, "class_share": held / total,
                           "bytes_all_int4": all4}
    for storage in ("int8", "float32"):
        nbytes = (total - held) * BYTES["int4"] + held * BYTES[storage]
        out[f"bytes_class_{storage}"] = nbytes
        out[f"class_{storage}_over_all_int4"] = nbytes / all4
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits,digits-text")
    parser.add_argument("--classes", default="shortcuts,downsamplers")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    classes = tuple(c for c in args.classes.split(",") if c)
    rows = [class_bytes(m, classes) for m in args.models.split(",") if m]
    for r in rows:
        print(f"{r['model']}: {r['class_layers']} of {r['layers']} layers, {r['class_share']:.1%} of the weights; "
              f"bytes vs all-4-bit: 8-bit {r['class_int8_over_all_int4'] - 1:+.1%}, "
              f"float32 {r['class_float32_over_all_int4'] - 1:+.1%}")
    if args.json:
        atomic_write_text(args.json, json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
