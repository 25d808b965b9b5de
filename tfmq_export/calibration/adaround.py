"""AdaRound on the symmetric, zero-point-0 weight grids (Nagel et al., ICML 2020, "Up or Down?").

Notation (AdaRound paper, eqs. 21-24; BRECQ uses the same):
- s: per-output-channel scale (fixed while rounding is learned), w: float weight,
- V: one learnable real per weight, h(V) = clamp(sigmoid(V) * (zeta - gamma) + gamma, 0, 1), the
  rectified sigmoid with zeta = 1.1, gamma = -0.1 (eq. 23),
- soft integers q~ = clamp(floor(w / s) + h(V), qmin, qmax), used while learning,
- hard integers q = clamp(floor(w / s) + [V >= 0], qmin, qmax), frozen at the end,
- rounding regulariser f_reg = sum(1 - |2 h(V) - 1|^beta) (eq. 24), weight 0.01, off for the first
  20% of the iterations, beta annealed linearly 20 -> 2 over the rest (the TFMQ-DM / Q-Diffusion /
  BRECQ settings).

The grid is the one ``WeightQuantizer`` uses ([-127, 127] for 8 bit, [-8, 7] for 4 bit), so the
frozen integers are exactly what the artifact and the exported DequantizeLinear carry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from tfmq_export.errors import TfmqError
from tfmq_export.quant import grids
from tfmq_export.quant.grids import QuantizerError
from tfmq_export.quant.modules import QuantLayer, WeightQuantizer

#: Stretch of the rectified sigmoid (AdaRound eq. 23).
ZETA = 1.1
GAMMA = -0.1


@dataclass(frozen=True)
class AdaRoundSettings:
    """The optimisation settings of the papers (BRECQ / Q-Diffusion / TFMQ-DM)."""

    reg_weight: float = 0.01
    warmup: float = 0.2
    beta_start: float = 20.0
    beta_end: float = 2.0
    lr: float = 1e-3

    def __post_init__(self) -> None:
        if not 0.0 <= self.warmup < 1.0:
            raise QuantizerError(f"warmup must be in [0, 1), got {self.warmup}")
        if self.lr <= 0 or self.reg_weight < 0:
            raise QuantizerError("lr must be positive and reg_weight non-negative")


class RegularizerSchedule:
    """beta and the regulariser weight at iteration ``it`` of ``iters``.

    The regulariser is off during the warm-up (the first ``warmup`` fraction): the rounding first
    moves towards the reconstruction optimum, then is pushed to 0 or 1 with a beta that decays
    linearly from ``beta_start`` to ``beta_end`` (large beta only penalises values near 0.5).
    """

    def __init__(self, iters: int, settings: AdaRoundSettings) -> None:
        self.iters = iters
        self.settings = settings
        self.start = int(settings.warmup * iters)

    def beta(self, it: int) -> float:
        s = self.settings
        if it < self.start:
            return s.beta_start
        rel = (it - self.start) / max(1, self.iters - self.start)
        return s.beta_end + (s.beta_start - s.beta_end) * max(0.0, 1.0 - rel)

    def weight(self, it: int) -> float:
        return 0.0 if it < self.start else self.settings.reg_weight


def rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    """h(V) of AdaRound eq. 23."""
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def inverse_rectified_sigmoid(h: torch.Tensor) -> torch.Tensor:
    """V with h(V) = h for h in [0, 1) (the initialisation h(V) = frac(w / s))."""
    return -torch.log((ZETA - GAMMA) / (h - GAMMA) - 1.0)


class AdaRound(nn.Module):
    """Learnable rounding of one weight tensor; plugs into ``WeightQuantizer.rounding``.

    Called as ``rounding(weight, scale_view)`` it returns the soft integers q~ while ``soft`` is
    True and the hard ones q otherwise. ``alpha`` is the V of the paper.

    The weight and its scale stay fixed while the rounding is learned, so floor(w / s) is computed
    once; h(V) of the latest soft forward is handed to the regulariser of the same iteration instead
    of being computed twice (the reconstruction loop runs thousands of small iterations per block,
    where such per-iteration work is a measurable share of the time).
    """

    def __init__(self, weight: torch.Tensor, scale_view: torch.Tensor, qmin: int, qmax: int) -> None:
        super().__init__()
        self.qmin, self.qmax = qmin, qmax
        scaled = weight.detach() / scale_view
        self.register_buffer("base", torch.floor(scaled), persistent=False)
        self.alpha = nn.Parameter(inverse_rectified_sigmoid(scaled - self.base))
        self.soft = True
        self._last_h: torch.Tensor | None = None

    def forward(self, weight: torch.Tensor, scale_view: torch.Tensor) -> torch.Tensor:  # noqa: ARG002 (RoundingFn)
        if self.soft:
            up = self._last_h = rectified_sigmoid(self.alpha)
        else:
            up = (self.alpha >= 0).to(weight.dtype)
        return torch.clamp(self.base + up, self.qmin, self.qmax)

    def regularizer(self, beta: float) -> torch.Tensor:
        """f_reg of AdaRound eq. 24, summed over the tensor (on the h(V) of the latest soft forward,
        which is then released; computed afresh when there was none)."""
        h = self._last_h
        if h is None or (torch.is_grad_enabled() and not h.requires_grad):  # none, or from a no-grad pass
            h = rectified_sigmoid(self.alpha)
        self._last_h = None
        return (1.0 - (2.0 * h - 1.0).abs().pow(beta)).sum()

    @torch.no_grad()
    def hard_integers(self, weight: torch.Tensor, scale_view: torch.Tensor) -> torch.Tensor:  # noqa: ARG002
        """q = clamp(floor(w / s) + [V >= 0]) as int8."""
        self._last_h = None
        return torch.clamp(self.base + (self.alpha >= 0).to(self.base.dtype), self.qmin, self.qmax).to(torch.int8)


def attach_adaround(layer: QuantLayer) -> AdaRound:
    """Start learning the rounding of ``layer``'s weight (soft rounding from now on).

    Refuses a layer whose integers were already frozen: relearning would silently replace them.
    """
    wq = layer.weight_quantizer
    if not wq.enabled or not wq.is_calibrated:
        raise QuantizerError("AdaRound needs an enabled weight quantizer with calibrated scales")
    if wq.weight_int.numel():
        raise QuantizerError("this layer's integer weights are already frozen")
    qmin, qmax = wq.qrange
    ada = AdaRound(layer.weight, grids.channel_view(wq.scale, layer.weight), qmin, qmax).to(layer.weight.device)
    wq.rounding = ada
    return ada


def freeze_adaround(layer: QuantLayer, ada: AdaRound) -> torch.Tensor:
    """Freeze the hard rounding into ``weight_quantizer.weight_int`` and detach the soft rounding.

    From here on the simulation, the artifact and the exported graph use these integers.
    """
    wq: WeightQuantizer = layer.weight_quantizer
    q = ada.hard_integers(layer.weight, grids.channel_view(wq.scale, layer.weight))
    wq.rounding = None
    wq.freeze_integers(q)
    return q


def rounding_summary(ada: AdaRound, weight: torch.Tensor, scale_view: torch.Tensor) -> dict[str, float]:
    """How far the learned rounding is from round-to-nearest (fraction of flipped weights) and
    how undecided the soft rounding still is (fraction of h(V) strictly inside (0, 1))."""
    with torch.no_grad():
        nearest = torch.clamp(torch.round(weight / scale_view), ada.qmin, ada.qmax)
        hard = ada.hard_integers(weight, scale_view).to(nearest.dtype)
        h = rectified_sigmoid(ada.alpha)
        return {
            "flipped": float((hard != nearest).float().mean()),
            "undecided": float(((h > 0) & (h < 1)).float().mean()),
        }


def rounding_optimizer(alphas: list[torch.Tensor], lr: float) -> torch.optim.Optimizer:
    """Adam over rounding variables alone, fused into one kernel per step: the loops (blocks, TIAR) run
    thousands of small steps. Optimizers that also hold learned activation scales keep the plain Adam:
    with those the fused kernel broke the agreement of a resumed run with another number of ranks
    (tests/calibration/test_distributed.py)."""
    return torch.optim.Adam(alphas, lr=lr, fused=True)


def lp_loss(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Reconstruction loss as BRECQ defines it: squared error summed over the features of a sample,
    averaged over the batch (the regulariser weight 0.01 is relative to this scale); ``weights``
    (one per sample, mean 1 over the steps: ``calibration.step_weights``) weigh the samples."""
    per_sample = (pred - target).pow(2).reshape(pred.shape[0], -1).sum(dim=1)
    return per_sample.mean() if weights is None else (per_sample * weights).mean()


def check_finite(value: torch.Tensor, where: str) -> None:
    """Stop with one line naming ``where`` when a reconstruction loss is NaN or Inf."""
    if not math.isfinite(float(value)):
        raise TfmqError(f"{where}: the reconstruction loss became {float(value)}; lower the learning rate")


__all__ = [
    "GAMMA",
    "ZETA",
    "AdaRound",
    "AdaRoundSettings",
    "RegularizerSchedule",
    "attach_adaround",
    "check_finite",
    "freeze_adaround",
    "inverse_rectified_sigmoid",
    "lp_loss",
    "rectified_sigmoid",
    "rounding_optimizer",
    "rounding_summary",
]
