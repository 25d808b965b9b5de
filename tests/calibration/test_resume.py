"""Checkpoints: an interrupted calibration resumes from its last finished block and writes the same
artifact, bit for bit, as an uninterrupted run with the same seed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.calibration.test_adaround import micro_model
from tfmq_export.artifact import JSON_NAME, TENSORS_NAME
from tfmq_export.calibration import reconstruction
from tfmq_export.calibration.pipeline import calibrate
from tfmq_export.calibration.resume import CHECKPOINT_JSON, Checkpoint
from tfmq_export.config import CalibrationSettings

REPO = Path(__file__).resolve().parents[2]

#: Artifact metadata that legitimately differs between two runs.
VOLATILE = ("created", "timings")


#: one intra-op thread for every test here (fixture in tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread")


def _settings(method: str) -> CalibrationSettings:
    return CalibrationSettings(method=method, wbits=4, abits=8, steps=3, num_samples=4, batch_size=16, iters=12,
                               seed=7, temporal_table="quantized", extra={"act_iters": 4})


def _assert_same_artifact(a: Path, b: Path) -> None:
    ta, tb = load_file(str(a / TENSORS_NAME)), load_file(str(b / TENSORS_NAME))
    assert ta.keys() == tb.keys()
    for key in ta:
        assert ta[key].dtype == tb[key].dtype and torch.equal(ta[key], tb[key]), key
    assert (a / TENSORS_NAME).read_bytes() == (b / TENSORS_NAME).read_bytes()
    ja, jb = json.loads((a / JSON_NAME).read_text()), json.loads((b / JSON_NAME).read_text())
    for key in VOLATILE:
        ja.pop(key), jb.pop(key)
    assert ja == jb


def test_checkpoint_units_round_trip_and_other_settings_start_over(tmp_path):
    ckpt = Checkpoint(tmp_path, "abc")
    ckpt.save("weights:a", {"a.weight_int": torch.tensor([1, -2], dtype=torch.int8)}, {"seed": 1})
    assert not list(tmp_path.glob("**/*.tmp"))  # atomic writes leave no temp files
    again = Checkpoint(tmp_path, "abc")
    assert again.done("weights:a") and not again.done("weights:b")
    assert torch.equal(again.load("weights:a")["a.weight_int"], torch.tensor([1, -2], dtype=torch.int8))
    assert again.info("weights:a") == {"seed": 1}
    other = Checkpoint(tmp_path, "different settings")
    assert not other.done("weights:a") and not (tmp_path / "units").exists()
    (tmp_path / CHECKPOINT_JSON).write_text("{not json")
    assert Checkpoint(tmp_path, "abc").resumed_units == 0
    memory_only = Checkpoint(None, "abc")
    memory_only.save("x", {}, {})
    assert memory_only.done("x")


@pytest.mark.parametrize("method", ["tfmq", "qdiff"])
def test_interrupted_run_resumes_to_the_same_artifact(monkeypatch, tmp_path, method):
    model = micro_model()
    settings = _settings(method)
    calls: list[str] = []
    original_block = reconstruction.reconstruct_block

    def counting_block(sim, fp_ref, block, *args, **kwargs):
        calls.append(block.name)
        return original_block(sim, fp_ref, block, *args, **kwargs)

    monkeypatch.setattr(reconstruction, "reconstruct_block", counting_block)
    calibrate(model, settings, tmp_path / "whole", progress=False)
    learned_whole = len(calls)
    assert not (tmp_path / "whole" / ".work").exists()  # checkpoints are removed after success

    # interrupt after a few finished units (for qdiff inside its activation-scale stage)
    stop_after = 3 if method == "tfmq" else learned_whole - 2
    saved: list[str] = []
    original_save = Checkpoint.save

    def failing_save(self, unit, tensors, info):
        original_save(self, unit, tensors, info)
        saved.append(unit)
        if len(saved) == stop_after:
            raise KeyboardInterrupt("simulated interruption")

    monkeypatch.setattr(Checkpoint, "save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        calibrate(model, settings, tmp_path / "resumed", progress=False)
    assert not (tmp_path / "resumed" / JSON_NAME).exists()
    monkeypatch.setattr(Checkpoint, "save", original_save)
    calls.clear()
    calibrate(model, settings, tmp_path / "resumed", progress=False)
    assert 0 < len(calls) < learned_whole  # finished blocks were replayed, not learned again
    _assert_same_artifact(tmp_path / "whole", tmp_path / "resumed")


_CHILD = """
import sys, torch
torch.set_num_threads(1)
sys.path.insert(0, {repo!r})
from tests.calibration.test_adaround import micro_model
from tests.calibration.test_resume import _settings
from tfmq_export.calibration.pipeline import calibrate
settings = _settings("tfmq")
settings.iters = 150  # slow enough to be killed mid-way
calibrate(micro_model(), settings, {out!r}, progress=False)
"""


def test_killed_process_resumes_to_the_same_artifact(tmp_path):
    """SIGKILL a calibration once its checkpoint lists two units; the rerun finishes the job and
    matches an uninterrupted run."""
    out = tmp_path / "killed"
    state = out / ".work" / CHECKPOINT_JSON
    child = subprocess.Popen([sys.executable, "-c", _CHILD.format(repo=str(REPO), out=str(out))], cwd=REPO,
                             env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        units = 0
        while time.monotonic() < deadline and child.poll() is None:
            if state.is_file():
                units = len(json.loads(state.read_text())["units"])
                if units >= 2:
                    break
            time.sleep(0.05)
        assert child.poll() is None, child.stderr.read().decode()[-2000:]
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert units >= 2 and not (out / JSON_NAME).exists()
    settings = _settings("tfmq")
    settings.iters = 150
    model = micro_model()
    calibrate(model, settings, out, progress=False)
    calibrate(model, settings, tmp_path / "whole", progress=False)
    _assert_same_artifact(tmp_path / "whole", out)
