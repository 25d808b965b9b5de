"""Does the order in which one process compiles OpenVINO models change their measured latency?

Why: on this 2-core VM, timing several OpenVINO IRs in one process (as ``tfmq-export bench`` does)
made a model compiled early slower than a byte-identical copy compiled after it (1.33x for the model
compiled first, 2026-11-30; docs/BENCHMARKS.md "Order-fair OpenVINO timing"). A ratio
between variants of one bench process therefore depends on the order they were loaded in (the bench
loads the NNCF peer after our variants, OpenVINO FP32 before them). glibc's ``malloc.hugetlb=1``
tunable shrank it (1.08x) but did not remove it. The cause was not found.

Three modes:
- default: the IRs are compiled in the order given, after a copy of the first (``--no-duplicate``:
  without it), and timed round-robin in one process; prints the copy / original ratio (the bias).
- ``--isolated R``: R rounds of one child process per IR, each compiling only its own model (one
  model per process, as a deployment runs it).
- ``--rotations N``: N child processes, child r compiles the IRs rotated by r and times them
  round-robin; every IR sits at every compile position equally often (N a multiple of the IR count)
  and the calls are pooled. This is the order-fair comparison docs/BENCHMARKS.md reports for the
  OpenVINO variants without AMX::

    python benchmarks/ov_order_bias.py --isa-cap AVX512_CORE_BF16 --iters 6 --rotations 5 \\
        runs/sd15_cpu/sd15-fp32.xml runs/sd15_cpu/sd15-w8a8-ov.xml runs/sd15_cpu/sd15-w8a8-ov-nofold.xml \\
        runs/sd15_cpu/sd15-w8a8-trt.xml runs/sd15_cpu/sd15-nncf-int8.xml \\
        --json benchmarks/results/ov_rotations_vnni.json

(the IRs come from ``benchmarks/sd15_cpu.py --prepare-only``; the unfolded openvino graph is
``sd15-w8a8-ov-nofold``: the openvino graph before ``export.openvino_folds``, for the ablation).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__:
    from .cpu_facts import ISA_ENV, ov_feed
else:
    from cpu_facts import ISA_ENV, ov_feed


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("irs", nargs="+", type=Path, help="OpenVINO IR .xml files (sd15_cpu.py's work folder)")
    parser.add_argument("--iters", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--latent", type=int, default=32)
    parser.add_argument("--cond", type=int, nargs=2, default=[77, 768], help="encoder states shape (tokens, width)")
    parser.add_argument("--isa-cap", default=None, help=f"sets {ISA_ENV} before OpenVINO loads")
    parser.add_argument("--no-duplicate", action="store_true", help="do not time a copy of the first IR first")
    parser.add_argument("--rotations", type=int, default=0,
                        help="instead: this many child processes, each compiling and timing the IRs round-robin "
                             "in a rotated order (every IR at every compile position); the calls are pooled")
    parser.add_argument("--isolated", type=int, default=0, metavar="ROUNDS",
                        help="instead: ROUNDS rounds of one child process per IR, each compiling only its own "
                             "model (a deployment's one model per process), IRs in turn")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args(argv)


def _child(args: argparse.Namespace, order: list[Path]) -> dict[str, list[float]]:
    """Time ``order`` in a child process (compiled in that order, round-robin); its calls per IR."""
    import subprocess

    cmd = [sys.executable, __file__, *map(str, order), "--child", "--no-duplicate", "--iters", str(args.iters),
           "--warmup", str(args.warmup), "--threads", str(args.threads), "--latent", str(args.latent),
           "--cond", *map(str, args.cond)]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])


def isolated(args: argparse.Namespace) -> dict[str, list[float]]:
    """Process round robin: per round one child per IR, each compiling only its own model (as a
    deployment runs one model per process)."""
    times: dict[str, list[float]] = {str(p): [] for p in args.irs}
    for _ in range(args.isolated):
        for path in args.irs:
            times[str(path)] += _child(args, [path])[str(path)]
    return times


def rotated(args: argparse.Namespace) -> dict[str, list[float]]:
    """One child process per rotation of the IR list (the child compiles them in that order and times them
    round-robin), so every IR is compiled at every position equally often; the calls are pooled."""
    times: dict[str, list[float]] = {str(p): [] for p in args.irs}
    for r in range(args.rotations):
        order = args.irs[r % len(args.irs):] + args.irs[:r % len(args.irs)]
        for name, ms in _child(args, order).items():
            times[name] += ms
    return times


def _write_json(args: argparse.Namespace, argv: list[str] | None, mode: str, rows: list[dict]) -> None:
    """The rows with the command, the mode and the environment that changes the timing."""
    if args.json:
        result = {"command": " ".join(["python benchmarks/ov_order_bias.py", *(argv or sys.argv[1:])]),
                  "mode": mode, "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
                  ISA_ENV: os.environ.get(ISA_ENV), "rows": rows}
        args.json.write_text(json.dumps(result, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.isa_cap:
        os.environ[ISA_ENV] = args.isa_cap
    if args.rotations or args.isolated:
        times = rotated(args) if args.rotations else isolated(args)
        rows = [{"ir": name, "calls": len(ms), "median_ms": statistics.median(ms), "min_ms": min(ms)}
                for name, ms in times.items()]
        for row in rows:
            print(f"{row['median_ms']:8.1f} ms median  {row['min_ms']:8.1f} min  ({row['calls']} calls)  {row['ir']}")
        _write_json(args, argv, "rotations" if args.rotations else "isolated", rows)
        return 0
    import openvino as ov

    core = ov.Core()
    with tempfile.TemporaryDirectory() as tmp:
        paths = list(args.irs)
        if not args.no_duplicate:  # a copy of the first IR, compiled before it
            copy = Path(tmp) / f"copy-of-{paths[0].name}"
            shutil.copyfile(paths[0], copy)
            os.symlink(paths[0].with_suffix(".bin").resolve(), copy.with_suffix(".bin"))
            paths.insert(0, copy)
        requests = []
        for path in paths:
            compiled = core.compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": args.threads,
                                                             "INFERENCE_PRECISION_HINT": "f32"})
            sample = [compiled.inputs[0].get_partial_shape()[1].get_length(), args.latent, args.latent]
            requests.append((path, compiled.create_infer_request(), ov_feed(compiled, sample, args.cond)))
        times: dict[str, list[float]] = {str(p): [] for p in paths}
        for i in range(args.warmup + args.iters):
            for path, request, feed in requests:
                time.sleep(0.1)
                start = time.perf_counter()
                request.infer(feed)
                if i >= args.warmup:
                    times[str(path)].append((time.perf_counter() - start) * 1000)
    if args.child:
        print(json.dumps(times))
        return 0
    rows = [{"ir": name, "compile_order": k, "median_ms": statistics.median(ms), "min_ms": min(ms)}
            for k, (name, ms) in enumerate(times.items())]
    for row in rows:
        print(f"{row['compile_order']}  {row['median_ms']:8.1f} ms median  {row['min_ms']:8.1f} min  {row['ir']}")
    if not args.no_duplicate:
        print(f"copy compiled first / original: {rows[0]['median_ms'] / rows[1]['median_ms']:.2f}x")
    _write_json(args, argv, "one process", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
