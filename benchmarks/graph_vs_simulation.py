"""How closely the exported graphs, run by onnxruntime, follow the torch simulation.

Usage: python benchmarks/graph_vs_simulation.py [--model digits] [--wbits 8] [--abits 8]

Prints the relative L2 error of the UNet output (graph vs simulation, same inputs, table rows
0/2/4) for --target tensorrt and --target onnxruntime, with onnxruntime's graph optimisations off
(the graph's literal meaning) and on (its fused int8 kernels).
"""

from __future__ import annotations

import argparse

import onnxruntime as ort
import torch

from tfmq_export.calibration.pipeline import calibrate
from tfmq_export.config import CalibrationSettings
from tfmq_export.export.onnx_export import build_onnx
from tfmq_export.metrics.error import rel_l2
from tfmq_export.models.loading import load_model
from tfmq_export.quant.state import simulation_from_artifact


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="digits")
    parser.add_argument("--wbits", type=int, default=8)
    parser.add_argument("--abits", type=int, default=8)
    args = parser.parse_args()
    model = load_model(args.model)
    settings = CalibrationSettings(method="minmax", wbits=args.wbits, abits=args.abits)
    artifact = calibrate(model, settings, progress=False)
    gen = torch.Generator().manual_seed(5)
    sample = torch.randn((3, *model.sample_shape), generator=gen)
    rows = torch.tensor([0, 2, 4])
    for target in ("tensorrt", "onnxruntime"):
        sim = simulation_from_artifact(model.unet, artifact, target)
        with torch.no_grad():
            expected = sim(sample, rows).numpy()
        graph = build_onnx(model, artifact, target).SerializeToString()
        for optimise in (False, True):
            options = ort.SessionOptions()
            if not optimise:
                options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
            out = session.run(["noise_pred"], {"sample": sample.numpy(), "step_index": rows.numpy()})[0]
            err = rel_l2(out, expected)
            print(f"{args.model} W{args.wbits}A{args.abits} --target {target:11s} "
                  f"onnxruntime optimisations {'on ' if optimise else 'off'}: rel L2 {err:.2e}")


if __name__ == "__main__":
    main()
