"""The suite's outputs from its measurements: the checks, ``bench.json`` and ``bench.md``.
Pure: plain data in, plain data and text out.

``bench.json``::

    {"machine", "quick", "gpu", "seconds", "mixes": [{name, description, duration_s,
     streams}], "systems": [{"system", "policy", "label", "variant", "startup_s",
     "probe": {model: {p50_ms, p99_ms}},
     "mixes": [{"mix", "seconds", "streams": [{model, priority, completed, p50_ms, p99_ms,
                solo_p99_ms, slo_attainment, throughput_per_s, ...}]}],
     "slo_factors": [{"mix", "factor", "solo_p99_ms", "streams": [...]}]}],
     "skipped": [{"label", "reason"}], "predictor": {...}, "simulator": {...},
     "checks": [{"check", "value", "pass"}]}

The checks compare systems measured side by side in the same run, on the first mix (the
primary one); the tables in ``bench.md`` cover every mix.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from e2e.bench.stats import ratio

REFERENCE = "deft:deft"


def _mix(run: Mapping[str, Any], mix: str) -> Mapping[str, Any] | None:
    for m in run.get("mixes", []):
        if m["mix"] == mix:
            return m
    return None


def lc_stream(run: Mapping[str, Any], mix: str) -> Mapping[str, Any] | None:
    """The first latency-critical stream of ``mix`` on ``run``."""
    m = _mix(run, mix)
    if m is None:
        return None
    return next((s for s in m["streams"] if s["priority"] == "latency-critical"), None)


def speed_ratios(run: Mapping[str, Any] | None, mix: str) -> dict[str, float]:
    """How fast each model ran against its profile during ``mix`` on ``run``, as the
    runtime measured it (``deft_profile_speed_ratio``; empty where not reported)."""
    m = _mix(run, mix) if run is not None else None
    return dict(m.get("speed_ratio") or {}) if m is not None else {}


def batch_items_per_s(run: Mapping[str, Any], mix: str, solo: bool = False) -> float | None:
    """Batch work done (requests x batch size per second) over every batch stream of ``mix``,
    under mixed load or (``solo``) in the batch-only phase."""
    m = _mix(run, mix)
    if m is None:
        return None
    return _batch_items(m["streams"], solo)


def _batch_items(streams: Sequence[Mapping[str, Any]], solo: bool = False) -> float | None:
    key = "solo_throughput_per_s" if solo else "throughput_per_s"
    vals = [(s.get(key), s.get("batch_size", 1)) for s in streams if s["priority"] == "batch"]
    if not vals or any(v is None for v, _ in vals):
        return None
    return sum(v * b for v, b in vals)


def factor_rows(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The primary mix at other SLOs (``--slo_factors``), one row per system and factor:
    the first latency-critical stream's SLO, attainment and p99, and the batch streams'
    items/s under that load and alone (the run's own batch-only phase), their ratio, and the
    batch requests' median latency (the batch inference delay, queueing included)."""
    rows = []
    for run in result.get("systems", []):
        for v in run.get("slo_factors") or []:
            streams = v.get("streams", [])
            lc = next((x for x in streams if x["priority"] == "latency-critical"), {})
            batch = [x for x in streams if x["priority"] == "batch"]
            mixed, alone = _batch_items(streams), _batch_items(streams, solo=True)
            delays = [x["p50_ms"] for x in batch if x.get("p50_ms") is not None]
            rows.append({
                "label": run["label"], "mix": v.get("mix"), "factor": v["factor"],
                "slo_ms": lc.get("slo_ms"), "attainment": lc.get("slo_attainment"),
                "lc_p99_ms": lc.get("p99_ms"), "batch_items_per_s": mixed,
                "batch_alone_items_per_s": alone, "retained": ratio(mixed, alone),
                "batch_p50_ms": max(delays) if delays else None,
            })
    return rows


def _factor_row(rows: list[dict[str, Any]], label: str, factor: float) -> dict[str, Any] | None:
    return next((r for r in rows if r["label"] == label and abs(r["factor"] - factor) < 1e-9),
                None)


def gpu_checks(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The targets for a GPU run at other SLOs: at 1.10 x solo p99, ``deft`` meets the SLO
    for >= 99% and keeps >= 90% of its batch throughput; at 2 x, its batch inference delay
    (batch p50 latency) is at least 28% below ``layer``'s."""
    rows = factor_rows(result)
    out: list[dict[str, Any]] = []

    def add(text: str, value: float | None, ok: bool) -> None:
        out.append({"check": text, "value": _r(value),
                    "pass": None if value is None else bool(ok)})

    tight = _factor_row(rows, REFERENCE, 1.1)
    if tight is not None:
        att = tight["attainment"]
        add("GPU: deft meets an SLO of 1.10 x solo p99 for >= 99%", att,
            att is not None and att >= 0.99)
        kept = tight["retained"]
        add("GPU: deft keeps >= 90% of its batch throughput at 1.10 x solo p99", kept,
            kept is not None and kept >= 0.9)
    mine, theirs = _factor_row(rows, REFERENCE, 2.0), _factor_row(rows, "deft:layer", 2.0)
    if mine is not None and theirs is not None:
        a, b = mine["batch_p50_ms"], theirs["batch_p50_ms"]
        gain = (b - a) / b if a is not None and b else None
        add("GPU: at 2 x solo p99, deft's batch inference delay >= 28% below layer's", gain,
            gain is not None and gain >= 0.28)
    return out


def factor_md(result: Mapping[str, Any]) -> list[str]:
    rows = factor_rows(result)
    if not rows:
        return []
    out = ["## Other SLOs", "",
           f"The {rows[0]['mix']} mix again on the systems below with the latency-critical "
           "SLO at other factors of the reference's solo p99 (the one measured for the table "
           "above), each after a batch-only phase of its own. *Batch p50* is the batch "
           "requests' median latency: the batch inference delay, queueing included.", "",
           "| system | SLO factor | SLO ms | SLO met | LC p99 ms | batch items/s (mixed) | "
           "batch items/s (alone) | retained | batch p50 ms |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append("| " + " | ".join([
            r["label"], f"{r['factor']:g} x", _f(r["slo_ms"]), _pct(r["attainment"]),
            _f(r["lc_p99_ms"]), _f(r["batch_items_per_s"], 1),
            _f(r["batch_alone_items_per_s"], 1), _pct(r["retained"]),
            _f(r["batch_p50_ms"], 1)]) + " |")
    return out + [""]


def _r(x: float | None, digits: int = 3) -> float | None:
    return None if x is None or not math.isfinite(x) else round(x, digits)


def checks(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The targets, each ``{"check", "value", "pass"}``; ``pass`` is None where the inputs
    are missing (a system that did not run)."""
    runs = {r["label"]: r for r in result.get("systems", [])}
    mixes = result.get("mixes", [])
    primary = mixes[0]["name"] if mixes else None
    out: list[dict[str, Any]] = []

    def add(text: str, value: float | None, ok: bool | None) -> None:
        out.append({"check": text, "value": _r(value),
                    "pass": None if value is None or ok is None else bool(ok)})

    deft = runs.get(REFERENCE)
    kserve = runs.get("kserve")
    tritons = [r for label, r in runs.items() if r["system"] == "triton"]
    lc = lc_stream(deft, primary) if deft and primary else None
    if lc is not None:
        att = lc.get("slo_attainment")
        add(f"deft meets the {lc['model']} SLO (1.5 x solo p99) for >= 99% ({primary})",
            att, att is not None and att >= 0.99)
    if deft and primary:
        legacy = result.get("legacy", {})
        batch = next((s["model"] for m in deft.get("mixes", []) if m["mix"] == primary
                      for s in m["streams"] if s.get("priority") == "batch"), "batch model")
        solo = batch_items_per_s(deft, primary, solo=True)
        mixed = batch_items_per_s(deft, primary)
        share = legacy.get("device_share_left")
        if solo and mixed is not None and share:
            add(f"{batch} throughput under load >= 85% x solo x device share left "
                f"({share:.3f})", mixed / (solo * share), mixed >= 0.85 * solo * share)
        overhead = legacy.get("serving_overhead") or {}
        compute = legacy.get("classifier_in_process_items_per_s")
        if overhead.get("ratio") is not None:
            add(f"{batch} solo throughput over HTTP >= 90% of in-process compute "
                "(alternating windows)", overhead["ratio"], overhead["ratio"] >= 0.9)
        elif solo and compute:
            add(f"{batch} solo throughput over HTTP >= 90% of in-process compute",
                solo / compute, solo / compute >= 0.9)
    if lc is not None and kserve is not None:
        other = lc_stream(kserve, primary)
        r = ratio(other and other.get("p99_ms"), lc.get("p99_ms"))
        add(f"plain kserve {lc['model']} p99 under load >= 20 x deft's", r,
            r is not None and r >= 20)
        dp = (deft.get("probe") or {}).get(lc["model"], {}).get("p50_ms")
        kp = (kserve.get("probe") or {}).get(lc["model"], {}).get("p50_ms")
        r = ratio(kp, dp)
        if r is not None:
            add(f"{lc['model']} sequential round trip >= 3 x faster than plain kserve", r,
                r >= 3)
    if lc is not None and tritons:
        best = None
        for t in tritons:
            st = lc_stream(t, primary)
            r = ratio(st and st.get("p99_ms"), lc.get("p99_ms"))
            add(f"{t['label']} {lc['model']} p99 under load / deft's (target >= 2)", r,
                r is not None and r >= 2)
            best = r if best is None or (r is not None and r < best) else best
        add(f"deft {lc['model']} p99 >= 2 x lower than Triton's (best Triton variant)", best,
            best is not None and best >= 2)
        paired = (result.get("paired") or {}).get("systems") or {}
        mine_paired = (paired.get(REFERENCE) or {}).get("batch_items_per_s_median")
        theirs_paired = [v.get("batch_items_per_s_median") for label, v in paired.items()
                         if label.startswith("triton")]
        theirs_paired = [x for x in theirs_paired if x]
        mine = batch_items_per_s(deft, primary)
        theirs = [batch_items_per_s(t, primary) for t in tritons]
        theirs = [x for x in theirs if x]
        if mine_paired is not None and theirs_paired:
            for label, v in paired.items():
                other = v.get("batch_items_per_s_median")
                if label.startswith("triton") and other:
                    r = mine_paired / other
                    add(f"deft batch throughput / {label}'s under load (paired windows, "
                        "target >= 0.95)", r, r >= 0.95)
            r = mine_paired / max(theirs_paired)
            add("deft batch throughput under load >= 95% of Triton's (best Triton variant; "
                "paired windows, medians)", r, r >= 0.95)
        elif mine is not None and theirs:
            r = mine / max(theirs)
            add("deft batch throughput under load >= 95% of Triton's (best Triton variant)",
                r, r >= 0.95)
    pred = result.get("predictor") or {}
    if pred.get("median_error") is not None:
        e = pred["median_error"]
        add("predicted inference delay within 15% of measured (median over models)", e,
            e <= 0.15)
    replay = ((result.get("simulator") or {}).get("replay") or {}).get(primary) or {}
    device = "simulated device with the runtime's CPU lane" if replay.get("cpu_lane") \
        else "simulated device"
    for row in replay.get("rows", []):
        if row.get("error") is None:
            continue
        if row["policy"] == "deft":
            add("simulator replay predicts deft's latency-critical p99 within 25% "
                f"({device} + measured solo transport)", row["error"], row["error"] <= 0.25)
    if result.get("gpu"):
        out += gpu_checks(result)
    return out


# ---------------------------------------------------------------------------------------------
# markdown


def _f(x: Any, digits: int = 2) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if not math.isfinite(x):
            return "-"
        return f"{x:.{digits}f}" if abs(x) < 1000 else f"{x:.0f}"
    return str(x)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def mix_table(result: Mapping[str, Any], mix: Mapping[str, Any]) -> list[str]:
    """One row per system: the latency-critical stream(s) and the batch streams of ``mix``."""
    name = mix["name"]
    lines = [f"### {name}", "", mix.get("description", ""), "",
             "| system | LC model | LC p50 ms | LC p99 ms | LC solo p99 ms | SLO ms | SLO met | "
             "batch items/s (mixed) | batch items/s (alone) | retained | errors |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in result.get("systems", []):
        m = _mix(run, name)
        if m is None:
            continue
        lcs = [s for s in m["streams"] if s["priority"] == "latency-critical"] or [{}]
        mixed = batch_items_per_s(run, name)
        alone = batch_items_per_s(run, name, solo=True)
        errors = sum(s.get("errors", 0) for s in m["streams"])
        for i, s in enumerate(lcs):
            batch_cols = [_f(mixed, 1), _f(alone, 1), _pct(ratio(mixed, alone))] if i == 0 \
                else ["", "", ""]
            lines.append("| " + " | ".join([
                run["label"], s.get("model", "-"), _f(s.get("p50_ms")), _f(s.get("p99_ms")),
                _f(s.get("solo_p99_ms")), _f(s.get("slo_ms")), _pct(s.get("slo_attainment")),
                *batch_cols, str(errors)]) + " |")
    return lines


def markdown(result: Mapping[str, Any]) -> str:
    plan = " (GPU, device-bound plan)" if result.get("device_bound") else \
        " (GPU)" if result.get("gpu") else ""
    out = [f"# Deft evidence suite{plan}", "",
           f"Machine: {result.get('machine', '?')}  ",
           f"Run: {'quick' if result.get('quick') else 'full'}, "
           f"{_f(result.get('seconds'), 0)} s, {result.get('started', '')}", "",
           "Every system is a real server process on loopback serving the same `model.pt2` "
           "files, driven by tritonclient over HTTP: latency-critical (LC) streams open-loop, "
           "batch streams closed-loop. LC latencies count from each request's scheduled send "
           "time. SLOs are 1.5 x the LC stream's solo p99 on Deft (`deft` policy). "
           "*Batch items/s* is requests x batch size per second over the mix's batch streams; "
           "*retained* is that under LC load over the same batch load alone.", ""]
    if result.get("skipped"):
        out += ["Skipped: " + "; ".join(f"{s['label']}: {s['reason']}"
                                         for s in result["skipped"]), ""]
    attempts = result.get("profile_attempts") or []
    if attempts and attempts[-1].get("reused"):
        out += ["Profile: the last run's (quick runs reuse a profile that agreed with "
                "whole-model runs).", ""]
    elif attempts:
        last = attempts[-1]["measured_over_profile"]
        out += [f"Profile: measured afresh ({len(attempts)} attempt"
                f"{'s' if len(attempts) > 1 else ''}); whole-model run over the profile's sum: "
                + ", ".join(f"{k} {_f(v)}" for k, v in last.items()) + ".", ""]
    overhead = (result.get("legacy") or {}).get("serving_overhead")
    if overhead:
        out += [f"Serving overhead: the primary mix's batch model (batch "
                f"{overhead['batch_size']}, {overhead['clients']} closed-loop clients) on "
                f"Deft over HTTP and in this process without HTTP, in {overhead['windows']} "
                f"alternating windows of {overhead['window_s']:g} s: "
                + ", ".join(_f(v) for v in overhead["http_items_per_s"]) + " against "
                + ", ".join(_f(v) for v in overhead["in_process_items_per_s"])
                + " items/s.", ""]
    out += ["## Checks", "", "| check | value | pass |", "|---|---|---|"]
    for c in result.get("checks", []):
        mark = "-" if c["pass"] is None else ("yes" if c["pass"] else "NO")
        out.append(f"| {c['check']} | {_f(c['value'], 3)} | {mark} |")
    out += ["", "## Mixes", ""]
    for mix in result.get("mixes", []):
        out += mix_table(result, mix) + [""]
    probes = [(r["label"], m, p) for r in result.get("systems", [])
              for m, p in (r.get("probe") or {}).items()]
    if probes:
        out += ["Sequential round trips (one request at a time, first mix):", "",
                "| system | model | p50 ms | p99 ms |", "|---|---|---|---|"]
        out += [f"| {lbl} | {m} | {_f(p.get('p50_ms'))} | {_f(p.get('p99_ms'))} |"
                for lbl, m, p in probes] + [""]
    out += factor_md(result)
    out += paired_md(result.get("paired") or {})
    out += predictor_md(result.get("predictor") or {})
    out += simulator_md(result.get("simulator") or {})
    if result.get("stages"):
        out += ["Stages (seconds; 1-minute load average at the end of each. The profile and "
                "predictor stages run one process: a load well above 1 there means other work "
                "shared the machine while the profile was measured):", "",
                ", ".join(f"{st['stage']} {_f(st['seconds'], 0)} s (load "
                          f"{_f(st['loadavg_1m'], 2)})" for st in result["stages"]), ""]
    plots = result.get("plots") or []
    if plots:
        out += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    return "\n".join(out).rstrip() + "\n"


def paired_md(paired: Mapping[str, Any]) -> list[str]:
    systems = paired.get("systems") or {}
    if not systems:
        return []
    out = ["## Paired windows", "",
           f"The {paired.get('mix')} mix's mixed phase (latency-critical stream and batch "
           f"clients) on the servers below in turns, {paired.get('rounds')} rounds of one "
           f"{paired.get('window_s')} s window each (after {paired.get('warm_s')} s with the "
           "batch clients going), the others idle meanwhile: the machine's speed drifts over "
           "minutes, and windows in turns share the drift. The batch throughput check uses "
           "these medians.", "",
           "| system | batch items/s per window | median | LC p50 ms | LC p99 ms | SLO met |",
           "|---|---|---|---|---|---|"]
    for label, v in systems.items():
        out.append(f"| {label} | {', '.join(_f(x, 1) for x in v.get('batch_items_per_s', []))}"
                   f" | {_f(v.get('batch_items_per_s_median'), 1)} | {_f(v.get('lc_p50_ms'))} | "
                   f"{_f(v.get('lc_p99_ms'))} | {_pct(v.get('slo_attainment'))} |")
    return out + [""]


def predictor_md(pred: Mapping[str, Any]) -> list[str]:
    if not pred:
        return []
    c = pred.get("costs_us", {})
    cached = pred.get("cached_profile_median_error")
    out = ["## Predictor accuracy", "",
           f"`scheduler.predictor.Predictor` with CPU costs (launch {c.get('launch')} us, sync "
           f"{c.get('sync')} us per chunk) against `SegmentedModel.run` timed in-process "
           f"(median of {pred.get('repeats')}), given a profile measured by the profiler's own "
           f"pass in turns with those runs (the machine's speed drifts within minutes). "
           f"Median error over models: **{_pct(pred.get('median_error'))}** "
           f"(per model: " + ", ".join(f"{k} {_pct(v)}" for k, v in
                                       (pred.get("median_error_by_model") or {}).items())
           + ")" + (f"; from the runtime's cached profile, measured at the start of the run: "
                    f"{_pct(cached)}" if cached is not None else "") + ".", "",
           "| model | batch | plan | predicted ms | measured ms | error | from cached "
           "profile ms | error |",
           "|---|---|---|---|---|---|---|---|"]
    out += [f"| {r['model']} | {r['batch_size']} | {r['plan']} | {_f(r['predicted_ms'])} | "
            f"{_f(r['measured_ms'])} | {_pct(r['error'])} | "
            f"{_f(r.get('cached_profile_predicted_ms'))} | {_pct(r.get('cached_profile_error'))} |"
            for r in pred.get("inference", [])]
    if pred.get("preemption"):
        out += ["", "Preemption delay: Poisson arrivals on a second thread wait for the batch "
                "job's next chunk boundary (predicted: expected wait for a uniform arrival, and "
                f"the longest chunk). Median error of the expected wait: "
                f"{_pct(pred.get('preemption_median_error'))}.", "",
                "| model | batch | plan | arrivals | predicted mean ms | measured mean ms | "
                "predicted worst ms | measured max ms | error |",
                "|---|---|---|---|---|---|---|---|---|"]
        out += [f"| {p['model']} | {p['batch_size']} | {p['plan']} | {p['arrivals']} | "
                f"{_f(p['predicted_expected_ms'])} | {_f(p['measured_mean_ms'])} | "
                f"{_f(p['predicted_worst_ms'])} | {_f(p['measured_max_ms'])} | "
                f"{_pct(p['error'])} |" for p in pred["preemption"]]
    return out + [""]


def simulator_md(sim: Mapping[str, Any]) -> list[str]:
    if not sim:
        return []
    out = ["## Simulator replay", "",
           "Each mix replayed by `scheduler.sim` on the runtime's own profiles "
           "(`python -m runtime profile`), the runtime's CPU costs and the SLOs measured on "
           "Deft. Each policy's replay scales each model's profile by the speed the runtime "
           "measured its chunks at in that run (`deft_profile_speed_ratio`, the *speed "
           "ratio* column: this machine's speed drifts between the profile and the runs); "
           "the error of the replay on the start-up profiles is shown beside it. "
           "The simulator models the device only, so the replay adds the transport "
           "time measured in the solo phase at the same percentile (server's LC solo p99 "
           "minus the simulated solo p99) to the simulated p99; the raw simulated p99 is "
           "shown too."
           + (" On the CPU the workloads set `device.cpu_lane`: for the preemptive policies "
              "the simulator models the runtime's CPU lane (latency-critical jobs on a thread "
              "of their own at solo speed, batch work pausing at every unit boundary while "
              "one is active); `fifo` and `priority` run without it, as in the runtime."
              if any(r.get("cpu_lane") for r in (sim.get("replay") or {}).values()) else ""),
           "",
           "| mix | policy | speed ratio | simulated p99 ms | + transport ms | "
           "measured p99 ms | error | raw error | error, start-up profiles |",
           "|---|---|---|---|---|---|---|---|---|"]
    for mix, rep in (sim.get("replay") or {}).items():
        for r in rep.get("rows", []):
            ratios = ", ".join(f"{m} {v:.2f}" for m, v in sorted(
                (r.get("speed_ratio") or {}).items())) or "-"
            startup = r.get("startup_profile_error", r["error"])
            out.append(f"| {mix} | {r['policy']} | {ratios} | {_f(r['sim_p99_ms'])} | "
                       f"{_f(r['sim_p99_with_transport_ms'])} | {_f(r['measured_p99_ms'])} | "
                       f"{_pct(r['error'])} | {_pct(r['raw_error'])} | {_pct(startup)} |")
    for title, points in (sim.get("sweeps") or {}).items():
        out += ["", f"`fixed:K` trade-off, {title}:", "",
                "| policy | batch inference p50 ms | LC p99 ms | LC SLO met | sync points |",
                "|---|---|---|---|---|"]
        out += [f"| {p['policy']} | {_f(p['batch_inference_p50_ms'], 3)} | "
                f"{_f(p['lc_p99_ms'], 3)} | {_pct(p['lc_slo_attainment'])} | "
                f"{p['sync_points']} |" for p in points]
    return out + [""]


def shape_errors(result: Mapping[str, Any]) -> list[str]:
    """What ``bench.json`` lacks against its contract (empty: well formed)."""
    problems = []
    for key in ("machine", "mixes", "systems", "checks"):
        if key not in result:
            problems.append(f"missing {key}")
    fields = ("model", "priority", "completed", "p50_ms", "p99_ms", "solo_p99_ms",
              "slo_attainment", "throughput_per_s")
    for run in result.get("systems", []):
        for key in ("system", "policy", "label", "mixes"):
            if key not in run:
                problems.append(f"system entry lacks {key}")
        for m in run.get("mixes", []):
            for s in m.get("streams", []):
                missing = [f for f in fields if f not in s]
                if missing:
                    problems.append(f"{run.get('label')}/{m.get('mix')}: stream lacks {missing}")
    return problems


def replay_rows(sim_policies: Mapping[str, Any], measured: Mapping[str, Mapping[str, Any]],
                transport_ms: float | None, lc_index: int) -> list[dict[str, Any]]:
    """Simulated vs measured LC p99 per Deft policy. ``sim_policies``: policy -> simulated
    summary; ``measured``: policy -> the server's LC stream summary."""
    rows = []
    for policy, summary in sim_policies.items():
        got = measured.get(policy)
        sim_p99 = summary["streams"][lc_index]["p99_ms"]
        if got is None or sim_p99 is None:
            continue
        meas = got.get("p99_ms")
        with_t = sim_p99 + transport_ms if transport_ms is not None else None
        rows.append({
            "policy": policy, "sim_p99_ms": _r(sim_p99), "transport_ms": _r(transport_ms),
            "sim_p99_with_transport_ms": _r(with_t), "measured_p99_ms": meas,
            "error": _r(abs(with_t - meas) / meas, 4) if with_t is not None and meas else None,
            "raw_error": _r(abs(sim_p99 - meas) / meas, 4) if meas else None,
        })
    return rows


def sequence_stats(values: Sequence[float]) -> dict[str, float | None]:
    from e2e.bench.stats import ms, percentile

    return {"p50_ms": ms(percentile(values, 0.5)), "p99_ms": ms(percentile(values, 0.99)),
            "n": len(values)}
