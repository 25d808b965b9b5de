"""The peer: NNCF's own INT8 post-training quantization of the full-precision graph, on OpenVINO.

``quantize_with_nncf`` is what a CPU user would do instead of TFMQ: hand the *full-precision*
ONNX and some calibration inputs to NNCF. The benchmarks call its result ``nncf-int8``.
``nncf_calibration_inputs`` draws those inputs the way our calibration draws its own: (x_t, step,
condition) at every step of full-precision DDIM trajectories, with ``calibrate``'s noise
(``initial_noise(n, shape, seed)``) and, for a conditional UNet, conditions ``torch.randn(n, S, D)``
seeded like the ones ``benchmarks/sd15_cpu.py`` calibrates with, so both methods see the same
distribution. ``ensure_nncf_engine`` builds the peer once per recipe and reuses it after.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tfmq_export.backends.base import open_runner, runner_denoiser
from tfmq_export.backends.manifest import load_source_onnx, manifest_path, provenance
from tfmq_export.backends.openvino.ir import check_ir_path, compile_report, ir_manifest, ov_message
from tfmq_export.contract import INPUT_CONDITIONS, INPUT_SAMPLE, INPUT_STEP_INDEX
from tfmq_export.errors import TfmqError
from tfmq_export.io import commit_staged, staged_dir

__all__ = ["NNCF_PRECISION", "default_nncf_path", "ensure_nncf_engine", "nncf_calibration_inputs",
           "quantize_with_nncf"]

log = logging.getLogger(__name__)

#: the precision label of the peer (one of ``contract.PRECISIONS``)
NNCF_PRECISION = "nncf-int8"


def _nncf_quantize(model: Any, src: Path, calibration_inputs: Sequence[dict[str, np.ndarray]], preset: str | None,
                   subset: int, fast_bias_correction: bool) -> Any:
    """``nncf.quantize`` with the settings for a diffusion UNet (see ``quantize_with_nncf``)."""
    import nncf

    presets = {"mixed": nncf.QuantizationPreset.MIXED, "performance": nncf.QuantizationPreset.PERFORMANCE}
    first = calibration_inputs[0]
    # a port may carry several tensor names: feed it under the one the caller used
    names = [next((n for n in sorted(i.get_names()) if n in first), i.get_any_name()) for i in model.inputs]
    missing = [n for n in names if n not in first]
    if missing:
        raise TfmqError(f"calibration inputs lack {', '.join(missing)}, which {src.name} declares")

    def feed(item: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {n: item[n] for n in names}

    try:
        return nncf.quantize(
            model,
            nncf.Dataset(list(calibration_inputs), feed),
            preset=None if preset is None else presets[preset],
            target_device=nncf.TargetDevice.CPU,
            subset_size=subset,
            fast_bias_correction=fast_bias_correction,
            model_type=nncf.ModelType.TRANSFORMER,
        )
    except Exception as exc:  # nncf raises its own error types (ValidationError, ...)
        raise TfmqError(f"NNCF could not quantize {src}: {ov_message(exc)}") from exc


def quantize_with_nncf(
    fp32_onnx_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    calibration_inputs: Sequence[dict[str, np.ndarray]],
    *,
    preset: str | None = None,
    subset_size: int | None = None,
    fast_bias_correction: bool = True,
    validate: bool = True,
) -> dict[str, Any]:
    """INT8-quantize the full-precision ONNX with NNCF (OpenVINO backend) and save the IR.

    Settings for a diffusion UNet: ``model_type=nncf.ModelType.TRANSFORMER`` so that NNCF applies
    its attention patterns (the SD UNet has self- and cross-attention in every CrossAttn block;
    NNCF's docs ask for it on transformer-like models), target device CPU, and NNCF's default
    preset for that model type (``mixed``: symmetric weights, asymmetric activations; pass
    ``preset="performance"`` for symmetric activations). ``calibration_inputs`` are feed dicts
    (``sample``, ``step_index``, ``encoder_hidden_states``), e.g. (x_t, t, cond) along sampler
    trajectories; only the inputs the model declares are fed. ``subset_size`` defaults to all of
    them. Returns the manifest.
    """
    import nncf
    import openvino as ov

    out = check_ir_path(out_path)
    src, source_model = load_source_onnx(fp32_onnx_path)
    if not calibration_inputs:
        raise TfmqError("NNCF needs calibration inputs; pass at least one feed dict (sample, step_index, ...)")
    if preset is not None and preset not in ("mixed", "performance"):
        raise TfmqError(f"NNCF preset {preset!r} is not one of mixed, performance")
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in source_model.graph.node):
        raise TfmqError(f"{src} already holds Q/DQ nodes; NNCF quantizes the full-precision export (--wbits 16)")

    start = time.perf_counter()
    n_items = len(calibration_inputs)
    subset = n_items if subset_size is None else subset_size
    with staged_dir(out) as stage:
        try:
            model = ov.convert_model(str(src))
        except Exception as exc:
            raise TfmqError(f"OpenVINO could not convert {src}: {ov_message(exc)}") from exc
        quantized = _nncf_quantize(model, src, calibration_inputs, preset, subset, fast_bias_correction)
        report = compile_report(quantized, src) if validate else {}
        ov.save_model(quantized, str(stage / out.name), compress_to_fp16=False)
        manifest: dict[str, Any] = {
            "backend": "openvino",
            "precision": NNCF_PRECISION,
            **ir_manifest(stage, out, quantized),
            **report,
            "nncf_version": nncf.__version__,
            "nncf_settings": {
                "preset": preset or "mixed (NNCF default for model_type=transformer)",
                "model_type": "transformer",
                "target_device": "CPU",
                "subset_size": subset,
                "calibration_items": n_items,
                "fast_bias_correction": fast_bias_correction,
            },
            **provenance(src, source_model, start),
        }
        commit_staged(stage, out.parent, manifest["engine_files"], manifest, manifest_path(out).name)
    return manifest


def nncf_calibration_inputs(
    fp32_onnx: Path,
    trajectories: int,
    sample_shape: tuple[int, ...],
    cond_shape: tuple[int, int] | None,
    seed: int = 0,
    threads: int | None = None,
) -> list[dict[str, np.ndarray]]:
    """Feed dicts (batch 1) of every step of ``trajectories`` FP32 DDIM runs of ``fp32_onnx``.

    The same draw as our calibration: noise ``initial_noise(n, shape, seed)`` (as ``calibrate``),
    conditions ``torch.randn(n, S, D)`` seeded with ``seed`` (as ``benchmarks/sd15_cpu.py``), the
    graph's own schedule. So NNCF sees the distribution our scales were calibrated on.
    """
    import torch

    from tfmq_export.export.onnx_export import describe_onnx
    from tfmq_export.sampling import ddim_sample, initial_noise

    if trajectories < 1:
        raise TfmqError("--nncf-samples must be at least 1")
    info = describe_onnx(fp32_onnx)
    latents = initial_noise(trajectories, sample_shape, seed)
    cond = None
    if cond_shape is not None:
        cond = torch.randn(trajectories, *cond_shape, generator=torch.Generator().manual_seed(seed))
    items: list[dict[str, np.ndarray]] = []

    def keep(step: int, x: torch.Tensor, c: torch.Tensor | None) -> None:
        for i in range(x.shape[0]):
            item = {INPUT_SAMPLE: x[i : i + 1].numpy().copy(), INPUT_STEP_INDEX: np.array([step], dtype=np.int64)}
            if c is not None:
                item[INPUT_CONDITIONS] = c[i : i + 1].numpy().copy()
            items.append(item)

    with open_runner("onnxruntime", fp32_onnx, "fp32", threads=threads) as runner:
        ddim_sample(runner_denoiser(runner), info.scheduler_config, info.steps or len(info.timesteps), latents, cond,
                    on_step=keep, scheduler=info.scheduler or None, table_timesteps=info.timesteps)
    return items


def default_nncf_path(fp32_onnx: Path) -> Path:
    """Where the peer of ``unet.onnx`` goes by default: ``unet.nncf-int8.xml`` beside it."""
    return Path(fp32_onnx).with_name(f"{Path(fp32_onnx).stem}.{NNCF_PRECISION}.xml")


def _recipe_matches(out: Path, recipe_file: Path, recipe: dict[str, Any]) -> bool:
    """Whether a complete peer is at ``out`` and was built from ``recipe``."""
    if not (manifest_path(out).is_file() and out.with_suffix(".bin").is_file() and recipe_file.is_file()):
        return False
    try:
        return json.loads(recipe_file.read_text()) == recipe
    except (OSError, json.JSONDecodeError):
        return False


def ensure_nncf_engine(
    fp32_onnx: Path,
    out_xml: Path | None,
    trajectories: int,
    latent_size: int | None = None,
    cond_shape: tuple[int, int] | None = (77, 768),
    seed: int = 0,
    threads: int | None = None,
) -> Path:
    """The NNCF INT8 IR of ``fp32_onnx``: reused when its recorded recipe matches, else built.

    The recipe (source graph hash, trajectories, latent shape, condition shape, seed) is written
    beside the IR as ``*.nncf.json``; any difference rebuilds, so a stale peer is never timed.
    """
    from tfmq_export.export.onnx_export import describe_onnx
    from tfmq_export.io import sha256_file

    info = describe_onnx(Path(fp32_onnx))
    if info.precision != "fp32":
        raise TfmqError(f"--nncf quantizes the FP32 graph, but {fp32_onnx} is {info.precision}")
    out = Path(out_xml) if out_xml is not None else default_nncf_path(fp32_onnx)
    shape = tuple(info.sample_shape)
    if latent_size is not None:
        shape = (shape[0], latent_size, latent_size)
    recipe = {"source_onnx_sha256": sha256_file(fp32_onnx), "trajectories": trajectories, "sample_shape": list(shape),
              "cond_shape": None if cond_shape is None or not info.conditional else list(cond_shape), "seed": seed}
    recipe_file = out.with_suffix(".nncf.json")
    if _recipe_matches(out, recipe_file, recipe):
        log.info("reusing the NNCF peer %s (same recipe)", out)
        return out
    log.info("building the NNCF peer %s from %s", out, fp32_onnx)
    inputs = nncf_calibration_inputs(Path(fp32_onnx), trajectories, shape,
                                     tuple(cond_shape) if recipe["cond_shape"] else None, seed, threads)
    quantize_with_nncf(fp32_onnx, out, inputs)
    recipe_file.write_text(json.dumps(recipe, indent=2) + "\n")
    return out
