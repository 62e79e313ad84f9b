"""Security settings from the command line to the wire, and in the manifests: request bodies
and tensors are bounded (``--max_body_mb``, ``--max_tensor_elements``), the repository routes
can be closed or put behind a token, and the runtime's containers run as non-root on a
read-only root filesystem with the repository API off wherever KServe does not call it.

Loading never runs pickled code: ``tests/test_model_repository.py`` covers each malicious
file format, ``test_faults.py`` a repository holding them behind the v2 routes, and
``e2e/test_reliability.py`` a real server started on such a repository."""

from __future__ import annotations

import json

import pytest
import yaml
from fastapi.testclient import TestClient

from runtime.codec import Limits
from runtime.config import parse_args
from runtime.http import RepositoryAccess
from tests.reliability.support import ROOT, build_app, valid_body
from tests.runtime.helpers import make_engine, served_mlp

MIB = 1024 * 1024


# --- the flags ---------------------------------------------------------------------------------


def test_body_and_tensor_bounds_come_from_the_flags():
    cfg, _ = parse_args(["--demo"])
    assert cfg.max_body_bytes == 64 * MIB and cfg.max_tensor_elements == 64 * MIB
    cfg, _ = parse_args(["--demo", "--max_body_mb", "0.25", "--max_tensor_elements", "4096"])
    assert cfg.max_body_bytes == MIB // 4 and cfg.max_tensor_elements == 4096


@pytest.mark.parametrize("argv", [
    ["--max_body_mb", "0"], ["--max_body_mb", "-1"], ["--max_body_mb", "nan"],
    ["--max_tensor_elements", "0"], ["--max_tensor_elements", "-5"],
])
def test_bounds_that_would_refuse_everything_or_nothing_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as stop:
        parse_args(["--demo", *argv])
    assert stop.value.code == 2 and argv[0] in capsys.readouterr().err


def test_repository_api_flags(tmp_path, monkeypatch):
    monkeypatch.delenv("DEFT_REPOSITORY_API_TOKEN", raising=False)
    cfg, _ = parse_args(["--demo"])
    assert cfg.repository_api and cfg.repository_token is None
    cfg, _ = parse_args(["--demo", "--disable_repository_api"])
    assert not cfg.repository_api
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    cfg, _ = parse_args(["--demo", "--repository_api_token_file", str(token)])
    assert cfg.repository_token == "s3cret"
    monkeypatch.setenv("DEFT_REPOSITORY_API_TOKEN", "from-env")
    assert parse_args(["--demo"])[0].repository_token == "from-env"


@pytest.mark.parametrize("content", [None, "", "  \n"], ids=["missing", "empty", "blank"])
def test_a_token_file_that_gives_no_token_is_an_error_not_an_open_api(tmp_path, content,
                                                                       monkeypatch, capsys):
    monkeypatch.delenv("DEFT_REPOSITORY_API_TOKEN", raising=False)
    token = tmp_path / "token"
    if content is not None:
        token.write_text(content)
    with pytest.raises(SystemExit) as stop:
        parse_args(["--demo", "--repository_api_token_file", str(token)])
    assert stop.value.code == 2 and "--repository_api_token_file" in capsys.readouterr().err


# --- the flags on the wire ---------------------------------------------------------------------


def app_from(argv: list[str]):
    """The v2 routes configured from ``argv`` the way the server builds them."""
    cfg, _ = parse_args(["--demo", *argv])
    model, _ = served_mlp("mlp", max_batch_size=1 << 20)
    engine = make_engine([model])
    engine.start()
    limits = Limits(max_body_bytes=cfg.max_body_bytes, max_tensor_elements=cfg.max_tensor_elements)
    access = RepositoryAccess(enabled=cfg.repository_api, token=cfg.repository_token)
    return build_app(engine, limits, access), engine


def test_bounds_hold_on_the_wire():
    app, engine = app_from(["--max_body_mb", "0.0625", "--max_tensor_elements", "400"])
    try:
        with TestClient(app) as client:
            padded = valid_body() + b" " * (MIB // 16)
            r = client.post("/v2/models/mlp/infer", content=padded)
            assert r.status_code == 400 and "limit" in r.json()["error"]
            doc = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [101, 4], "data": []}]}
            r = client.post("/v2/models/mlp/infer", content=json.dumps(doc))
            assert r.status_code == 400 and "limit of 400" in r.json()["error"]
            doc = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2**40, 2**20],
                               "data": []}]}  # never allocated
            r = client.post("/v2/models/mlp/infer", content=json.dumps(doc))
            assert r.status_code == 400 and "limit" in r.json()["error"]
            doc = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [100, 4],
                               "data": [0.5] * 400}]}
            assert client.post("/v2/models/mlp/infer", content=json.dumps(doc)).status_code == 200
    finally:
        engine.stop(1.0)


@pytest.mark.parametrize(("argv", "headers", "status"), [
    (["--disable_repository_api"], {}, 403),
    (["--disable_repository_api"], {"authorization": "Bearer s3cret"}, 403),
    (["--repository_api_token_file", "{token}"], {}, 401),
    (["--repository_api_token_file", "{token}"], {"authorization": "Bearer wrong"}, 401),
    (["--repository_api_token_file", "{token}"], {"authorization": "s3cret"}, 401),
    (["--repository_api_token_file", "{token}"], {"authorization": "Bearer s3cret"}, 200),
    ([], {}, 200),
])
def test_repository_routes_obey_the_flags_and_inference_needs_no_token(
        tmp_path, monkeypatch, argv, headers, status):
    monkeypatch.delenv("DEFT_REPOSITORY_API_TOKEN", raising=False)
    token = tmp_path / "token"
    token.write_text("s3cret")
    app, engine = app_from([a.format(token=token) for a in argv])
    try:
        with TestClient(app) as client:
            for method_path in ("/v2/repository/index", "/v2/repository/models/mlp/unload",
                                "/v2/repository/models/mlp/load"):
                r = client.post(method_path, headers=headers)
                assert r.status_code == status, (method_path, r.text)
                if status != 200:
                    assert "error" in r.json()
            assert client.post("/v2/models/mlp/infer", content=valid_body()).status_code == 200
    finally:
        engine.stop(1.0)


# --- the manifests -----------------------------------------------------------------------------


def runtime_containers() -> list[tuple[str, dict, dict]]:
    """(file, runtime object, container) for every container of every Deft runtime."""
    found = []
    for path in sorted((ROOT / "manifests").rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") not in ("ServingRuntime", "ClusterServingRuntime"):
                continue
            for container in doc["spec"]["containers"]:
                if container["image"].startswith("deft-runtime"):
                    found.append((str(path.relative_to(ROOT)), doc, container))
    return found


RUNTIMES = runtime_containers()


def test_every_runtime_manifest_is_found():
    assert len({f for f, _, _ in RUNTIMES}) >= 5  # single, multi-model, both cluster-wide, mesh


@pytest.mark.parametrize(("path", "doc", "container"), RUNTIMES, ids=[f for f, _, _ in RUNTIMES])
def test_runtime_containers_are_non_root_on_a_read_only_root(path, doc, container):
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False and sc.get("privileged", False) is False
    assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add")
    # what the runtime writes (profile and demo cache, temporary files) lies on volumes
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in doc["spec"]["volumes"]}
    for writable in (env["DEFT_CACHE_DIR"], "/tmp"):
        mount = mounts[writable]
        assert not mount.get("readOnly") and "emptyDir" in volumes[mount["name"]]


@pytest.mark.parametrize(("path", "doc", "container"), RUNTIMES, ids=[f for f, _, _ in RUNTIMES])
def test_repository_api_is_off_unless_kserve_calls_it(path, doc, container):
    """KServe's multi-model agent loads TrainedModels through the repository API; a
    single-model or ModelMesh runtime never needs it."""
    args = container["args"]
    needed = doc["spec"].get("multiModel", False) and "--modelmesh_port" not in " ".join(args)
    assert ("--disable_repository_api" in args) is not needed, path
