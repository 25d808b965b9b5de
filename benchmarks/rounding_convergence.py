"""How decided AdaRound's rounding is when it is frozen, for the digits tfmq W4A8 recipe.

Usage: python benchmarks/rounding_convergence.py [--seed 0] [--reg 0.3 ...] [--json FILE]

Runs ``calibrate`` with the shipped ``digits-tfmq-w4a8`` recipe (its ``adaround_reg`` replaced by each
``--reg``) and, as each layer's rounding is frozen, records the fraction of rounding variables whose
h(V) is still strictly inside (0, 1) ("undecided"), inside (0.1, 0.9) ("mid") and the fraction of
weights rounded the other way than round-to-nearest ("flipped"), weighted by the layers' sizes. An
undecided variable is rounded by the sign of V at the freeze, which the loss never saw: the larger that
share, the further the frozen block is from the learned one (docs/ANALYSIS.md, "Rounding regulariser").
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

import tfmq_export.calibration.reconstruction as reconstruction
from tfmq_export.calibration.adaround import rectified_sigmoid, rounding_summary
from tfmq_export.calibration.pipeline import calibrate
from tfmq_export.io import atomic_write_text
from tfmq_export.models.loading import load_model
from tfmq_export.quant import grids
from tfmq_export.workflows.evaluate import recipe_settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reg", type=float, nargs="+", default=[0.01, 0.3, 1.0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model("digits")
    frozen: list[tuple[int, dict[str, float]]] = []
    freeze = reconstruction.freeze_adaround

    def recording_freeze(layer, ada):  # the layer's rounding as it is frozen, then the real freeze
        scale = grids.channel_view(layer.weight_quantizer.scale, layer.weight)
        summary = rounding_summary(ada, layer.weight, scale)
        with torch.no_grad():
            h = rectified_sigmoid(ada.alpha)
            summary["mid"] = float(((h > 0.1) & (h < 0.9)).float().mean())
        frozen.append((ada.alpha.numel(), summary))
        return freeze(layer, ada)

    reconstruction.freeze_adaround = recording_freeze
    rows = []
    for reg in args.reg:
        frozen.clear()
        settings = recipe_settings("tfmq", "w4a8", args.seed)
        settings = replace(settings, extra={**(settings.extra or {}), "adaround_reg": reg})
        started = time.process_time()
        calibrate(model, settings, progress=False)
        total = sum(n for n, _ in frozen)
        row = {"adaround_reg": reg, "seed": args.seed, "cpu_seconds": round(time.process_time() - started, 1),
               "layers": len(frozen),
               **{key: sum(n * s[key] for n, s in frozen) / total for key in ("undecided", "mid", "flipped")}}
        rows.append(row)
        print(f"reg {reg:g}: undecided {row['undecided']:.3f}  in (0.1, 0.9) {row['mid']:.3f}  "
              f"flipped {row['flipped']:.3f}  ({row['cpu_seconds']} CPU s)", flush=True)
    if args.json is not None:
        command = (f"python benchmarks/rounding_convergence.py --seed {args.seed} --reg "
                   + " ".join(f"{r:g}" for r in args.reg))
        atomic_write_text(args.json, json.dumps({"command": command, "rows": rows,
                                                 "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
                                                indent=2))


if __name__ == "__main__":
    main()
