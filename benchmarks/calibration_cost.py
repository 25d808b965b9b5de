"""Calibration cost and quality of each method on the bundled digits model, side by side.

Usage: python benchmarks/calibration_cost.py [--bits w4a8] [--threads 1] [--eval-samples 32]
       [--json benchmarks/results/calibration_cost_w4a8.json]

Variants (all from the shipped digits recipes, tfmq_export/recipes, same data and seed):
  minmax, qdiff (recipe: activation stage at iters // 4 per block, as Q-Diffusion's 5,000 vs
  20,000), qdiff-equal (activation stage with the same per-block budget as the weights),
  tfmq (FP temporal table, the default), tfmq-qtable (--temporal-table quantized),
  tfmq-max (static engine scale by the max rule instead of the recipe's mse rule),
  tfmq-steps (per-step factors: every activation on its step's min-max grid, deployable),
  tfmq-joint (activation scales learned with the rounding, joint_act), tfmq-nosplit (no
  shortcut splitting), tfmq-paper (no splitting either: the paper recipes), tfmq-qdrop
  (joint_act with QDrop 0.5), tfmq-all-inputs (reconstruction on all 1,600 calibration inputs
  instead of the recipe's 800), tfmq-recon-act (activation quantization on while the weights
  are learned, static scales), tfmq-keep-shortcuts (the 1x1 shortcut convs left float).
  Budget ablations (iterations per block set whatever the recipe says): qdiff-300 / qdiff-1000
  (activation stage at a quarter of it), tfmq-300 / tfmq-1000 (static activation scales),
  tfmq-joint-300 / tfmq-joint-1000 (learned), tfmq-joint-1000-b8 (reconstruction minibatch 8).
  Layer lists (docs/ANALYSIS.md "Shortcut convs"): tfmq-1000-keep-shortcuts / tfmq-300-keep-shortcuts /
  qdiff-keep-shortcuts (the 1x1 shortcut convs float), tfmq-1000-w8-shortcuts / tfmq-300-w8-shortcuts /
  tfmq-200-w8-shortcuts / qdiff-w8-shortcuts (8-bit shortcut weights, w8_classes), tfmq-w8-2 / tfmq-w8-4 /
  qdiff-w8-2 (the N layers a one-layer sensitivity ranks first at 8-bit, w8_layers),
  tfmq-1000-keep-shortcuts-w8-2.

For each: wall time of ``calibrate`` and its stages, the relative L2 error of the UNet output
against full precision on held-out trajectories (every step of 32 fresh DDIM trajectories, seed
1000, through the torch simulation of the artifact), and the relative error of the deployed
temporal table against the full-precision temporal features. Ratios are within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from tfmq_export.calibration.data import collect_calibration_data
from tfmq_export.calibration.pipeline import calibrate
from tfmq_export.io import atomic_write_text
from tfmq_export.metrics.error import ErrorStats
from tfmq_export.models.loading import load_model
from tfmq_export.quant.state import simulation_from_artifact
from tfmq_export.temporal import build_table_unet, compute_temporal_features
from tfmq_export.workflows.evaluate import recipe_settings


def _w8_shortcuts(iters: int, **extra: object) -> tuple[str, dict, dict]:
    """A tfmq variant with 8-bit shortcut convs and static activation scales at ``iters`` per block, the
    papers' regulariser weight 0.01 and no output correction unless ``extra`` says otherwise (the recipe
    has 0.3 since 9b0781f and the correction since 3e7188c); other options as the recipe says."""
    return "tfmq", {"iters": iters}, {"joint_act": False, "w8_classes": ["shortcuts"], "adaround_reg": 0.01,
                                      "output_correction": "none", **extra}


#: the recipe's cheaper activation ranges and TIAR, on minibatches of 16
_LEAN = {"recon_batch_size": 16, "act_samples_per_step": 32, "tiar_iters": 100}

VARIANTS = {
    "minmax": ("minmax", {}, {}),
    "qdiff": ("qdiff", {}, {}),
    "qdiff-equal": ("qdiff", {}, {"act_iters": None}),  # None: set to the weight budget below
    "qdiff-1000": ("qdiff", {"iters": 1000}, {"act_iters": 250}),  # the recipe's 4:1 ratio at 1,000
    "tfmq": ("tfmq", {}, {}),
    "tfmq-qtable": ("tfmq", {"temporal_table": "quantized"}, {}),
    "tfmq-max": ("tfmq", {"static_scale_rule": "max"}, {}),
    "tfmq-steps": ("tfmq", {}, {"step_factors": True}),
    "tfmq-joint": ("tfmq", {}, {"joint_act": True}),
    "tfmq-1000": ("tfmq", {"iters": 1000}, {"joint_act": False}),
    "tfmq-300": ("tfmq", {"iters": 300}, {"joint_act": False}),  # the W4A8 recipe before it moved to 1,000
    "tfmq-joint-300": ("tfmq", {"iters": 300}, {"joint_act": True}),
    "qdiff-300": ("qdiff", {"iters": 300}, {"act_iters": 75}),
    "tfmq-keep-shortcuts": ("tfmq", {}, {"keep_fp": ["shortcuts"]}),
    "tfmq-joint-1000": ("tfmq", {"iters": 1000}, {"joint_act": True}),
    "tfmq-joint-1000-b8": ("tfmq", {"iters": 1000}, {"joint_act": True, "recon_batch_size": 8}),
    "tfmq-nosplit": ("tfmq", {}, {"split_skip": False}),
    "tfmq-paper": ("tfmq", {}, {"split_skip": False, "joint_act": False}),
    "tfmq-qdrop": ("tfmq", {}, {"joint_act": True, "qdrop": 0.5}),
    "tfmq-all-inputs": ("tfmq", {}, {"recon_samples": 0}),
    "tfmq-recon-act": ("tfmq", {}, {"recon_act_quant": True}),
    # mixed precision at the recipe's W4A8 budget: the N layers 4 bits hurt most keep 8-bit weights
    "tfmq-w8-2": ("tfmq", {"iters": 1000}, {"joint_act": False, "w8_layers": 2}),
    "tfmq-w8-4": ("tfmq", {"iters": 1000}, {"joint_act": False, "w8_layers": 4}),
    "tfmq-1000-keep-shortcuts": ("tfmq", {"iters": 1000}, {"joint_act": False, "keep_fp": ["shortcuts"]}),
    "tfmq-1000-keep-shortcuts-w8-2": ("tfmq", {"iters": 1000},
                                      {"joint_act": False, "keep_fp": ["shortcuts"], "w8_layers": 2}),
    "tfmq-300-keep-shortcuts": ("tfmq", {"iters": 300}, {"joint_act": False, "keep_fp": ["shortcuts"]}),
    "tfmq-1000-w8-shortcuts": _w8_shortcuts(1000),
    "tfmq-300-w8-shortcuts": _w8_shortcuts(300),
    "tfmq-200-w8-shortcuts": _w8_shortcuts(200),
    "qdiff-w8-shortcuts": ("qdiff", {"iters": 300}, {"act_iters": 75, "w8_classes": ["shortcuts"]}),
    # quality per CPU second at small budgets (docs/ANALYSIS.md "Calibration time")
    "tfmq-200-w8-shortcuts-lr2": _w8_shortcuts(200, adaround_lr=0.02),
    "tfmq-400-w8-shortcuts-b16": _w8_shortcuts(400, recon_batch_size=16),
    "tfmq-200-w8-shortcuts-all": _w8_shortcuts(200, recon_samples=0),
    "tfmq-300-w8-shortcuts-b16": _w8_shortcuts(300, recon_batch_size=16),
    "tfmq-400-w8-shortcuts-b16-lean": _w8_shortcuts(400, **_LEAN),
    "tfmq-375-w8-shortcuts-b16-lean": _w8_shortcuts(375, **_LEAN),  # digits-tfmq-w4a8 before 9b0781f
    "tfmq-350-w8-shortcuts-b16-lean": _w8_shortcuts(350, **_LEAN),
    "tfmq-300-w8-shortcuts-b16-lr2": _w8_shortcuts(300, recon_batch_size=16, adaround_lr=0.02),
    "tfmq-400-w8-shortcuts-b16-lr2": _w8_shortcuts(400, recon_batch_size=16, adaround_lr=0.02),
    "tfmq-600-w8-shortcuts-b8-lr2": _w8_shortcuts(600, recon_batch_size=8, adaround_lr=0.02),
    # the rounding regulariser's weight (papers: 0.01) and warm-up (0.2) at the recipe's budget
    "tfmq-375-reg03": _w8_shortcuts(375, **_LEAN, adaround_reg=0.03),
    "tfmq-375-reg1": _w8_shortcuts(375, **_LEAN, adaround_reg=0.1),
    "tfmq-375-reg3": _w8_shortcuts(375, **_LEAN, adaround_reg=0.3),  # digits-tfmq-w4a8
    "tfmq-375-reg1-warm1": _w8_shortcuts(375, **_LEAN, adaround_reg=0.1, adaround_warmup=0.1),
    # the reconstruction loss weighted per step by the sampler's gain (step_weighting p), alone and with reg 0.3
    "tfmq-375-sw1": _w8_shortcuts(375, **_LEAN, step_weighting=1.0),
    "tfmq-375-sw2": _w8_shortcuts(375, **_LEAN, step_weighting=2.0),
    "tfmq-375-reg3-sw1": _w8_shortcuts(375, **_LEAN, adaround_reg=0.3, step_weighting=1.0),
    "tfmq-375-reg3-sw2": _w8_shortcuts(375, **_LEAN, adaround_reg=0.3, step_weighting=2.0),
    "tfmq-375-reg10": _w8_shortcuts(375, **_LEAN, adaround_reg=1.0),
    # the per-step output correction (output_correction) on top of the recipe
    "tfmq-375-reg3-ocp": _w8_shortcuts(375, **_LEAN, adaround_reg=0.3, output_correction="pixel"),
    "tfmq-375-reg3-occ": _w8_shortcuts(375, **_LEAN, adaround_reg=0.3, output_correction="channel"),
    "tfmq-375-reg3-ocp-a16": _w8_shortcuts(375, **{**_LEAN, "act_samples_per_step": 16}, adaround_reg=0.3,
                                           output_correction="pixel"),
    "tfmq-350-reg3-ocp": _w8_shortcuts(350, **_LEAN, adaround_reg=0.3, output_correction="pixel"),
    "tfmq-375-reg3-ocp-a16-r600": _w8_shortcuts(375, **{**_LEAN, "act_samples_per_step": 16}, adaround_reg=0.3,
                                                output_correction="pixel", recon_samples=600),
    "qdiff-ocp": ("qdiff", {}, {"output_correction": "pixel"}),
    "qdiff-w8-2": ("qdiff", {"iters": 300}, {"act_iters": 75, "w8_layers": 2}),
    "qdiff-keep-shortcuts": ("qdiff", {"iters": 300}, {"act_iters": 75, "keep_fp": ["shortcuts"]}),
}


def variant_settings(name: str, bits: str):
    """The recipe's settings for ``bits``, changed as the variant says."""
    method, fields, extra = VARIANTS[name]
    settings = recipe_settings(method, bits)
    merged = dict(settings.extra or {})
    for key, value in extra.items():
        merged[key] = settings.iters if value is None else value
    return replace(settings, **fields, extra=merged or None)


@torch.no_grad()
def output_error(sim: torch.nn.Module, fp: torch.nn.Module, data) -> float:
    """||sim - fp|| / ||fp|| of the noise prediction over every held-out (x_t, step)."""
    stats = ErrorStats()
    for x, step, _ in data.batches(256):
        stats.add(sim(x, step).numpy(), fp(x, step).numpy())
    return stats.rel_l2


def per_step_simulation(sim: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``sim`` whose plain activation quantizers use their own step's min-max scale (FSC
    for every quantizer, as the authors' fake-quant code does). A static engine cannot run this;
    it measures what per-step ranges would be worth."""
    import copy

    from tfmq_export.quant.modules import ActQuantizer, PerStepActQuantizer, swap_input_quantizer
    from tfmq_export.quant.simulate import quant_layers

    out = copy.deepcopy(sim)
    for layer in quant_layers(out).values():
        aq = layer.input_quantizer
        if type(aq) is ActQuantizer and aq.enabled:
            per_step = PerStepActQuantizer(aq.bits, aq.step_min.numel())
            swap_input_quantizer(layer, per_step)
            per_step.step_count.fill_(1)  # the artifact keeps the ranges, not the counts
    return out


@torch.no_grad()
def per_step_output_error(sim: torch.nn.Module, fp: torch.nn.Module, data) -> float:
    """``output_error`` of ``per_step_simulation(sim)`` (the rows are declared for its quantizers)."""
    from tfmq_export.quant.steps import observing_steps

    per_step = per_step_simulation(sim)
    stats = ErrorStats()
    for x, step, _ in data.batches(256):
        with observing_steps(step):
            out = per_step(x, step)
        stats.add(out.numpy(), fp(x, step).numpy())
    return stats.rel_l2


def with_fp_table(model, artifact, fp_features: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The artifact's simulation with the full-precision temporal features as its table: shows how
    much of a method's error its deployed table is responsible for."""
    import copy

    swapped = copy.copy(artifact)
    swapped.tensors = {**artifact.tensors, **{f"temporal.{k}": v.clone() for k, v in fp_features.items()}}
    return simulation_from_artifact(model.unet, swapped)


def table_error(artifact, fp_features: dict[str, torch.Tensor]) -> float:
    """Relative L2 error of the deployed temporal table against the FP temporal features."""
    tables = artifact.temporal_tables()
    stats = ErrorStats()
    for key, reference in fp_features.items():
        stats.add(tables[key].float().numpy(), reference.numpy())
    return stats.rel_l2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", default="w4a8", choices=["w8a8", "w4a8", "w4a16"])
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--eval-samples", type=int, default=32)
    parser.add_argument("--seeds", default="0", help="Calibration seeds, e.g. 0,1,2 (AdaRound's own spread).")
    parser.add_argument("--seed-variants", default="qdiff,tfmq", help="Variants run with every seed (others: first).")
    parser.add_argument("--sample-images", type=int, default=0,
                        help="Also sample this many images (torch simulation, DDIM, noise seed 0) and report the "
                             "pixel RMSE to the FP images from the same noise.")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--doc", type=Path, default=None, help="Also write the Markdown table here.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model("digits")
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    first = variant_settings(names[0], args.bits)
    fp = build_table_unet(model.unet, compute_timesteps(model, first.steps)).eval()
    held_out = collect_calibration_data(lambda x, s, _c: fp(x, s), model.scheduler_config, fp.timesteps,
                                        model.sample_shape, args.eval_samples, 1000, 64, progress=False)
    fp_features = compute_temporal_features(model.unet, fp.timesteps)
    fp_images = sampled(fp, model, first.steps, args.sample_images)
    seeds = [int(v) for v in args.seeds.split(",") if v.strip()]
    seeded = {v.strip() for v in args.seed_variants.split(",")}
    jobs = [(name, seed) for seed in seeds for name in names if seed == seeds[0] or name in seeded]
    rows = []
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
    for name, seed in jobs:
        settings = replace(variant_settings(name, args.bits), seed=seed)
        load_before = os.getloadavg()[0]
        started, cpu_started = time.perf_counter(), time.process_time()
        artifact = calibrate(model, settings, progress=False)
        seconds = time.perf_counter() - started
        cpu_seconds = time.process_time() - cpu_started  # CPU time: far less sensitive to other jobs than wall time
        sim = simulation_from_artifact(model.unet, artifact)
        row = {"variant": name, "seed": seed, "method": settings.method, "bits": args.bits, "iters": settings.iters,
               "extra": settings.extra, "temporal_table": artifact.temporal_table, "seconds": round(seconds, 1),
               "cpu_seconds": round(cpu_seconds, 1),
               "stages": {k: round(v, 1) if isinstance(v, float) else v for k, v in artifact.timings.items()},
               "output_rel_error": output_error(sim, fp, held_out),
               "fp_table_output_rel_error": output_error(with_fp_table(model, artifact, fp_features), fp, held_out),
               "per_step_output_rel_error": per_step_output_error(sim, fp, held_out),
               "table_rel_error": table_error(artifact, fp_features),
               "load_before": round(load_before, 2)}
        if args.sample_images:
            images = sampled(sim, model, settings.steps, args.sample_images)
            row["sample_rmse_vs_fp"] = float(np.sqrt(np.mean((images - fp_images) ** 2)))
        rows.append(row)
        if args.json is not None:  # every finished row is kept, should a long run be stopped
            atomic_write_text(args.json, json.dumps({"partial": True, "rows": rows}, indent=2))
        print(f"{name:12s} seed {seed} {seconds:7.1f} s ({cpu_seconds:7.1f} CPU s)  "
              f"output err {row['output_rel_error']:.5f}  "
              f"with FP table {row['fp_table_output_rel_error']:.5f}  "
              f"per-step {row['per_step_output_rel_error']:.5f}  "
              f"table err {row['table_rel_error']:.5f}"
              + (f"  sample RMSE {row['sample_rmse_vs_fp']:.5f}" if args.sample_images else ""), flush=True)
    means = {}
    for name in names:
        errors = [r["output_rel_error"] for r in rows if r["variant"] == name]
        means[name] = {"seeds": len(errors), "mean_output_rel_error": sum(errors) / len(errors),
                       "min": min(errors), "max": max(errors)}
    rows_first = [r for r in rows if r["seed"] == seeds[0]]
    by_name = {r["variant"]: r for r in rows_first}
    ratios = {f"{a}/{b}": round(by_name[a]["seconds"] / by_name[b]["seconds"], 3)
              for a, b in (("tfmq", "qdiff"), ("tfmq", "qdiff-equal")) if a in by_name and b in by_name}
    cpu_ratios = {f"{a}/{b}": round(by_name[a]["cpu_seconds"] / by_name[b]["cpu_seconds"], 3)
                  for a, b in (("tfmq", "qdiff"), ("tfmq", "qdiff-equal")) if a in by_name and b in by_name}
    print("time ratios (wall):", ratios, " (CPU time):", cpu_ratios)
    result = {"command": "python benchmarks/calibration_cost.py --bits " + args.bits + f" --variants {args.variants}"
                         + f" --threads {args.threads} --eval-samples {args.eval_samples} --seeds {args.seeds}"
                         + f" --seed-variants {args.seed_variants} --sample-images {args.sample_images}",
              "mean_over_seeds": means,
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "threads": args.threads,
              "cpu_count": os.cpu_count(), "rows": rows, "time_ratios": ratios,
              "cpu_time_ratios": cpu_ratios}
    if args.json is not None:
        atomic_write_text(args.json, json.dumps(result, indent=2))
    if args.doc is not None:
        args.doc.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.doc, markdown(result))


def markdown(result: dict) -> str:
    """The table of one run, with its command, for docs/."""
    bits = sorted({row["bits"] for row in result["rows"]})
    lines = [
        f"# Calibration cost and quality per method at {', '.join(b.upper() for b in bits)} (bundled digits model)",
        "",
        f"Command: `{result['command']}` ({result['created']}, {result['threads']} thread(s), "
        f"{result['cpu_count']} cores). Output error: relative L2 of the noise prediction against full",
        "precision over every step of 32 held-out DDIM trajectories (torch simulation of the artifact).",
        "Table error: relative L2 of the deployed temporal table against the FP temporal features.",
        "Per-step error: the same simulation with every activation quantizer at its own step's min-max",
        "scale (what FSC for all quantizers would give; a static engine cannot carry it, see docs/ANALYSIS.md).",
        "",
        "FP-table error: the output error with the FP temporal features swapped in for the deployed table.",
        "",
        "| variant | seed | method | iters / block | extra | table | seconds | output error | FP-table error | "
        "per-step error | table error |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["rows"]:
        reconstructs = r["method"] != "minmax"  # minmax ignores the preset's iteration options
        extra = ", ".join(f"{k}={v}" for k, v in (r["extra"] or {}).items()) if reconstructs else "-"
        iters = r["iters"] if reconstructs else "-"
        lines.append(f"| {r['variant']} | {r['seed']} | {r['method']} | {iters} | {extra} | {r['temporal_table']} | "
                     f"{r['seconds']} | {r['output_rel_error']:.5f} | {r['fp_table_output_rel_error']:.5f} | "
                     f"{r['per_step_output_rel_error']:.5f} | {r['table_rel_error']:.5f} |")
    lines += ["", "Output error over calibration seeds (mean, min, max):", ""]
    for name, m in result["mean_over_seeds"].items():
        lines.append(f"- {name}: {m['mean_output_rel_error']:.5f} ({m['min']:.5f} .. {m['max']:.5f}, "
                     f"{m['seeds']} seed(s))")
    lines += ["", "Stage timings (s) from the artifacts:", ""]
    for r in result["rows"]:
        lines.append(f"- {r['variant']} (seed {r['seed']}): " + ", ".join(f"{k} {v}" for k, v in r["stages"].items()))
    if result["time_ratios"]:
        ratios = ", ".join(f"{k} = {v}" for k, v in result["time_ratios"].items())
        lines += ["", f"Time ratios (first seed, same run): {ratios}"]
    return "\n".join(lines) + "\n"


@torch.no_grad()
def sampled(net: torch.nn.Module, model, steps: int, count: int) -> np.ndarray | None:
    """``count`` images through ``net`` (a table UNet) with the shared DDIM loop, noise seed 0."""
    if count <= 0:
        return None
    from tfmq_export.sampling import sample_images

    return sample_images(lambda x, step, _cond: net(x, step), model.scheduler_config, steps, count,
                         tuple(model.sample_shape), seed=0, batch_size=250, progress=False)


def compute_timesteps(model, steps: int) -> list[int]:
    from tfmq_export.sampling import sampler_timesteps

    return sampler_timesteps(model.scheduler_config, steps)


if __name__ == "__main__":
    main()
