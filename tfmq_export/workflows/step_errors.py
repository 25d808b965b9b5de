"""The error of every quantized UNet call along the sampler's trajectory, per method, and its plot.

TFMQ's premise is that quantization error depends on the step (the temporal features, the
activation ranges move with t); a single number over all steps hides where a method loses. Here
a few FP trajectories are sampled with the reference (FP) table UNet; at every step the torch
simulation of each artifact and the reference get the same x_t, and the relative L2 of the noise
prediction is kept per step (the measure of docs/CALIBRATION.md and benchmarks/calibration_cost.py,
split by step instead of pooled). The simulation is what the exported graph computes (the
ONNX-vs-simulation tests hold it to that), so this is the exported artifact's error.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from tfmq_export.artifact import CalibrationArtifact
from tfmq_export.errors import TfmqError

__all__ = ["plot_step_errors", "step_error_lines", "step_errors"]

#: Trajectories per report: enough for a stable curve on the digits model, cheap on 2 cores.
DEFAULT_TRAJECTORIES = 4
#: Seed of the trajectories' initial noise (away from calibration's seed 0 and the samples' seeds).
DEFAULT_SEED = 1000


@torch.no_grad()
def step_errors(unet: torch.nn.Module, artifacts: Mapping[str, CalibrationArtifact], reference: CalibrationArtifact,
                sample_shape: tuple[int, ...], num_trajectories: int = DEFAULT_TRAJECTORIES,
                seed: int = DEFAULT_SEED, target: str = "onnxruntime") -> dict[str, Any]:
    """Per-step relative L2 error of each artifact's UNet calls against ``reference``'s along the
    reference's own trajectories (the same x_t for both). Returns ``{"timesteps": [...], "errors":
    {name: [one value per step, noisiest first]}, "num_trajectories", "seed"}``; an artifact equal
    to the reference gives 0 at every step; one on another step schedule is left out (``skipped``, with
    the reason). Unconditional UNets only."""
    from tfmq_export.calibration.data import collect_calibration_data
    from tfmq_export.metrics.error import ErrorStats
    from tfmq_export.quant.state import simulation_from_artifact
    from tfmq_export.workflows.sample import artifact_spec

    if num_trajectories < 1:
        raise TfmqError(f"per-step errors need at least one trajectory, not {num_trajectories}")
    if type(unet).__name__ == "UNet2DConditionModel":
        raise TfmqError("per-step errors are measured on unconditional UNets (this one takes text)")
    skipped = {name: "another step schedule than the FP reference" for name, a in artifacts.items()
               if list(a.timesteps) != list(reference.timesteps)}
    spec = artifact_spec(reference, tuple(sample_shape))
    fp = simulation_from_artifact(unet, reference, target)
    data = collect_calibration_data(lambda x, s, _c: fp(x, s), spec.scheduler_config, list(spec.timesteps),
                                    tuple(sample_shape), num_trajectories, seed, batch_size=num_trajectories,
                                    progress=False, scheduler=spec.scheduler, num_steps=spec.num_steps)
    rows = sorted(set(data.step_index.tolist()), key=data.step_index.tolist().index)  # in sampling order
    fp_out = torch.cat([fp(x, s) for x, s, _ in data.batches(256)])
    errors: dict[str, list[float]] = {}
    for name, artifact in artifacts.items():
        if name in skipped:
            continue
        sim = simulation_from_artifact(unet, artifact, target)
        out = torch.cat([sim(x, s) for x, s, _ in data.batches(256)])
        per_step = []
        for row in rows:
            mask = data.step_index == row
            per_step.append(ErrorStats().add(out[mask].numpy(), fp_out[mask].numpy()).rel_l2)
        errors[name] = per_step
        del sim
    return {"timesteps": [int(reference.timesteps[r]) for r in rows], "errors": errors,
            "num_trajectories": num_trajectories, "seed": seed, "skipped": skipped}


def plot_step_errors(result: dict[str, Any], path: Path, title: str = "Per-step error vs FP") -> Path:
    """A PNG line plot: x the sampler step (first call = noisiest), y the relative L2 error of the
    UNet output against FP (log scale when every value is positive), one line per method."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    from tfmq_export.io import atomic_write

    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.add_subplot()
    steps = list(range(1, len(result["timesteps"]) + 1))
    positive = True
    for name, values in result["errors"].items():
        ax.plot(steps, values, marker="o", markersize=3, label=name)
        positive = positive and all(v > 0 for v in values)
    if positive and result["errors"]:
        ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(f"sampler step (1 = t {result['timesteps'][0]}, noisiest; {len(steps)} = t "
                  f"{result['timesteps'][-1]})" if steps else "sampler step")
    ax.set_ylabel("relative L2 error of the UNet output vs FP")
    ax.set_title(f"{title} ({result['num_trajectories']} trajectories, seed {result['seed']})")
    ax.grid(True, alpha=0.3)
    if result["errors"]:
        ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    return path


def step_error_lines(result: dict[str, Any], plot: str | None) -> list[str]:
    """A report's section: the plot link and, per method, the error at the first, middle and last step
    and where it peaks."""
    lines = ["", "## Per-step error along the trajectory", "",
             f"Relative L2 error of each quantized UNet call against the FP UNet given the same x_t, over "
             f"{result['num_trajectories']} FP DDIM trajectories (seed {result['seed']}), from the torch",
             "simulation of each artifact (what its exported graph computes).", ""]
    if plot:
        lines += [f"![per-step error]({plot})", ""]
    lines += ["| method | first step | middle step | last step | worst step (t) |", "| --- | --- | --- | --- | --- |"]
    for name, values in result["errors"].items():
        if not values:
            continue
        worst = max(range(len(values)), key=values.__getitem__)
        lines.append(f"| {name} | {values[0]:.4f} | {values[len(values) // 2]:.4f} | {values[-1]:.4f} | "
                     f"{values[worst]:.4f} (t {result['timesteps'][worst]}) |")
    lines += [f"- {name}: not measured ({why})" for name, why in result.get("skipped", {}).items()]
    return lines
