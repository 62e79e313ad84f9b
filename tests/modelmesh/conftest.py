"""Fixtures for ModelMesh mode: a tiny exported model (exported once per session) and a
hermetic profile cache. Also makes the manifest tests' helpers importable."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

_MANIFEST_HELPERS = str(Path(__file__).resolve().parents[1] / "manifests")
if _MANIFEST_HELPERS not in sys.path:
    sys.path.insert(0, _MANIFEST_HELPERS)


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _profile_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DEFT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "deft-cache"))


@pytest.fixture(scope="session")
def tiny_pt2(tmp_path_factory) -> Path:
    from tests.modelmesh.support import export_tiny

    return export_tiny(tmp_path_factory.mktemp("export") / "model.pt2")
