"""Compare two runners on the same UNet inputs, per temporal-table row.

"What you calibrate is what you deploy": the onnxruntime run of the exported graph, the OpenVINO
IR and the TensorRT plan should compute the same function. The error of a diffusion UNet is not
uniform over the sampler's steps (the temporal features differ per step), so the comparison is
reported per ``step_index`` (one row of the temporal table), plus overall.

Where TensorRT is one of the two runners (and both can expose a Polygraphy runner), the outputs
are produced by Polygraphy's ``Comparator`` (the ``polygraphy run --trt --onnxrt`` machinery)
and its tolerance check is reported as well; otherwise the two runners are called directly.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tfmq_export.backends.base import Runner
from tfmq_export.contract import INPUT_CONDITIONS, INPUT_SAMPLE, INPUT_STEP_INDEX, OUTPUT_NOISE_PRED, UNET_INPUTS
from tfmq_export.errors import TfmqError
from tfmq_export.metrics.error import ErrorStats

__all__ = ["compare_runners"]


def _check_inputs(inputs: Sequence[Mapping[str, np.ndarray | None]]) -> None:
    if not inputs:
        raise TfmqError("compare_runners needs at least one input (a dict with sample and step_index)")
    for i, feed in enumerate(inputs):
        for key in (INPUT_SAMPLE, INPUT_STEP_INDEX):
            if feed.get(key) is None:
                raise TfmqError(f"input {i} has no {key!r}; each input is a dict of the UNet contract's arrays")
        extra = set(feed) - set(UNET_INPUTS)
        if extra:
            raise TfmqError(f"input {i} has {', '.join(sorted(extra))}, which the UNet contract does not define")


def _run_direct(runner: Runner, inputs: Sequence[Mapping[str, np.ndarray | None]]) -> list[np.ndarray]:
    with contextlib.ExitStack() as stack:
        if not runner.is_active:
            stack.enter_context(runner)
        return [
            runner.infer(f[INPUT_SAMPLE], f[INPUT_STEP_INDEX], f.get(INPUT_CONDITIONS))  # type: ignore[arg-type]
            for f in inputs
        ]


def _declared_inputs(runner: Runner) -> list[str]:
    """Input names the runner's model declares (activating it briefly if it is not active)."""
    names = getattr(runner, "input_names", None)
    if runner.is_active and names:
        return list(names)
    with runner:
        return list(runner.input_names)  # type: ignore[attr-defined]


def _run_polygraphy(
    runner_a: Runner,
    runner_b: Runner,
    inputs: Sequence[Mapping[str, np.ndarray | None]],
    atol: float,
    rtol: float,
) -> tuple[list[np.ndarray], list[np.ndarray], bool]:
    """Outputs of both runners from Polygraphy's Comparator, and whether its tolerance check passed."""
    from polygraphy.comparator import Comparator, SimpleCompareFunc
    from polygraphy.exception import PolygraphyException
    from polygraphy.logger import G_LOGGER

    names = _declared_inputs(runner_a)
    feeds = []
    for f in inputs:
        feed = {}
        for n in names:
            value = f.get(n)
            if value is None:
                raise TfmqError(f"the model needs {n!r}; add it to every input")
            feed[n] = np.ascontiguousarray(value, dtype=np.int64 if n == INPUT_STEP_INDEX else np.float32)
        feeds.append(feed)
    poly_a, poly_b = runner_a.as_polygraphy_runner(), runner_b.as_polygraphy_runner()  # type: ignore[attr-defined]
    try:
        with G_LOGGER.verbosity(G_LOGGER.WARNING):
            results = Comparator.run([poly_a, poly_b], data_loader=feeds)
            accuracy = Comparator.compare_accuracy(results, compare_func=SimpleCompareFunc(atol=atol, rtol=rtol))
    except PolygraphyException as exc:
        raise TfmqError(f"Polygraphy could not compare the runners: {str(exc).strip().splitlines()[0]}") from exc

    def outputs(iterations: Sequence[Any]) -> list[np.ndarray]:
        arrays = []
        for it in iterations:
            value = it[OUTPUT_NOISE_PRED] if OUTPUT_NOISE_PRED in it else next(iter(it.values()))
            value = value.load() if hasattr(value, "load") else value
            arrays.append(np.asarray(value, dtype=np.float32))
        return arrays

    per_runner = [iters for _, iters in results.items()]
    return outputs(per_runner[0]), outputs(per_runner[1]), bool(accuracy)


def compare_runners(
    runner_a: Runner,
    runner_b: Runner,
    inputs: Sequence[Mapping[str, np.ndarray | None]],
    *,
    use_polygraphy: bool | None = None,
    atol: float = 1e-2,
    rtol: float = 1e-2,
) -> dict[str, Any]:
    """Run both runners on ``inputs`` and report max |a - b| and relative L2 per table row.

    ``inputs`` are feed dicts with ``sample`` [B,C,H,W], ``step_index`` [B] and, for a
    conditional UNet, ``encoder_hidden_states``. ``runner_b`` is the reference: relative L2 is
    ``||a - b|| / ||b||``. ``use_polygraphy=None`` uses Polygraphy's Comparator when one runner
    is TensorRT (``atol``/``rtol`` are then its pass/fail tolerances, reported as
    ``polygraphy_passed``); ``True`` forces it (both runners must offer
    ``as_polygraphy_runner``), ``False`` calls the runners directly.

    Returns ``{"runner_a", "runner_b", "method", "rows": [{"step_index", "count", "max_abs",
    "rel_l2"}], "max_abs", "rel_l2", "num_inputs", "polygraphy_passed", "atol", "rtol"}``.
    """
    _check_inputs(inputs)
    can_poly = all(hasattr(r, "as_polygraphy_runner") for r in (runner_a, runner_b))
    if use_polygraphy is None:
        use_polygraphy = can_poly and "tensorrt" in (runner_a.backend, runner_b.backend)
    if use_polygraphy and not can_poly:
        raise TfmqError(
            f"Polygraphy's Comparator needs two Polygraphy-capable runners (onnxruntime, tensorrt), "
            f"not {runner_a.backend} and {runner_b.backend}"
        )

    passed: bool | None = None
    if use_polygraphy:
        outs_a, outs_b, passed = _run_polygraphy(runner_a, runner_b, inputs, atol, rtol)
    else:
        outs_a, outs_b = _run_direct(runner_a, inputs), _run_direct(runner_b, inputs)

    rows: dict[int, ErrorStats] = defaultdict(ErrorStats)
    total = ErrorStats()
    for feed, a, b in zip(inputs, outs_a, outs_b):
        if a.shape != b.shape:
            raise TfmqError(f"the runners disagree on the output shape: {a.shape} vs {b.shape}")
        steps = np.asarray(feed[INPUT_STEP_INDEX]).reshape(-1)
        if steps.size != a.shape[0]:
            raise TfmqError(f"step_index has {steps.size} entries for a batch of {a.shape[0]}")
        for j, step in enumerate(steps.tolist()):
            rows[int(step)].add(a[j], b[j])
            total.add(a[j], b[j])

    return {
        "runner_a": {"backend": runner_a.backend, "precision": runner_a.precision},
        "runner_b": {"backend": runner_b.backend, "precision": runner_b.precision},
        "reference": "runner_b",
        "method": "polygraphy-comparator" if use_polygraphy else "direct",
        "rows": [
            {"step_index": step, "count": s.count, "max_abs": s.max_abs, "rel_l2": s.rel_l2}
            for step, s in sorted(rows.items())
        ],
        "max_abs": total.max_abs,
        "rel_l2": total.rel_l2,
        "num_inputs": len(inputs),
        "polygraphy_passed": passed,
        "atol": atol,
        "rtol": rtol,
    }
