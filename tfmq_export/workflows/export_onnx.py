"""``export-onnx`` as a workflow: the output checked first, then the artifact, its model, the export."""

from __future__ import annotations

from pathlib import Path

from tfmq_export.artifact import CalibrationArtifact

__all__ = ["export_onnx_file"]


def export_onnx_file(artifact_dir: Path, out_path: Path, target: str = "tensorrt", model: str | None = None,
                     timesteps: str = "sampler") -> CalibrationArtifact:
    """Export the calibrated UNet of ``artifact_dir`` to ``out_path`` (Q/DQ ONNX with the temporal table).

    ``--out`` is checked before the artifact and model are loaded (a typo costs nothing); returns
    the artifact so callers can report what was exported.
    """
    from tfmq_export.artifact import load_artifact
    from tfmq_export.export.onnx_export import check_onnx_output, export_onnx
    from tfmq_export.models.loading import load_model_for_artifact

    check_onnx_output(Path(out_path))
    artifact = load_artifact(artifact_dir)
    loaded = load_model_for_artifact(artifact, model)
    export_onnx(loaded, artifact, Path(out_path), target, timesteps=timesteps)
    return artifact
