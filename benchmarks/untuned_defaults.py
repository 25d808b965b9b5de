"""Defaults are what users get: untuned W4A8 / W8A8 calibrations against FP images from the same noise.

Why: issue 10 asks that, with no recipe, on a model the recipes were not tuned on, ``tfmq`` W4A8's
paired MSE to the full-precision images be at most 1/3 of naive per-channel min-max's and within
1.5x of ModelOpt's weight-only INT4 (W4A16). This script calibrates every variant as a new user
would (``workflows.calibrate.calibrate_model``, the path of ``tfmq-export calibrate MODEL --method M
--wbits W --abits A --steps 50 [--prompts examples/digits-text-prompts.txt]``: built-in defaults,
no recipe), samples each one in torch from the same initial noise, and compares the images.

Models: ``digits-text`` (default; the bundled text-to-image pipeline folder, the "second model":
calibrated with the ten digit prompts, sampled per prompt through the pipeline's own text encoder
and VAE decoder around the simulated UNet, as ``sample ARTIFACT --prompt --backend torch`` does) or
``digits`` (the model the recipes were tuned on; ``sampling.generate``). DDIM, ``--steps`` steps for
calibration and sampling alike. Noise: digit ``d``'s images start from ``initial_noise(N, shape,
1000 * seed + d)`` (digits: ``initial_noise(N, shape, seed)``), identical for every variant.

Variants (``--variants``, comma list): ``fp`` (the reference, always run), ``METHOD-BITS`` with
METHOD in minmax, qdiff, tfmq and BITS in w4a8, w8a8, w4a16, and the ModelOpt peers
``modelopt-w4a16`` / ``modelopt-int8`` (``calibration.modelopt_peer.modelopt_quantize`` on the FP
table UNet, fed the calibration inputs our methods see; skipped with a line when that module or
nvidia-modelopt is missing). Ablations: ``VARIANT+KEY=VALUE[+KEY2]...`` sets a calibration setting
(``static_scale_rule=mse``, ``iters=100``) or an ``extra`` option (``step_factors``, ``joint_act=true``;
a bare ``+KEY`` means true; values parse as JSON, else stay strings); ``--set KEY=VALUE``
(repeatable) does the same for every tfmq variant. Unknown keys stop with the settings' own line.

Metrics against ``fp`` (pixels as the arrays: digits-text pipeline images [N, 16, 16, 3] in [0, 1];
digits images [N, 1, 16, 16] in [-1, 1], clipped): ``mse`` (mean squared pixel error over every
image, pixel and channel), ``rmse`` (its root), ``rmse_digits`` (the digits form in [-1, 1], grey: what
``evaluate``'s ``rmse_vs_fp`` measures), ``paired_fid`` (Frechet distance of the digit classifier's
features between the variant's and FP's images), ``fid`` (digits-FID against the real digits),
``accuracy`` (digits-text: the classifier agrees with the prompted digit), ``calib_seconds``. The
summary prints tfmq/minmax and tfmq/modelopt-w4a16 MSE ratios (targets <= 1/3 and <= 1.5).

Resumable: each variant's artifact lives in ``WORK/calib/NAME-KEY`` and its images in
``WORK/samples/NAME-KEY.npz`` (KEY: a hash of its settings, the sampling and the calibration code:
config, calibration/, quant/, temporal), so a rerun skips what is done and a code change redoes it. Usage::

    python benchmarks/untuned_defaults.py --model digits-text --per-digit 10 --steps 50 \\
        --variants fp,minmax-w4a8,tfmq-w4a8,qdiff-w4a8,minmax-w8a8,tfmq-w8a8,modelopt-w4a16,modelopt-int8 \\
        --work runs/untuned --json runs/untuned/results.json --doc runs/untuned/results.md --threads 1
    python benchmarks/untuned_defaults.py --variants fp,tfmq-w4a8,tfmq-w4a8+static_scale_rule=mse
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import importlib
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

__all__ = ["BITS", "PEERS", "code_hash", "image_mse", "mse_ratios", "paired_mse", "parse_assignment",
           "parse_variant", "per_image_mse", "variant_overrides"]

#: bits name -> (wbits, abits)
BITS = {"w4a8": (4, 8), "w8a8": (8, 8), "w4a16": (4, 16)}
#: ModelOpt peers -> (wbits, abits)
PEERS = {"modelopt-w4a16": (4, 16), "modelopt-int8": (8, 8)}
OUR_METHODS = ("minmax", "qdiff", "tfmq")
DEFAULT_VARIANTS = "fp,minmax-w4a8,tfmq-w4a8,qdiff-w4a8,minmax-w8a8,tfmq-w8a8,modelopt-w4a16,modelopt-int8"


# --- pure helpers ---------------------------------------------------------------------------------


def parse_assignment(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` -> (KEY, VALUE parsed as JSON, else the string); a bare ``KEY`` -> (KEY, True)."""
    key, sep, raw = text.partition("=")
    if not key.strip():
        raise ValueError(f"empty key in {text!r}")
    if not sep:
        return key.strip(), True
    try:
        return key.strip(), json.loads(raw)
    except json.JSONDecodeError:
        return key.strip(), raw


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """``tfmq-w4a8+static_scale_rule=mse+step_factors`` -> (``tfmq-w4a8``, {key: value}); checks the base."""
    base, *mods = text.strip().split("+")
    method, _, bits = base.partition("-")
    if base != "fp" and base not in PEERS and (method not in OUR_METHODS or bits not in BITS):
        raise ValueError(f"unknown variant {base!r}: fp, METHOD-BITS ({'|'.join(OUR_METHODS)} x "
                         f"{'|'.join(BITS)}) or {'|'.join(PEERS)}")
    if mods and (base == "fp" or base in PEERS):
        raise ValueError(f"{text!r}: only our methods take +KEY=VALUE overrides")
    return base, dict(parse_assignment(m) for m in mods)


def variant_overrides(base: str, mods: dict[str, Any], setting_keys: tuple[str, ...], **common: Any) -> dict[str, Any]:
    """Calibration overrides of one variant: ``common`` (steps, seed, prompts, guidance), the base's
    method and bits, then ``mods`` (settings fields by name, every other key into ``extra``)."""
    if base == "fp":
        method, (wbits, abits) = "minmax", (16, 16)
    else:
        method, bits = base.split("-", 1)
        wbits, abits = BITS[bits]
    out = {**common, "method": method, "wbits": wbits, "abits": abits}
    extra = {k: v for k, v in mods.items() if k not in setting_keys}
    out.update({k: v for k, v in mods.items() if k in setting_keys})
    if extra:
        out["extra"] = {**(out.get("extra") or {}), **extra}
    return out


def image_mse(images: np.ndarray, reference: np.ndarray, clip: tuple[float, float]) -> np.ndarray:
    """Each image's mean squared pixel error against the image drawn from the same noise (both clipped to ``clip``)."""
    if images.shape != reference.shape or len(images) == 0:
        raise ValueError(f"shapes differ or empty: {images.shape} vs {reference.shape}")
    a, b = (np.clip(x.astype(np.float64), *clip) for x in (images, reference))
    return ((a - b) ** 2).reshape(len(a), -1).mean(axis=1)


def paired_mse(images: np.ndarray, reference: np.ndarray, clip: tuple[float, float]) -> float:
    """Mean squared pixel error between images drawn from the same noise (both clipped to ``clip``)."""
    return float(image_mse(images, reference, clip).mean())


def per_image_mse(per_image: np.ndarray) -> dict[str, float]:
    """How the paired MSE (``image_mse``'s values) is made up over images: the median image's MSE and the share
    of the total that the worst 1% of images carry (at least one image). Why: a few images whose digit changes
    shape can carry most of a mean over 100 images; the median says what a typical image sees."""
    worst = np.sort(per_image)[::-1][: max(1, len(per_image) // 100)]
    total = float(per_image.sum())
    return {"mse_median": float(np.median(per_image)),
            "mse_worst1pct_share": float(worst.sum() / total) if total else 0.0}


def mse_ratios(rows: dict[str, dict[str, Any]], bits: str = "w4a8") -> dict[str, float | None]:
    """tfmq/minmax, tfmq/modelopt-w4a16 and tfmq/qdiff paired-MSE ratios at ``bits`` (None where a row is missing)."""
    def mse(name: str) -> float | None:
        return rows[name]["mse"] if name in rows else None

    tfmq = mse(f"tfmq-{bits}")

    def over(name: str) -> float | None:
        other = mse(name)
        return None if tfmq is None or not other else tfmq / other

    return {"tfmq_over_minmax": over(f"minmax-{bits}"), "tfmq_over_modelopt_w4a16": over("modelopt-w4a16"),
            "tfmq_over_qdiff": over(f"qdiff-{bits}")}


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def code_hash() -> str:
    """A hash of the code that decides a calibration (config, calibration/, quant/, temporal): part of
    every cache key, so a changed default or method never reuses stale artifacts or images."""
    import tfmq_export

    root = Path(tfmq_export.__file__).parent
    files = [root / "config.py", root / "temporal.py", *sorted((root / "calibration").glob("*.py")),
             *sorted((root / "quant").glob("*.py"))]
    return _key(*(f.read_text() for f in files))


# --- calibration ----------------------------------------------------------------------------------


class Bench:
    """One model, its sampling, and the per-variant cache under ``work``."""

    def __init__(self, args: argparse.Namespace) -> None:
        from tfmq_export.models.loading import load_model

        self.args = args
        self.text = args.model == "digits-text"
        self.work = Path(args.work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.loaded = load_model(args.model)
        self.count = 10 * args.per_digit if self.text else args.num_images
        self.prompts_file = self.work / "prompts.txt"
        self.code = code_hash()

    def common(self) -> dict[str, Any]:
        """Overrides every variant shares (what a new user types besides method and bits)."""
        from tfmq_export.models.digits_text import digits_text_prompts

        out: dict[str, Any] = {"steps": self.args.steps, "seed": self.args.calib_seed}
        if self.args.iters:  # a smaller reconstruction budget for quick checks (0 = the default)
            out["iters"] = self.args.iters
        if self.text:
            out |= {"prompts": digits_text_prompts(), "guidance_scale": self.args.guidance_scale}
        return out

    def sampling(self) -> dict[str, Any]:
        a = self.args
        return {"model": a.model, "steps": a.steps, "count": self.count, "seed": a.seed, "guidance": a.guidance_scale}

    def artifact(self, name: str, overrides: dict[str, Any]) -> Any:
        """The variant's artifact: reused from ``WORK/calib`` or calibrated there as ``calibrate`` does."""
        from tfmq_export.artifact import JSON_NAME, load_artifact
        from tfmq_export.io import atomic_write_text
        from tfmq_export.workflows.calibrate import calibrate_model

        folder = self.work / "calib" / f"{name}-{_key(self.args.model, overrides, self.code)}"
        if (folder / JSON_NAME).is_file():
            return load_artifact(folder)
        given = {k: v for k, v in overrides.items() if k not in ("prompts",)}
        prompts = None
        if self.text:
            atomic_write_text(self.prompts_file, "\n".join(overrides["prompts"]) + "\n")
            prompts = self.prompts_file
        return calibrate_model(self.args.model, folder, given, prompts=prompts, progress=self.args.progress)

    def peer(self, method: str) -> tuple[Any, list[Any], str, float]:
        """(ModelOpt fake-quant table UNet, its timesteps, scheduler, seconds incl. data collection)."""
        from tfmq_export.calibration.data import collect_calibration_data, device_denoiser
        from tfmq_export.calibration.guided_data import guided_calibration_data
        from tfmq_export.config import settings_from
        from tfmq_export.sampling import resolve_scheduler_name, sampler_timesteps
        from tfmq_export.temporal import build_table_unet

        started = time.perf_counter()
        wbits, abits = PEERS[method]
        settings = settings_from(None, {**self.common(), "method": "minmax", "wbits": wbits, "abits": abits})
        scheduler = resolve_scheduler_name(settings.scheduler, self.loaded.scheduler_config)
        timesteps = sampler_timesteps(self.loaded.scheduler_config, settings.steps, scheduler)
        fp_sim = build_table_unet(self.loaded.unet, timesteps).eval()
        torch.manual_seed(settings.seed)
        if self.text:
            self.loaded.guided = self.guided(settings.prompts, settings.guidance_scale)
            data = guided_calibration_data(fp_sim, self.loaded, timesteps, settings, self.args.progress)
        else:
            data = collect_calibration_data(device_denoiser(fp_sim, fp_sim), self.loaded.scheduler_config, timesteps,
                                            self.loaded.sample_shape, settings.num_samples, settings.seed,
                                            settings.batch_size, None, self.args.progress, scheduler=scheduler,
                                            num_steps=settings.steps)

        def loop(unet: torch.nn.Module) -> None:
            with torch.no_grad():
                for samples, rows, conditions in data.batches(settings.batch_size):
                    if conditions is None:
                        unet(samples, rows)
                    else:
                        unet(samples, rows, conditions)

        peer = _peer_module().modelopt_quantize(copy.deepcopy(fp_sim), method, loop).eval()
        seconds = time.perf_counter() - started
        probe = next(data.batches(8))
        return fold_weight_quantizers(peer, lambda m: m(*[t for t in probe if t is not None])), list(timesteps), \
            scheduler, seconds

    def guided(self, prompts: list[str], guidance: float) -> Any:
        from tfmq_export.models.prompts import encode_guided

        return encode_guided(self.loaded.pipeline, prompts, None, guidance, self.loaded.sample_shape[-1])

    # --- sampling ---------------------------------------------------------------------------------

    def sample(self, sim: Any, timesteps: list[Any], scheduler: str, name: str) -> np.ndarray:
        """Images of ``sim`` (a table UNet) from the fixed noise: [N, H, W, 3] (digits-text) or [N, 1, H, W]."""
        from tfmq_export.sampling import SamplingSpec, generate

        if self.text:
            return self._sample_text(sim, timesteps, scheduler, name)
        spec = SamplingSpec(timesteps, self.loaded.scheduler_config, tuple(self.loaded.sample_shape), False,
                            scheduler=scheduler, num_steps=self.args.steps, source=name)
        return generate(lambda x, rows, _c: sim(x, rows), spec, self.count, self.args.seed, 100,
                        progress=self.args.progress, desc=f"sample {name}")

    def _sample_text(self, sim: Any, timesteps: list[Any], scheduler: str, name: str) -> np.ndarray:
        from tfmq_export.contract import INPUT_CONDITIONS
        from tfmq_export.export.pipeline import VaeDecoderStage
        from tfmq_export.models.digits_text import digit_prompt
        from tfmq_export.models.guidance import guided_sample, scheduler_rows
        from tfmq_export.sampling import initial_noise, make_scheduler

        decoder = VaeDecoderStage(self.loaded.pipeline.vae()).eval()
        per_digit = self.args.per_digit
        out = []
        for d in tqdm(range(10), desc=f"sample {name} per digit", disable=not self.args.progress):
            sampler = make_scheduler(scheduler, self.loaded.scheduler_config, self.args.steps)
            rows = scheduler_rows(timesteps, sampler, name)
            latents = initial_noise(per_digit, self.loaded.sample_shape, 1000 * self.args.seed + d)
            conditions = self.guided([digit_prompt(d)], self.args.guidance_scale).repeated(per_digit)
            with torch.no_grad():
                final = guided_sample(lambda x, r, feed: sim(x, r, feed[INPUT_CONDITIONS]), sampler, latents,
                                      conditions, rows)
                out.append(decoder(final).numpy().transpose(0, 2, 3, 1))
        return np.ascontiguousarray(np.concatenate(out), dtype=np.float32)

    def overrides(self, text: str, extra_sets: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
        """(base, calibration overrides; None for a peer) of a variant, checked as ``calibrate`` checks them."""
        from tfmq_export.config import CalibrationSettings, settings_from

        base, mods = parse_variant(text)
        if base.startswith("tfmq-"):
            mods = {**extra_sets, **mods}
        if base in PEERS:
            return base, None
        overrides = variant_overrides(base, mods, CalibrationSettings.field_names(), **self.common())
        settings_from(None, overrides)  # unknown keys and bad values stop here, before any work
        return base, overrides

    def run_variant(self, text: str, extra_sets: dict[str, Any]) -> dict[str, Any] | None:
        """Images and calibration seconds of one variant (cached); None when a peer cannot run."""
        from tfmq_export.workflows.evaluate import cached_arrays

        base, overrides = self.overrides(text, extra_sets)
        peer_settings = {k: v for k, v in self.common().items() if k != "iters"}  # the peers do not read it
        key = _key(base, overrides or peer_settings, self.sampling(), self.code)
        cache = self.work / "samples" / f"{text.replace('+', '_').replace('=', '-')}-{key}.npz"
        if base in PEERS and not cache.is_file() and not _peer_available():
            return None

        def make() -> dict[str, np.ndarray]:
            from tfmq_export.quant.state import simulation_from_artifact

            if base in PEERS:
                sim, timesteps, scheduler, seconds = self.peer(base)
            else:
                art = self.artifact(base, overrides)
                sim = simulation_from_artifact(self.loaded.unet, art)
                timesteps, scheduler = art.timesteps, art.settings.get("scheduler")
                seconds = float(art.timings.get("calib_seconds", 0.0))
            return {"images": self.sample(sim, timesteps, scheduler, text), "calib_seconds": np.array(seconds)}

        arrays = cached_arrays(cache, key, make)
        return {"images": arrays["images"], "calib_seconds": float(arrays["calib_seconds"]),
                "settings": overrides or {"peer": base, **peer_settings}}


def fold_weight_quantizers(peer: torch.nn.Module, call: Any) -> torch.nn.Module:
    """``peer`` with every enabled ModelOpt weight quantizer applied once to its weight and disabled.

    Why: ModelOpt fake-quantizes the weights on every forward (blockwise INT4: ~10x the sampling time
    of our simulation). The folded copy is used only when ``call`` (a probe batch) gives the same
    output to 1e-5 of its scale; otherwise ``peer`` is sampled as it is."""
    folded = copy.deepcopy(peer)
    with torch.no_grad():
        for module in folded.modules():
            quantizer = getattr(module, "weight_quantizer", None)
            if quantizer is not None and getattr(quantizer, "is_enabled", False) and hasattr(module, "weight"):
                module.weight.data = quantizer(module.weight).detach().clone()
                quantizer.disable()
        want, got = call(peer), call(folded)
    same = float((want - got).abs().max()) <= 1e-5 * float(want.abs().max())
    print(f"ModelOpt weight quantizers folded: {'yes' if same else 'no (outputs differ; sampled unfolded)'}",
          file=sys.stderr)
    return folded if same else peer


def _peer_module() -> Any:
    """``tfmq_export.calibration.modelopt_peer`` (another branch's module: imported by name)."""
    return importlib.import_module("tfmq_export.calibration.modelopt_peer")


def _peer_available() -> bool:
    try:
        _peer_module()
        importlib.import_module("modelopt.torch.quantization")
    except ImportError:
        return False
    return True


# --- metrics and reports --------------------------------------------------------------------------


def metrics(bench: Bench, images: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    """The paired and unpaired metrics of one variant's images against the FP images."""
    from tfmq_export.metrics.fid import digits_features, digits_fid, feature_statistics, frechet_distance
    from tfmq_export.metrics.prompt_accuracy import pipeline_to_digits, prompt_accuracy

    clip = (0.0, 1.0) if bench.text else (-1.0, 1.0)
    per_image = image_mse(images, reference, clip)
    mse = float(per_image.mean())
    grey, grey_ref = (pipeline_to_digits(np.clip(x, 0, 1)) if bench.text else np.clip(x, -1, 1)
                      for x in (images, reference))
    row: dict[str, Any] = {"mse": mse, "rmse": mse ** 0.5, "rmse_digits": paired_mse(grey, grey_ref, (-1, 1)) ** 0.5,
                           **per_image_mse(per_image)}
    feats = [feature_statistics(digits_features(x)) for x in (grey, grey_ref)]
    row["paired_fid"] = frechet_distance(*feats[0], *feats[1]) if len(images) > 1 else None
    row["fid"] = digits_fid(grey) if len(images) > 1 else None
    if bench.text:
        row["accuracy"] = prompt_accuracy(grey, np.repeat(np.arange(10), bench.args.per_digit))
    return row


def markdown(results: dict[str, Any]) -> str:
    """The table, the ratios against the issue's targets, the command line."""
    unit = "[0, 1] RGB" if results["model"] == "digits-text" else "[-1, 1]"
    lines = [f"# Untuned defaults on {results['model']} ({results['images']} images, DDIM {results['steps']} steps, "
             f"guidance {results['guidance_scale']:g})", "", f"Command: `{results['command']}` ({results['created']}).",
             "", f"MSE / RMSE: paired, pixels in {unit}; RMSE (digits): grey in [-1, 1]; paired FID: digit-classifier "
             "features vs the FP images; FID: vs the real digits.", "",
             "| variant | W | A | MSE | median image MSE | worst 1% share | RMSE | RMSE (digits) | paired FID | FID | "
             "accuracy | calibration s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]

    def fmt(value: Any, spec: str) -> str:
        return "" if value is None else format(value, spec)

    for name, r in results["rows"].items():
        lines.append(f"| {name} | {r['wbits']} | {r['abits']} | {fmt(r['mse'], '.2e')} | "
                     f"{fmt(r.get('mse_median'), '.2e')} | {fmt(r.get('mse_worst1pct_share'), '.2f')} | "
                     f"{fmt(r['rmse'], '.4f')} | "
                     f"{fmt(r['rmse_digits'], '.4f')} | {fmt(r.get('paired_fid'), '.2f')} | "
                     f"{fmt(r.get('fid'), '.2f')} | "
                     f"{fmt(r.get('accuracy'), '.3f')} | {r['calib_seconds']:.1f} |")
    ratios = results["ratios"]
    lines += ["", f"- tfmq / minmax W4A8 paired MSE: {fmt(ratios['tfmq_over_minmax'], '.3f')} (target <= 0.333)",
              f"- tfmq W4A8 / modelopt-w4a16 paired MSE: {fmt(ratios['tfmq_over_modelopt_w4a16'], '.3f')} "
              "(target <= 1.5)", f"- tfmq / qdiff W4A8 paired MSE: {fmt(ratios['tfmq_over_qdiff'], '.3f')}"]
    lines += [f"- skipped: {s}" for s in results["skipped"]]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every variant (fp first), its metrics, the ratios; written to ``--json`` / ``--doc``."""
    from tfmq_export.io import atomic_write_text, utc_now

    torch.set_num_threads(args.threads)
    bench = Bench(args)
    names = ["fp", *[v for v in args.variants.split(",") if v.strip() and v.strip() != "fp"]]
    sets = dict(parse_assignment(s) for s in args.set)
    for name in names:
        bench.overrides(name, sets)  # every variant checked before minutes of work
    rows: dict[str, dict[str, Any]] = {}
    skipped: list[str] = []
    reference = None
    for name in tqdm(names, desc="variants", disable=not args.progress):
        done = bench.run_variant(name.strip(), sets)
        if done is None:
            print(f"{name}: skipped: modelopt_peer not available", file=sys.stderr)
            skipped.append(f"{name}: modelopt_peer (or nvidia-modelopt) not available")
            continue
        reference = done["images"] if reference is None else reference
        base = parse_variant(name)[0]
        wbits, abits = (16, 16) if base == "fp" else PEERS.get(base) or BITS[base.split("-", 1)[1]]
        rows[name] = {"wbits": wbits, "abits": abits, **metrics(bench, done["images"], reference),
                      "calib_seconds": round(done["calib_seconds"], 2), "settings": done["settings"]}
        print(f"{name}: mse {rows[name]['mse']:.5f} (median image {rows[name]['mse_median']:.5f}, worst 1% "
              f"{rows[name]['mse_worst1pct_share']:.0%} of it) rmse {rows[name]['rmse']:.4f} "
              f"calib {done['calib_seconds']:.1f} s", file=sys.stderr)
    results = {"model": args.model, "steps": args.steps, "images": bench.count, "seed": args.seed,
               "calib_seed": args.calib_seed, "guidance_scale": args.guidance_scale, "threads": args.threads,
               "command": "python " + shlex.join(["benchmarks/untuned_defaults.py", *sys.argv[1:]]),
               "created": utc_now(), "rows": rows, "ratios": mse_ratios(rows), "skipped": skipped}
    print(json.dumps(results["ratios"]))
    if args.json:
        atomic_write_text(Path(args.json), json.dumps(results, indent=2, default=str))
    if args.doc:
        atomic_write_text(Path(args.doc), markdown(results))
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=("digits-text", "digits"), default="digits-text")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps, calibration and sampling")
    p.add_argument("--per-digit", type=int, default=10, help="digits-text: images per digit prompt")
    p.add_argument("--num-images", type=int, default=200, help="digits: images")
    p.add_argument("--guidance-scale", type=float, default=1.0, help="digits-text: 1 = unguided")
    p.add_argument("--variants", default=DEFAULT_VARIANTS)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a setting or extra option for every tfmq variant (repeatable)")
    p.add_argument("--seed", type=int, default=0, help="sampling noise seed")
    p.add_argument("--calib-seed", type=int, default=0)
    p.add_argument("--iters", type=int, default=0,
                   help="reconstruction iterations per block (0 = the calibrate default)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", default="runs/untuned-defaults")
    p.add_argument("--json", default=None)
    p.add_argument("--doc", default=None)
    p.add_argument("--no-progress", dest="progress", action="store_false")
    args = p.parse_args(argv)
    if args.model == "digits" and args.guidance_scale != 1.0:
        p.error("--guidance-scale applies to digits-text (digits is unconditional)")
    return args


def main(argv: list[str] | None = None) -> None:
    from tfmq_export.errors import TfmqError

    args = parse_args(argv)
    try:
        run(args)
    except (TfmqError, ValueError) as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
