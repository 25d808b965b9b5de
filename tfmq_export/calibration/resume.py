"""Checkpoints of a long calibration, so a killed run resumes from its last finished block.

Reconstruction spends minutes to days block by block (the authors: 20,000 iterations per block).
After every finished unit (a block of a stage, or TIAR) the tensors that unit changed are written
to ``work_dir/units/NNNN.safetensors`` and its name is appended to ``work_dir/checkpoint.json``,
each with temp file + rename, the JSON last: a unit listed in the JSON is complete on disk.

A rerun with the same fingerprint (settings, model weights, calibration data, method) replays the
finished units instead of learning them again. Every unit draws its minibatches from a generator
seeded by (seed, stage, block), recorded in the JSON, so there is no RNG state to carry from one
unit to the next: a resumed run computes bit for bit what an uninterrupted one computes. A rerun
with a different fingerprint starts over and says so.

Under several ranks (``tfmq_export.distributed``) rank 0 reads and writes the checkpoint and the
others wait for each write; the fingerprint does not depend on the number of ranks (the data is
the same, ``calibration.parallel``), so a run resumes with the same or another number of ranks.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from tfmq_export.distributed import broadcast_object, is_writer, run_on_writer
from tfmq_export.errors import TfmqError
from tfmq_export.io import atomic_write

CHECKPOINT_JSON = "checkpoint.json"
UNITS_DIR = "units"
CHECKPOINT_FORMAT = 1

logger = logging.getLogger(__name__)


def unit_seed(seed: int, stage: str, name: str) -> int:
    """The minibatch seed of one unit: a function of the run's seed and the unit alone."""
    digest = hashlib.sha256(f"{seed}:{stage}:{name}".encode()).digest()
    return int.from_bytes(digest[:7], "little")


def run_fingerprint(method: str, settings: Any, model_fingerprint: str, data_tensors: list[torch.Tensor]) -> str:
    """SHA-256 over what decides a calibration result; a checkpoint is only reused when it matches."""
    digest = hashlib.sha256()
    settings_dict = asdict(settings) if is_dataclass(settings) else dict(settings)
    digest.update(json.dumps({"method": method, "settings": settings_dict, "model": model_fingerprint},
                             sort_keys=True, default=str).encode())
    for tensor in data_tensors:
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


class Checkpoint:
    """Finished units of one calibration run in ``work_dir`` (``None``: keep nothing on disk)."""

    def __init__(self, work_dir: Path | None, fingerprint: str) -> None:
        self.work_dir = None if work_dir is None else Path(work_dir)
        self.fingerprint = fingerprint
        self.units: list[dict[str, Any]] = []
        if self.work_dir is None:
            return
        state = broadcast_object(self._read_state() if is_writer() else None)  # ranks: rank 0's view
        if state is not None and state.get("fingerprint") == fingerprint:
            self.units = list(state["units"])
            if self.units:
                logger.info("resuming calibration from %s: %d units finished", self.work_dir, len(self.units))
        else:
            if state is not None:
                logger.warning("%s holds a checkpoint of other settings; starting over", self.work_dir)
            self.clear()

    def _read_state(self) -> dict[str, Any] | None:
        assert self.work_dir is not None
        path = self.work_dir / CHECKPOINT_JSON
        if not path.is_file():
            return None
        try:
            state = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        if state.get("format") != CHECKPOINT_FORMAT or not isinstance(state.get("units"), list):
            return None
        return state

    @property
    def resumed_units(self) -> int:
        return len(self.units)

    def done(self, unit: str) -> bool:
        return any(u["unit"] == unit for u in self.units)

    def info(self, unit: str) -> dict[str, Any]:
        return next(u for u in self.units if u["unit"] == unit)["info"]

    def load(self, unit: str) -> dict[str, torch.Tensor]:
        """The tensors a finished unit wrote."""
        entry = next((u for u in self.units if u["unit"] == unit), None)
        if entry is None or self.work_dir is None:
            raise TfmqError(f"checkpoint has no finished unit {unit!r}")
        path = self.work_dir / UNITS_DIR / entry["file"]
        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own types for truncated files
            raise TfmqError(
                f"checkpoint file {path} is unreadable ({exc}); delete {self.work_dir} to start over"
            ) from exc

    def save(self, unit: str, tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
        """Record a finished unit: tensors first, then the JSON that lists it (both atomic)."""
        if self.done(unit):
            raise TfmqError(f"unit {unit!r} is already checkpointed")
        entry = {"unit": unit, "file": f"{len(self.units):04d}.safetensors", "info": info}
        self.units.append(entry)
        if self.work_dir is not None:  # several ranks: rank 0 writes, the others wait for it
            run_on_writer(lambda: self._write(entry, tensors))

    def _write(self, entry: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        assert self.work_dir is not None
        units_dir = self.work_dir / UNITS_DIR
        units_dir.mkdir(parents=True, exist_ok=True)
        payload = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        atomic_write(units_dir / entry["file"], lambda tmp: save_file(payload, tmp))
        state = {"format": CHECKPOINT_FORMAT, "fingerprint": self.fingerprint, "units": self.units}
        text = json.dumps(state, indent=1, sort_keys=True)
        atomic_write(self.work_dir / CHECKPOINT_JSON, lambda tmp: Path(tmp).write_text(text))

    def clear(self) -> None:
        """Forget every unit (on disk too)."""
        self.units = []
        if self.work_dir is None:
            return
        run_on_writer(self._delete)

    def _delete(self) -> None:
        assert self.work_dir is not None
        (self.work_dir / CHECKPOINT_JSON).unlink(missing_ok=True)
        shutil.rmtree(self.work_dir / UNITS_DIR, ignore_errors=True)
        self.work_dir.mkdir(parents=True, exist_ok=True)

    def remove(self) -> None:
        """Delete this checkpoint after a successful run (and the work folder if nothing else is in it)."""
        self.clear()
        if self.work_dir is not None and is_writer():
            with contextlib.suppress(OSError):
                self.work_dir.rmdir()


__all__ = ["Checkpoint", "run_fingerprint", "unit_seed"]
