"""``--workers N``: run the same command in N processes through torch's elastic launcher.

``tfmq-export calibrate ... --workers 2`` is ``torchrun --standalone --nproc-per-node 2 -m
tfmq_export.cli calibrate ...`` without the ``--workers`` option: the command line is rebuilt from
the parsed options, and ``torch.distributed.launcher.api.elastic_launch`` (the engine behind
torchrun) starts the ranks on this machine with a c10d rendezvous on a free local port. Several
machines: run torchrun yourself (docs/SCALING.md).
"""

from __future__ import annotations

import logging
import os
import sys
import uuid

import click

from tfmq_export.errors import TfmqError

__all__ = ["command_line", "launch_workers"]


def command_line(ctx: click.Context, drop: tuple[str, ...] = ("workers",)) -> list[str]:
    """The arguments that reproduce ``ctx``'s command (its name first), less the ``drop`` options."""
    positional: list[str] = []
    options: list[str] = []
    for param in ctx.command.params:
        value = ctx.params.get(param.name or "")
        if param.name in drop or value is None or param.expose_value is False:
            continue
        if isinstance(param, click.Argument):
            positional.append(str(value))
        elif getattr(param, "is_flag", False):
            if value:
                options.append(param.opts[0])
        else:
            options += [param.opts[0], str(value)]
    return [str(ctx.info_name), *positional, *options]


def launch_workers(ctx: click.Context, workers: int) -> None:
    """Run ``ctx``'s command in ``workers`` local processes (one rank each) and wait for them."""
    if "WORLD_SIZE" in os.environ:
        raise TfmqError("--workers starts its own processes; under torchrun leave it out")
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # torchrun's rule: one intra-op thread per rank unless the user chose; here the cores are shared out
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    logging.getLogger("torch.distributed.elastic").setLevel(logging.ERROR)
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=workers, run_id=f"tfmq-{uuid.uuid4().hex[:12]}",
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.2)
    try:
        elastic_launch(config, entrypoint=sys.executable)("-m", "tfmq_export.cli", *command_line(ctx))
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        raise TfmqError(f"worker rank {rank} of {workers} failed (exit code {failure.exitcode}); its message is "
                        "above") from None
