"""Fixtures of the controller tests; factories and fakes live in ``deft_controller_fakes``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # the fakes module sits beside the tests, whatever the import mode
    sys.path.insert(0, _HERE)

from deft_controller_fakes import FakeApi, FakeClock  # noqa: E402


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()
