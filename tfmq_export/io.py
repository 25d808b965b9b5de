"""Files and provenance: atomic writes, hashes, the machine a measurement ran on.

Every output of tfmq-export is written through ``atomic_write`` (temp file beside the target,
then ``os.replace``) or built in a ``staged_dir`` and moved with ``commit_staged``, so an
interrupted command never leaves a half-written artifact, graph or engine.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tfmq_export.errors import TfmqError

__all__ = [
    "atomic_write",
    "atomic_write_text",
    "check_writable",
    "commit_staged",
    "machine_info",
    "read_json_object",
    "replace_folder",
    "sha256_file",
    "staged_dir",
    "utc_now",
]


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` on a temp file beside ``path``, then rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_writable(path: str | os.PathLike[str], option: str, *, folder: bool = False) -> None:
    """Refuse an output path that cannot be written, before any work starts; creates nothing.

    ``folder``: the output is a folder (an existing file there is refused), else a file (an
    existing folder is refused). The nearest existing folder on the way is probed with a temp
    file, which also catches read-only file systems where permission bits say nothing (root).
    """
    out = Path(path)
    if out.exists() and folder != out.is_dir():
        raise TfmqError(f"{option} {out} is {'a file' if folder else 'a folder'}; expected a "
                        f"{'folder' if folder else 'file'} path")
    probe_dir = out if out.is_dir() else out.parent
    while not probe_dir.exists():
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise TfmqError(f"{option} {out}: {probe_dir} is a file, not a folder")
    try:
        fd, tmp = tempfile.mkstemp(dir=probe_dir, prefix=".tfmq-write-check.")
    except OSError as exc:
        raise TfmqError(f"{option} {out} is not writable ({probe_dir}: {exc.strerror or exc})") from exc
    os.close(fd)
    os.unlink(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    """Write text to ``path`` via a temp file in the same folder and a rename."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, streamed (engines and ONNX files can be gigabytes)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _cpu_flags() -> set[str]:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def machine_info() -> dict[str, Any]:
    """What a CPU timing depends on: CPU model, core count, the int8/bf16 ISA extensions."""
    flags = _cpu_flags()
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "avx512_vnni": "avx512_vnni" in flags,
        "avx_vnni": "avx_vnni" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "amx": "amx_tile" in flags,
    }


def utc_now() -> str:
    """Build time for manifests (UTC, seconds)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@contextlib.contextmanager
def staged_dir(out_path: str | os.PathLike[str]) -> Iterator[Path]:
    """A private folder beside ``out_path`` to build into; removed afterwards, whatever happens.

    Builders write every output there under its final name (so references between files, like
    ONNX external data or OpenVINO's .bin, stay valid) and call ``commit_staged`` when all is
    written: a failed build leaves nothing at the destination.
    """
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def commit_staged(
    stage: Path, out_dir: Path, names: Sequence[str], manifest: dict[str, Any], manifest_name: str
) -> None:
    """Move the staged files into ``out_dir`` (``os.replace``, atomic per file), manifest last.

    The manifest is written last so that its presence means the engine beside it is complete.
    """
    (stage / manifest_name).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    for name in [*names, manifest_name]:
        os.replace(stage / name, out_dir / name)


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file that must hold an object (configs, manifests); one line if it does not."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TfmqError(f"cannot read {path}: {exc}") from exc
    if not isinstance(value, dict):
        raise TfmqError(f"{path} must hold a JSON object, not {type(value).__name__}")
    return value


def replace_folder(folder: Path, out: Path) -> None:
    """Put the complete ``folder`` at ``out``, replacing an earlier one there (renames, no copies)."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
        os.replace(out, old / "previous")
    os.replace(folder, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
