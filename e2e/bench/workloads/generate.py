"""Writes the bench mixes in this folder (``python e2e/bench/workloads/generate.py``).

Each file is a bench workload (``e2e/bench/workload.py``): DISB-style latency-critical streams
(periodic, Poisson, a bursty trace) beside closed-loop batch streams, on the bench models.
``gpu/`` holds mixes for GPUs, chosen by name (``--mixes``).
The bursty trace is drawn from a fixed seed: bursts of 2-6 requests 1 ms apart, burst starts
0.4 s apart on average (exponential), so the files are reproducible.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SLO = {"solo_p99_factor": 1.5}


def bursty_trace(duration_s: float, mean_gap_s: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    out: list[float] = []
    t = rng.uniform(0.05, mean_gap_s)
    while t < duration_s:
        for i in range(rng.randint(2, 6)):
            if t + i * 0.001 < duration_s:
                out.append(round((t + i * 0.001) * 1000.0, 3))
        t += max(0.1, rng.expovariate(1.0 / mean_gap_s))
    return out


def main() -> None:
    classifier = {"model": "classifier", "priority": "batch", "batch_size": 8,
                  "arrival": {"type": "closed", "clients": 2}}
    mixes = [
        {
            "name": "pair-poisson",
            "description": "detector, Poisson 20/s, SLO 1.5 x solo p99, beside the classifier "
                           "in batches of 8 from two closed-loop clients",
            "duration_s": 20, "seed": 1,
            "models": {"detector": {}, "classifier": {}},
            "streams": [
                {"model": "detector", "priority": "latency-critical", "slo_ms": SLO,
                 "batch_size": 1, "arrival": {"type": "poisson", "rate_per_s": 20}},
                classifier,
            ],
        },
        {
            "name": "pair-bursty",
            "description": "detector in bursts of 2-6 requests (a trace, about 10/s), SLO 1.5 "
                           "x solo p99, beside the classifier in batches of 8",
            "duration_s": 8, "seed": 2,
            "models": {"detector": {}, "classifier": {}},
            "streams": [
                {"model": "detector", "priority": "latency-critical", "slo_ms": SLO,
                 "batch_size": 1,
                 "arrival": {"type": "trace", "offsets_ms": bursty_trace(30.0, 0.4, 7)}},
                classifier,
            ],
        },
        {
            "name": "trio-periodic",
            "description": "detector, periodic 15/s, SLO 1.5 x solo p99, beside two batch "
                           "models (classifier and embedder, batches of 8, one client each)",
            "duration_s": 8, "seed": 3,
            "models": {"detector": {}, "classifier": {}, "embedder": {}},
            "streams": [
                {"model": "detector", "priority": "latency-critical", "slo_ms": SLO,
                 "batch_size": 1, "arrival": {"type": "periodic", "rate_per_s": 15}},
                dict(classifier, arrival={"type": "closed", "clients": 1}),
                {"model": "embedder", "priority": "batch", "batch_size": 8,
                 "arrival": {"type": "closed", "clients": 1}},
            ],
        },
    ]
    for i, mix in enumerate(mixes, 1):
        (HERE / f"{i}-{mix['name']}.json").write_text(json.dumps(mix, indent=1) + "\n")
    # GPU mixes (gpu/, run by name): a batch model the device bounds, not the host
    gpu = [
        {
            "name": "encoder-poisson",
            "description": "detector, Poisson 40/s, SLO 1.5 x solo p99, beside a transformer "
                           "encoder over 256 token ids in batches of 64 from two closed-loop "
                           "clients (on a GPU: compute-bound)",
            "duration_s": 20, "seed": 4,
            "models": {"detector": {}, "encoder": {}},
            "streams": [
                {"model": "detector", "priority": "latency-critical", "slo_ms": SLO,
                 "batch_size": 1, "arrival": {"type": "poisson", "rate_per_s": 40}},
                {"model": "encoder", "priority": "batch", "batch_size": 64,
                 "arrival": {"type": "closed", "clients": 2}},
            ],
        },
    ]
    (HERE / "gpu").mkdir(exist_ok=True)
    for mix in gpu:
        (HERE / "gpu" / f"{mix['name']}.json").write_text(json.dumps(mix, indent=1) + "\n")


if __name__ == "__main__":
    main()
