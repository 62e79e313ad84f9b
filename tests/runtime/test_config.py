"""The runtime's command line: the batch slice flag reaches the scheduler."""

from __future__ import annotations

import pytest

from runtime.config import parse_args


def test_batch_slice_defaults_to_20_ms_and_must_be_positive():
    cfg, _ = parse_args(["--demo"])
    assert cfg.batch_slice_ms == 20.0
    cfg, _ = parse_args(["--demo", "--batch_slice_ms", "5"])
    assert cfg.batch_slice_ms == 5.0
    for bad in ("0", "-1", "soon"):
        with pytest.raises(SystemExit):
            parse_args(["--demo", "--batch_slice_ms", bad])


def test_the_slice_reaches_the_scheduler():
    from prometheus_client import CollectorRegistry

    from runtime.metrics import Metrics
    from runtime.serve import build_engine

    cfg, _ = parse_args(["--demo", "--batch_slice_ms", "7.5"])
    engine, _ = build_engine(cfg, Metrics(CollectorRegistry()))
    assert engine.scheduler.batch_slice_s == pytest.approx(0.0075)
    assert engine.scheduler.queue.idle_credit_s == pytest.approx(0.0075)
