"""``calibrate --workers N``: the command the elastic launcher starts on every rank is the one given,
less ``--workers``; under torchrun the option is refused with one line."""

from __future__ import annotations

import click
from click.testing import CliRunner

from tfmq_export.cli import cli
from tfmq_export.cli.calibrate import calibrate
from tfmq_export.cli.launch import command_line


def test_command_line_reproduces_the_command_without_workers(tmp_path):
    args = ["digits", "--out", str(tmp_path / "a"), "--method", "tfmq", "--iters", "5", "--quiet", "--workers", "2"]
    ctx = calibrate.make_context("calibrate", list(args))
    rebuilt = command_line(ctx)
    assert rebuilt[:2] == ["calibrate", "digits"] and "--workers" not in rebuilt
    again = calibrate.make_context("calibrate", rebuilt[1:])
    assert {k: v for k, v in again.params.items() if k != "workers"} == \
        {k: v for k, v in ctx.params.items() if k != "workers"}
    assert again.params["workers"] == 1 and again.params["quiet"] is True


def test_workers_under_torchrun_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = CliRunner().invoke(cli, ["calibrate", "digits", "--out", str(tmp_path / "a"), "--workers", "2"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip() == "Error: --workers starts its own processes; under torchrun leave it out"
    assert not (tmp_path / "a").exists()
    assert isinstance(calibrate, click.Command)
