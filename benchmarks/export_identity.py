"""Exported graphs before and after a refactor are the same graph: write references, then compare.

    python benchmarks/export_identity.py write /tmp/ref_onnx     # with the code before the change
    python benchmarks/export_identity.py check /tmp/ref_onnx     # with the code after it
    python benchmarks/export_identity.py graphsurgeon /tmp/ref_onnx   # why export.graph is not gs

``write`` calibrates the bundled digits model on tiny settings (minmax W8A8 / W4A8 / W4A16, qdiff
W8A8 with split skip inputs, tfmq W4A8 with per-step factors), keeps each artifact and exports it
for both targets. ``check`` exports the kept artifacts again (so a change elsewhere in calibration
cannot hide or fake a difference; ``--recalibrate`` also calibrates afresh and compares those) and
requires, per file: the same nodes in the same order (name, op type, domain, inputs, outputs,
attributes), the same initializers bit for bit, the same graph inputs/outputs, opsets and metadata.
Exit code 1 and one line per difference when anything differs.

``graphsurgeon`` measures, on the reference files, what an onnx-graphsurgeon pass would cost: the
time of ``gs.import_onnx`` (+ ``gs.export_onnx``) against building ``export.graph.GraphIndex``, and
what a round trip with no edit changes in the file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import onnx

#: name -> (method, wbits, abits, extra)
CASES: dict[str, tuple[str, int, int, dict | None]] = {
    "minmax-w8a8": ("minmax", 8, 8, None),
    "minmax-w4a8": ("minmax", 4, 8, None),
    "minmax-w4a16": ("minmax", 4, 16, None),
    "qdiff-w8a8-split": ("qdiff", 8, 8, {"act_iters": 2, "split_skip": True}),
    "tfmq-w4a8-factors": ("tfmq", 4, 8, {"step_factors": True, "tiar_iters": 2}),
}
TARGETS = ("tensorrt", "onnxruntime")


def _calibrate(model, case: str, out_dir: Path):
    """Calibrate one case, write the artifact and read it back (what ``export-onnx DIR`` exports:
    a loaded artifact lists its layers in the JSON's sorted order, an in-memory one does not)."""
    from tfmq_export.artifact import load_artifact, save_artifact
    from tfmq_export.calibration.pipeline import calibrate
    from tfmq_export.config import CalibrationSettings

    method, wbits, abits, extra = CASES[case]
    iters = 2 if method != "minmax" else 0
    settings = CalibrationSettings(method=method, wbits=wbits, abits=abits, steps=4, num_samples=8,
                                   batch_size=8, iters=iters, seed=0, extra=extra)
    save_artifact(calibrate(model, settings, progress=False), out_dir)
    return load_artifact(out_dir)


def _export(model, artifact, target: str, path: Path) -> None:
    from tfmq_export.export.onnx_export import export_onnx

    export_onnx(model, artifact, path, target)


def write(folder: Path) -> None:
    from tfmq_export.models.loading import load_model

    model = load_model("digits")
    for name in CASES:
        artifact = _calibrate(model, name, folder / "artifacts" / name)
        for target in TARGETS:
            _export(model, artifact, target, folder / f"{name}-{target}.onnx")
        print(f"wrote {name}")


def _node_key(node: onnx.NodeProto) -> tuple:
    attrs = tuple(sorted((a.name, a.SerializeToString(deterministic=True)) for a in node.attribute))
    return node.name, node.op_type, node.domain, tuple(node.input), tuple(node.output), attrs


def compare(ref: onnx.ModelProto, new: onnx.ModelProto) -> list[str]:
    """Every difference between two graphs that a runtime or a user could see, as lines."""
    diffs: list[str] = []
    ref_nodes, new_nodes = [_node_key(n) for n in ref.graph.node], [_node_key(n) for n in new.graph.node]
    if ref_nodes != new_nodes:
        first = next((i for i, (a, b) in enumerate(zip(ref_nodes, new_nodes)) if a != b), min(map(len, (ref_nodes,
                                                                                                        new_nodes))))
        diffs.append(f"nodes differ ({len(ref_nodes)} vs {len(new_nodes)}), first at index {first}")
    ref_inits = [(t.name, t.SerializeToString(deterministic=True)) for t in ref.graph.initializer]
    new_inits = [(t.name, t.SerializeToString(deterministic=True)) for t in new.graph.initializer]
    if ref_inits != new_inits:
        changed = sorted({n for n, _ in ref_inits} ^ {n for n, _ in new_inits}) or [
            a[0] for a, b in zip(ref_inits, new_inits) if a != b]
        diffs.append(f"initializers differ ({len(ref_inits)} vs {len(new_inits)}): {changed[:5]}")
    for part in ("input", "output"):
        if [v.SerializeToString() for v in getattr(ref.graph, part)] != [
                v.SerializeToString() for v in getattr(new.graph, part)]:
            diffs.append(f"graph {part}s differ")
    if [(o.domain, o.version) for o in ref.opset_import] != [(o.domain, o.version) for o in new.opset_import]:
        diffs.append("opset imports differ")
    ref_meta = {p.key: p.value for p in ref.metadata_props}
    new_meta = {p.key: p.value for p in new.metadata_props}
    for key in sorted(set(ref_meta) | set(new_meta)):
        if ref_meta.get(key) != new_meta.get(key):
            diffs.append(f"metadata {key}: {ref_meta.get(key)!r} -> {new_meta.get(key)!r}")
    if (ref.producer_name, ref.producer_version, ref.ir_version) != (
            new.producer_name, new.producer_version, new.ir_version):
        diffs.append("producer or IR version differs")
    return diffs


def check(folder: Path, recalibrate: bool) -> int:
    import tempfile

    from tfmq_export.artifact import load_artifact
    from tfmq_export.models.loading import load_model

    model = load_model("digits")
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name in CASES:
            sources = {"kept artifact": load_artifact(folder / "artifacts" / name)}
            if recalibrate:
                sources["fresh calibration"] = _calibrate(model, name, Path(tmp) / "artifacts" / name)
            for source, artifact in sources.items():
                for target in TARGETS:
                    path = Path(tmp) / f"{name}-{target}.onnx"
                    _export(model, artifact, target, path)
                    ref = onnx.load(str(folder / f"{name}-{target}.onnx"))
                    diffs = compare(ref, onnx.load(str(path)))
                    same_bytes = path.read_bytes() == (folder / f"{name}-{target}.onnx").read_bytes()
                    status = "identical bytes" if same_bytes else ("same graph" if not diffs else "DIFFERENT")
                    print(f"{name:20s} {target:12s} {source:18s} {len(ref.graph.node):4d} nodes  {status}")
                    for line in diffs:
                        print(f"    {line}")
                    failures += bool(diffs)
    return 1 if failures else 0


def _best_ms(fn, repeat: int = 5) -> float:
    import time

    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def graphsurgeon(folder: Path) -> int:
    import onnx_graphsurgeon as gs

    from tfmq_export.export.graph import GraphIndex

    for path in sorted(folder.glob("*.onnx")):
        model = onnx.load(str(path))
        index_ms = _best_ms(lambda m=model: GraphIndex(m))
        import_ms = _best_ms(lambda m=model: gs.import_onnx(m))
        graph = gs.import_onnx(model)
        export_ms = _best_ms(lambda g=graph: gs.export_onnx(g))
        back = gs.export_onnx(gs.import_onnx(model))
        names = [t.name for t in model.graph.initializer]
        moved = sum(a != b for a, b in zip(names, [t.name for t in back.graph.initializer]))
        print(f"{path.name:34s} {len(model.graph.node):5d} nodes  GraphIndex {index_ms:6.1f} ms  "
              f"gs import {import_ms:6.1f} ms + export {export_ms:6.1f} ms  round trip: {moved}/{len(names)} "
              f"initializers moved, {len(model.metadata_props)} -> {len(back.metadata_props)} metadata entries, "
              f"bytes {'identical' if back.SerializeToString() == model.SerializeToString() else 'differ'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("write", "check", "graphsurgeon"))
    parser.add_argument("folder", type=Path)
    parser.add_argument("--recalibrate", action="store_true", help="check: also calibrate afresh and compare")
    args = parser.parse_args(argv)
    if args.mode == "write":
        args.folder.mkdir(parents=True, exist_ok=True)
        write(args.folder)
        return 0
    if args.mode == "graphsurgeon":
        return graphsurgeon(args.folder)
    return check(args.folder, args.recalibrate)


if __name__ == "__main__":
    sys.exit(main())
