"""SD-1.5-shaped text-to-image pipelines on CPU, FP32 vs W8A8, stage by stage (issue 9, item 6).

Why a script: the per-stage figures in docs/BENCHMARKS.md must be rerunnable with the commands
that made them. The model is an ``sd15-arch`` *pipeline*: SD-1.5's UNet, CLIP ViT-L/14 text
encoder and AutoencoderKL with random weights (``models.sd15.build_sd15_arch_pipeline``), so
speed, memory and size are real and the images are noise.

Stages (each reuses its output when present; each heavy one runs in a child process so its
memory peak is gone before the next):

1. save the pipeline folder (latent ``--latent`` x ``--latent``, e.g. 32 = 256x256 images);
2. calibrate: full precision (``--wbits 16 --abits 16``) and W8A8 minmax (``--weight-init max``,
   ``--num-samples`` prompts x ``--steps`` guided steps: cheap on purpose, the weights are random);
3. ``export-pipeline`` both (target onnxruntime);
4. ``tfmq-export bench FP32_DIR --onnx-pipeline W8A8_DIR --backends B``, one run per backend
   (round-robin within it; OpenVINO adds ``ov-default``, ``w8a8+ov-default`` and
   ``w8a8+ov-default-stages``, ``sample``'s default): all seven
   variants open at once took more than this machine's 23 GB (the OOM killer ended the run);
5. the section "Whole pipelines" of docs/BENCHMARKS.md from the bench JSON.

Run from the repository root::

    python benchmarks/sd15_pipeline_cpu.py                   # big files under runs/sd15_pipeline
    python benchmarks/sd15_pipeline_cpu.py --report-only      # rewrite the docs section from the JSON
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = {b: ROOT / "benchmarks" / "results" / f"sd15_pipeline_cpu_{b}.json" for b in ("onnxruntime", "openvino")}
REPORT = ROOT / "docs" / "BENCHMARKS.md"
BEGIN, END = "<!-- sd15_pipeline_cpu: begin -->", "<!-- sd15_pipeline_cpu: end -->"
PROMPTS = ("a photograph of an astronaut riding a horse", "a blurry photograph of a cat on the moon")


def log(message: str) -> None:
    print(f"[sd15_pipeline {time.strftime('%H:%M:%S')}] {message}", flush=True)


def tfmq(*args: Any) -> list[str]:
    """The ``tfmq-export`` command line run with this interpreter."""
    return [sys.executable, "-c", "import sys; from tfmq_export.cli import cli; sys.exit(cli())", *map(str, args)]


def run(cmd: list[str]) -> None:
    log("$ " + shlex.join(["tfmq-export", *cmd[3:]] if cmd[2].endswith("sys.exit(cli())") else cmd))
    started = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    log(f"  done in {time.perf_counter() - started:.0f} s")


def prepare(work: Path, args: argparse.Namespace) -> dict[str, Path]:
    """Stages 1-3: the pipeline folder, both artifacts, both exported pipelines."""
    pipe = work / "pipe"
    if not (pipe / "model_index.json").is_file():
        code = ("import sys; from tfmq_export.models.sd15 import build_sd15_arch_pipeline as b; "
                "b(sys.argv[1], int(sys.argv[2]))")
        run([sys.executable, "-c", code, str(pipe), str(args.latent)])
    prompts = work / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS[: args.num_samples]) + "\n")
    recipe = work / "w8a8-recipe.json"
    recipe.write_text(json.dumps({"method": "minmax", "wbits": 8, "abits": 8, "weight_init": "max",
                                  "num_samples": args.num_samples, "batch_size": args.num_samples,
                                  "steps": args.steps}))
    calibrations = {"fp32": ["--wbits", 16, "--abits", 16, "--steps", args.steps, "--num-samples", 1],
                    "w8a8": ["--recipe", recipe]}
    out = {}
    for name, options in calibrations.items():
        art, folder = work / f"art-{name}", work / f"pipe-{name}"
        if not (art / "artifact.json").is_file():
            run(tfmq("calibrate", pipe, "--out", art, "--prompts", prompts, *options, "--seed", args.seed, "--quiet"))
        if not (folder / "pipeline.json").is_file():
            run(tfmq("export-pipeline", art, "--out", folder, "--target", "onnxruntime"))
        out[name] = folder
    return out


def bench_command(folders: dict[str, Path], args: argparse.Namespace, backend: str) -> list[str]:
    return tfmq("bench", folders["fp32"].relative_to(ROOT), "--onnx-pipeline", folders["w8a8"].relative_to(ROOT),
                "--backends", backend, "--threads", args.threads, "--timed-calls", args.iters, "--warmup", 1,
                "--pause-ms", 100, "--seed", args.seed, "--prompt", PROMPTS[0],
                *([] if args.memory else ["--no-memory"]), "--json", RESULTS[backend].relative_to(ROOT), "--quiet")


def _speedups(rows: dict[str, dict[str, Any]], fast_label: str, base_label: str) -> tuple[float, float] | None:
    fast, slow = rows.get(fast_label), rows.get(base_label)
    if fast is None or slow is None:
        return None
    return (slow["stages"]["pipeline"] / fast["stages"]["pipeline"], slow["stages"]["unet"] / fast["stages"]["unet"])


def report(data: dict[str, Any], commands: list[str]) -> str:
    """The docs section: command, machine, per-stage table, speed-ups and their ratio."""
    m = data["machine"]
    rows = {r["label"]: r for r in data["runs"]}
    first = data["runs"][0]
    described = json.loads((ROOT / first["path"] / "pipeline.json").read_text())
    latent, size = described["latent_shape"], described["sample_size"]
    lines = [BEGIN, "## Whole pipelines (`sd15-arch` pipeline), per stage",
             "", "Generated by `python benchmarks/sd15_pipeline_cpu.py` (SD-1.5 UNet, CLIP ViT-L/14 text encoder "
             "and VAE shapes, random weights: speed only). "
             f"{first['sampling_steps']} DDIM steps, guidance (UNet batch {first['unet_batch']}), "
             f"{data['settings']['num_images']} image per run, latents {latent} ({size}x{size} images).", "",
             *(["One bench run per backend (its variants take turns; compare ratios within a backend):", ""]
               if len(commands) > 1 else []),
             "```", *commands, "```", "",
             f"Machine: {m.get('cpu', m.get('cpu_model', '?'))}, {m.get('cores')} cores, threads {m.get('threads')}, "
             f"onnxruntime {m.get('onnxruntime', '?')}, OpenVINO {m.get('openvino', '?')}, load average "
             f"{m.get('load_avg_start')} -> {m.get('load_avg_end')} (another job shared the 2 cores).", "",
             "| variant | text encoder ms | UNet ms/call | UNet x steps ms | VAE decoder ms | pipeline ms (p90) "
             "| images/s | model MB | image rel. error |", "|---|---|---|---|---|---|---|---|---|"]
    for r in data["runs"]:
        s, err = r["stages"], r.get("images_rel_error_vs_reference")
        error = "-" if err is None else f"{err:.3f}"
        lines.append(f"| {r['label']} | {s['text_encoder']:.0f} | {s['unet']:.0f} | {s['unet_total']:.0f} | "
                     f"{s['vae_decoder']:.0f} | {s['pipeline']:.0f} ({r['latency_ms_p90']:.0f}) | "
                     f"{r['images_per_s']:.3f} | {r['model_bytes'] / 1e6:.0f} | {error} |")
    lines += ["", "Speed-ups of the W8A8 pipeline (only its UNet is quantized; the text encoder and VAE decoder "
              "stay float):", ""]
    for fast, base in (("onnxruntime:w8a8", "onnxruntime:fp32"), ("openvino:w8a8", "openvino:fp32"),
                       ("openvino:w8a8", "openvino:ov-default"), ("openvino:w8a8+ov-default", "openvino:ov-default"),
                       ("openvino:w8a8+ov-default-stages", "openvino:ov-default")):
        ratios = _speedups(rows, fast, base)
        if ratios is not None:
            whole, unet = ratios
            lines.append(f"- `{fast}` vs `{base}`: whole pipeline {whole:.2f}x, UNet call {unet:.2f}x; "
                         f"pipeline / UNet speed-up ratio {whole / unet:.2f}")
    lines += ["", "Stage times are the runners' own call times summed per run (medians over the timed runs); the "
              "pipeline time is the wall time of a whole run, scheduler updates included. `image rel. error` is "
              "the relative L2 difference of the decoded images from the first FP32 row (same latents, prompt).",
              END]
    return "\n".join(lines) + "\n"


def write_section(text: str) -> None:
    doc = REPORT.read_text()
    if BEGIN in doc and END in doc:
        doc = doc[: doc.index(BEGIN)] + text + doc[doc.index(END) + len(END) + 1 :]
    else:
        doc = doc.rstrip("\n") + "\n\n" + text
    REPORT.write_text(doc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "sd15_pipeline")
    parser.add_argument("--latent", type=int, default=32, help="latent size (32 = 256x256 images)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--num-samples", type=int, default=2, choices=[1, 2])
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--memory", action="store_true", help="peak-memory probes (a process per variant)")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    folders = {"fp32": args.work / "pipe-fp32", "w8a8": args.work / "pipe-w8a8"}
    if not args.report_only:
        folders = prepare(args.work, args)
        for backend in RESULTS:
            run(bench_command(folders, args, backend))
    commands = [shlex.join(["tfmq-export", *bench_command(folders, args, b)[3:]]) for b in RESULTS]
    parts = [json.loads(RESULTS[b].read_text()) for b in RESULTS]
    data = {**parts[0], "runs": [r for part in parts for r in part["runs"]],
            "machine": {**parts[0]["machine"], "load_avg_end": parts[-1]["machine"]["load_avg_end"]}}
    write_section(report(data, commands))
    log(f"wrote {REPORT} ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
