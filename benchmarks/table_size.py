"""Size of the exported temporal table: rows x total table width x 4 bytes (float32).

    python benchmarks/table_size.py            # SD-1.5 (shipped config) and the bundled digits UNet
    python benchmarks/table_size.py --json F   # also write the figures as JSON

The width of a table row is the sum of every ResBlock's ``time_emb_proj`` output (2C for a
scale-shift ResBlock), found by the same ``UNetAdapter`` the exporter uses. SD-1.5 is built from
``tfmq_export/configs/sd15_unet.json`` on torch's ``meta`` device: shapes only, no weights, no
memory, seconds. ``sampler`` rows = the calibrated steps (25, ``calibrate``'s default; 26 for
PNDM's PLMS, whose first step repeats a timestep); ``all`` rows = every training timestep (1000).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

SAMPLER_STEPS = 25
BYTES_PER_VALUE = 4  # the table is a float32 initializer (Gather by step_index)


def table_width(unet: torch.nn.Module) -> tuple[int, int]:
    """(number of ResBlocks with a temporal projection, the sum of their output widths)."""
    from tfmq_export.models.adapter import UNetAdapter

    projections = UNetAdapter(unet).temporal_projections()
    return len(projections), sum(p.resnet.time_emb_proj.out_features for p in projections)


def sd15_unet_on_meta() -> torch.nn.Module:
    """SD-1.5's UNet with no storage behind its parameters (the shapes are all we need)."""
    from diffusers import UNet2DConditionModel

    from tfmq_export.models.sd15 import load_sd15_config

    config = {k: v for k, v in load_sd15_config().items() if not k.startswith("_")}
    with torch.device("meta"):
        return UNet2DConditionModel.from_config(config)


def figures(name: str, unet: torch.nn.Module, train_steps: int) -> dict:
    resnets, width = table_width(unet)
    rows = {"sampler": SAMPLER_STEPS, "all": train_steps}
    return {"model": name, "resnets": resnets, "width": width,
            **{f"{kind}_rows": n for kind, n in rows.items()},
            **{f"{kind}_bytes": n * width * BYTES_PER_VALUE for kind, n in rows.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    from tfmq_export.models.loading import load_model

    results = [figures("sd15", sd15_unet_on_meta(), 1000), figures("digits", load_model("digits").unet, 1000)]
    print("| model | ResBlocks | row width | sampler (25 rows) | all (1000 rows) |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r['model']} | {r['resnets']} | {r['width']} | {r['sampler_bytes'] / 2**20:.2f} MiB "
              f"({r['sampler_bytes']:,} B) | {r['all_bytes'] / 2**20:.1f} MiB ({r['all_bytes']:,} B) |")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
