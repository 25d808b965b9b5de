"""``bench PIPELINE_DIR [--onnx-pipeline OTHER_DIR ...]``: whole text-to-image pipelines, per stage.

Every pipeline folder (``export-pipeline``; the engines of ``build-engine DIR`` where built) runs
on every backend asked for (onnxruntime, openvino); on OpenVINO every folder also runs once more
compiled with OpenVINO's *default* inference precision (bf16 on CPUs with AMX, what a user gets
without asking): an FP32 folder as ``ov-default``, the baseline a W8A8 pipeline must beat besides
forced f32, and a quantized one as ``openvino:w8a8+ov-default`` (int8 layers stay int8, the float
layers and the float text encoder / VAE decoder run in bf16). A quantized folder also runs as
``openvino:w8a8+ov-default-stages``: what ``sample DIR --backend openvino`` runs by default (the
Q/DQ UNet as calibrated, its float parts in f32; text encoder and VAE decoder at OpenVINO's
default precision). The plain ``backend:precision`` rows run the float stages in FP32. Every row
says what each stage ran at (``stage_precisions``) and whether it is ``sample``'s default
(``sample_default``).

One pipeline run is what ``sample DIR`` does, with runners kept open: the text encoder(s) on the
prompt and the negative prompt (one call each, batch 1), the UNet at every step of the folder's
sampler with classifier-free guidance (batch 2N), the scheduler update, the VAE decoder (batch N).
The variants take turns run by run (round-robin, as the UNet bench), so a load change on a shared
machine hits all of them. Per run the stage runners' own call times are summed per stage; the
pipeline time is the wall time of the whole run (tokenization is done once, before).

Each row keeps the bench contract (``latency_ms_*`` = the whole pipeline, ``images_per_s`` =
N / median pipeline time, measured) and adds ``stages``: median ms of ``text_encoder`` (all
calls of one run), ``unet`` (one call), ``unet_total`` (all steps of one run), ``vae_decoder``
and ``pipeline``, as TensorRT's diffusion demo prints them.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tfmq_export import contract as c
from tfmq_export.errors import TfmqError

__all__ = ["PipelineVariant", "bench_pipelines_to_json", "format_pipeline_row", "pipeline_memory_probe_main",
           "pipeline_variants"]

PIPELINE_BACKENDS = ("onnxruntime", "openvino")
DEFAULT_PROMPT = "a photograph of an astronaut riding a horse"
STAGE_KEYS = ("text_encoder", "unet", "unet_total", "vae_decoder", "pipeline")


@dataclass(frozen=True)
class PipelineVariant:
    """One backend running one exported pipeline folder at a precision label."""

    backend: str
    precision: str
    path: str
    label: str = ""
    #: every stage compiled with OpenVINO's default inference precision (``ov-default`` rows, ``+ov-default``)
    ov_default: bool = False
    #: ``--float-stages`` of the text encoder(s) and VAE decoder (``default``: ``+ov-default-stages`` rows)
    float_stages: str = "fp32"

    def stage_precision(self, stage: str) -> str:
        """The precision label ``stage`` runs at in this variant."""
        from tfmq_export.backends.stages import float_stage_precision

        if self.ov_default:  # a quantized UNet: int8 layers, its float parts at OpenVINO's default
            quantized_unet = stage == c.STAGE_UNET and self.precision != c.OV_DEFAULT
            return f"{self.precision}+{c.OV_DEFAULT}" if quantized_unet else c.OV_DEFAULT
        if stage == c.STAGE_UNET:
            return self.precision
        return float_stage_precision(self.backend, self.float_stages)

    @property
    def sample_default(self) -> bool:
        """Whether ``sample DIR --backend B`` (no ``--float-stages``) runs the folder so."""
        from tfmq_export.backends.stages import float_stage_precision

        return (not self.ov_default and self.precision != c.OV_DEFAULT
                and self.stage_precision(c.STAGE_VAE_DECODER) == float_stage_precision(self.backend))


@dataclass
class _Open:
    """A variant with its stage runners open and its prompt already tokenized."""

    variant: PipelineVariant
    pipe: Any  # ExportedPipeline
    runners: dict[str, Any]
    ids: tuple[dict[str, np.ndarray], dict[str, np.ndarray]]
    times: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in STAGE_KEYS})
    unet_calls: list[float] = field(default_factory=list)
    unet_batch: int = 0
    images: np.ndarray | None = None


def pipeline_variants(paths: list[Path], backends: str | list[str], ov_default: bool = True) -> list[PipelineVariant]:
    """Every folder on every backend (+ ``ov-default`` for FP32 folders on OpenVINO), labelled uniquely."""
    from tfmq_export.workflows.sample_pipeline import ExportedPipeline

    names = [b.strip() for b in backends.split(",")] if isinstance(backends, str) else list(backends)
    names = [b for b in names if b]
    wrong = [b for b in names if b not in PIPELINE_BACKENDS]
    if wrong or not names:
        raise TfmqError(f"--backends {','.join(wrong) or '(none)'}: a pipeline bench runs "
                        f"{' and '.join(PIPELINE_BACKENDS)} (its stages are ONNX graphs or their engines)")
    pipes = [ExportedPipeline.read(p) for p in paths]
    shapes = {(tuple(p.latent_shape), int(p.described[c.PJ_STEPS])) for p in pipes}
    if len(shapes) > 1:
        raise TfmqError("the pipeline folders differ in latent shape or step count; export them from the same "
                        "pipeline and --steps so their times compare")
    variants = []
    for backend in names:
        for pipe in pipes:
            precision = pipe.described[c.PJ_PRECISION]
            variants.append(PipelineVariant(backend, precision, str(pipe.path)))
            if backend == "openvino" and ov_default:
                # FP32: the baseline a user gets without asking; quantized: its float parts and stages in bf16 too
                label = "" if precision == "fp32" else f"{backend}:{precision}+{c.OV_DEFAULT}"
                variants.append(PipelineVariant(backend, c.OV_DEFAULT if precision == "fp32" else precision,
                                                str(pipe.path), label, ov_default=True))
                if precision != "fp32":  # sample's default: the UNet as calibrated, the float stages ov-default
                    variants.append(PipelineVariant(backend, precision, str(pipe.path),
                                                    f"{backend}:{precision}+{c.OV_DEFAULT}-stages",
                                                    float_stages="default"))
    labels = [v.label or f"{v.backend}:{v.precision}" for v in variants]
    labels = [n if labels.count(n) == 1 else f"{n}:{Path(v.path).name}" for v, n in zip(variants, labels)]
    return [PipelineVariant(v.backend, v.precision, v.path, n, v.ov_default, v.float_stages)
            for v, n in zip(variants, labels)]


def _open(variant: PipelineVariant, prompt: str, negative: str | None, threads: int | None) -> _Open:
    from transformers import CLIPTokenizer

    from tfmq_export.backends.stages import StageRunner
    from tfmq_export.models.prompts import tokenize
    from tfmq_export.workflows.sample_pipeline import ExportedPipeline

    pipe = ExportedPipeline.read(variant.path)
    runners = {}
    for stage in pipe.described[c.PJ_STAGES]:
        precision = variant.stage_precision(stage)
        if variant.ov_default and stage == c.STAGE_UNET:
            precision = variant.precision  # the runner's label; ov_default sets the compile precision
        runners[stage] = StageRunner(variant.backend, pipe.stage_path(stage, variant.backend), precision, threads,
                                     ov_default=variant.ov_default)
    ids: tuple[dict[str, np.ndarray], dict[str, np.ndarray]] = ({}, {})
    for stage in pipe.encoder_stages():
        tokenizer = CLIPTokenizer.from_pretrained(str(pipe.path / pipe.described[c.PJ_STAGES][stage]["tokenizer"]))
        ids[0][stage], ids[1][stage] = tokenize(tokenizer, [prompt]), tokenize(tokenizer, [negative or ""])
    return _Open(variant, pipe, runners, ids)


def _encode(v: _Open, prompt: str, negative: str | None, guidance: float) -> tuple[Any, float]:
    """Both halves' conditions through the exported text encoder(s); (conditions, encoder ms)."""
    import torch

    from tfmq_export.models.guidance import GuidedConditions
    from tfmq_export.models.prompts import combine

    described = v.pipe.described
    xl = c.STAGE_TEXT_ENCODER_2 in described[c.PJ_STAGES]
    time_ids = torch.tensor([described[c.PJ_TIME_IDS]], dtype=torch.float32) if xl else None
    halves, ms = [], 0.0
    for ids in v.ids:
        outs = []
        for stage in v.pipe.encoder_stages():
            out = v.runners[stage].run({c.TEXT_INPUT_IDS: ids[stage]})
            ms += v.runners[stage].last_ms
            outs.append({k: torch.from_numpy(np.asarray(a, dtype=np.float32)) for k, a in out.items()})
        halves.append(outs)
    zeros = xl and negative is None and bool(described.get(c.PJ_FORCE_ZEROS, True))
    conditions = GuidedConditions(combine(halves[0], time_ids), combine(halves[1], time_ids, zeros=zeros),
                                  guidance, (prompt,), negative)
    return conditions, ms


def _run_once(v: _Open, prompt: str, negative: str | None, guidance: float, latents: Any, keep: bool) -> None:
    """One whole pipeline run; its stage times are appended when ``keep``."""
    import torch

    from tfmq_export.models.guidance import guided_sample, scheduler_rows
    from tfmq_export.sampling import make_scheduler

    described = v.pipe.described
    scheduler = make_scheduler(described.get(c.PJ_SAMPLER), v.pipe.scheduler_config(), int(described[c.PJ_STEPS]))
    unet, calls = v.runners[c.STAGE_UNET], []
    start = time.perf_counter()
    conditions, encoder_ms = _encode(v, prompt, negative, guidance)
    conditions = conditions.repeated(latents.shape[0])
    v.unet_batch = latents.shape[0] * (2 if conditions.do_cfg else 1)

    def denoise(x: torch.Tensor, rows: torch.Tensor, feed: dict[str, torch.Tensor]) -> torch.Tensor:
        named = {c.INPUT_SAMPLE: x.numpy(), c.INPUT_STEP_INDEX: rows.numpy(), **{k: t.numpy() for k, t in feed.items()}}
        out = unet.run(named)[c.OUTPUT_NOISE_PRED]
        calls.append(unet.last_ms)
        return torch.from_numpy(out.astype(np.float32))

    rows = scheduler_rows(described[c.PJ_TIMESTEPS], scheduler, str(v.pipe.stage_path(c.STAGE_UNET)))
    final = guided_sample(denoise, scheduler, latents, conditions, rows)
    vae = v.runners[c.STAGE_VAE_DECODER]
    images = vae.run({c.VAE_INPUT_LATENTS: final.numpy().astype(np.float32)})[c.VAE_OUTPUT_IMAGES]
    total = (time.perf_counter() - start) * 1000.0
    v.images = np.asarray(images, dtype=np.float32)
    if keep:
        for key, ms in (("text_encoder", encoder_ms), ("unet_total", sum(calls)), ("vae_decoder", vae.last_ms),
                        ("pipeline", total)):
            v.times[key].append(ms)
        v.unet_calls += calls


def _row(v: _Open, num_images: int, ref: np.ndarray | None, load_s: float) -> dict[str, Any]:
    from tfmq_export.metrics.error import rel_l2

    ms = np.asarray(v.times["pipeline"])
    median = float(np.median(ms))
    steps = int(v.pipe.described[c.PJ_STEPS])
    stages = {k: round(float(np.median(v.times[k])), 3) for k in ("text_encoder", "unet_total", "vae_decoder")}
    stages["unet"] = round(float(np.median(v.unet_calls)), 3)
    stages["pipeline"] = round(median, 3)
    return {
        "backend": v.variant.backend, "precision": v.variant.precision, "label": v.variant.label,
        "batch": num_images, "latency_ms_median": median, "latency_ms_p90": float(np.percentile(ms, 90)),
        "latency_ms_mean": float(ms.mean()), "latency_ms_min": float(ms.min()),
        "images_per_s": num_images / (median / 1000.0),
        "images_per_s_basis": "measured: num_images / median whole-pipeline time",
        "peak_mem_mb": None, "model_bytes": sum(r.model_bytes() for r in v.runners.values()),
        "stages": {k: stages[k] for k in STAGE_KEYS},
        "unet_batch": v.unet_batch, "sampling_steps": steps, "iters": len(ms), "load_s": round(load_s, 3),
        "latency_ms_all": [round(float(t), 2) for t in ms],
        "stage_files": {s: os.path.relpath(v.pipe.stage_path(s, v.variant.backend), v.pipe.path) for s in v.runners},
        "stage_precisions": {s: v.variant.stage_precision(s) for s in v.runners},
        "sample_default": v.variant.sample_default,
        "path": v.variant.path,
        "images_rel_error_vs_reference": None if ref is None or v.images is None else rel_l2(v.images, ref),
    }


def _latents(pipe: Any, num_images: int, seed: int) -> Any:
    from tfmq_export.sampling import initial_noise

    return initial_noise(num_images, pipe.latent_shape, seed)


def _time_all(variants: list[PipelineVariant], settings: dict[str, Any], progress: bool) -> list[dict[str, Any]]:
    """Open every variant, round-robin ``warmup`` + ``iters`` pipeline runs, close; the rows."""
    from tqdm.auto import tqdm

    from tfmq_export.workflows.bench.timing import _pause

    prompt, negative = settings["prompt"], settings["negative_prompt"]
    opened: list[_Open] = []
    load: dict[str, float] = {}
    try:
        for variant in variants:
            start = time.perf_counter()
            v = _open(variant, prompt, negative, settings["threads"])
            opened.append(v)
            for runner in v.runners.values():
                runner.__enter__()
            load[variant.label] = time.perf_counter() - start
        latents = _latents(opened[0].pipe, settings["num_images"], settings["seed"])
        guidance = settings["guidance_scale"] or float(opened[0].pipe.described[c.PJ_GUIDANCE])
        total = settings["warmup"] + settings["iters"]
        for i in tqdm(range(total), desc="pipeline runs", disable=not progress, leave=False):
            for v in opened:
                _pause(settings["pause_ms"])
                _run_once(v, prompt, negative, guidance, latents, keep=i >= settings["warmup"])
        ref = next((v.images for v in opened if v.variant.precision == "fp32"), None)
        return [_row(v, settings["num_images"], ref, load[v.variant.label]) for v in opened]
    finally:
        for v in opened:
            for runner in v.runners.values():
                runner.__exit__()


def _peak_memory_mb(variant: PipelineVariant, settings: dict[str, Any]) -> float:
    """Peak RSS (MB) of a fresh process that opens the variant and runs the pipeline twice."""
    payload = json.dumps({"variant": asdict(variant), "settings": settings})
    from tfmq_export.workflows.bench.memory import run_memory_probe

    return run_memory_probe("tfmq_export.workflows.bench.pipeline", "pipeline_memory_probe_main", payload,
                            variant.label, 3600)


def pipeline_memory_probe_main(payload: str) -> None:
    """The child's side of ``_peak_memory_mb``: one variant, two runs, print the peak RSS in MB."""
    from tfmq_export.workflows.bench.memory import _peak_rss_mb

    args = json.loads(payload)
    settings = {**args["settings"], "warmup": 1, "iters": 1, "pause_ms": 0.0}
    _time_all([PipelineVariant(**args["variant"])], settings, progress=False)
    print(_peak_rss_mb())


def bench_pipelines_to_json(paths: list[Path], backends: str | list[str], *, json_path: Path | None = None,
                            num_images: int = 1, iters: int = 3, warmup: int = 1, threads: int | None = None,
                            prompt: str | None = None, negative_prompt: str | None = None,
                            guidance_scale: float | None = None, seed: int = 0, pause_ms: float = 0.0,
                            measure_memory: bool = True, ov_default: bool = True,
                            progress: bool = True, command: str | None = None) -> dict[str, Any]:
    """Time every pipeline folder on every backend, stage by stage, round-robin; returns (writes) the JSON."""
    from tfmq_export.io import check_writable
    from tfmq_export.workflows.bench.pipeline_report import pipeline_verdict
    from tfmq_export.workflows.bench.report import bench_provenance, machine_info, write_json

    if iters < 1 or warmup < 0 or num_images < 1 or pause_ms < 0:
        raise TfmqError("--timed-calls and --num-images must be positive, --warmup and --pause-ms not negative")
    if threads is not None and threads < 1:
        raise TfmqError(f"--threads must be positive, not {threads}")
    if guidance_scale is not None and not guidance_scale > 1.0:
        raise TfmqError(f"--guidance-scale {guidance_scale} must be above 1 (the bench times guided sampling)")
    if json_path is not None:
        check_writable(json_path, "--json")
    variants = pipeline_variants(list(paths), backends, ov_default)
    settings = {"prompt": prompt or DEFAULT_PROMPT, "negative_prompt": negative_prompt, "num_images": num_images,
                "iters": iters, "warmup": warmup, "threads": threads, "seed": seed, "pause_ms": pause_ms,
                "guidance_scale": guidance_scale}
    load_start = list(os.getloadavg())
    runs = _time_all(variants, settings, progress)
    load_end = list(os.getloadavg())
    if measure_memory:
        for variant, row in zip(variants, runs):
            row["peak_mem_mb"] = _peak_memory_mb(variant, settings)
    result = {"runs": runs, "machine": {**machine_info(threads), "load_avg_start": load_start,
                                        "load_avg_end": load_end},
              "pipelines": [str(p) for p in paths], "settings": settings, "skipped": [],
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    result["verdict"] = pipeline_verdict(runs)
    used = ",".join(dict.fromkeys(v.backend for v in variants))
    shown = command or (f"tfmq-export bench {' '.join(str(p) for p in paths)} --backends {used} "
                        f"--num-images {num_images} --timed-calls {iters}")
    result["provenance"] = bench_provenance(result, shown, ["as recorded in each pipeline's artifact"])
    if json_path is not None:
        write_json(result, Path(json_path))
    return result


def format_pipeline_row(row: dict[str, Any]) -> str:
    """One line per run, the stages as TensorRT's diffusion demo lists them."""
    s = row["stages"]
    mem = row.get("peak_mem_mb")
    return (f"{row['label']:>32s}: CLIP {s['text_encoder']:.1f} ms | UNet x {row['sampling_steps']} "
            f"{s['unet_total']:.1f} ms ({s['unet']:.1f} ms/call, batch {row['unet_batch']}) | "
            f"VAE-Dec {s['vae_decoder']:.1f} ms | Pipeline {s['pipeline']:.1f} ms | "
            f"{row['images_per_s']:.3f} img/s | {'-' if mem is None else f'{mem:.0f}'} MB peak | "
            f"{row['model_bytes'] / 1e6:.1f} MB{' | sample default' if row.get('sample_default') else ''}")
