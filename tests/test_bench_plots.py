"""The suite's plots on synthetic data: each writes a small PNG."""

from __future__ import annotations

import random

from e2e.bench import plots

PNG = b"\x89PNG"


def check(path):
    data = path.read_bytes()
    assert data.startswith(PNG) and 1000 < len(data) < 200_000


def test_plots(tmp_path):
    rng = random.Random(1)
    lat = {"pair": {"deft:deft": [rng.uniform(4, 9) for _ in range(200)],
                    "kserve": [rng.uniform(300, 2000) for _ in range(200)]},
           "trio": {"deft:deft": [rng.uniform(4, 12) for _ in range(50)], "empty": []}}
    check(plots.lc_cdfs(lat, {"pair": 15.0}, tmp_path / "cdf.png"))
    sweep = [{"policy": f"fixed:{k}", "batch_inference_p50_ms": 100 - k, "lc_p99_ms": 5 + 3 * k}
             for k in (1, 2, 4, 8)] + [{"policy": "deft", "batch_inference_p50_ms": 97,
                                        "lc_p99_ms": 9}]
    check(plots.fixed_k_tradeoff({"a": sweep, "b": sweep[:2]}, tmp_path / "k.png"))
    check(plots.batch_retained({"deft:deft": {"pair": 0.9, "trio": 0.8},
                                "kserve": {"pair": 0.4, "trio": None}}, tmp_path / "r.png"))
    rows = [{"model": m, "measured_ms": x, "predicted_ms": x * f}
            for m, x, f in (("a", 1.0, 1.1), ("a", 10.0, 0.9), ("b", 100.0, 1.0))]
    check(plots.predictor_scatter(rows, tmp_path / "p.png"))
