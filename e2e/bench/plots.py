"""The suite's plots (matplotlib, Agg backend, small PNGs).

- ``lc_cdf.png``: latency CDF of the latency-critical model under mixed load, one line per
  system, one panel per mix;
- ``fixed_k_tradeoff.png``: the simulator's ``fixed:K`` curve (batch inference delay vs
  latency-critical p99), ``deft``'s choice marked, one panel per sweep;
- ``batch_retained.png``: batch throughput under latency-critical load as a share of the same
  batch load alone, per system and mix;
- ``predictor.png``: predicted vs measured inference delay.

Each function takes plain data and a path, and returns the path it wrote.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from e2e.bench.stats import cdf  # noqa: E402

DPI = 80


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def lc_cdfs(latencies: Mapping[str, Mapping[str, Sequence[float]]], slo_ms: Mapping[str, float],
            path: Path, title: str = "latency-critical model under mixed load") -> Path:
    """``latencies``: mix -> system label -> latencies in ms; ``slo_ms``: mix -> SLO."""
    mixes = list(latencies)
    fig, axes = plt.subplots(1, max(1, len(mixes)), figsize=(4.2 * max(1, len(mixes)), 3.4),
                             squeeze=False)
    for ax, mix in zip(axes[0], mixes, strict=False):
        for label, values in latencies[mix].items():
            if values:
                xs, ys = cdf(values)
                ax.step(xs, ys, where="post", label=label, linewidth=1.2)
        if mix in slo_ms:
            ax.axvline(slo_ms[mix], color="k", linestyle=":", linewidth=1, label="SLO")
        ax.set_xscale("log")
        ax.set_xlabel("latency (ms, log)")
        ax.set_title(mix, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("fraction of requests")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def fixed_k_tradeoff(sweeps: Mapping[str, Sequence[Mapping[str, Any]]], path: Path) -> Path:
    """``sweeps``: title -> points from ``accuracy.fixed_k_sweep``."""
    titles = list(sweeps)
    fig, axes = plt.subplots(1, max(1, len(titles)), figsize=(4.6 * max(1, len(titles)), 3.6),
                             squeeze=False)
    for ax, title in zip(axes[0], titles, strict=False):
        pts = [p for p in sweeps[title] if p["policy"].startswith("fixed:")]
        xs = [p["batch_inference_p50_ms"] for p in pts]
        ys = [p["lc_p99_ms"] for p in pts]
        ax.plot(xs, ys, "o-", color="tab:blue", label="fixed:K")
        for p, x, y in zip(pts, xs, ys, strict=True):
            ax.annotate(p["policy"].split(":")[1], (x, y), textcoords="offset points",
                        xytext=(4, 3), fontsize=7)
        for p in sweeps[title]:
            if p["policy"] == "deft":
                ax.plot([p["batch_inference_p50_ms"]], [p["lc_p99_ms"]], "*", markersize=14,
                        color="tab:red", label="deft")
        ax.set_xlabel("batch inference delay p50 (ms)")
        ax.set_ylabel("latency-critical p99 (ms)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("simulator: sync every K units", fontsize=10)
    return _save(fig, path)


def batch_retained(retained: Mapping[str, Mapping[str, float | None]], path: Path) -> Path:
    """``retained``: system label -> mix -> mixed / alone batch throughput."""
    labels = list(retained)
    mixes = sorted({m for v in retained.values() for m in v})
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(labels) + 2), 3.4))
    width = 0.8 / max(1, len(mixes))
    for j, mix in enumerate(mixes):
        vals = [retained[lbl].get(mix) or 0.0 for lbl in labels]
        pos = [i + (j - (len(mixes) - 1) / 2) * width for i in range(len(labels))]
        ax.bar(pos, [100 * v for v in vals], width, label=mix)
    ax.axhline(100, color="k", linewidth=0.8, linestyle=":")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("batch throughput retained (%)")
    ax.set_title("batch throughput under latency-critical load / alone", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def predictor_scatter(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """``rows``: ``accuracy.predictor_accuracy()["inference"]``."""
    fig, ax = plt.subplots(figsize=(4.4, 4.0))
    models = sorted({r["model"] for r in rows})
    for model in models:
        mine = [r for r in rows if r["model"] == model]
        ax.scatter([r["measured_ms"] for r in mine], [r["predicted_ms"] for r in mine],
                   label=model, s=18)
    vals = [v for r in rows for v in (r["measured_ms"], r["predicted_ms"]) if v and v > 0]
    if vals:
        lo, hi = min(vals) * 0.8, max(vals) * 1.25
        ax.plot([lo, hi], [lo, hi], "k:", linewidth=1)
        ax.fill_between([lo, hi], [lo * 0.85, hi * 0.85], [lo * 1.15, hi * 1.15], alpha=0.12,
                        color="gray", label="±15%")
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel("measured inference delay (ms)")
    ax.set_ylabel("predicted (ms)")
    ax.set_title("delay predictor vs measurement", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, path)
