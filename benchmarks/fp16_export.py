"""FP16 vs FP32 exports (``export-onnx --precision``): file size and output error vs the torch simulation.

    python benchmarks/fp16_export.py OUT_DIR [--model digits]

Calibrates MODEL with minmax W8A8 (10 DDIM steps, 16 trajectories) and writes four ``--target
tensorrt`` graphs to OUT_DIR: ``fp-fp32.onnx`` / ``fp-fp16.onnx`` (W16A16) and ``w8a8-fp32.onnx`` /
``w8a8-fp16.onnx``, plus ``w8a8-fp16-table32.onnx`` (FP16 graph, FP32 temporal table). Prints, per
file, its size and the max / mean absolute error and relative L2 error of ``noise_pred`` on
onnxruntime (CPU) against the torch simulation of the same artifact (the FP32 table UNet for
W16A16), batch 3 at table rows 0/4/9. Time the files with ``tfmq-export bench`` (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from tfmq_export.calibration.pipeline import calibrate
from tfmq_export.config import CalibrationSettings
from tfmq_export.export.onnx_export import build_onnx, save_onnx_atomic
from tfmq_export.metrics.error import rel_l2
from tfmq_export.models.loading import load_model
from tfmq_export.quant.state import simulation_from_artifact


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--model", default="digits")
    args = parser.parse_args()
    model = load_model(args.model)
    gen = torch.Generator().manual_seed(5)
    sample, rows = torch.randn((3, *model.sample_shape), generator=gen), torch.tensor([0, 4, 9])
    feed = {"sample": sample.numpy(), "step_index": rows.numpy()}
    print(f"{'file':<26} {'bytes':>10} {'max abs':>9} {'mean abs':>9} {'rel L2':>9}")
    for bits in (16, 8):
        settings = CalibrationSettings(method="minmax", wbits=bits, abits=bits, steps=10,
                                       num_samples=16, batch_size=16)
        artifact = calibrate(model, settings, progress=False)
        sim = simulation_from_artifact(model.unet, artifact, "tensorrt")
        with torch.no_grad():
            expected = sim(sample, rows).numpy()
        name = "fp" if bits == 16 else "w8a8"
        variants = {f"{name}-fp32": ("fp32", False), f"{name}-fp16": ("fp16", False)}
        if bits < 16:
            variants[f"{name}-fp16-table32"] = ("fp16", True)
        for stem, (precision, table_fp32) in variants.items():
            graph = build_onnx(model, artifact, "tensorrt", precision=precision, table_fp32=table_fp32)
            path = args.out / f"{stem}.onnx"
            save_onnx_atomic(graph, path)
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            out = session.run(["noise_pred"], feed)[0]
            error = np.abs(out - expected)
            print(f"{path.name:<26} {path.stat().st_size:>10} {error.max():>9.2e} {error.mean():>9.2e} "
                  f"{rel_l2(out, expected):>9.2e}")


if __name__ == "__main__":
    main()
