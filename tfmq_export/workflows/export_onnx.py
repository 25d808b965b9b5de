"""``export-onnx`` as a workflow: the output checked first, then the artifact, its model, the export."""

from __future__ import annotations

from pathlib import Path

from tfmq_export.artifact import CalibrationArtifact
from tfmq_export.contract import EXPORT_TARGETS as TARGETS
from tfmq_export.errors import TfmqError

__all__ = ["export_onnx_file"]


def export_onnx_file(artifact_dir: Path, out_path: Path, target: str = "tensorrt", model: str | None = None,
                     timesteps: str = "sampler", precision: str | None = None,
                     weight_storage: str = "int8", attention: str | None = None) -> tuple[CalibrationArtifact, str]:
    """Export the calibrated UNet of ``artifact_dir`` to ``out_path`` (Q/DQ ONNX with the temporal table).

    ``--out`` and ``--precision`` are checked before the artifact and model are loaded (a typo costs
    nothing); ``precision`` None is the target's default (``contract.DEFAULT_FLOAT_PRECISION``), so is
    ``attention`` None (``contract.DEFAULT_ATTENTION``).
    Returns the artifact and the precision so callers can report what was exported.
    """
    from tfmq_export.artifact import load_artifact
    from tfmq_export.contract import default_attention, default_float_precision
    from tfmq_export.export.onnx_export import check_onnx_output, export_onnx
    from tfmq_export.export.qdq import default_weight_storage
    from tfmq_export.models.loading import load_model_for_artifact

    if target not in TARGETS:
        raise TfmqError(f"unknown --target {target!r} (choose {' or '.join(TARGETS)})")
    precision = default_float_precision(target, precision)
    default_weight_storage(target, weight_storage)  # refused before the artifact is loaded
    default_attention(target, attention)
    check_onnx_output(Path(out_path))
    artifact = load_artifact(artifact_dir)
    loaded = load_model_for_artifact(artifact, model)
    export_onnx(loaded, artifact, Path(out_path), target, timesteps=timesteps, precision=precision,
                weight_storage=weight_storage, attention=attention)
    return artifact, precision
