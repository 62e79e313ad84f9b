"""The suite's pure parts: statistics, the checks, bench.json's shape and bench.md."""

from __future__ import annotations

import json
import math

import pytest

from e2e.bench import report
from e2e.bench.accuracy import runtime_costs_us
from e2e.bench.stats import Measured, attainment, cdf, median, percentile, ratio, relative_error
from e2e.bench.systems import all_systems, select_systems


def test_percentile_is_nearest_rank_like_the_simulator():
    from scheduler.sim.engine import percentile as sim_percentile

    values = [5.0, 1.0, 4.0, 2.0, 3.0] * 41
    for q in (0.0, 0.5, 0.9, 0.99, 1.0):
        assert percentile(values, q) == sim_percentile(values, q)
    assert math.isnan(percentile([], 0.5))


def test_attainment_counts_unanswered_requests_as_misses():
    assert attainment([0.001, 0.002, 0.030], sent=4, slo_ms=10) == 0.5
    assert attainment([0.001], sent=1, slo_ms=None) is None
    assert attainment([], sent=0, slo_ms=5) is None


def test_small_helpers():
    assert ratio(10.0, 2.0) == 5.0 and ratio(None, 1.0) is None and ratio(1.0, 0.0) is None
    assert relative_error(110.0, 100.0) == pytest.approx(0.1)
    assert median([3.0, 1.0, float("nan"), 2.0]) == 2.0 and math.isnan(median([]))
    xs, ys = cdf([3.0, 1.0, 2.0])
    assert xs == [1.0, 2.0, 3.0] and ys == pytest.approx([1 / 3, 2 / 3, 1.0])


def test_measured_summary_has_the_design_fields():
    m = Measured("det", "latency-critical", 1, "det b1 poisson 20/s",
                 latencies_s=[0.004] * 98 + [0.02, 0.05], sent=101, errors=1, window_s=5.0,
                 solo_latencies_s=[0.003] * 50 + [0.006], solo_window_s=2.5, slo_ms=10.0)
    s = m.summary()
    for key in ("model", "priority", "completed", "p50_ms", "p99_ms", "solo_p99_ms",
                "slo_attainment", "throughput_per_s"):
        assert key in s
    assert s["completed"] == 100 and s["p50_ms"] == 4.0 and s["p99_ms"] == 20.0
    assert s["solo_p99_ms"] == 6.0 and s["slo_attainment"] == round(98 / 101, 6)
    assert s["throughput_per_s"] == 20.0 and s["retained"] == pytest.approx(20.0 / 20.4, 1e-3)


def stream(model, priority, p99, tput, solo_tput=None, att=None, bs=1, solo_p50=None):
    return {"model": model, "priority": priority, "completed": 10, "p50_ms": p99 / 2,
            "p99_ms": p99, "solo_p99_ms": p99 / 2, "solo_p50_ms": solo_p50,
            "slo_attainment": att, "throughput_per_s": tput, "solo_throughput_per_s": solo_tput,
            "batch_size": bs, "slo_ms": 15.0 if priority == "latency-critical" else None,
            "errors": 0}


def run(label, system, policy, lc_p99, batch_tput, att=1.0, probe_p50=5.0):
    return {"system": system, "policy": policy, "label": label, "variant": "",
            "probe": {"detector": {"p50_ms": probe_p50, "p99_ms": probe_p50 * 2}},
            "mixes": [{"mix": "pair", "streams": [
                stream("detector", "latency-critical", lc_p99, 20.0, att=att, solo_p50=4.0),
                stream("classifier", "batch", 600.0, batch_tput, solo_tput=4.0, bs=8)]}]}


@pytest.fixture
def result():
    return {
        "machine": "test", "quick": True, "gpu": False, "seconds": 1.0,
        "mixes": [{"name": "pair", "description": "a pair", "duration_s": 5,
                   "streams": ["detector", "classifier"], "slo_ms": {"0": 15.0}}],
        "systems": [
            run("deft:deft", "deft", "deft", 10.0, 3.8, att=0.995),
            run("kserve", "kserve", "-", 900.0, 0.5, att=0.0, probe_p50=25.0),
            run("triton:priority-levels", "triton", "priority-levels", 180.0, 3.9, att=0.7),
            run("triton:none", "triton", "none", 30.0, 4.0, att=0.9),
        ],
        "skipped": [],
        "legacy": {"device_share_left": 0.96, "classifier_in_process_items_per_s": 40.0},
        "predictor": {"median_error": 0.1, "costs_us": {"launch": 15, "sync": 0},
                      "repeats": 3, "median_error_by_model": {"detector": 0.1},
                      "inference": [{"model": "detector", "batch_size": 1, "plan": "one chunk",
                                     "predicted_ms": 1.1, "measured_ms": 1.0, "error": 0.1}],
                      "preemption": [], "preemption_median_error": None},
        "simulator": {"replay": {"pair": {"rows": [
            {"policy": "deft", "sim_p99_ms": 8.0, "transport_ms": 3.0,
             "sim_p99_with_transport_ms": 11.0, "measured_p99_ms": 10.0, "error": 0.1,
             "raw_error": 0.2}]}},
            "sweeps": {"t": [{"policy": "fixed:1", "batch_inference_p50_ms": 10.0,
                              "lc_p99_ms": 2.0, "lc_slo_attainment": 1.0, "sync_points": 9}]}},
    }


def test_checks(result):
    checks = {c["check"]: c for c in report.checks(result)}
    assert all(set(c) == {"check", "value", "pass"} for c in checks.values())
    slo = next(c for k, c in checks.items() if k.startswith("deft meets"))
    assert slo["pass"] is True and slo["value"] == 0.995
    assert checks["plain kserve detector p99 under load >= 20 x deft's"]["value"] == 90.0
    assert checks["detector sequential round trip >= 3 x faster than plain kserve"]["pass"]
    best = checks["deft detector p99 >= 2 x lower than Triton's (best Triton variant)"]
    assert best["value"] == 3.0 and best["pass"] is True  # against the better Triton
    tput = checks["deft batch throughput under load >= 95% of Triton's (best Triton variant)"]
    assert tput["value"] == 0.95 and tput["pass"] is True
    assert checks["predicted inference delay within 15% of measured (median over models)"][
        "pass"] is True
    replay = next(c for k, c in checks.items() if k.startswith("simulator replay"))
    assert replay["value"] == 0.1 and replay["pass"] is True
    legacy = next(c for k, c in checks.items() if k.startswith("classifier throughput under"))
    assert legacy["value"] == pytest.approx(30.4 / (32 * 0.96), abs=1e-3)


def test_replay_check_says_the_cpu_lane_is_modelled(result):
    rows = result["simulator"]["replay"]["pair"]["rows"]
    rows.append(dict(rows[0], policy="layer", error=0.5))
    plain = [c["check"] for c in report.checks(result) if c["check"].startswith("simulator")]
    assert len(plain) == 1 and "CPU lane" not in plain[0]
    assert "(simulated device + measured solo transport)" in plain[0]
    result["simulator"]["replay"]["pair"]["cpu_lane"] = True
    checks = [c for c in report.checks(result) if "simulat" in c["check"]]
    assert [c["check"] for c in checks] == [
        "simulator replay predicts deft's latency-critical p99 within 25% (simulated device "
        "with the runtime's CPU lane + measured solo transport)"]
    assert checks[0]["value"] == 0.1 and checks[0]["pass"] is True
    assert not any("`layer`" in c["check"] for c in report.checks(result))
    md = report.markdown(result)
    assert "the simulator models the runtime's CPU lane" in md
    result["simulator"]["replay"]["pair"]["cpu_lane"] = False
    assert "models the runtime's CPU lane" not in report.markdown(result)


def test_checks_without_peers(result):
    result["systems"] = result["systems"][:1]
    labels = [c["check"] for c in report.checks(result)]
    assert not any("kserve" in c or "Triton" in c for c in labels)
    assert report.checks({"mixes": [], "systems": []}) == []


def test_checks_name_the_mix_models(result):
    for r in result["systems"]:
        for st in r["mixes"][0]["streams"]:
            st["model"] = {"detector": "det", "classifier": "encoder"}[st["model"]]
        r["probe"] = {"det": r["probe"]["detector"]}
    labels = [c["check"] for c in report.checks(result)]
    assert any(c.startswith("encoder throughput under load") for c in labels)
    assert any(c.startswith("encoder solo throughput over HTTP") for c in labels)
    assert "plain kserve det p99 under load >= 20 x deft's" in labels
    assert "det sequential round trip >= 3 x faster than plain kserve" in labels
    assert not any("classifier" in c or "detector" in c for c in labels)


def test_bench_json_shape_and_markdown(result):
    result["checks"] = report.checks(result)
    assert report.shape_errors(result) == []
    bad = json.loads(json.dumps(result))
    del bad["systems"][0]["mixes"][0]["streams"][0]["p99_ms"]
    assert report.shape_errors(bad) and report.shape_errors({}) != []
    md = report.markdown(result)
    assert md.startswith("# Deft evidence suite")
    for text in ("## Checks", "### pair", "| deft:deft | detector |", "| kserve |",
                 "## Predictor accuracy", "## Simulator replay", "`fixed:K` trade-off"):
        assert text in md
    row = next(line for line in md.splitlines() if line.startswith("| deft:deft"))
    assert row.count("|") == 12  # 11 columns
    assert "| 30.4 | 32.0 | 95.0% |" in row


def test_replay_rows():
    sim = {"deft": {"streams": [{"p99_ms": 8.0}, {"p99_ms": 500.0}]}}
    rows = report.replay_rows(sim, {"deft": {"p99_ms": 10.0}}, 1.0, 0)
    assert rows == [{"policy": "deft", "sim_p99_ms": 8.0, "transport_ms": 1.0,
                     "sim_p99_with_transport_ms": 9.0, "measured_p99_ms": 10.0,
                     "error": 0.1, "raw_error": 0.2}]
    assert report.replay_rows(sim, {}, 1.0, 0) == []


def test_system_selection():
    labels = [s.label for s in all_systems()]
    assert labels[0] == "deft:deft" and {"kserve", "triton:priority-levels",
                                        "triton:none", "deft:fixed:4"} <= set(labels)
    assert "deft:deft/same-stream" in [s.label for s in all_systems(gpu=True)]
    chosen = select_systems("kserve,deft,fixed:8,triton")
    assert [s.label for s in chosen] == ["deft:deft", "kserve", "deft:fixed:8",
                                         "triton:priority-levels", "triton:none"]
    assert len(select_systems("deft:*")) == 5
    assert not select_systems("kserve")[0].priorities
    with pytest.raises(ValueError, match="unknown system"):
        select_systems("tensorflow")


def test_full_run_puts_the_compared_systems_side_by_side():
    from e2e.bench.__main__ import FULL_SYSTEMS

    labels = [s.label for s in select_systems(FULL_SYSTEMS)]
    assert labels[:4] == ["deft:deft", "triton:priority-levels", "triton:none", "kserve"]
    assert sorted(labels) == sorted(s.label for s in all_systems())


def test_subset_repository_holds_only_the_named_models(tmp_path):
    from e2e.bench.models import model_specs, subset_repository

    root = tmp_path / "repo"
    for name in ("a", "b", "c"):
        (root / name).mkdir(parents=True)
        (root / name / "model.pt2").write_bytes(name.encode())
        (root / name / "config.yaml").write_text("max_batch_size: 2\n")
    assert subset_repository(root, {"a", "b", "c"}, tmp_path / "sub") == root
    sub = subset_repository(root, {"a", "c"}, tmp_path / "sub")
    assert sorted(model_specs(sub)) == ["a", "c"]
    assert (sub / "c" / "model.pt2").read_bytes() == b"c"
    # made again for other mixes: nothing of the earlier subset stays
    assert sorted(model_specs(subset_repository(root, {"b"}, tmp_path / "sub"))) == ["b"]
    with pytest.raises(ValueError, match="no models"):
        subset_repository(root, {"d"}, tmp_path / "sub")


def test_runtime_costs_come_from_the_runtime():
    assert runtime_costs_us("cpu") == (15.0, 0.0)
    launch, sync = runtime_costs_us("cuda")
    assert launch > 0 and sync > 0


def test_completion_rate_does_not_round_to_whole_completions():
    from e2e.bench.stats import completion_rate

    times = [0.5 + 0.3 * i for i in range(12)]  # one completion every 0.3 s
    assert completion_rate(times, 0.0, 4.0) == pytest.approx(1 / 0.3)
    assert completion_rate([1.0, 2.0], 0.0, 4.0) == 0.5  # too few: count over the window
    assert math.isnan(completion_rate([], 1.0, 1.0))


def test_profile_reuse_and_legacy_inputs(tmp_path):
    from e2e.bench.__main__ import last_profile_clean, legacy_inputs
    from e2e.bench.workload import parse_bench_workload

    path = tmp_path / "bench.json"
    assert not last_profile_clean(path)
    path.write_text(json.dumps({"profile_attempts": [
        {"attempt": 1, "measured_over_profile": {"a": 1.1, "b": 0.9}, "kept": True}]}))
    assert last_profile_clean(path)
    path.write_text(json.dumps({"profile_attempts": [
        {"attempt": 1, "measured_over_profile": {"a": 4.0}, "kept": True}]}))
    assert not last_profile_clean(path)

    wl = parse_bench_workload({
        "name": "p", "duration_s": 1, "models": {"det": {}, "cls": {}},
        "streams": [{"model": "det", "priority": "latency-critical", "slo_ms": 5,
                     "arrival": {"type": "poisson", "rate_per_s": 20}},
                    {"model": "cls", "batch_size": 8, "arrival": {"type": "closed",
                                                                  "clients": 1}}]})
    profile = {"models": {"det": {"profile": {"1": [1000.0, 1000.0]}},
                          "cls": {"profile": {"8": [100000.0, 100000.0]}}}}
    assert legacy_inputs(wl, profile, {}) == {"device_share_left": 0.96,
                                              "classifier_in_process_items_per_s": 40.0}
    measured = {"inference": [{"model": "cls", "batch_size": 8, "plan": "one chunk",
                               "measured_ms": 400.0}]}
    assert legacy_inputs(wl, profile, measured)["classifier_in_process_items_per_s"] == 20.0


def test_serving_overhead_from_alternating_windows_is_the_http_check():
    from e2e.bench import report

    result = {"legacy": {"serving_overhead": {
        "http_items_per_s": [40.0, 42.0], "in_process_items_per_s": [44.0, 44.0],
        "ratio": 0.9318, "windows": 2, "window_s": 4.0, "clients": 2, "batch_size": 8}},
        "systems": [], "mixes": []}
    md = report.markdown({**result, "checks": report.checks(result)})
    assert "alternating windows of 4 s: 40.00, 42.00 against 44.00, 44.00" in md



def test_batch_throughput_check_prefers_the_paired_windows(result):
    result["paired"] = {"mix": "pair", "rounds": 3, "window_s": 4.5, "warm_s": 1.0, "systems": {
        "deft:deft": {"batch_items_per_s": [30.0, 38.0, 36.0], "batch_items_per_s_median": 36.0,
                      "lc_p50_ms": 7.0, "lc_p99_ms": 15.0, "slo_attainment": 0.995},
        "triton:priority-levels": {"batch_items_per_s": [37.0, 39.0, 38.0],
                                   "batch_items_per_s_median": 38.0, "lc_p99_ms": 140.0},
        "triton:none": {"batch_items_per_s": [40.0, 41.0, 39.0],
                        "batch_items_per_s_median": 40.0, "lc_p99_ms": 40.0}}}
    checks = {c["check"]: c for c in report.checks(result)}
    tput = checks["deft batch throughput under load >= 95% of Triton's (best Triton variant; "
                  "paired windows, medians)"]
    assert tput["value"] == 0.9 and tput["pass"] is False
    none = checks["deft batch throughput / triton:none's under load (paired windows, target "
                  ">= 0.95)"]
    assert none["value"] == 0.9 and none["pass"] is False
    levels = checks["deft batch throughput / triton:priority-levels's under load (paired "
                    "windows, target >= 0.95)"]
    assert levels["value"] == pytest.approx(0.947, abs=1e-3) and levels["pass"] is False
    assert not any(k.endswith("(best Triton variant)") and "throughput" in k for k in checks)
    md = report.markdown(result)
    assert "## Paired windows" in md and "| triton:none | 40.0, 41.0, 39.0 | 40.0 |" in md
    # without a Deft row in the pairs, the sequential runs decide
    del result["paired"]["systems"]["deft:deft"]
    assert "deft batch throughput under load >= 95% of Triton's (best Triton variant)" in {
        c["check"] for c in report.checks(result)}


def test_paired_windows_take_turns_and_measure_each_window(monkeypatch):
    from e2e.bench import driver
    from e2e.bench.load import Stream
    from e2e.bench.workload import load_bench_workload

    class Clock:
        now = 100.0

        def monotonic(self):
            return self.now

        perf_counter = monotonic

        def sleep(self, s):
            self.now += max(0.0, s)

    clock = Clock()
    every_s = {"http://deft": 0.2, "http://triton": 0.25}  # one batch of 8 per ...
    turns = []

    class FakeLoop:
        def __init__(self, url, model, x, clients, name, pausable=False):
            assert pausable
            self.url, self.completed_at, self.since = url, [], None

        def start(self):
            self.since = clock.now
            return self

        def resume(self):
            turns.append(self.url)
            self.since = clock.now

        def pause(self):
            t = self.since + every_s[self.url]
            while t <= clock.now:
                self.completed_at.append(t)
                t += every_s[self.url]
            self.since = None

        def stop(self):
            pass

    def fake_open_loop(url, model, x, offsets, name, priority, start, timeout_s):
        st = Stream()
        st.latencies = [0.010 if url == "http://deft" else 0.030] * len(offsets)
        st.sent = len(offsets)
        return st

    monkeypatch.setattr(driver, "time", clock)
    monkeypatch.setattr(driver, "ClosedLoop", FakeLoop)
    monkeypatch.setattr(driver, "open_loop_at", fake_open_loop)
    wl = load_bench_workload(driver.__file__.rsplit("/", 1)[0] + "/workloads/1-pair-poisson.json")
    specs = {m: {"name": m, "inputs": [{"name": "image", "datatype": "FP32",
                                        "shape": [-1, 3, 8, 8]}]} for m in wl.models}
    out = driver.paired_windows(
        [driver.PairedTarget("deft:deft", "http://deft", True),
         driver.PairedTarget("triton:none", "http://triton", False)],
        wl, specs, rounds=3, window_s=4.0, warm_s=1.0, lc_timeout_s=5.0,
        slo_ms={0: 20.0}, log=lambda msg: None)
    assert turns == ["http://deft", "http://triton"] * 3
    assert out["deft:deft"]["batch_items_per_s"] == [40.0] * 3
    assert out["triton:none"]["batch_items_per_s"] == [32.0] * 3
    assert out["deft:deft"]["batch_items_per_s_median"] == 40.0
    assert out["deft:deft"]["slo_attainment"] == 1.0 and out["deft:deft"]["lc_p99_ms"] == 10.0
    assert out["triton:none"]["slo_attainment"] == 0.0


def factor_entry(factor, att, mixed, alone, batch_p50):
    lc = dict(stream("detector", "latency-critical", 12.0, 20.0, att=att),
              slo_ms=round(factor * 8.0, 3), solo_p99_ms=None)
    batch = dict(stream("classifier", "batch", 2 * batch_p50, mixed, solo_tput=alone, bs=8),
                 p50_ms=batch_p50)
    return {"mix": "pair", "factor": factor, "seconds": 30.0, "solo_p99_ms": {"0": 8.0},
            "streams": [lc, batch]}


def with_factors(result, deft_tight=(0.995, 3.7, 4.0), layer_delay=900.0, gpu=True):
    result["gpu"] = gpu
    deft, layer = result["systems"][0], run("deft:layer", "deft", "layer", 14.0, 3.5)
    att, mixed, alone = deft_tight
    deft["slo_factors"] = [factor_entry(1.1, att, mixed, alone, 700.0),
                           factor_entry(2.0, 1.0, 3.9, 4.0, 600.0)]
    layer["slo_factors"] = [factor_entry(1.1, 0.97, 3.0, 4.0, 1000.0),
                            factor_entry(2.0, 1.0, 3.4, 4.0, layer_delay)]
    result["systems"].append(layer)
    return result


def test_factor_rows_give_each_system_and_factor_its_slo_and_batch_figures(result):
    rows = report.factor_rows(with_factors(result))
    assert [(r["label"], r["factor"]) for r in rows] == [
        ("deft:deft", 1.1), ("deft:deft", 2.0), ("deft:layer", 1.1), ("deft:layer", 2.0)]
    first = rows[0]
    assert first["slo_ms"] == 8.8 and first["attainment"] == 0.995
    assert first["batch_items_per_s"] == pytest.approx(3.7 * 8)
    assert first["retained"] == pytest.approx(3.7 / 4.0)
    assert first["batch_p50_ms"] == 700.0
    md = report.markdown(result)
    assert "## Other SLOs" in md
    assert "| deft:deft | 1.1 x | 8.80 | 99.5% | 12.00 | 29.6 | 32.0 | 92.5% | 700.0 |" in md


def test_gpu_checks_at_tight_and_loose_slos(result):
    checks = {c["check"]: c for c in report.checks(with_factors(result))}
    tight = checks["GPU: deft meets an SLO of 1.10 x solo p99 for >= 99%"]
    assert tight["value"] == 0.995 and tight["pass"] is True
    kept = checks["GPU: deft keeps >= 90% of its batch throughput at 1.10 x solo p99"]
    assert kept["value"] == 0.925 and kept["pass"] is True
    gain = checks["GPU: at 2 x solo p99, deft's batch inference delay >= 28% below layer's"]
    assert gain["value"] == pytest.approx(1 - 600.0 / 900.0, abs=1e-3) and gain["pass"]


def test_gpu_checks_fail_where_the_targets_are_missed(result):
    checks = {c["check"]: c["pass"] for c in report.checks(
        with_factors(result, deft_tight=(0.98, 3.0, 4.0), layer_delay=700.0))}
    assert checks["GPU: deft meets an SLO of 1.10 x solo p99 for >= 99%"] is False
    assert checks["GPU: deft keeps >= 90% of its batch throughput at 1.10 x solo p99"] is False
    assert checks["GPU: at 2 x solo p99, deft's batch inference delay >= 28% below "
                  "layer's"] is False


def test_gpu_checks_only_on_a_gpu_run(result):
    labels = [c["check"] for c in report.checks(with_factors(result, gpu=False))]
    assert not any(label.startswith("GPU:") for label in labels)
    # the table is still written: the factors can be run on a CPU too
    assert "## Other SLOs" in report.markdown(result)


def test_slo_factors_option_and_gpu_defaults():
    from e2e.bench.__main__ import (
        FACTOR_SYSTEMS,
        GPU_MIXES,
        GPU_SLO_FACTORS,
        GPU_SYSTEMS,
        parse_factors,
    )

    assert parse_factors(GPU_SLO_FACTORS) == [1.1, 2.0]
    assert parse_factors(None) == parse_factors("none") == parse_factors("") == []
    with pytest.raises(ValueError, match="above 1"):
        parse_factors("1.1,0.9")
    with pytest.raises(ValueError, match="not a number"):
        parse_factors("tight")
    labels = [s.label for s in select_systems(GPU_SYSTEMS, gpu=True)]
    assert labels[0] == "deft:deft" and set(FACTOR_SYSTEMS) <= set(labels)
    assert "deft:deft/same-stream" in labels and "kserve" in labels
    assert "deft:deft/switch-0.25ms" not in labels  # selected by name
    assert [s.label for s in select_systems("deft:deft/switch-0.25ms", gpu=True)] == \
        ["deft:deft/switch-0.25ms"]
    assert GPU_MIXES == "pair-poisson"


def test_device_bound_plan():
    from e2e.bench.__main__ import (
        FACTOR_SYSTEMS,
        GPU_DEVICE_MIXES,
        GPU_DEVICE_SYSTEMS,
        find_mixes,
        main,
    )
    from e2e.bench.workload import load_bench_workload

    labels = [s.label for s in select_systems(GPU_DEVICE_SYSTEMS, gpu=True)]
    assert labels[0] == "deft:deft" and set(FACTOR_SYSTEMS) <= set(labels)
    assert "deft:deft/no-calibration" in labels
    (path,) = find_mixes(GPU_DEVICE_MIXES, quick=False)
    assert path.parent.name == "gpu" and path not in find_mixes("all", quick=False)
    wl = load_bench_workload(path)
    assert set(wl.models) == {"detector", "encoder"}
    assert [s.latency_critical for s in wl.streams] == [True, False]
    assert main(["--device_bound"]) == 2  # a plan of --gpu only


def test_gpu_controls_start_the_runtime_differently(tmp_path):
    from e2e.bench.systems import NO_CALIBRATION, SAME_STREAM, SWITCH_SHORT, deft_server

    def args(variant):
        server = deft_server(tmp_path, "deft", tmp_path / "p.yaml", tmp_path / "x.log",
                             ["detector"], device="cuda", variant=variant)
        return server.args

    plain, same, switch = args(""), args(SAME_STREAM), args(SWITCH_SHORT)
    assert plain[plain.index("-m") + 1] == "runtime" and "--switch_interval_ms" not in plain
    assert same[same.index("-m") + 1] == "e2e.bench.same_stream_runtime"
    assert switch[switch.index("-m") + 1] == "runtime"
    assert switch[switch.index("--switch_interval_ms") + 1] == "0.25"
    fixed = args(NO_CALIBRATION)
    assert fixed[fixed.index("--calibration") + 1] == "off" and "--calibration" not in plain
    variants = {s.label: s.variant for s in all_systems(gpu=True)}
    assert variants["deft:deft/no-calibration"] == NO_CALIBRATION
    assert "deft:deft/no-calibration" not in [s.label for s in all_systems()]
    assert variants["deft:deft/same-stream"] == SAME_STREAM
    assert variants["deft:deft/switch-0.25ms"] == SWITCH_SHORT
    assert not any(s.reference for s in all_systems(gpu=True) if s.variant)


def test_slo_variant_reuses_the_reference_solo_p99_and_skips_its_own_solo(monkeypatch):
    from pathlib import Path

    from e2e.bench import driver
    from e2e.bench.workload import load_bench_workload

    wl = load_bench_workload(Path(__file__).parents[1] / "e2e" / "bench" / "workloads"
                             / "1-pair-poisson.json")
    seen = {}

    def fake_run_mix(url, wl, specs, phases, **kw):
        seen.update(kw, phases=phases)
        return "measured"

    monkeypatch.setattr(driver, "run_mix", fake_run_mix)
    out = driver.run_slo_variant("u", wl, {}, driver.Phases(), solo_p99_ms={0: 8.0},
                                 factor=1.1, send_priority=True, apply_slos=None)
    assert out == "measured"
    assert seen["reference_slo_ms"] == {0: 8.8}
    assert seen["phases"].solo_s == 0 and seen["phases"].batch_after_s == 0
    assert seen["phases"].batch_only_s == driver.Phases().batch_only_s
    assert seen["probe"] is False and seen["send_priority"] is True

    streams = [driver.Measured("detector", "latency-critical", 1, ""),
               driver.Measured("classifier", "batch", 8, "")]
    measured = driver.MixResult(wl.name, streams, {}, 0.0)
    measured.streams[0].solo_latencies_s = [i / 1000 for i in range(1, 101)]
    assert driver.reference_solo_p99_ms(measured, wl) == {0: pytest.approx(99.0)}


def test_mix_selection_by_name_all_and_quick():
    from e2e.bench.__main__ import GPU_MIXES, find_mixes

    every = find_mixes(None, quick=False)
    assert [p.stem for p in every] == ["1-pair-poisson", "2-pair-bursty", "3-trio-periodic"]
    assert find_mixes(None, quick=True) == every[:1]
    assert find_mixes("all", quick=True) == every
    assert find_mixes(GPU_MIXES, quick=False) == every[:1]
    assert find_mixes("trio-periodic,pair-bursty", quick=False) == [every[2], every[1]]
    with pytest.raises(SystemExit, match="no mix"):
        find_mixes("nonesuch", quick=False)


def test_a_run_cut_short_keeps_the_systems_it_finished(tmp_path):
    import json

    from e2e.bench.__main__ import save_partial

    path = tmp_path / "bench.partial.json"
    runs = [{"system": "deft", "policy": "deft", "label": "deft:deft", "mixes": []}]
    skipped = [{"label": "triton:none", "reason": "no peer"}]
    save_partial(path, "cpu", runs, skipped, {"median_error": 0.05}, 1)
    saved = json.loads(path.read_text())
    assert saved["partial"] is True and saved["device"] == "cpu"
    assert saved["systems"] == runs and saved["skipped"] == skipped
    assert saved["predictor"] == {"median_error": 0.05} and "machine" in saved


def test_encoder_splits_into_units_that_match_the_whole_model(tmp_path):
    import torch

    from e2e.bench.models import ENCODER_CONFIG, build_encoder, write_exported
    from runtime import model_repository as repo

    config = ENCODER_CONFIG.replace("[-1, 512]", "[-1, 32]").replace(
        "max_batch_size: 64", "max_batch_size: 4")
    model = build_encoder(vocab=50, width=32, depth=2, heads=4, hidden=64)
    write_exported(tmp_path / "encoder", "encoder", model, config, version=1)
    stamp = (tmp_path / "encoder" / ".deft-bench.json").read_text()
    write_exported(tmp_path / "encoder", "encoder", model, config, version=1)  # kept
    assert (tmp_path / "encoder" / ".deft-bench.json").read_text() == stamp
    loaded = repo.load(repo.find(tmp_path, "encoder"), "cpu", profile=False)
    assert loaded.model.num_units > 4
    assert loaded.config.inputs[0].datatype == "INT64"
    # ids beyond the vocabulary are clamped into it, not an index error
    tokens = torch.tensor([[0, 1, 49, 50, 10_000, -3] * 40 + [7] * 16, list(range(256))])
    whole = repo.load_program(repo.find(tmp_path, "encoder")).module()(tokens=tokens)
    (out,) = loaded.model({"tokens": tokens}).values()
    assert out.shape == (2, 32) and torch.allclose(out, whole, atol=1e-5)
    assert torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-5)


def test_speed_ratios_from_the_runtime_s_metrics():
    from e2e.bench.load import parse_speed_ratios

    text = "\n".join([
        "# HELP deft_profile_speed_ratio How long the model's chunks take ...",
        "# TYPE deft_profile_speed_ratio gauge",
        'deft_profile_speed_ratio{model="classifier"} 1.4375',
        'deft_profile_speed_ratio{model="embedder"} 0.9',
        'deft_sync_interval_units{model="classifier"} 16.0',
        'deft_profile_speed_ratio{model="odd"} not-a-number',
    ])
    assert parse_speed_ratios(text) == {"classifier": 1.4375, "embedder": 0.9}
    assert parse_speed_ratios("") == {}
    entry = {"mixes": [{"mix": "pair", "streams": [], "speed_ratio": {"classifier": 1.5}}]}
    assert report.speed_ratios(entry, "pair") == {"classifier": 1.5}
    assert report.speed_ratios(entry, "other") == {} == report.speed_ratios(None, "pair")


def test_the_replay_runs_each_policy_at_the_speed_the_runtime_measured(tmp_path):
    from dataclasses import replace

    from e2e.bench.__main__ import scale_profiles, simulator_section
    from e2e.bench.workload import load_bench_workload
    from e2e.server import ROOT

    assert scale_profiles({"m": {"1": [10.0, 20.0]}, "n": {"1": [5.0]}}, {"m": 1.5}) == \
        {"m": {"1": [15.0, 30.0]}, "n": {"1": [5.0]}}
    wl = replace(load_bench_workload(ROOT / "e2e/bench/workloads/1-pair-poisson.json"),
                 duration_s=4)
    profile = {"models": {"detector": {"profile": {"1": [250.0] * 4}},
                          "classifier": {"profile": {"8": [6000.0] * 16}}}}

    def deft_run(policy, p99, ratio):
        return {"system": "deft", "policy": policy, "label": f"deft:{policy}", "variant": "",
                "mixes": [{"mix": wl.name, "speed_ratio": ratio, "streams": [
                    stream("detector", "latency-critical", p99, 20.0),
                    stream("classifier", "batch", 600.0, 5.0, bs=8)]}]}

    runs = [deft_run("deft", 8.0, {"classifier": 1.5}), deft_run("fifo", 300.0, {}),
            deft_run("priority", 300.0, {"classifier": 1.5, "detector": 2.0})]
    sim = simulator_section([wl], profile, {wl.name: {0: 15.0}}, (15.0, 0.0), runs,
                            tmp_path, quick=True)
    rows = {r["policy"]: r for r in sim["replay"][wl.name]["rows"]}
    assert rows["fifo"]["speed_ratio"] == {}
    assert rows["fifo"]["startup_profile_error"] == rows["fifo"]["error"]
    # fifo and priority: the detector waits for the classifier's jobs, which take 1.5 x
    # longer at the measured speed; beside the CPU lane (deft) the batch speed does not
    # reach the latency-critical stream
    startup = sim["replay"][wl.name]["simulated"]["priority"]["streams"][0]["p99_ms"]
    assert rows["priority"]["sim_p99_ms"] == pytest.approx(1.5 * startup, rel=0.1)
    assert rows["priority"]["startup_profile_error"] != rows["priority"]["error"]
    assert rows["deft"]["speed_ratio"] == {"classifier": 1.5}
    lane = sim["replay"][wl.name]["simulated"]["deft"]["streams"][0]["p99_ms"]
    assert rows["deft"]["sim_p99_ms"] == pytest.approx(lane, abs=1e-3)
    md = "\n".join(report.simulator_md(sim))
    assert "| pair-poisson | priority | classifier 1.50, detector 2.00 |" in md
    assert "| pair-poisson | fifo | - |" in md
