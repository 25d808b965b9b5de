"""SD-1.5-architecture UNet on a 2-thread CPU: FP32 vs our W8A8 vs NNCF INT8, side by side.

Why a script: the project's CPU speed targets (W8A8 >= 2.8x over OpenVINO FP32, no slower
than NNCF, >= 2x over onnxruntime FP32, <= 0.27x the bytes) must be rerunnable by anyone, with
the exact command that produced the numbers. The model is ``sd15-arch`` (SD-1.5's UNet with random
weights): latency, memory and int8 kernel coverage depend on shapes, not on weight values, so no
download is needed; the outputs are meaningless and no quality number is drawn from them.

Stages (each one reuses its outputs when they exist, so a rerun after a failure is cheap):

1. export the FP32 graph (temporal table, no Q/DQ);
2. minmax W8A8 calibration on a few random-condition DDIM trajectories (cheap on purpose: the
   weights are random, so only the scales' shapes matter for speed) and export it for both
   targets (``tensorrt``: int8 / zero point 0; ``onnxruntime``: uint8 / 128); a second minmax W8A8
   artifact with ``linear_act_grid: uint8-127`` exported for ``--target openvino`` (the Linear
   inputs as uint8 / 127, which OpenVINO runs as u8 FullyConnected kernels, as NNCF's are);
3. engines: OpenVINO IR of every graph, onnxruntime's optimised graphs (their manifests count the
   int8 kernels and the weight DequantizeLinear left unfused), and the NNCF peer built from the
   FP32 graph with the same calibration inputs ``tfmq-export bench --nncf`` would draw;
4. wait for a quiet machine (1-minute load average below ``--max-load``), then ONE
   ``tfmq-export bench`` run with every variant, round-robin;
5. write ``docs/BENCHMARKS.md`` from the bench JSON (``benchmarks/results/``; ``sd15_report.py``).

Run it from the repository root::

    python benchmarks/sd15_cpu.py            # everything; big files under runs/sd15_cpu
    python benchmarks/sd15_cpu.py --report-only benchmarks/results/sd15_cpu.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__:  # imported as benchmarks.sd15_cpu
    from .cpu_facts import cpu_isa, isa_env, run_ov_child
    from .sd15_report import write_report
else:  # run as python benchmarks/sd15_cpu.py
    from cpu_facts import cpu_isa, isa_env, run_ov_child
    from sd15_report import write_report

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "sd15_cpu.json"
REPORT = ROOT / "docs" / "BENCHMARKS.md"

def log(message: str) -> None:
    print(f"[sd15_cpu {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- 1-3: graphs and engines ----------------------------------------------------------------------


def sd15_model(latent: int, num_conditions: int, seed: int, name: str = "sd15-arch") -> Any:
    """``sd15-arch`` (or ``name``: ``digits-text`` for smoke runs) with its config's sample size set to
    the benchmark latent (calibration data and export metadata follow it) and random CLIP-shaped
    conditions to calibrate with."""
    import torch

    from tfmq_export.models.loading import load_model

    model = load_model(name)
    model.unet.register_to_config(sample_size=latent)
    dim = int(model.unet.config.cross_attention_dim)
    model.conditions = torch.randn(num_conditions, 77, dim, generator=torch.Generator().manual_seed(seed))
    return model


def cond_shape(args: argparse.Namespace) -> tuple[int, int]:
    """encoder_hidden_states shape of the model (without building sd15-arch's 859 M weights)."""
    if args.model == "sd15-arch":
        return (77, 768)
    from tfmq_export.models.loading import load_model

    return (77, int(load_model(args.model).unet.config.cross_attention_dim))


def export_graphs(work: Path, args: argparse.Namespace) -> dict[str, Path]:
    """FP32 and W8A8 (both targets) ONNX graphs, reused when present."""
    from tfmq_export.artifact import load_artifact
    from tfmq_export.calibration.pipeline import calibrate
    from tfmq_export.config import CalibrationSettings
    from tfmq_export.export.onnx_export import export_onnx

    graphs = graph_paths(work)
    if all(p.is_file() for p in graphs.values()):
        log("graphs exist, reusing them")
        return graphs
    if not graphs["fp32"].is_file():
        log("exporting the FP32 graph (in a child process, so its 10 GB peak is gone before calibration)")
        subprocess.run([sys.executable, __file__, "--export-fp32-only", *_forward(args)], check=True)
    model = sd15_model(args.latent, args.num_samples, args.seed, args.model)
    common = {"steps": args.steps, "seed": args.seed}
    for calib, grid, keys in (("calib-w8a8", "int8", ("w8a8-onnxruntime", "w8a8-tensorrt")),
                              ("calib-w8a8-u8fc", "uint8-127",
                               ("w8a8-openvino", "w8a8-openvino-floatattn", "w8a8-openvino-nofold"))):
        if all(graphs[key].is_file() for key in keys):
            continue
        calib_dir = work / calib
        if (calib_dir / "artifact.json").is_file():
            artifact = load_artifact(calib_dir)
        else:
            log(f"minmax W8A8 calibration (Linear inputs on the {grid} grid): {args.num_samples} trajectories x "
                f"{args.steps} steps at {args.latent}x{args.latent}")
            started = time.perf_counter()
            settings = CalibrationSettings(method="minmax", wbits=8, abits=8, num_samples=args.num_samples,
                                           batch_size=args.num_samples, weight_init=args.weight_init,
                                           extra={"linear_act_grid": grid} if grid != "int8" else None, **common)
            artifact = calibrate(model, settings, calib_dir, progress=True)
            log(f"calibrated in {time.perf_counter() - started:.0f} s")
            gc.collect()
        for key in keys:
            target, _, ablation = key.removeprefix("w8a8-").partition("-")
            if not graphs[key].is_file():
                log(f"exporting W8A8 for target {target}" + (f" ({ABLATIONS[ablation]}, ablation)" if ablation else ""))
                export_onnx(model, artifact, graphs[key], target, fold=ablation != "nofold",
                            attention="float" if ablation else None)
                gc.collect()
    return graphs


#: the openvino graph's ablations: what each leaves out of the default openvino export
ABLATIONS = {"floatattn": "float attention, with the folds", "nofold": "float attention, before the folds"}


def graph_paths(work: Path) -> dict[str, Path]:
    """The benchmark's ONNX graphs: FP32, and W8A8 per export target (the openvino one from the
    ``uint8-127`` artifact), and for the ablation the openvino graph with float attention (``--attention
    float``) and that one before ``export.openvino_folds``."""
    return {"fp32": work / "sd15-fp32.onnx", "w8a8-onnxruntime": work / "sd15-w8a8-ort.onnx",
            "w8a8-tensorrt": work / "sd15-w8a8-trt.onnx", "w8a8-openvino": work / "sd15-w8a8-ov.onnx",
            "w8a8-openvino-floatattn": work / "sd15-w8a8-ov-floatattn.onnx",
            "w8a8-openvino-nofold": work / "sd15-w8a8-ov-nofold.onnx"}


def _forward(args: argparse.Namespace) -> list[str]:
    """The options a child process needs to rebuild the same model and artifact paths."""
    return ["--work", str(args.work.resolve()), "--model", args.model, "--latent", str(args.latent),
            "--num-samples", str(args.num_samples), "--seed", str(args.seed), "--steps", str(args.steps)]


def export_fp32(args: argparse.Namespace, work: Path) -> None:
    """The FP32 graph (> 2 GB, weights in ``sd15-fp32.onnx.data``) through the library's export.

    Run in a child process that ends after it: ``copy_unet=False`` lets the export trace the
    model's own UNet instead of a copy (3.4 GB less at peak; the model is spent afterwards).
    """
    from tfmq_export.artifact import load_artifact
    from tfmq_export.calibration.pipeline import calibrate
    from tfmq_export.config import CalibrationSettings
    from tfmq_export.export.onnx_export import export_onnx

    model = sd15_model(args.latent, args.num_samples, args.seed, args.model)
    fp_dir = work / "calib-fp32"
    if not (fp_dir / "artifact.json").is_file():
        calibrate(model, CalibrationSettings(method="minmax", wbits=16, abits=16, steps=args.steps, seed=args.seed),
                  fp_dir)
    export_onnx(model, load_artifact(fp_dir), work / "sd15-fp32.onnx", "onnxruntime", copy_unet=False)


def build_engines(graphs: dict[str, Path], args: argparse.Namespace) -> dict[str, Path]:
    """OpenVINO IR of every graph, onnxruntime optimised graphs of the W8A8 ones, the NNCF peer."""
    from tfmq_export.backends.manifest import manifest_path
    from tfmq_export.backends.onnxruntime.build import build_onnxruntime_engine
    from tfmq_export.backends.openvino.build import build_openvino_engine
    from tfmq_export.backends.openvino.nncf import ensure_nncf_engine

    engines: dict[str, Path] = {}
    for key, onnx_path in graphs.items():
        xml = onnx_path.with_suffix(".xml")
        if not manifest_path(xml).is_file():
            log(f"OpenVINO IR of {onnx_path.name}")
            build_openvino_engine(onnx_path, xml)
        engines[f"openvino:{key}"] = xml
        gc.collect()
    for key in ("w8a8-onnxruntime", "w8a8-tensorrt"):
        opt = graphs[key].with_name(graphs[key].stem + ".ort.onnx")
        if not manifest_path(opt).is_file():
            log(f"onnxruntime optimised graph of {graphs[key].name}")
            build_onnxruntime_engine(graphs[key], opt, threads=args.threads)
        engines[f"onnxruntime:{key}"] = opt
    log("NNCF peer (reused when its manifest matches)")
    engines["nncf"] = ensure_nncf_engine(graphs["fp32"], nncf_path(graphs), args.nncf_samples, args.latent,
                                         cond_shape(args), seed=args.seed, threads=args.threads)
    gc.collect()
    return engines


def nncf_path(graphs: dict[str, Path]) -> Path:
    return graphs["fp32"].with_name("sd15-nncf-int8.xml")


# --- 4: the one bench run --------------------------------------------------------------------------


def bench_command(graphs: dict[str, Path], engines: dict[str, Path], json_path: Path,
                  args: argparse.Namespace) -> list[str]:
    """The ``tfmq-export bench`` call of this benchmark (also printed, so it can be rerun alone)."""
    cmd = ["tfmq-export", "bench", args.model, "--backends", "torch,onnxruntime",
           "--onnx", str(graphs["fp32"]),
           "--variant", f"onnxruntime={graphs['w8a8-onnxruntime']}",
           "--variant", f"openvino={engines['openvino:fp32']}",
           "--variant", f"openvino={engines['openvino:w8a8-tensorrt']}",
           "--variant", f"openvino={engines['openvino:w8a8-onnxruntime']}",
           "--variant", f"openvino={engines['openvino:w8a8-openvino']}",
           "--nncf", "--nncf-engine", str(engines["nncf"]), "--nncf-samples", str(args.nncf_samples),
           "--latent-size", str(args.latent), "--threads", str(args.threads),
           "--timed-calls", str(args.iters), "--warmup", "2", "--sampling-runs", str(args.sampling_runs),
           "--pause-ms", str(args.pause_ms), "--seed", str(args.seed), "--json", str(json_path)]
    for batch in args.batches:
        cmd += ["--batch-size", str(batch)]
    return [_rel(c) for c in cmd]


def _rel(arg: str) -> str:
    """Paths (also in ``BACKEND=PATH``) relative to the repository root: a portable command."""
    prefix, sep, rest = arg.rpartition("=")
    path = Path(rest)
    if not path.is_absolute():
        return arg
    try:
        return f"{prefix}{sep}{path.resolve().relative_to(ROOT)}"
    except ValueError:
        return arg


def wait_for_quiet_machine(max_load: float, max_wait_s: float, poll_s: float = 60.0) -> dict[str, Any]:
    """Poll the 1-minute load average until it drops below ``max_load`` or ``max_wait_s`` passes."""
    started = time.monotonic()
    history = []
    while True:
        load1 = os.getloadavg()[0]
        history.append(round(load1, 2))
        if load1 < max_load:
            log(f"load average {load1:.2f} < {max_load}: timing now")
            return {"quiet": True, "load_1min": load1, "waited_s": round(time.monotonic() - started), "polls": history}
        if time.monotonic() - started >= max_wait_s:
            log(f"load average still {load1:.2f} after {max_wait_s / 60:.0f} min: timing anyway (machine loaded)")
            return {"quiet": False, "load_1min": load1, "waited_s": round(time.monotonic() - started),
                    "polls": history}
        log(f"load average {load1:.2f} >= {max_load}; waiting")
        time.sleep(poll_s)


def engine_facts(graphs: dict[str, Path]) -> dict[str, Any]:
    """Fusion counts (onnxruntime) and int8 coverage (OpenVINO) from the engines' manifests."""
    from tfmq_export.backends.manifest import manifest_path

    fusion, openvino = {}, {}
    for onnx_path in graphs.values():
        opt = manifest_path(onnx_path.with_name(onnx_path.stem + ".ort.onnx"))
        if opt.is_file():
            fusion[onnx_path.name] = json.loads(opt.read_text())
        ir = manifest_path(onnx_path.with_suffix(".xml"))
        if ir.is_file():
            openvino[onnx_path.with_suffix(".xml").name] = json.loads(ir.read_text()).get(
                "compiled_cpu_layer_precisions", {})
    nncf = manifest_path(nncf_path(graphs))
    if nncf.is_file():
        openvino[nncf_path(graphs).name] = json.loads(nncf.read_text()).get("compiled_cpu_layer_precisions", {})
    return {"fusion": fusion, "openvino": openvino}


def openvino_facts(graphs: dict[str, Path], engines: dict[str, Path], args: argparse.Namespace,
                   iters: int) -> dict[str, Any]:
    """``ov-default`` vs forced f32 on the FP32 IR (its own round robin, ``iters`` calls; 0: none) and
    the exec types of every OpenVINO engine, in a child process under ``--isa-cap``."""
    from tfmq_export.export.onnx_export import describe_onnx

    channels = describe_onnx(graphs["fp32"]).sample_shape[0]
    kernels = {key.split(":", 1)[-1]: [str(xml), "f32"] for key, xml in engines.items() if key.startswith("openvino:")
               or key == "nncf"}
    kernels["fp32 (ov-default)"] = [str(engines["openvino:fp32"]), None]
    payload = {"fp32_xml": str(engines["openvino:fp32"]), "engines": kernels, "threads": args.threads,
               "batches": args.batches, "iters": iters, "warmup": 2, "pause_ms": args.pause_ms, "seed": args.seed,
               "sample_shape": [channels, args.latent, args.latent], "cond_shape": list(cond_shape(args))}
    facts = run_ov_child(payload, args.isa_cap)
    if args.isa_cap and facts["amx_ran"]:
        log(f"WARNING: AMX kernels ran under {args.isa_cap}: {', '.join(facts['amx_ran'])}")
    return facts


# --- 5: the report (sd15_report.py) and main ---------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "sd15_cpu", help="big files (git-ignored)")
    parser.add_argument("--latent", type=int, default=32)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10, help="DDIM steps = temporal-table rows")
    parser.add_argument("--num-samples", type=int, default=4, help="calibration trajectories (random conditions)")
    parser.add_argument("--weight-init", choices=["max", "mse"], default="max",
                        help="weight scales: absmax (seconds) or the paper's MSE search (~30 min on 2 cores for "
                             "SD-1.5; no effect on speed)")
    parser.add_argument("--nncf-samples", type=int, default=4, help="NNCF calibration trajectories")
    parser.add_argument("--iters", type=int, default=15)
    parser.add_argument("--sampling-runs", type=int, default=1)
    parser.add_argument("--pause-ms", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-load", type=float, default=1.5)
    parser.add_argument("--max-wait-min", type=float, default=25.0)
    parser.add_argument("--model", default="sd15-arch", help="sd15-arch; digits-text for smoke runs of the tooling")
    parser.add_argument("--isa-cap", default=None,
                        help="ONEDNN_MAX_CPU_ISA for every OpenVINO variant (set in the environment of this process "
                             "at start and of the bench / OpenVINO child processes), e.g. AVX512_CORE_VNNI or "
                             "AVX512_CORE_BF16 to time an AMX CPU as one without AMX")
    parser.add_argument("--ov-iters", type=int, default=None,
                        help="round-robin calls of ov-default vs forced f32 (default: --iters; 0: none)")
    parser.add_argument("--prepare-only", action="store_true", help="stop before timing")
    parser.add_argument("--kernels-only", action="store_true",
                        help="build, then print the exec types every OpenVINO engine runs (under --isa-cap) and stop")
    parser.add_argument("--export-fp32-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--report-only", type=Path, default=None, help="rewrite the report from this bench JSON")
    parser.add_argument("--json", type=Path, default=RESULTS)
    parser.add_argument("--report", type=Path, default=REPORT)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.isa_cap:  # this process's own OpenVINO use (the NNCF build); children get it through isa_env
        os.environ.update(isa_env(args.isa_cap))
    work = args.work.resolve()
    if args.export_fp32_only:
        export_fp32(args, work)
        return 0
    graphs = graph_paths(work)
    if args.report_only is not None:
        result = json.loads(args.report_only.read_text())
        facts = engine_facts(graphs)
        write_report(result, result.get("command", []), {**facts, **result.get("script", {})}, args.report)
        log(f"wrote {args.report}")
        return 0
    work.mkdir(parents=True, exist_ok=True)
    graphs = export_graphs(work, args)
    engines = build_engines(graphs, args)
    command = bench_command(graphs, engines, args.json, args)
    log("bench command: " + " ".join(shlex.quote(c) for c in command))
    if args.prepare_only:
        return 0
    if args.kernels_only:
        print(json.dumps({"cpu_isa": cpu_isa(), **openvino_facts(graphs, engines, args, 0)}, indent=2))
        return 0
    load = wait_for_quiet_machine(args.max_load, args.max_wait_min * 60)
    exe = Path(sys.executable).with_name("tfmq-export")
    proc = subprocess.run([str(exe) if exe.is_file() else command[0], *command[1:]], cwd=ROOT,
                          env=isa_env(args.isa_cap))
    if proc.returncode != 0:
        log(f"bench failed with exit code {proc.returncode}")
        return proc.returncode
    result = json.loads(args.json.read_text())
    result["command"] = command
    result["script"] = {"load": load, "argv": sys.argv[1:]}
    result["cpu_isa"] = {**cpu_isa(), "onednn_max_cpu_isa": args.isa_cap}
    log("OpenVINO: ov-default vs forced f32, and the kernels every engine runs")
    ov_iters = args.iters if args.ov_iters is None else args.ov_iters
    result["ov_precision"] = openvino_facts(graphs, engines, args, ov_iters)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    facts = engine_facts(graphs)
    print(write_report(result, command, {**facts, "load": load}, args.report))
    log(f"wrote {args.json} and {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
