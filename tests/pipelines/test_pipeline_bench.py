"""bench PIPELINE_DIR --onnx-pipeline OTHER: FP32 and W8A8 pipelines side by side, stage by stage."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from tests.test_bad_input import _refused
from tfmq_export.cli import cli

CONTRACT = ("backend", "precision", "batch", "latency_ms_median", "latency_ms_p90", "images_per_s", "peak_mem_mb",
            "model_bytes")


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_pipeline_bench_rows(sd_exported_pair, tmp_path):
    """Every contract field, positive stage times; memory probes are tested below (a process each)."""
    try:
        import openvino  # noqa: F401
        backends = "onnxruntime,openvino"
    except ImportError:
        backends = "onnxruntime"
    out = tmp_path / "bench.json"
    result = _run("bench", sd_exported_pair["fp32"], "--onnx-pipeline", sd_exported_pair["w8a8"], "--backends",
                  backends, "--timed-calls", "2", "--warmup", "1", "--threads", "1", "--json", out, "--quiet",
                  "--no-memory", "--prompt", "a handwritten digit seven")
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    rows = {r["label"]: r for r in data["runs"]}
    expected = {"onnxruntime:fp32", "onnxruntime:w8a8"}
    if "openvino" in backends:
        expected |= {"openvino:fp32", "openvino:w8a8", "openvino:ov-default", "openvino:w8a8+ov-default",
                     "openvino:w8a8+ov-default-stages"}
    assert set(rows) == expected
    for row in rows.values():
        assert all(row[k] is not None for k in CONTRACT if k != "peak_mem_mb"), row
        stages = row["stages"]
        assert set(stages) == {"text_encoder", "unet", "unet_total", "vae_decoder", "pipeline"}
        assert all(v > 0 for v in stages.values()), stages
        assert stages["unet_total"] >= 3 * stages["unet"] * 0.5  # 3 steps
        assert stages["pipeline"] >= stages["text_encoder"] + stages["unet_total"] + stages["vae_decoder"]
        assert row["latency_ms_median"] == pytest.approx(stages["pipeline"], abs=1e-2)
        assert row["images_per_s"] == pytest.approx(1000.0 / row["latency_ms_median"])
        assert row["model_bytes"] > 0 and row["unet_batch"] == 2
    assert rows["onnxruntime:fp32"]["images_rel_error_vs_reference"] == 0.0
    assert 0 < rows["onnxruntime:w8a8"]["images_rel_error_vs_reference"] < 0.2
    assert rows["onnxruntime:w8a8"]["model_bytes"] < rows["onnxruntime:fp32"]["model_bytes"]
    assert rows["onnxruntime:w8a8"]["sample_default"] and rows["onnxruntime:w8a8"]["stage_precisions"] == {
        "text_encoder": "fp32", "unet": "w8a8", "vae_decoder": "fp32"}
    if "openvino" in backends:
        assert rows["openvino:ov-default"]["precision"] == "ov-default"
        assert rows["openvino:w8a8+ov-default"]["precision"] == "w8a8"
        # sample DIR --backend openvino's default: the UNet as calibrated, the float stages at OpenVINO's default
        default = rows["openvino:w8a8+ov-default-stages"]
        assert default["sample_default"] and default["stage_precisions"] == {
            "text_encoder": "ov-default", "unet": "w8a8", "vae_decoder": "ov-default"}
        assert rows["openvino:w8a8+ov-default"]["stage_precisions"]["unet"] == "w8a8+ov-default"
        assert not any(rows[k]["sample_default"] for k in ("openvino:fp32", "openvino:w8a8", "openvino:ov-default"))
    assert len([line for line in result.output.splitlines() if "Pipeline" in line]) == len(expected)
    # the verdict comes first and is computed from the rows: every quantized row against each FP row
    assert result.output.splitlines()[0].startswith("Verdict: ")
    ort = next(v for v in data["verdict"] if v.startswith("onnxruntime:w8a8:"))
    whole = rows["onnxruntime:fp32"]["stages"]["pipeline"] / rows["onnxruntime:w8a8"]["stages"]["pipeline"]
    assert f"{whole:.2f}x" in ort
    assert len(data["verdict"]) == len([r for r in rows.values() if r["precision"] not in ("fp32", "ov-default")])
    assert data["provenance"]["command"].startswith("tfmq-export bench ") and data["provenance"]["versions"]["torch"]
    assert any(line.startswith("- Machine: ") for line in result.output.splitlines())


def test_pipeline_verdict_says_slower_with_the_inverse_factor():
    from tfmq_export.workflows.bench.pipeline_report import pipeline_verdict

    def row(label, precision, pipeline_ms, unet_ms):
        return {"label": label, "backend": "onnxruntime", "precision": precision,
                "stages": {"pipeline": pipeline_ms, "unet": unet_ms}, "images_rel_error_vs_reference": 0.01}

    lines = pipeline_verdict([row("fp", "fp32", 100.0, 10.0), row("q", "w8a8", 200.0, 5.0)])
    assert lines == ["q: vs fp: whole pipeline 0.50x, i.e. 2.0x slower, UNet call 2.00x faster; "
                     "images rel. error 1.00e-02 vs the reference"]
    assert "no full-precision pipeline" in pipeline_verdict([row("q", "w8a8", 1.0, 1.0)])[0]


def test_pipeline_bench_peak_memory(sd_exported_pair):
    from tfmq_export.workflows.bench.pipeline import bench_pipelines_to_json

    data = bench_pipelines_to_json([sd_exported_pair["w8a8"]], "onnxruntime", iters=1, warmup=0, threads=1,
                                   prompt="a handwritten digit one", progress=False)
    (row,) = data["runs"]
    assert row["precision"] == "w8a8" and 100 < row["peak_mem_mb"] < 4000, row["peak_mem_mb"]


def test_pipeline_bench_bad_input(sd_exported_pair, tmp_path):
    import shutil

    fp32, out = sd_exported_pair["fp32"], tmp_path / "bench.json"
    _refused(_run("bench", fp32, "--backends", "torch", "--json", out), "--backends torch", left=(out,))
    _refused(_run("bench", fp32, "--onnx", fp32 / "unet.onnx", "--json", out), "--onnx-pipeline", left=(out,))
    broken = tmp_path / "broken"
    shutil.copytree(fp32, broken)
    (broken / "text_encoder.onnx").unlink()
    _refused(_run("bench", fp32, "--onnx-pipeline", broken, "--json", out), "missing its text_encoder stage",
             left=(out,))
    _refused(_run("bench", fp32, "--onnx-pipeline", tmp_path / "nowhere", "--json", out), "pipeline.json",
             left=(out,))


def test_sd15_arch_pipeline_shapes():
    """The sd15-arch pipeline's text encoder and VAE have SD-1.5's sizes (built on the meta device)."""
    import torch
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    from tfmq_export.models.sd15 import SD15_CLIP_CONFIG, SD15_VAE_CONFIG, small_clip_tokenizer

    with torch.device("meta"):
        clip = CLIPTextModel(CLIPTextConfig(**SD15_CLIP_CONFIG))
        vae = AutoencoderKL(**SD15_VAE_CONFIG)
    assert sum(p.numel() for p in clip.parameters()) == 123_060_480
    assert sum(p.numel() for p in vae.parameters()) == 83_653_863
    tokenizer = small_clip_tokenizer()
    ids = tokenizer(["a photograph of an astronaut riding a horse"], padding="max_length", max_length=77).input_ids[0]
    assert len(ids) == 77 and max(ids) < SD15_CLIP_CONFIG["vocab_size"] and len(set(ids)) == 9  # 7 words, bos, eos
