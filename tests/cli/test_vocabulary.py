"""One command-line vocabulary: every option of every command has help and shows its default, and an
option name used by several commands means the same thing on each (``MEANINGS``)."""

from __future__ import annotations

import re
from collections import defaultdict

import click
import pytest
from click.testing import CliRunner

from tfmq_export.cli import cli
from tfmq_export.config import SUPPORTED_ACT_BITS, SUPPORTED_WEIGHT_BITS

#: For every option name used by more than one command: a pattern its help must match on every command
#: (the one meaning), and one it must not (the meaning it used to be confused with). A new shared name
#: fails ``test_a_shared_name_has_one_meaning`` until it gets a row here.
MEANINGS: dict[str, tuple[str, str | None]] = {
    "--out": (r"\b(write|written)\b", None),
    "--model": (r"\bmodel\b", None),
    "--seed": (r"^Random seed of\b", None),
    "--calib-seeds": (r"^Comma-separated calibration seeds\b", r"\bimages\b"),
    "--target": (r"^Q/DQ flavour of the exported UNet: tensorrt .* or onnxruntime", None),
    "--num-images": (r"\bimages generated\b|\bImages generated\b|^Images to generate", r"trajector"),
    "--num-samples": (r"\btrajectories\b", r"\bimages (generated|to generate)\b"),
    "--iters": (r"\biterations\b", r"\btimed\b|\bcalls\b"),
    "--batch-size": (r"^Samples per (UNet call|training step)|^Inputs per UNet call", r"\bminibatch of images\b"),
    "--steps": (r"^Sampler steps\b", None),
    "--scheduler": (r"^Sampler\b", None),
    "--prompt": (r"\bthe prompt\b", None),
    "--negative-prompt": (r"\bthe negative prompt\b", None),
    "--guidance-scale": (r"\bclassifier-free guidance scale\b", None),
    "--backend": (r"\b(runtime|engine|backend|simulation)\b", None),
    "--backends": (r"^Comma-separated", None),
    "--threads": (r"\b[Tt]hreads\b|set_num_threads", None),
    "--float-stages": (r"^Pipeline folder: text encoder\(s\) and VAE decoder", None),
    "--timesteps": (r"\b(table|UNet table) rows\b|\brows\b", None),
    "--json": (r"^Also write .*JSON", None),
    "--lr": (r"^Adam learning rate", None),
    "--quiet": (r"^No progress bars", None),
    "--verbose": (r"^Print the options", None),
    "--precision": (r"^Type of the (graph's )?float parts", None),
    "--device": (r"\b(cpu|cuda)\b", None),
}


def _commands() -> dict[str, click.Command]:
    return dict(cli.commands)


def _options(command: click.Command) -> list[click.Option]:
    return [p for p in command.params if isinstance(p, click.Option) and p.name != "help"]


def _long_name(option: click.Option) -> str:
    return max(option.opts, key=len)


def _help_record(command: click.Command, option: click.Option) -> str:
    """What ``--help`` prints for the option (its help and the ``[default: ...]`` click adds)."""
    with click.Context(command, info_name=command.name) as context:
        record = option.get_help_record(context)
    return "" if record is None else record[1]


ALL = [(name, _long_name(o)) for name, command in sorted(_commands().items()) for o in _options(command)
       if not o.hidden]


@pytest.mark.parametrize(("command", "option"), ALL, ids=[f"{c}{o}" for c, o in ALL])
def test_every_option_has_help_and_shows_its_default(command, option):
    found = next(o for o in _options(cli.commands[command]) if _long_name(o) == option)
    assert found.help and len(found.help.split()) >= 3, f"{command} {option}: no help"
    if found.is_flag or found.required:
        return  # a flag's default is "off"; a required option has none
    shown = _help_record(cli.commands[command], found)
    assert "[default: " in shown and "[default: ]" not in shown, f"{command} {option} shows no default: {shown!r}"


def test_a_shared_name_has_one_meaning():
    by_name: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for name, command in _commands().items():
        for option in _options(command):
            if not option.hidden:
                by_name[_long_name(option)].append((name, option.help or ""))
    shared = {name: uses for name, uses in by_name.items() if len(uses) > 1}
    assert {"--seed", "--num-images", "--batch-size", "--quiet", "--verbose"} <= set(shared)
    no_row = sorted(set(shared) - set(MEANINGS))
    assert not no_row, f"options used by several commands without a row in MEANINGS: {no_row}"
    for name, uses in shared.items():
        meaning, other = MEANINGS[name]
        for command, text in uses:
            assert re.search(meaning, text), f"{command} {name}: {text!r} does not say {meaning!r}"
            assert other is None or not re.search(other, text), f"{command} {name}: {text!r} reads as {other!r}"


def test_every_command_takes_quiet_and_verbose(tmp_path):
    for name, command in _commands().items():
        assert {"--quiet", "--verbose"} <= {_long_name(o) for o in _options(command)}, name
    result = CliRunner().invoke(cli, ["lint", str(tmp_path / "missing.onnx"), "--quiet", "--verbose"])
    assert result.exit_code == 2 and "exclude each other" in result.output


def test_bits_are_typed_choices_of_the_supported_widths():
    options = {_long_name(o): o for o in _options(cli.commands["calibrate"])}
    assert list(options["--wbits"].type.choices) == list(SUPPORTED_WEIGHT_BITS)
    assert list(options["--abits"].type.choices) == list(SUPPORTED_ACT_BITS)
    result = CliRunner().invoke(cli, ["calibrate", "digits", "--out", "x", "--wbits", "3"])
    assert result.exit_code == 2 and "'3' is not one of '4', '8', '16'" in result.output


def test_calibrate_help_says_what_a_recipe_sets_and_what_overrides_it():
    text = " ".join(CliRunner().invoke(cli, ["calibrate", "--help"]).output.split())
    assert "the options given here, then the --recipe" in text
    for setting in ("method", "wbits", "abits", "steps", "num_samples", "iters", "static_scale_rule", "extra"):
        assert setting in text
    assert "built-in defaults are not the shipped recipes'" in text
    examples = text.split("Examples:")[1].split("Options:")[0]
    assert examples.count("tfmq-export calibrate") == examples.count("--recipe") >= 2


def test_bench_old_names_still_work_and_warn_in_one_line(unet2d_dir):
    base = ["bench", str(unet2d_dir), "--backends", "torch", "--no-memory", "--warmup", "0", "--quiet"]
    for old, new in (("--iters", "--timed-calls"), ("--batch", "--batch-size")):
        bench_help = CliRunner().invoke(cli, ["bench", "--help"]).output
        assert new in bench_help and f"{old} " not in bench_help  # hidden
        result = CliRunner().invoke(cli, [*base, old, "0"])
        warning = [line for line in result.output.splitlines() if "deprecated" in line]
        assert warning == [f"Warning: {old} is deprecated, use {new} (same meaning)."]
        assert result.exit_code == 1 and "Error: --timed-calls and --batch-size must be positive" in result.output
        both = CliRunner().invoke(cli, [*base, old, "1", new, "1"])
        assert both.exit_code == 2 and "give only" in both.output


def test_verbose_prints_settings_and_time(unet2d_dir, tmp_path):
    result = CliRunner().invoke(cli, ["calibrate", str(unet2d_dir), "--out", str(tmp_path / "a"), "--steps", "2",
                                      "--num-samples", "2", "--verbose"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("tfmq-export calibrate: ") and " model=" in lines[0] and "method=None" in lines[0]
    assert any(line.startswith("settings: {'method': 'minmax'") for line in lines)
    assert re.fullmatch(r"tfmq-export calibrate: \d+\.\d s", lines[-1])
