"""``calibrate`` as a workflow: settings from a recipe and overrides, the model, its conditions, the run.

Everything the user gave is checked before the model is loaded or any data is collected: the
settings (``config.settings_from``: strict recipes, typed fields), the output folder (writable,
not a file), then the model (finite weights) and its conditions (real, finite, the right shape).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tfmq_export.artifact import CalibrationArtifact
from tfmq_export.errors import TfmqError
from tfmq_export.io import check_writable

__all__ = ["DEFAULT_GUIDANCE_SCALE", "calibrate_model"]

#: diffusers' StableDiffusionPipeline default, used when --prompts comes without --guidance-scale
DEFAULT_GUIDANCE_SCALE = 7.5


def calibrate_model(
    model: str,
    out_dir: Path,
    overrides: dict[str, Any],
    *,
    recipe: str | Path | None = None,
    conditions: Path | None = None,
    prompts: Path | None = None,
    progress: bool = True,
    device: str | None = None,
    cache_budget_gb: float | None = None,
    offload: bool = False,
    linear_act_grid: str | None = None,
) -> CalibrationArtifact:
    """Validate everything first (settings, output folder), then load MODEL and calibrate it into ``out_dir``.

    ``overrides`` are the command line's values (``None`` = not given); they win over the recipe
    (a shipped recipe name or a path, ``config.load_recipe``). ``device``: where torch computes
    (``cpu``, ``cuda``, ``cuda:N``; checked first), never part of the settings. ``cache_budget_gb``
    (``--cache-budget``): memory for cached block inputs + targets; above it they are memory-mapped
    on disk (``extra``: ``cache_mb``, ``disk_cache``). ``offload`` (``--offload``, with ``--device
    cuda``): the UNets stay in CPU memory and blocks visit the GPU while they run (``extra.offload``).
    ``linear_act_grid`` (``--linear-act-grid``, None = the recipe's or int8): ``extra.linear_act_grid``.
    """
    from tfmq_export.calibration.pipeline import calibrate as run_calibration
    from tfmq_export.calibration.pipeline import check_offload
    from tfmq_export.config import load_recipe, settings_from
    from tfmq_export.device import resolve_device
    from tfmq_export.distributed import init_from_env, is_writer, rank_device
    from tfmq_export.models.loading import load_conditions, load_model
    from tfmq_export.models.prompts import read_prompts

    target = resolve_device(device)  # a malformed or absent device stops before anything loads
    if init_from_env(target) > 1:  # under torchrun: data-parallel, one GPU per rank, rank 0 reports
        target, progress = rank_device(target), progress and is_writer()
    if prompts is not None:  # the prompts are part of the settings: the artifact records them
        if conditions is not None:
            raise TfmqError("give --prompts or --conditions, not both")
        overrides = {**overrides, "prompts": read_prompts(prompts)}
        if overrides.get("guidance_scale") is None:
            overrides["guidance_scale"] = DEFAULT_GUIDANCE_SCALE
    settings = settings_from(load_recipe(recipe) if recipe is not None else None, overrides)
    if cache_budget_gb is not None:
        if cache_budget_gb <= 0:
            raise TfmqError(f"--cache-budget must be a positive number of GB, got {cache_budget_gb}")
        extra = {**(settings.extra or {}), "cache_mb": cache_budget_gb * 1024, "disk_cache": True}
        settings = _with_extra(settings, extra)
    if offload:
        settings = _with_extra(settings, {**(settings.extra or {}), "offload": True})
    if linear_act_grid is not None:
        settings = _with_extra(settings, {**(settings.extra or {}), "linear_act_grid": linear_act_grid})
    check_offload(settings, target)  # refused on the CPU before the model loads
    check_writable(out_dir, "--out", folder=True)  # before minutes of calibration, creating nothing
    loaded = load_model(model)
    if loaded.pipeline is not None and settings.quantized and prompts is None and conditions is None:
        raise TfmqError(f"{model} is a text-to-image pipeline: calibrate it with --prompts FILE.txt (one prompt "
                        "per line; e.g. examples/digits-text-prompts.txt)")
    if loaded.pipeline is not None and loaded.pipeline.is_xl:
        _check_xl(conditions)
    if conditions is not None:
        loaded.conditions = load_conditions(conditions, loaded)
    if settings.prompts is not None:
        loaded.guided = _guided_conditions(loaded, settings, str(model))
    return run_calibration(loaded, settings, out_dir, progress=progress, device=target)


def _check_xl(conditions: Path | None) -> None:
    """An SDXL pipeline is calibrated from prompts: its UNet also takes text_embeds and time_ids, which
    --conditions lacks (every method works: calibration data carries them packed with the conditions,
    ``temporal.pack_added_conditions``, so block reconstruction sees them too)."""
    if conditions is not None:
        raise TfmqError("an SDXL pipeline is calibrated from --prompts FILE.txt, not --conditions "
                        "(its UNet also takes text_embeds and time_ids)")


def _guided_conditions(loaded: Any, settings: Any, model: str) -> Any:
    """The prompts' conditions (both halves) from the folder's own tokenizer and text encoder."""
    from tfmq_export.models.pipeline import SUPPORTED_PIPELINES
    from tfmq_export.models.prompts import encode_guided

    if loaded.pipeline is None:
        raise TfmqError(f"--prompts needs a text-to-image pipeline folder ({', '.join(SUPPORTED_PIPELINES)}); "
                        f"{model} has no text encoder")
    return encode_guided(loaded.pipeline, settings.prompts, settings.negative_prompt, settings.guidance_scale,
                         loaded.sample_shape[-1])


def _with_extra(settings: Any, extra: dict[str, Any]) -> Any:
    """``settings`` with another ``extra`` dict, validated."""
    from dataclasses import replace

    changed = replace(settings, extra=extra)
    changed.validate()
    return changed
