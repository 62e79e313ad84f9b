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


def test_switch_interval_flag_and_device_default(capsys):
    import sys

    from runtime.threads import set_switch_interval

    assert parse_args(["--demo"])[0].switch_interval_ms is None
    assert parse_args(["--demo", "--switch_interval_ms", "0.5"])[0].switch_interval_ms == 0.5
    with pytest.raises(SystemExit):
        parse_args(["--demo", "--switch_interval_ms", "0"])
    assert "above 0" in capsys.readouterr().err
    before = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.005)
        assert set_switch_interval(None) == pytest.approx(0.005)  # Python's own, untouched
        assert set_switch_interval(0.25) == pytest.approx(0.00025)
    finally:
        sys.setswitchinterval(before)


def test_event_loop_flag():
    assert parse_args(["--demo"])[0].event_loop == "auto"
    assert parse_args(["--demo", "--event_loop", "asyncio"])[0].event_loop == "asyncio"
    with pytest.raises(SystemExit):
        parse_args(["--demo", "--event_loop", "trio"])


def test_cpu_lane_flag_reaches_the_engine():
    from prometheus_client import CollectorRegistry

    from runtime.metrics import Metrics
    from runtime.serve import build_engine

    assert parse_args(["--demo"])[0].cpu_lane is None
    off = parse_args(["--demo", "--cpu_lane", "off", "--device", "cpu"])[0]
    assert off.cpu_lane is False
    engine, _ = build_engine(off, Metrics(CollectorRegistry()))
    assert not engine.options.lane_enabled() and engine.lc_inbox is None
    on = parse_args(["--demo", "--cpu_lane", "on", "--device", "cpu"])[0]
    assert build_engine(on, Metrics(CollectorRegistry()))[0].options.lane_enabled()


def test_calibration_flag():
    from prometheus_client import CollectorRegistry

    from runtime.metrics import Metrics
    from runtime.serve import build_engine

    on = parse_args(["--demo", "--device", "cpu"])[0]
    assert on.calibration is True
    assert build_engine(on, Metrics(CollectorRegistry()))[0].scheduler.calibration is not None
    off = parse_args(["--demo", "--device", "cpu", "--calibration", "off"])[0]
    assert build_engine(off, Metrics(CollectorRegistry()))[0].scheduler.calibration is None
    with pytest.raises(SystemExit):
        parse_args(["--demo", "--calibration", "auto"])


def test_access_log_flag():
    import logging

    from runtime.http import ACCESS_LOGGERS, quiet_access_log

    assert parse_args(["--demo"])[0].access_log is True
    assert parse_args(["--demo", "--access_log", "off"])[0].access_log is False
    with pytest.raises(SystemExit):
        parse_args(["--demo", "--access_log", "maybe"])
    loggers = [logging.getLogger(name) for name in ACCESS_LOGGERS]
    before = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.INFO)
        quiet_access_log()
        for logger in loggers:
            assert not logger.isEnabledFor(logging.INFO)
            assert logger.isEnabledFor(logging.WARNING)
    finally:
        for logger, level in zip(loggers, before, strict=True):
            logger.setLevel(level)


def test_device_cuda_without_cuda_is_a_usage_error(monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exited:
        parse_args(["--demo", "--device", "cuda"])
    assert exited.value.code == 2
    assert "--device cuda: no CUDA device here" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert parse_args(["--demo", "--device", "cuda"])[0].device == "cuda"
