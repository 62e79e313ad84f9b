"""The in-turns batch comparison's arithmetic (the servers themselves run in e2e/bench)."""

from __future__ import annotations

from e2e.bench.turns import ratios_to, summary


def test_per_round_ratios_skip_rounds_where_the_reference_did_nothing():
    assert ratios_to([10.0, 0.0, 20.0], [5.0, 3.0, 30.0]) == [0.5, 1.5]


def test_summary_gives_each_server_its_windows_and_the_median_ratio_to_the_reference():
    lines = summary({"deft 20 ms": [8.0, 9.0, 12.0], "triton:none": [10.0, 10.0, 10.0]},
                    "triton:none")
    assert lines[0].startswith("deft 20 ms")
    assert "8.0, 9.0, 12.0 (median 9.0)" in lines[0]
    assert lines[0].endswith("/ triton:none per round: median 0.900")
    assert "per round" not in lines[1]
    # without a reference (no Triton here): no ratios
    assert all("per round" not in x for x in summary({"a": [1.0]}, None))
