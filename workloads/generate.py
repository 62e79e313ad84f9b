"""Writes the DISB-style workloads in this folder from published kernel statistics.

Batch-1 kernel statistics as published for REEF's DISB models: VGG-19 about 71 kernels in
4.8 ms, ResNet-152 about 207 kernels in 13.2 ms, median kernel 20-48 us. Kernel durations are
drawn from a seeded log-normal with that median and rescaled to the published total, so the
files are reproducible: ``python workloads/generate.py``. Batch 32 lengthens each kernel
(12x here: large batches fill the GPU better, so time grows sublinearly in the batch size).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEVICE = {"launch_overhead_us": 5, "sync_overhead_us": 20}


def kernels(n: int, total_us: float, median_us: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    raw = [rng.lognormvariate(0.0, 1.1) for _ in range(n)]
    raw.sort()
    med = raw[n // 2]
    # scale so the median is median_us, then stretch the tail so the total matches
    base = [x / med * median_us for x in raw]
    small = [x for x in base if x <= median_us]
    large = [x for x in base if x > median_us]
    factor = (total_us - sum(small)) / sum(large)
    rng.shuffle(base)
    out = [round(x if x <= median_us else x * factor, 1) for x in base]
    return out


def main() -> None:
    vgg = kernels(71, 4800.0, 40.0, seed=19)
    resnet = kernels(207, 13200.0, 30.0, seed=152)
    resnet32 = [round(x * 12, 1) for x in resnet]
    lc = {
        "model": "vgg19",
        "priority": "latency-critical",
        "slo_ms": 10,
        "batch_size": 1,
        "arrival": {"type": "poisson", "rate_per_s": 50},
    }
    mix = {
        "name": "disb-mix",
        "duration_s": 20,
        "seed": 1,
        "device": DEVICE,
        "models": {"vgg19": {"profile": {"1": vgg}}, "resnet152": {"profile": {"1": resnet}}},
        "streams": [
            lc,
            {
                "model": "resnet152",
                "priority": "batch",
                "batch_size": 1,
                "arrival": {"type": "closed", "clients": 4},
            },
        ],
    }
    b32 = {
        "name": "disb-batch32",
        "duration_s": 20,
        "seed": 2,
        "device": DEVICE,
        "models": {
            "vgg19": {"profile": {"1": vgg}},
            "resnet152": {"profile": {"1": resnet, "32": resnet32}},
        },
        "streams": [
            lc,
            {
                "model": "resnet152",
                "priority": "batch",
                "batch_size": 32,
                "arrival": {"type": "closed", "clients": 1},
            },
        ],
    }
    deadlines = {
        "name": "disb-deadlines",
        "duration_s": 20,
        "seed": 3,
        "device": DEVICE,
        "models": {
            "vgg19": {"profile": {"1": vgg}},
            "resnet152": {"profile": {"1": resnet, "32": resnet32}},
        },
        "streams": [
            dict(lc, slo_ms=15),
            {
                "model": "resnet152",
                "priority": "batch",
                "batch_size": 1,
                "slo_ms": 40,
                "arrival": {"type": "poisson", "rate_per_s": 30},
            },
        ],
    }
    for doc in (mix, b32, deadlines):
        (HERE / f"{doc['name']}.json").write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
