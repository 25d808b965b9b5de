"""What a calibration method returns beside the simulation it calibrated in place, typed.

``pipeline.calibrate`` puts ``tensors`` into the artifact, adds ``timings`` to its timings and
records ``temporal_table``; ``pipeline.run_calibration`` hands the whole result back with the
artifact (per-block losses, TIAR's errors, resumed units) for reports and tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["BlockResult", "MethodResult", "TiarResult"]


@dataclass
class BlockResult:
    """Block-output loss on a fixed minibatch before learning (round-to-nearest weights, or the
    initial scales) and after (the frozen result)."""

    name: str
    loss_before: float
    loss_after: float
    iters: int
    chunks: int
    capture_seconds: float = 0.0
    train_seconds: float = 0.0


@dataclass
class TiarResult:
    """TIAR's objective (sum_i ||g_i - g^_i||^2 over the table rows) before and after learning."""

    error_before: float
    error_after: float
    seed: int


@dataclass
class MethodResult:
    """One method's outcome: extra artifact tensors, stage timings and its report."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    #: the deployed temporal table (``fp`` / ``quantized``); None = the settings' choice
    temporal_table: str | None = None
    #: reconstruction blocks in execution order
    blocks: list[str] = field(default_factory=list)
    #: units replayed from a checkpoint instead of learned
    resumed_units: int = 0
    weights: list[BlockResult] = field(default_factory=list)
    act: list[BlockResult] = field(default_factory=list)
    tiar: TiarResult | None = None
    #: tfmq: TIAR's objective of the quantized temporal branch after FSC
    temporal_error_quantized_table: float | None = None
