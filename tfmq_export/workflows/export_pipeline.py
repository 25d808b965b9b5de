"""``export-pipeline`` as a workflow: the output folder checked first, then the artifact, its model, the export."""

from __future__ import annotations

from pathlib import Path

from tfmq_export.errors import TfmqError

__all__ = ["export_pipeline_folder"]


def export_pipeline_folder(artifact_dir: Path, out_dir: Path, target: str = "onnxruntime",
                           model: str | None = None, timesteps: str = "sampler", precision: str | None = None) -> dict:
    """Export every stage of the pipeline ARTIFACT was calibrated on into ``out_dir``; returns pipeline.json.

    ``precision`` None is the target's default (``contract.DEFAULT_FLOAT_PRECISION``)."""
    import json

    from tfmq_export.artifact import load_artifact
    from tfmq_export.contract import EXPORT_TARGETS, PIPELINE_JSON, TABLE_KINDS, default_float_precision
    from tfmq_export.export.pipeline import check_pipeline_output, export_pipeline
    from tfmq_export.models.loading import load_model_for_artifact

    if target not in EXPORT_TARGETS:
        raise TfmqError(f"unknown --target {target!r} (choose {' or '.join(EXPORT_TARGETS)})")
    if timesteps not in TABLE_KINDS:
        raise TfmqError(f"unknown --timesteps {timesteps!r} (choose {' or '.join(TABLE_KINDS)})")
    precision = default_float_precision(target, precision)
    check_pipeline_output(out_dir)
    artifact = load_artifact(artifact_dir)
    loaded = load_model_for_artifact(artifact, model)
    export_pipeline(loaded, artifact, out_dir, target, timesteps, precision)
    return json.loads((Path(out_dir) / PIPELINE_JSON).read_text())
