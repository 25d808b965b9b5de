"""`evaluate` over calibration seeds: which rows run, the mean / spread of each method x bits, the lead
rule, the verdict's statements, the peers' place in the table and the quality-vs-bits plot."""

from __future__ import annotations

import sys

import pytest
from PIL import Image

from tfmq_export.errors import TfmqError
from tfmq_export.workflows.evaluate import results_markdown
from tfmq_export.workflows.evaluate_report import (
    TEXT_METRICS,
    aggregate_rows,
    compare_phrase,
    evaluate_verdict,
    lead,
    row_name,
)
from tfmq_export.workflows.evaluate_rows import (
    check_methods,
    check_peers,
    evaluation_jobs,
    parse_calib_seeds,
    row_seeds,
    seed_name,
    seeded_jobs,
)
from tfmq_export.workflows.evaluate_text import text_results_markdown
from tfmq_export.workflows.quality_plot import plot_quality


def test_four_bit_rows_run_three_calibration_seeds_unless_told() -> None:
    jobs = evaluation_jobs(["minmax", "tfmq"], ["w8a8", "w4a8", "w4a16"])
    seeded = seeded_jobs(jobs)
    assert seeded[:2] == [("minmax", "w8a8", 0), ("tfmq", "w8a8", 0)]
    assert seeded[2:5] == [("minmax", "w4a8", 0), ("minmax", "w4a8", 1), ("minmax", "w4a8", 2)]
    assert len(seeded) == 2 * 1 + 2 * 3 + 2 * 3
    assert seeded_jobs(jobs, [3, 5]) == [(m, b, s) for m, b in jobs for s in (3, 5)]  # given: every row
    assert row_seeds("w8a8") == [0] and row_seeds("w4a16") == [0, 1, 2] and row_seeds("w8a8", [7]) == [7]
    assert [seed_name("tfmq", "w4a8", s) for s in (0, 1)] == ["tfmq-w4a8", "tfmq-w4a8-cs1"]
    assert row_name({"method": "tfmq", "wbits": 4, "abits": 8, "calib_seed": 2}) == "tfmq-w4a8-cs2"
    assert row_name({"method": "tfmq", "wbits": 4, "abits": 8}) == "tfmq-w4a8"  # rows of older results


def test_calib_seeds_are_parsed_and_checked() -> None:
    assert parse_calib_seeds(" 0, 1,2 ") == [0, 1, 2] and parse_calib_seeds([4]) == [4]
    assert parse_calib_seeds(None) is None and parse_calib_seeds("") is None
    for bad, message in (("0,a", "integers"), ("1,1", "distinct"), ("-2", ">= 0")):
        with pytest.raises(TfmqError, match=message):
            parse_calib_seeds(bad)


def test_the_peer_module_is_imported_only_when_a_peer_row_is_asked_for(monkeypatch) -> None:
    import tfmq_export.workflows

    monkeypatch.setitem(sys.modules, "tfmq_export.workflows.evaluate_peers", None)  # any import of it fails
    monkeypatch.delattr(tfmq_export.workflows, "evaluate_peers", raising=False)  # imported by an earlier test
    check_peers(["minmax", "qdiff", "tfmq"])  # no peer: nothing imported
    with pytest.raises(TfmqError, match=r"peer rows cannot run here .*leave modelopt-int8, modelopt-w4a16 out"):
        check_peers(["tfmq", "modelopt-int8"])


def test_peers_are_accepted_only_at_their_own_bit_setting() -> None:
    check_methods(["tfmq", "modelopt-int8", "modelopt-w4a16"])
    with pytest.raises(TfmqError, match="choose from minmax, qdiff, tfmq, modelopt-int8, modelopt-w4a16"):
        check_methods(["modelopt-fp8"])
    methods = ["tfmq", "modelopt-int8", "modelopt-w4a16"]
    assert evaluation_jobs(methods, ["w8a8", "w4a8"]) == [("tfmq", "w8a8"), ("modelopt-int8", "w8a8"),
                                                          ("tfmq", "w4a8")]
    assert evaluation_jobs(methods, ["w4a16"]) == [("tfmq", "w4a16"), ("modelopt-w4a16", "w4a16")]
    assert seeded_jobs(evaluation_jobs(["modelopt-w4a16"], ["w4a16"])) == [("modelopt-w4a16", "w4a16", s)
                                                                           for s in (0, 1, 2)]
    with pytest.raises(TfmqError, match="not a row of this run"):
        evaluation_jobs(methods, ["w8a8"], ["modelopt-w4a16-w8a8"])


def _row(method: str, wbits: int, abits: int, calib_seed: int | None, fid: float, rmse: float | None,
         calib_seconds: float = 0.0, **extra) -> dict:
    return {"method": method, "wbits": wbits, "abits": abits, "calib_seed": calib_seed, "fid": fid,
            "rmse_vs_fp": rmse, "calib_seconds": calib_seconds, "num_samples": 100, "seed": 0, **extra}


def _run(tfmq_rmse=(0.040, 0.041, 0.042), qdiff_rmse=(0.050, 0.049, 0.051), minmax_rmse=(0.043, 0.046, 0.044),
         peers: bool = True) -> list[dict]:
    """FP 10.0 / 10.5 (noise 0.5); tfmq W8A8 10.2; W4A8 over three calibration seeds; the ModelOpt peers."""
    rows = [_row("fp", 16, 16, None, 10.0, 0.0), _row("fp", 16, 16, None, 10.5, None),
            _row("tfmq", 8, 8, 0, 10.2, 0.010, 5.0)]
    for method, values, fids, seconds in (("minmax", minmax_rmse, (14.0, 15.0, 16.0), 2.0),
                                          ("qdiff", qdiff_rmse, (12.0, 12.5, 13.0), 100.0),
                                          ("tfmq", tfmq_rmse, (11.0, 11.2, 11.4), (30.0, 40.0, 50.0))):
        for seed, (rmse, fid) in enumerate(zip(values, fids, strict=True)):
            t = seconds[seed] if isinstance(seconds, tuple) else seconds
            rows.append(_row(method, 4, 8, seed, fid, rmse, t))
    if peers:
        note = "sampled in torch: ModelOpt fake-quant, not exported"
        rows += [_row("modelopt-int8", 8, 8, 0, 10.3, 0.012, 9.0, note=note)]
        rows += [_row("modelopt-w4a16", 4, 16, s, 12.0, 0.030 + s * 0.001, 20.0, note=note) for s in range(3)]
    return rows


def test_aggregation_gives_mean_spread_and_mean_calibration_time() -> None:
    entries = {(e["method"], e["wbits"], e["abits"]): e for e in aggregate_rows(_run())}
    assert ("fp", 16, 16) not in entries and len(entries) == 6
    tfmq = entries[("tfmq", 4, 8)]
    assert tfmq["n"] == 3 and tfmq["calib_seeds"] == [0, 1, 2]
    assert tfmq["rmse_vs_fp"]["mean"] == pytest.approx(0.041) and tfmq["rmse_vs_fp"]["spread"] == pytest.approx(0.002)
    assert (tfmq["fid"]["min"], tfmq["fid"]["max"]) == (11.0, 11.4) and tfmq["calib_seconds"] == pytest.approx(40.0)
    assert entries[("tfmq", 8, 8)]["rmse_vs_fp"]["spread"] == 0.0  # one seed
    assert entries[("modelopt-w4a16", 4, 16)]["note"].startswith("sampled in torch")
    assert "accuracy" not in tfmq  # a metric the rows lack is left out


def test_a_lead_needs_a_margin_above_the_larger_spread() -> None:
    entries = {e["method"]: e for e in aggregate_rows(_run(), ["rmse_vs_fp"]) if (e["wbits"], e["abits"]) == (4, 8)}
    tfmq, qdiff, minmax = entries["tfmq"], entries["qdiff"], entries["minmax"]
    won, margin, threshold = lead(tfmq, qdiff, "rmse_vs_fp")
    assert won and margin == pytest.approx(0.009) and threshold == pytest.approx(0.002)
    assert not lead(qdiff, tfmq, "rmse_vs_fp")[0]
    won, margin, threshold = lead(tfmq, minmax, "rmse_vs_fp")  # 0.0033 better, minmax spread 0.003
    assert won and margin == pytest.approx(0.0443333 - 0.041, abs=1e-6) and threshold == pytest.approx(0.003)
    close = {e["method"]: e for e in aggregate_rows(_run(minmax_rmse=(0.041, 0.046, 0.043)), ["rmse_vs_fp"])
             if (e["wbits"], e["abits"]) == (4, 8)}
    assert not lead(close["tfmq"], close["minmax"], "rmse_vs_fp")[0]  # 0.0023 better, within spread 0.005
    assert "no lead (tfmq better by 0.0023, within spread 0.0050)" in compare_phrase(
        close["tfmq"], close["minmax"], "rmse_vs_fp", "paired RMSE")
    assert compare_phrase(qdiff, tfmq, "rmse_vs_fp", "RMSE").endswith("tfmq leads qdiff by 0.0090 > spread 0.0020")
    accuracy = [{"method": m, "wbits": 4, "abits": 8, "n": 3, "accuracy": {"mean": v, "spread": 0.01}}
                for m, v in (("a", 0.95), ("b", 0.90))]
    assert lead(*accuracy, "accuracy", higher_is_better=True)[0]  # higher accuracy is better
    assert not lead(*accuracy, "accuracy")[0]


def test_one_seed_claims_no_lead() -> None:
    one = [{"method": m, "wbits": 8, "abits": 8, "n": 1, "rmse_vs_fp": {"mean": v, "spread": 0.0}}
           for m, v in (("tfmq", 0.010), ("modelopt-int8", 0.012))]
    assert not lead(*one, "rmse_vs_fp")[0]
    phrase = compare_phrase(*one, "rmse_vs_fp", "paired RMSE")
    assert phrase == ("paired RMSE 0.0100 vs 0.0120 (1 / 1 seeds): tfmq ahead by 0.0020 on a single seed "
                      "(spread not measured, no lead)")


def test_the_verdict_states_the_comparisons_the_issue_asks_for() -> None:
    lines = evaluate_verdict(_run())
    text = "\n".join(lines)
    assert lines[0].startswith("tfmq W4A8 vs qdiff W4A8: paired RMSE 0.0410 vs 0.0500 (3 / 3 seeds): tfmq leads "
                               "qdiff by 0.0090 > spread 0.0020; digits-FID 11.200 vs 12.500")
    assert lines[1].startswith("tfmq W4A8 vs minmax W4A8: paired RMSE 0.0410 vs 0.0443 (3 / 3 seeds): tfmq leads")
    assert ("tfmq W4A8 vs modelopt-w4a16 W4A16: paired RMSE 0.0410 vs 0.0310 (3 / 3 seeds): modelopt-w4a16 leads "
            "tfmq by 0.0100 > spread 0.0020") in text
    assert "tfmq W8A8 vs modelopt-int8 W8A8: paired RMSE 0.0100 vs 0.0120 (1 / 1 seeds): tfmq ahead" in text
    assert ("tfmq W8A8: digits-FID 10.200 (mean of 1) vs FP 10.000 (+0.200), within the FP seed-to-seed "
            "difference 0.500") in text
    assert "tfmq 40 s, qdiff 100 s, tfmq / qdiff = 0.40" in text
    assert "- " not in text and "minmax W4A8 (mean of 3 calibration seeds): images outside FP noise" in text
    assert "modelopt-int8 W8A8: images within FP noise" in text
    no_peers = "\n".join(evaluate_verdict(_run(peers=False)))
    assert "modelopt" not in no_peers and "tfmq / qdiff" in no_peers
    assert evaluate_verdict(_run()[2:]) == []  # no FP rows, nothing to judge against


def test_the_report_shows_seed_rows_their_aggregate_and_the_peer_note(tmp_path) -> None:
    rows = _run()
    doc = results_markdown({"rows": rows, "command": "x", "created": "now", "quality_plot": "quality-vs-bits.png"})
    assert doc.count("\n| ") == 2 + len(rows) + 2 + 6  # both tables: header, separator, one line per row / entry
    assert "| tfmq | 4 | 8 | 2 | 11.400 |" in doc and "| modelopt-int8\u2020 | 8 | 8 | 0 |" in doc
    assert "\n\u2020 sampled in torch: ModelOpt fake-quant, not exported\n" in doc
    assert "| tfmq | 4 | 8 | 0,1,2 | 0.0410 | 0.0020 | 11.200 | 0.400 | 40.0 |  |" in doc
    assert "Lead rule: A method leads another" in doc and "![quality vs bits](quality-vs-bits.png)" in doc


def test_quality_plot_is_a_png_with_a_panel_per_metric(tmp_path) -> None:
    path = plot_quality(_run(), tmp_path / "plots" / "q.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (900, 400)  # two panels of 4.5 x 4 inches at 100 dpi
    text_rows = [r | {"accuracy": 0.9, "accuracy_unguided": 0.7, "fid_unguided": r["fid"] + 1} for r in _run()]
    with Image.open(plot_quality(text_rows, tmp_path / "t.png", TEXT_METRICS)) as image:
        assert image.size == (1800, 400)
    assert not list(tmp_path.glob("**/*.tmp"))  # written atomically: no temp file left


def test_the_text_report_aggregates_prompt_accuracy() -> None:
    rows = [r | {"accuracy": 0.9 + 0.01 * (r["calib_seed"] or 0), "accuracy_unguided": 0.7,
                 "fid_unguided": r["fid"] + 1} for r in _run(peers=False)]
    doc = text_results_markdown({"rows": rows, "command": "x", "created": "now"})
    assert "guided prompt accuracy mean | spread | unguided prompt accuracy mean | spread" in doc
    assert "| tfmq | 4 | 8 | 0,1,2 | 0.0410 | 0.0020 | 11.200 | 0.400 | 0.910 | 0.020 | 0.700 | 0.000 | 40.0 |" in doc
    assert "guided prompt accuracy 0.910 vs 0.910 (3 / 3 seeds): no lead" in doc
