"""``tfmq-export bench`` on a tiny random UNet: CONTRACT JSON, precision labels, relative errors,
the NNCF peer, and one-line errors on bad input."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from tfmq_export.cli import cli

CONTRACT_FIELDS = ("backend", "precision", "batch", "latency_ms_median", "latency_ms_p90", "images_per_s",
                   "peak_mem_mb", "model_bytes")


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output
    return lines[0]


@pytest.fixture(scope="module")
def graphs(tmp_path_factory, loaded_unet2d):
    """FP32 and minmax-W8A8 exports of the tiny UNet2DModel (onnxruntime target), 3 DDIM steps."""
    from tfmq_export.calibration.pipeline import calibrate
    from tfmq_export.config import CalibrationSettings
    from tfmq_export.export.onnx_export import export_onnx

    out = tmp_path_factory.mktemp("bench")
    paths = {}
    for name, bits in (("fp32", 16), ("w8a8", 8)):
        settings = CalibrationSettings(method="minmax", wbits=bits, abits=bits, steps=3, num_samples=2,
                                       weight_init="max")
        artifact = calibrate(loaded_unet2d, settings, progress=False)
        paths[name] = export_onnx(loaded_unet2d, artifact, out / f"{name}.onnx", "onnxruntime")
    return paths


@pytest.fixture(scope="module")
def bench_json(graphs, unet2d_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("bench_json") / "bench.json"
    result = _run("bench", unet2d_dir, "--onnx", graphs["fp32"], "--onnx", graphs["w8a8"],
                  "--backends", "torch,onnxruntime,openvino", "--timed-calls", "3", "--warmup", "1", "--threads", "1",
                  "--sampling-runs", "1", "--json", path, "--quiet")
    assert result.exit_code == 0, result.output
    return json.loads(path.read_text())


def test_every_backend_has_every_contract_field(bench_json):
    runs = bench_json["runs"]
    assert {(r["backend"], r["precision"]) for r in runs} == {
        ("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "w8a8"), ("openvino", "fp32"),
        ("openvino", "w8a8")}
    for row in runs:
        for key in CONTRACT_FIELDS:
            assert key in row, (row["label"], key)
        assert row["batch"] == 1
        assert 0 < row["latency_ms_median"] <= row["latency_ms_p90"]
        assert row["images_per_s"] > 0 and row["images_per_s_basis"].startswith("measured")
        assert row["sampling_steps"] == 3 and len(row["sampling_s_all"]) == 1
        assert row["peak_mem_mb"] > 50  # a Python process with torch loaded
        assert row["model_bytes"] > 0
    assert {"cpu", "cores", "threads"} <= set(bench_json["machine"])
    assert bench_json["machine"]["threads"] == 1


@pytest.mark.int8_exact
def test_relative_error_is_zero_for_the_reference_and_small_for_w8a8(bench_json):
    by_label = {r["label"]: r for r in bench_json["runs"]}
    assert bench_json["reference"] == "torch:fp32"
    assert by_label["torch:fp32"]["rel_error_vs_reference"] == 0.0
    for label in ("onnxruntime:fp32", "openvino:fp32"):
        assert by_label[label]["rel_error_vs_reference"] < 1e-4, label
    for label in ("onnxruntime:w8a8", "openvino:w8a8"):
        assert 0 < by_label[label]["rel_error_vs_reference"] < 0.2, label


def test_fp32_weights_are_about_four_times_the_w8a8_ones(bench_json):
    size = {r["label"]: r["model_bytes"] for r in bench_json["runs"]}
    assert size["onnxruntime:w8a8"] < 0.5 * size["onnxruntime:fp32"]


def test_nncf_peer_and_explicit_variant(graphs, unet2d_dir, tmp_path):
    """--nncf builds NNCF's INT8 IR from the FP32 graph (then reuses it); --variant times one file."""
    from tfmq_export.backends.openvino.nncf import ensure_nncf_engine
    from tfmq_export.workflows.bench import bench_to_json

    xml = tmp_path / "peer.xml"
    kwargs = {"variant_specs": [f"openvino={graphs['w8a8']}"], "nncf": True, "nncf_engine": xml,
              "nncf_samples": 1, "progress": False}
    result = bench_to_json(str(unet2d_dir), [graphs["fp32"]], "onnxruntime", [1, 2], 2, 1, None, False, **kwargs)
    labels = [(r["label"], r["batch"]) for r in result["runs"]]
    expected = ("onnxruntime:fp32", "openvino:w8a8", "openvino:nncf-int8")
    assert labels == [(label, b) for b in (1, 2) for label in expected]
    nncf_row = next(r for r in result["runs"] if r["precision"] == "nncf-int8")
    assert nncf_row["backend"] == "openvino" and nncf_row["images_per_s_basis"].startswith("derived")
    assert 0 < nncf_row["rel_error_vs_reference"] < 0.5
    assert xml.is_file() and xml.with_suffix(".nncf.json").is_file()
    built = xml.stat().st_mtime_ns
    shape = result["sample_shape"]
    assert ensure_nncf_engine(graphs["fp32"], xml, 1, shape[1], None) == xml
    assert xml.stat().st_mtime_ns == built  # same recipe: reused


def test_tensorrt_is_skipped_with_a_reason_without_a_gpu(graphs, unet2d_dir):
    from tfmq_export.backends.tensorrt.availability import check_tensorrt_available
    from tfmq_export.workflows.bench import bench_to_json

    if check_tensorrt_available() is None:
        pytest.skip("TensorRT and a GPU are present")
    result = bench_to_json(str(unet2d_dir), [graphs["w8a8"]], "onnxruntime,tensorrt", [1], 1, 1, None, False,
                           progress=False)
    assert [r["backend"] for r in result["runs"]] == ["onnxruntime"]
    assert result["skipped"] and result["skipped"][0]["backend"] == "tensorrt" and result["skipped"][0]["reason"]


def test_missing_onnx_exits_1_with_one_line(unet2d_dir, tmp_path):
    line = _one_line_error(_run("bench", unet2d_dir, "--onnx", tmp_path / "nope.onnx", "--no-memory"))
    assert "nope.onnx" in line


def test_unknown_backend_exits_1_with_one_line(unet2d_dir, graphs):
    line = _one_line_error(_run("bench", unet2d_dir, "--onnx", graphs["fp32"], "--backends", "torch,tpu",
                                "--no-memory"))
    assert "tpu" in line


@pytest.mark.parametrize("spec", ["openvino", "cuda=x.onnx", "tensorrt=x.onnx"])
def test_bad_variant_exits_1_with_one_line(unet2d_dir, spec):
    assert "--variant" in _one_line_error(_run("bench", unet2d_dir, "--variant", spec, "--no-memory"))


def test_graph_without_tfmq_metadata_is_refused(unet2d_dir, tmp_path, graphs):
    import onnx

    model = onnx.load(str(graphs["fp32"]))
    del model.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(model, str(bare))
    assert "tfmq" in _one_line_error(_run("bench", unet2d_dir, "--onnx", bare, "--no-memory"))


def test_torch_alone_uses_a_25_step_table(unet2d_dir, tmp_path):
    path = tmp_path / "torch.json"
    result = _run("bench", unet2d_dir, "--backends", "torch", "--timed-calls", "1", "--sampling-runs", "1",
                  "--no-memory", "--json", path, "--quiet")
    assert result.exit_code == 0, result.output
    (row,) = json.loads(path.read_text())["runs"]
    assert row["sampling_steps"] == 25 and row["rel_error_vs_reference"] == 0.0 and row["peak_mem_mb"] is None


def test_lockstep_sampling_is_ddim_sample(graphs):
    """The bench's step-by-step sampling computes what the shared sampler computes."""
    import numpy as np
    import torch

    from tfmq_export.backends.base import runner_denoiser
    from tfmq_export.backends.onnxruntime.runner import OnnxRuntimeRunner
    from tfmq_export.export.onnx_export import describe_onnx
    from tfmq_export.sampling import ddim_sample, initial_noise
    from tfmq_export.workflows.bench.timing import sample_lockstep

    info = describe_onnx(graphs["fp32"])
    latents = initial_noise(2, info.sample_shape, 0)
    with OnnxRuntimeRunner(graphs["fp32"], "fp32", threads=1) as runner:
        expected = ddim_sample(runner_denoiser(runner), info.scheduler_config, 3, latents).numpy()
        ((seconds, got),) = sample_lockstep([runner], info.scheduler_config, 3, latents.numpy(), None, 0.0)
    assert seconds > 0
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert torch.isfinite(torch.from_numpy(got)).all()


def test_lockstep_of_two_runners_is_each_one_alone(graphs):
    """Fanning one stacked DDIM run out to several runners gives each the x_0 it gives alone."""
    import numpy as np

    from tfmq_export.backends.base import runner_denoiser
    from tfmq_export.backends.onnxruntime.runner import OnnxRuntimeRunner
    from tfmq_export.export.onnx_export import describe_onnx
    from tfmq_export.sampling import ddim_sample, initial_noise
    from tfmq_export.workflows.bench.timing import sample_lockstep

    info = describe_onnx(graphs["fp32"])
    latents = initial_noise(2, info.sample_shape, 1)
    with (OnnxRuntimeRunner(graphs["fp32"], "fp32", threads=1) as fp32,
          OnnxRuntimeRunner(graphs["w8a8"], "w8a8", threads=1) as w8a8):
        alone = [ddim_sample(runner_denoiser(r), info.scheduler_config, 3, latents).numpy() for r in (fp32, w8a8)]
        both = sample_lockstep([fp32, w8a8], info.scheduler_config, 3, latents.numpy(), None, 1.0)
    for (seconds, got), expected in zip(both, alone):
        assert seconds > 0
        np.testing.assert_array_equal(got, expected)
    assert not np.array_equal(alone[0], alone[1])  # the two runners really differ


def test_tensorrt_without_tensorrt_says_so(unet2d_dir):
    """``--backends tensorrt`` alone on a machine without TensorRT: its reason, not "nothing to time"."""
    from tfmq_export.backends.tensorrt.availability import check_tensorrt_available

    reason = check_tensorrt_available()
    if reason is None:
        pytest.skip("TensorRT and a GPU are present")
    line = _one_line_error(_run("bench", unet2d_dir, "--backends", "tensorrt", "--no-memory"))
    assert reason.split(" (")[0] in line and "nothing to time" not in line


def test_quiet_rounds_drop_rounds_that_slow_every_variant():
    import numpy as np

    from tfmq_export.workflows.bench.timing import quiet_rounds

    base = np.array([100.0, 200.0, 50.0])
    times = np.stack([base, base * 1.02, base * 2.5, base * 1.01, base * [1.0, 1.0, 3.0]])
    # round 2: another job slowed everything; round 4: one variant's own jitter, kept
    assert quiet_rounds(times).tolist() == [True, True, False, True, True]


def test_bench_json_has_a_verdict_computed_from_its_rows_and_the_provenance(bench_json):
    ort = {r["precision"]: r["latency_ms_median"] for r in bench_json["runs"] if r["backend"] == "onnxruntime"}
    ratio = ort["fp32"] / ort["w8a8"]
    line = next(v for v in bench_json["verdict"] if v.startswith("W8A8 on onnxruntime vs FP32: "))
    assert (f"{ratio:.2f}x faster at batch 1" if ratio >= 1 else f"{1 / ratio:.1f}x slower at batch 1") in line
    assert "UNet output rel. error" in line and "(torch:fp32)" in line
    prov = bench_json["provenance"]
    assert prov["command"].startswith("tfmq-export bench ") and "--timed-calls 3" in prov["command"]
    assert prov["target"] == "onnxruntime" and prov["load_avg_start"] and prov["load_avg_end"]
    assert {"tfmq-export", "torch", "onnxruntime", "openvino", "diffusers"} <= set(prov["versions"])
    assert prov["recipes"]  # not recorded in the graphs: said so


def test_bench_verdict_and_terminal_report_are_pure_functions_of_the_result():
    from tfmq_export.workflows.bench.report import bench_verdict, report_lines

    def row(backend, precision, batch, ms, err=None):
        return {"backend": backend, "precision": precision, "batch": batch, "latency_ms_median": ms,
                "latency_ms_p90": ms, "images_per_s": 1.0, "images_per_s_basis": "derived: x", "peak_mem_mb": None,
                "model_bytes": 1, "label": f"{backend}:{precision}", "rel_error_vs_reference": err}

    result = {"reference": "torch:fp32", "runs": [
        row("onnxruntime", "fp32", 1, 2.9), row("onnxruntime", "w8a8", 1, 10.0, 0.01),
        row("tensorrt", "fp16", 1, 1.0), row("tensorrt", "fp32", 1, 2.0), row("tensorrt", "int8-fp16", 1, 0.5),
        row("openvino", "w8a8", 1, 1.0)]}
    verdict = bench_verdict(result)
    assert verdict[0] == ("W8A8 on onnxruntime vs FP32: 0.29x, i.e. 3.4x slower at batch 1; UNet output rel. error "
                          "1.00e-02 vs the reference (torch:fp32)")
    assert verdict[1].startswith("INT8-FP16 on tensorrt vs FP16: 2.00x faster at batch 1")  # FP16 is the baseline
    assert verdict[2].startswith("W8A8 on openvino: no FP16/FP32 row")
    lines = report_lines(result | {"provenance": {"command": "tfmq-export bench x", "recipes": ["r"]}})
    assert lines[0] == f"Verdict: {verdict[0]}" and "- Command: `tfmq-export bench x`" in lines
    assert bench_verdict({"runs": [row("torch", "fp32", 1, 1.0)]})[0].startswith("no quantized variant")
