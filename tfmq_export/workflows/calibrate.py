"""``calibrate`` as a workflow: settings from a recipe and overrides, the model, its conditions, the run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tfmq_export.artifact import CalibrationArtifact
from tfmq_export.errors import TfmqError

__all__ = ["calibrate_model", "read_recipe"]


def read_recipe(path: Path | None) -> dict[str, Any]:
    """The recipe's JSON object ({} without one); one line if it is unreadable or not an object."""
    if path is None:
        return {}
    try:
        recipe = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TfmqError(f"cannot read recipe {path}: {exc}") from exc
    if not isinstance(recipe, dict):
        raise TfmqError(f"recipe {path} must be a JSON object")
    return recipe


def calibrate_model(
    model: str,
    out_dir: Path,
    overrides: dict[str, Any],
    *,
    recipe: Path | None = None,
    conditions: Path | None = None,
    prompts: Path | None = None,
    progress: bool = True,
) -> CalibrationArtifact:
    """Validate everything first (settings, output folder), then load MODEL and calibrate it into ``out_dir``.

    ``overrides`` are the command line's values (``None`` = not given); they win over the recipe.
    """
    from tfmq_export.calibration.pipeline import CalibrationSettings
    from tfmq_export.calibration.pipeline import calibrate as run_calibration
    from tfmq_export.models.loading import load_conditions, load_model
    from tfmq_export.quant.simulate import check_bits

    options = {k: v for k, v in read_recipe(recipe).items() if k in CalibrationSettings.__dataclass_fields__}
    options.update({k: v for k, v in overrides.items() if v is not None})
    settings = CalibrationSettings(**options)
    check_bits(settings.wbits, settings.abits)
    if settings.steps < 1 or settings.num_samples < 1 or settings.batch_size < 1:
        raise TfmqError("--steps, --num-samples and --batch-size must be positive")
    if out_dir.exists() and not out_dir.is_dir():
        raise TfmqError(f"--out {out_dir} exists and is not a folder")
    loaded = load_model(model)
    if prompts is not None:
        raise TfmqError("--prompts needs a text encoder, which this build does not run; pass --conditions FILE.npy")
    if conditions is not None:
        loaded.conditions = load_conditions(conditions, loaded.unet)
    return run_calibration(loaded, settings, out_dir, progress=progress)
