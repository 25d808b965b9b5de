"""The guided reconstruction loss: guided data names both halves of every latent, subsets and
minibatches keep them together, the loss weighs the halves' errors as guidance does, and the
option is inert without guidance."""

from __future__ import annotations

import pytest
import torch

from tfmq_export.calibration import parallel
from tfmq_export.calibration.adaround import lp_loss
from tfmq_export.calibration.block_io import uniform_subset
from tfmq_export.calibration.block_loss import guided_lp_loss
from tfmq_export.calibration.data import CalibrationData
from tfmq_export.config import ExtraOptions
from tfmq_export.errors import TfmqError


def _guided_data(sd_pipeline_dir, guidance: float = 4.0, trajectories: int = 3):
    from tfmq_export.calibration.guided_data import guided_calibration_data
    from tfmq_export.config import CalibrationSettings
    from tfmq_export.models.loading import load_model
    from tfmq_export.models.prompts import encode_guided
    from tfmq_export.temporal import build_table_unet

    loaded = load_model(sd_pipeline_dir)
    loaded.guided = encode_guided(loaded.pipeline, ["a digit seven", "a digit one"], None, guidance, 8)
    settings = CalibrationSettings(steps=3, num_samples=trajectories, batch_size=2)
    timesteps = [667, 334, 1]
    fp_sim = build_table_unet(loaded.unet, timesteps).eval()
    return guided_calibration_data(fp_sim, loaded, timesteps, settings, progress=False), loaded


def test_guided_data_pairs_the_two_halves_of_every_latent(sd_pipeline_dir):
    from tfmq_export.contract import INPUT_CONDITIONS

    data, loaded = _guided_data(sd_pipeline_dir)
    uncond, cond = data.pair_index()
    assert len(uncond) == len(cond) == len(data) // 2  # every input is in one pair (2 batches: 2 + 1)
    assert torch.equal(data.samples[uncond], data.samples[cond])  # the same x_t ...
    assert torch.equal(data.step_index[uncond], data.step_index[cond])  # ... at the same step
    assert not data.cond_half[uncond].any() and data.cond_half[cond].all()
    torch.testing.assert_close(data.conditions[uncond[0]], loaded.guided.uncond[INPUT_CONDITIONS][0])
    torch.testing.assert_close(data.conditions[cond[0]], loaded.guided.cond[INPUT_CONDITIONS][0])
    assert sorted(data.pair_id.tolist()) == sorted(list(range(len(data) // 2)) * 2)


def test_guidance_scale_one_leaves_the_inputs_unpaired(sd_pipeline_dir):
    data, _ = _guided_data(sd_pipeline_dir, guidance=1.0, trajectories=2)
    assert not data.paired and len(data.pair_index()[0]) == 0


def _toy_pairs(steps: int = 4, per_step: int = 6) -> CalibrationData:
    """``per_step`` pairs a step, laid out as guided_sample keeps them ([uncond; cond] per call)."""
    rows = torch.arange(steps).repeat_interleave(2 * per_step)
    ids = torch.cat([torch.arange(s * per_step, (s + 1) * per_step).repeat(2) for s in range(steps)])
    half = torch.cat([torch.arange(2 * per_step) >= per_step for _ in range(steps)])
    samples = torch.randn(len(rows), 1, 2, 2, generator=torch.Generator().manual_seed(0))
    samples[half] = samples[~half]  # partners share x_t
    return CalibrationData(samples, rows, None, list(range(steps)), ids, half)


def test_the_paired_subset_keeps_whole_pairs_uniform_over_steps():
    data = _toy_pairs()
    sub = uniform_subset(data, 16, seed=3, pairs=True)  # 4 a step = 2 pairs a step
    assert len(sub) == 16 and torch.bincount(sub.step_index).tolist() == [4, 4, 4, 4]
    uncond, cond = sub.pair_index()
    assert len(uncond) == 8 and torch.equal(sub.samples[uncond], sub.samples[cond])
    plain = uniform_subset(data, 16, seed=3)  # without pairs: the sampling every method used before
    assert torch.equal(plain.samples, data.per_step_subset(4, 3).samples)


def test_the_guided_loss_weighs_the_halves_errors_as_guidance_does():
    scale = 7.5
    target = torch.zeros(8, 3, 2, 2)
    error = torch.randn(4, 3, 2, 2, generator=torch.Generator().manual_seed(1))
    common = torch.stack([error, error], dim=1).reshape(8, 3, 2, 2)  # the same error in both halves
    opposite = torch.stack([error, -error], dim=1).reshape(8, 3, 2, 2)
    # the plain loss cannot tell them apart; guidance passes a common error with gain 1 and
    # multiplies a difference by the scale, and so does the guided loss
    torch.testing.assert_close(lp_loss(common, target), lp_loss(opposite, target))
    norm = (1 - scale) ** 2 + scale**2
    energy = error.pow(2).reshape(4, -1).sum(1).mean()
    torch.testing.assert_close(guided_lp_loss(common, target, scale, 1.0), energy / norm)
    torch.testing.assert_close(guided_lp_loss(opposite, target, scale, 1.0), (2 * scale - 1) ** 2 * energy / norm)
    torch.testing.assert_close(guided_lp_loss(opposite, target, scale, 0.0), lp_loss(opposite, target))
    # independent halves: the normalisation keeps the loss at the plain loss's scale on average
    noise = torch.randn(20000, 1, generator=torch.Generator().manual_seed(2))
    ratio = guided_lp_loss(noise, torch.zeros_like(noise), scale, 1.0) / lp_loss(noise, torch.zeros_like(noise))
    assert 0.9 < float(ratio) < 1.1


def test_a_minibatch_split_over_ranks_keeps_each_pair_on_one_rank(monkeypatch):
    index = torch.arange(12)
    monkeypatch.setattr(parallel.distributed, "world_size", lambda: 4)
    parts = []
    for rank in range(4):
        monkeypatch.setattr(parallel.distributed, "rank", lambda rank=rank: rank)
        part, weight = parallel.minibatch_share(index, 2)
        assert part.numel() % 2 == 0 and (part[1::2] == part[0::2] + 1).all()
        assert weight == pytest.approx(4 * part.numel() / 12)  # the ranks' mean gradient is the whole batch's
        parts.append(part)
    assert torch.equal(torch.cat(parts), index)


def test_the_guided_loss_option_is_checked():
    assert ExtraOptions.parse({"guided_loss": 0.5}).guided_loss == 0.5
    with pytest.raises(TfmqError, match="guided_loss is a weight \\(0 to 1\\)"):
        ExtraOptions.parse({"guided_loss": 1.5})
    with pytest.raises(TfmqError, match="guided_loss must be a non-negative number"):
        ExtraOptions.parse({"guided_loss": -1})
    with pytest.raises(TfmqError, match="guided_correction must be true or false"):
        ExtraOptions.parse({"guided_correction": 1})
    # what an artifact records: without guidance the guided options cannot act and read as off
    options = ExtraOptions.parse({"guided_loss": 1.0, "guided_correction": True})
    assert options.record(7.5)["guided_loss"] == 1.0 and options.record(7.5)["guided_correction"] is True
    assert options.record(None)["guided_loss"] == 0.0 and options.record(1.0)["guided_correction"] is False


@pytest.mark.usefixtures("one_thread")
def test_the_guided_loss_changes_the_rounding_only_where_guidance_runs(sd_pipeline_dir, tmp_path):
    from safetensors.torch import load_file

    from tfmq_export.artifact import TENSORS_NAME
    from tfmq_export.workflows.calibrate import calibrate_model

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a digit seven\na digit one\n")

    def weights(guidance: float, guided_loss: float) -> dict[str, torch.Tensor]:
        out = tmp_path / f"g{guidance}-{guided_loss}"
        overrides = {"method": "qdiff", "wbits": 4, "abits": 8, "steps": 3, "num_samples": 2, "iters": 30,
                     "guidance_scale": guidance, "extra": {"guided_loss": guided_loss, "act_iters": 0}}
        calibrate_model(str(sd_pipeline_dir), out, overrides, prompts=prompts, progress=False)
        return {k: v for k, v in load_file(out / TENSORS_NAME).items() if k.endswith("weight_int")}

    def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
        return all(torch.equal(a[k], b[k]) for k in a)

    assert same(weights(1.0, 0.0), weights(1.0, 1.0))  # no guidance: no pairs, the option is inert
    assert not same(weights(4.0, 0.0), weights(4.0, 1.0))


def test_the_guided_correction_is_the_guided_outputs_mean_error():
    from tfmq_export.calibration.output_correction import measure_output_correction

    steps, pairs, scale = 3, 8, 5.0
    data = _toy_pairs(steps, pairs)
    data.conditions = data.cond_half.float().reshape(-1, 1, 1)  # 0: unconditional half, 1: conditional
    offset = torch.randn(steps, 1, 2, 2, generator=torch.Generator().manual_seed(4))  # both halves, per step
    split = 0.3 * torch.randn(steps, 1, 2, 2, generator=torch.Generator().manual_seed(5))  # conditional only

    def fp(x, step, cond):
        return x.clone()

    def quantized(x, step, cond):  # a fixed error per step, plus noise, plus more on the conditional half
        noise = 1e-3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(int(x.sum() * 1e3) % 997))
        return x + offset[step] + cond.reshape(-1, 1, 1, 1) * split[step] + noise

    plain = measure_output_correction(quantized, fp, data, "pixel", batch_size=6)
    guided = measure_output_correction(quantized, fp, data, "pixel", batch_size=6, guidance_scale=scale)
    torch.testing.assert_close(plain, offset + 0.5 * split, atol=2e-3, rtol=0)  # the halves' mean
    # guidance steps with (1 - s) e_u + s e_c = offset + s * split: the correction that cancels it
    torch.testing.assert_close(guided, offset + scale * split, atol=1e-2, rtol=0)
    unpaired = CalibrationData(data.samples, data.step_index, data.conditions, data.timesteps)
    torch.testing.assert_close(measure_output_correction(quantized, fp, unpaired, "pixel", batch_size=6,
                                                         guidance_scale=scale), plain)
