"""Artifacts before and after a refactor are identical, bit for bit, for the same settings and seed.

Usage:
  # once, with the code of the reference commit first on the path:
  git worktree add /tmp/ref6ed 6ed0ab5
  PYTHONPATH=/tmp/ref6ed python benchmarks/artifact_identity.py --write /tmp/ref_artifacts
  # then, with the current code:
  python benchmarks/artifact_identity.py --reference /tmp/ref_artifacts [--out /tmp/new_artifacts]

Every case calibrates the bundled ``digits`` model with tiny settings (4 steps, 4 trajectories,
20 iterations per block, one intra-op thread, fixed seed) and covers one method at W4A8 or W8A8,
with the options that take other code paths (mse rule, split skip, per-step factors, quantized
temporal table). The comparison checks every tensor (dtype, shape, bytes) and ``artifact.json``
except what legitimately differs between runs (creation time, timings, versions, the model path).
Prints one PASS / FAIL line per case; exit code 1 when any case fails.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch
from safetensors.torch import load_file

#: case name -> CalibrationSettings fields
CASES: dict[str, dict[str, Any]] = {
    "minmax-w8a8": {"method": "minmax", "wbits": 8, "abits": 8},
    "minmax-w4a8-mse": {"method": "minmax", "wbits": 4, "abits": 8, "static_scale_rule": "mse",
                        "weight_init": "max"},
    "qdiff-w4a8": {"method": "qdiff", "wbits": 4, "abits": 8, "static_scale_rule": "mse",
                   "extra": {"act_iters": 4, "recon_batch_size": 8, "adaround_lr": 0.01}},
    "qdiff-w8a8": {"method": "qdiff", "wbits": 8, "abits": 8, "extra": {"act_iters": 4, "split_skip": False}},
    "tfmq-w4a8": {"method": "tfmq", "wbits": 4, "abits": 8, "static_scale_rule": "mse",
                  "extra": {"recon_batch_size": 8, "adaround_lr": 0.01}},
    "tfmq-w8a8": {"method": "tfmq", "wbits": 8, "abits": 8, "temporal_table": "quantized",
                  "extra": {"step_factors": True}},
}
COMMON: dict[str, Any] = {"steps": 4, "num_samples": 4, "iters": 20, "seed": 3, "batch_size": 16}

#: artifact.json keys that legitimately differ between two runs or two code versions
VOLATILE = ("created", "timings", "version")
#: settings keys that name where the model came from, not what was computed
VOLATILE_SETTINGS = ("model_source",)


def _settings_class() -> type:
    try:
        from tfmq_export.config import CalibrationSettings
    except ImportError:  # the reference commit: settings lived in the pipeline
        from tfmq_export.calibration.pipeline import CalibrationSettings
    return CalibrationSettings


def run_cases(out: Path, names: list[str]) -> None:
    """Calibrate every case into ``out/<case>``."""
    from tfmq_export.calibration.pipeline import calibrate
    from tfmq_export.models.loading import load_model

    torch.set_num_threads(1)
    settings_cls = _settings_class()
    model = load_model("digits")
    for name in names:
        settings = settings_cls(**{**COMMON, **CASES[name]})
        calibrate(model, settings, out / name, progress=False)
        print(f"calibrated {name}", flush=True)


def _normalised_json(folder: Path) -> dict[str, Any]:
    meta = json.loads((folder / "artifact.json").read_text())
    for key in VOLATILE:
        meta.pop(key, None)
    for key in VOLATILE_SETTINGS:
        meta.get("settings", {}).pop(key, None)
    return meta


def _json_diff(a: Any, b: Any, where: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{where}.{k}: only in reference" for k in sorted(set(a) - set(b))]
        out += [f"{where}.{k}: only in new" for k in sorted(set(b) - set(a))]
        for key in sorted(set(a) & set(b)):
            out += _json_diff(a[key], b[key], f"{where}.{key}")
        return out
    return [] if a == b and type(a) is type(b) else [f"{where}: {a!r} != {b!r}"]


def _raw(tensor: torch.Tensor) -> bytes:
    return tensor.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()


def compare(reference: Path, new: Path) -> list[str]:
    """Differences between two artifact folders (empty: identical)."""
    problems: list[str] = []
    ta, tb = load_file(str(reference / "tensors.safetensors")), load_file(str(new / "tensors.safetensors"))
    problems += [f"tensor {k}: only in reference" for k in sorted(set(ta) - set(tb))]
    problems += [f"tensor {k}: only in new" for k in sorted(set(tb) - set(ta))]
    for key in sorted(set(ta) & set(tb)):
        a, b = ta[key], tb[key]
        if a.dtype != b.dtype or a.shape != b.shape:
            problems.append(f"tensor {key}: {a.dtype}{tuple(a.shape)} != {b.dtype}{tuple(b.shape)}")
        elif _raw(a) != _raw(b):
            diff = (a.double() - b.double()).abs().max().item()
            problems.append(f"tensor {key}: values differ (max |diff| {diff:.3g})")
    problems += _json_diff(_normalised_json(reference), _normalised_json(new), "artifact.json")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", type=Path, help="write the reference artifacts here")
    group.add_argument("--reference", type=Path, help="compare new artifacts with the ones here")
    parser.add_argument("--out", type=Path, default=Path("/tmp/artifact_identity_new"),
                        help="where the new artifacts go (with --reference)")
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    args = parser.parse_args(argv)
    if args.write is not None:
        run_cases(args.write, args.cases)
        return 0
    run_cases(args.out, args.cases)
    failed = 0
    for name in args.cases:
        problems = compare(args.reference / name, args.out / name)
        print(f"{'PASS' if not problems else 'FAIL'} {name}" + "".join(f"\n    {p}" for p in problems[:20]))
        failed += bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
