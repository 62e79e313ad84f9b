from __future__ import annotations

import pytest

from e2e.server import RuntimeProcess


@pytest.fixture(scope="session")
def demo_server(tmp_path_factory):
    log = tmp_path_factory.mktemp("runtime") / "runtime.log"
    with RuntimeProcess("--demo", log_path=log) as server:
        yield server
