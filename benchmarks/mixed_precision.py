"""What keeping layers float or 8-bit costs and gains at W4A8 on the bundled digits model.

Usage: python benchmarks/mixed_precision.py [--methods minmax,tfmq] [--tfmq-iters 100] [--threads 1]
       [--json benchmarks/results/mixed_precision_w4a8.json] [--doc docs/INT4-quality.md]

Rows (each method, the shipped digits W4A8 recipe, same data and seed): baseline, ``keep_fp``
shortcuts / downsamplers / both (the TFMQ-DM authors keep the 1x1 shortcut convs and the downsample
convs float), ``w8_layers`` 2 / 4 / 8 (the most sensitive weight layers by measured sensitivity
keep 8-bit weights; ``calibration.sensitivity``). ``--tfmq-iters`` shortens tfmq's per-block budget
(the W4A8 recipe's 1,000; docs/INT4.md's figures were taken at 100) so the table runs in minutes
on a shared 2-core machine; every tfmq row uses it.

Quality: the relative L2 error of the noise prediction against full precision over every step of
32 held-out DDIM trajectories (seed 1000) through the torch simulation of the artifact, as
``benchmarks/calibration_cost.py`` measures it. Cost: the weight bytes at deployment (4-bit
weights at half a byte, 8-bit at one, float at four) and the calibration wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from tfmq_export.calibration.data import collect_calibration_data
from tfmq_export.calibration.pipeline import calibrate
from tfmq_export.io import atomic_write_text
from tfmq_export.models.loading import load_model
from tfmq_export.quant.state import simulation_from_artifact
from tfmq_export.sampling import sampler_timesteps
from tfmq_export.temporal import build_table_unet
from tfmq_export.workflows.evaluate import recipe_settings

if __package__:  # imported as benchmarks.mixed_precision
    from .calibration_cost import output_error
else:  # run as python benchmarks/mixed_precision.py
    from calibration_cost import output_error

#: row name -> extra options added to the recipe's
ROWS: dict[str, dict[str, Any]] = {
    "baseline": {},
    "keep shortcuts FP": {"keep_fp": ["shortcuts"]},
    "keep downsamplers FP": {"keep_fp": ["downsamplers"]},
    "keep both FP": {"keep_fp": ["shortcuts", "downsamplers"]},
    "w8_layers 2": {"w8_layers": 2},
    "w8_layers 4": {"w8_layers": 4},
    "w8_layers 8": {"w8_layers": 8},
}


def weight_bytes(artifact) -> dict[str, int]:
    """Bytes of the quantizable layers' weights as deployed with INT4 storage, and with INT8 storage."""
    int4 = int8 = 0
    for record in artifact.layers.values():
        n = 1
        for d in record.weight_shape:
            n *= d
        per = {4: (0.5, 1), 8: (1, 1), 16: (4, 4)}[record.wbits]
        int4 += int(n * per[0])
        int8 += int(n * per[1])
    return {"int4_storage": int4, "int8_storage": int8}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="minmax,tfmq")
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--tfmq-iters", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--eval-samples", type=int, default=32)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--doc", type=Path, default=None, help="Also write the Markdown table here.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model("digits")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    names = [r.strip() for r in args.rows.split(",") if r.strip()]
    first = recipe_settings(methods[0], "w4a8")
    fp = build_table_unet(model.unet, sampler_timesteps(model.scheduler_config, first.steps)).eval()
    held_out = collect_calibration_data(lambda x, s, _c: fp(x, s), model.scheduler_config, fp.timesteps,
                                        model.sample_shape, args.eval_samples, 1000, 64, progress=False)
    rows = []
    for method in methods:
        for name in names:
            settings = recipe_settings(method, "w4a8")
            if method != "minmax":
                settings = replace(settings, iters=args.tfmq_iters)
            settings = replace(settings, extra={**(settings.extra or {}), **ROWS[name]})
            load = os.getloadavg()[0]
            started = time.perf_counter()
            artifact = calibrate(model, settings, progress=False)
            seconds = time.perf_counter() - started
            sim = simulation_from_artifact(model.unet, artifact)
            row = {"row": name, "method": method, "iters": settings.iters if method != "minmax" else None,
                   "extra": ROWS[name], "seconds": round(seconds, 1),
                   "output_rel_error": output_error(sim, fp, held_out), "weight_bytes": weight_bytes(artifact),
                   "w8_layer_names": artifact.settings.get("w8_layer_names", []),
                   "keep_fp_layer_names": artifact.settings.get("keep_fp_layer_names", []),
                   "top_sensitivity": dict(list(artifact.settings.get("layer_sensitivity", {}).items())[:8]),
                   "load_before": round(load, 2)}
            rows.append(row)
            print(f"{method:7s} {name:22s} {seconds:7.1f} s  output err {row['output_rel_error']:.5f}  "
                  f"int4 bytes {row['weight_bytes']['int4_storage']}", flush=True)
            result = {"command": f"python benchmarks/mixed_precision.py --methods {args.methods} --tfmq-iters "
                                 f"{args.tfmq_iters} --threads {args.threads} --eval-samples {args.eval_samples}",
                      "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpu_count": os.cpu_count(),
                      "rows": rows}
            if args.json is not None:  # after every row: a long run cut short keeps what it measured
                args.json.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(args.json, json.dumps(result, indent=2))
    if args.doc is not None:
        atomic_write_text(args.doc, markdown(result))
    print(markdown(result))


def markdown(result: dict) -> str:
    """The table of one run (Markdown), with its command."""
    base = {r["method"]: r for r in result["rows"] if r["row"] == "baseline"}
    lines = [f"Command: `{result['command']}` ({result['created']}, {result['cpu_count']} cores, shared machine: "
             "seconds are indicative only).", "",
             "| method | row | output error | vs baseline | weight bytes (INT4) | calib s | 8-bit / FP layers |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["rows"]:
        ref = base.get(r["method"])
        change = f"{r['output_rel_error'] / ref['output_rel_error'] - 1:+.1%}" if ref else "-"
        kept = ", ".join(r["w8_layer_names"] or r["keep_fp_layer_names"]) or "-"
        lines.append(f"| {r['method']} | {r['row']} | {r['output_rel_error']:.5f} | {change} | "
                     f"{r['weight_bytes']['int4_storage']:,} | {r['seconds']} | {kept} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
