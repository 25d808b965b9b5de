"""Which rows an ``evaluate`` run has: methods (ours and ModelOpt's peers) x bit settings x calibration seeds.

One calibration seed says little: the digits' 4-bit rows moved by about the gap between methods
from one calibration seed to the next (docs/ANALYSIS.md), so 4-bit rows run three calibration seeds
by default and the report ranks methods by their mean and spread. The calibration seed is
``CalibrationSettings.seed`` (the calibration trajectories and the minibatch order); the sampling
noise (``--seed``) is the same for every row, so each row's images stay paired with the FP images.

Peers are other tools' quantizers run on the same UNet and data (``modelopt-int8`` at W8A8,
``modelopt-w4a16`` at W4A16); each appears only at its own bit setting. They are sampled by
``evaluate_peers`` (imported only when a peer row runs: it needs ``nvidia-modelopt``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from tfmq_export.config import METHODS
from tfmq_export.errors import TfmqError

__all__ = ["BIT_SETTINGS", "DEFAULT_CALIB_SEEDS", "PEER_BITS", "RowMaker", "check_bits", "check_methods",
           "check_peers", "evaluation_jobs", "fp_rows", "is_peer", "method_rows", "paired_rmse", "parse_calib_seeds",
           "peer_arrays", "row_seeds", "seed_name", "seeded_jobs"]

#: (method, bits, calibration seed, row name) -> (row, images): one row of a model's evaluation
RowMaker = Callable[[str, str, int, str], "tuple[dict[str, Any], np.ndarray]"]

BIT_SETTINGS = {"w8a8": (8, 8), "w4a8": (4, 8), "w4a16": (4, 16)}
#: The peer methods and the one bit setting each runs at.
PEER_BITS = {"modelopt-int8": "w8a8", "modelopt-w4a16": "w4a16"}
#: Calibration seeds of a 4-bit row when ``--calib-seeds`` is not given (8-bit rows: the first only).
DEFAULT_CALIB_SEEDS = (0, 1, 2)


def is_peer(method: str) -> bool:
    """Whether ``method`` is another tool's quantizer (sampled in ``evaluate_peers``), not one of ours."""
    return method in PEER_BITS


def check_methods(methods: Sequence[str]) -> None:
    """Refuse a method that is neither ours nor a peer (one line, before any work)."""
    bad = [m for m in methods if m not in METHODS and not is_peer(m)]
    if bad:
        raise TfmqError(f"unknown method(s) {bad}; choose from {', '.join([*METHODS, *PEER_BITS])}")


def _peer_module() -> Any:
    """``evaluate_peers`` (it needs nvidia-modelopt), or one line saying why it cannot be used."""
    try:
        from tfmq_export.workflows import evaluate_peers
    except ImportError as error:
        raise TfmqError(f"the ModelOpt peer rows cannot run here ({error}); install nvidia-modelopt or leave "
                        f"{', '.join(PEER_BITS)} out of --methods") from None
    return evaluate_peers


def check_peers(methods: Sequence[str]) -> None:
    """Where ``methods`` name a peer, load its module now (before any work); otherwise import nothing."""
    if any(is_peer(m) for m in methods):
        _peer_module()


def check_bits(bits: Sequence[str]) -> None:
    """Refuse an unknown bit setting (one line, before any work)."""
    unknown = [b for b in bits if b not in BIT_SETTINGS]
    if unknown:
        raise TfmqError(f"unknown bit setting(s) {unknown}; choose from {', '.join(BIT_SETTINGS)}")


def evaluation_jobs(methods: list[str], bits: list[str], skip: Sequence[str] = ()) -> list[tuple[str, str]]:
    """(method, bits) rows in table order, a peer only at its own bit setting, less the ``--skip`` ones
    (``method-bits`` names, checked)."""
    jobs = [(m, b) for b in bits for m in methods if not is_peer(m) or PEER_BITS[m] == b]
    unknown = sorted(set(skip) - {f"{m}-{b}" for m, b in jobs})
    if unknown:
        raise TfmqError(f"--skip {','.join(unknown)}: not a row of this run (rows are METHOD-BITS, e.g. qdiff-w4a8)")
    return [(m, b) for m, b in jobs if f"{m}-{b}" not in skip]


def parse_calib_seeds(text: str | Sequence[int] | None) -> list[int] | None:
    """``"0,1,2"`` (or a list) -> [0, 1, 2]; None or empty -> None (the default per bit width). Refuses
    negative, repeated or non-integer seeds."""
    if text is None:
        return None
    items = [s.strip() for s in text.split(",") if s.strip()] if isinstance(text, str) else list(text)
    if not items:
        return None
    try:
        seeds = [int(s) for s in items]
    except (TypeError, ValueError):
        raise TfmqError(f"--calib-seeds {text!r}: give comma-separated integers, e.g. 0,1,2") from None
    if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise TfmqError(f"--calib-seeds {text!r}: seeds must be distinct and >= 0")
    return seeds


def row_seeds(bits: str, calib_seeds: Sequence[int] | None = None) -> list[int]:
    """The calibration seeds of a row at ``bits``: ``calib_seeds`` when given, else
    ``DEFAULT_CALIB_SEEDS`` for 4-bit weights and seed 0 for 8-bit ones."""
    if calib_seeds is not None:
        return list(calib_seeds)
    return list(DEFAULT_CALIB_SEEDS) if BIT_SETTINGS[bits][0] == 4 else [0]


def seeded_jobs(jobs: Sequence[tuple[str, str]],
                calib_seeds: Sequence[int] | None = None) -> list[tuple[str, str, int]]:
    """(method, bits, calibration seed) per row, seeds innermost (``row_seeds``)."""
    return [(m, b, s) for m, b in jobs for s in row_seeds(b, calib_seeds)]


def seed_name(method: str, bits: str, calib_seed: int) -> str:
    """The name of one row's folder and files: ``tfmq-w4a8`` for calibration seed 0 (the name runs
    before calibration seeds had, so they resume), ``tfmq-w4a8-cs1`` for seed 1."""
    return f"{method}-{bits}" if calib_seed == 0 else f"{method}-{bits}-cs{calib_seed}"


def peer_arrays(model: Any, method: str, *, num_images: int, seed: int, calib_seed: int, steps: int,
                batch_size: int, progress: bool, prompts: Sequence[tuple[str | None, int]] = ((None, 0),),
                guidance_scale: float = 1.0) -> dict[str, np.ndarray]:
    """A peer's samples (``evaluate_peers.peer_samples``) as arrays to cache: ``images`` (the calls for
    ``prompts``, (prompt, noise seed offset) each, concatenated), ``calib_seconds`` (the longest call's:
    a call that reuses its calibration reports less) and ``note`` (how the peer was run)."""
    peer_samples = _peer_module().peer_samples  # needs nvidia-modelopt: imported only for peer rows
    runs = [peer_samples(model, method, num_images=num_images, seed=seed + offset, calib_seed=calib_seed,
                         steps=steps, batch_size=batch_size, progress=progress, prompt=prompt,
                         guidance_scale=guidance_scale) for prompt, offset in prompts]
    return {"images": np.concatenate([np.asarray(r.images) for r in runs]),
            "calib_seconds": np.array(max(float(r.calibration_seconds) for r in runs)),
            "note": np.array(runs[0].note)}


def paired_rmse(images: np.ndarray, reference: np.ndarray) -> float:
    """Root-mean-square pixel difference (pixels in [-1, 1], clipped) between samples drawn from the
    same initial noise. Why: FID between two sets of 5,000 digits still moves by about two points from
    seed to seed, while quantized and full-precision samples from the same x_T differ only by what
    quantization changed, so this separates methods that FID cannot."""
    a, b = (np.clip(x.astype(np.float64), -1.0, 1.0) for x in (images, reference))
    return float(np.sqrt(np.mean((a - b) ** 2)))


def fp_rows(sample_fp: Callable[[int], tuple[dict[str, Any], np.ndarray]],
            seed: int) -> tuple[list[dict[str, Any]], np.ndarray]:
    """The FP rows at noise seeds ``seed`` and ``seed + 1`` (the metrics' own noise) and the images of
    the first, which every quantized row is paired with. ``sample_fp(noise_seed)`` -> (row, images)."""
    rows: list[dict[str, Any]] = []
    reference: np.ndarray | None = None
    for fp_seed in (seed, seed + 1):
        row, images = sample_fp(fp_seed)
        reference = images if reference is None else reference
        rows.append(row | {"method": "fp", "calib_seed": None,
                           "rmse_vs_fp": paired_rmse(images, reference) if fp_seed == seed else None})
    assert reference is not None
    return rows, reference


def method_rows(jobs: Sequence[tuple[str, str, int]], calib_seeds: Sequence[int] | None, reference: np.ndarray,
                make_row: RowMaker, on_first_seed: Callable[[dict[str, Any], np.ndarray, str], None],
                *, desc: str, progress: bool) -> list[dict[str, Any]]:
    """One row per (method, bits, calibration seed) job (``make_row``), each with ``calib_seed`` and its
    paired RMSE to ``reference``; ``on_first_seed(row, images, name)`` for each setting's first
    calibration seed (the comparison images and per-step errors are drawn for that seed only)."""
    rows = []
    for method, bits, calib_seed in tqdm(jobs, desc=desc, disable=not progress):
        name = seed_name(method, bits, calib_seed)
        row, images = make_row(method, bits, calib_seed, name)
        row |= {"calib_seed": calib_seed, "rmse_vs_fp": paired_rmse(images, reference)}
        rows.append(row)
        if calib_seed == row_seeds(bits, calib_seeds)[0]:
            on_first_seed(row, images, name)
    return rows
