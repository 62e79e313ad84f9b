"""The command line: dry-run output, input errors, option checks, and the health endpoint."""

from __future__ import annotations

import io
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from controller.cli import main
from controller.health import HealthServer
from controller.metrics import Metrics
from scheduler.priority import PriorityTable

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "manifests" / "examples"


def dry(*argv: str, stdin: str = "") -> tuple[int, str]:
    out = io.StringIO()
    code = main(["--dry-run", *argv], stdin=io.StringIO(stdin), stdout=out)
    return code, out.getvalue()


def configmaps(text: str) -> dict[str, dict]:
    docs = [d for d in yaml.safe_load_all(text) if d]
    return {d["metadata"]["namespace"]: d for d in docs}


def test_dry_run_of_the_examples():
    code, out = dry("-n", "deft", "-f", str(EXAMPLES / "multi-model.yaml"),
                    "-f", str(EXAMPLES / "single-model.yaml"))
    assert code == 0
    cm = configmaps(out)["deft"]
    assert cm["kind"] == "ConfigMap" and cm["metadata"]["name"] == "deft-priorities"
    table = PriorityTable.from_dict(yaml.safe_load(cm["data"]["priorities.yaml"]))
    assert sorted(table.models) == ["detector", "embeddings", "ocr", "resnet152",
                                    "speech-commands"]
    assert table.get("detector").to_dict() == {
        "priority": "latency-critical", "slo_ms": 20, "max_batch_size": 4}
    assert "Warning" not in out


def test_dry_run_of_the_broken_example_reports_warnings():
    code, out = dry("-f", str(EXAMPLES / "multi-model.yaml"),
                    "-f", str(EXAMPLES / "broken.yaml"))
    assert code == 0
    warnings = [line for line in out.splitlines() if line.startswith("# Event Warning")]
    assert len(warnings) == 4
    assert any("fraud-scorer" in w and "requires deft.dev/slo-ms" in w for w in warnings)
    models = yaml.safe_load(configmaps(out)["default"]["data"]["priorities.yaml"])["models"]
    assert set(models) == {"detector", "resnet152"}


def test_dry_run_reads_stdin_and_unpacks_lists():
    doc = yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
         "metadata": {"name": "m", "namespace": "ns"},
         "spec": {"predictor": {"model": {"modelFormat": {"name": "pytorch-export"},
                                          "runtime": "deft", "storageUri": "gs://b"}}}}]})
    code, out = dry("-f", "-", stdin=doc)
    assert code == 0
    assert yaml.safe_load(configmaps(out)["ns"]["data"]["priorities.yaml"]) == {
        "models": {"m": {"priority": "batch"}}}


def test_dry_run_without_deft_objects_writes_nothing():
    code, out = dry("-f", "-", stdin="apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    assert code == 0 and "no ConfigMap would be written" in out and "---" not in out


def test_dry_run_notes_malformed_documents():
    code, out = dry("-f", "-", stdin="kind: TrainedModel\napiVersion: serving.kserve.io/v1alpha1\n"
                    "metadata: {}\n---\n- just a list\n")
    assert code == 0 and "# skipped <stdin> document 1: TrainedModel without metadata.name" in out


@pytest.mark.parametrize("stdin", ["a: [1, 2\n", "key: value\n  bad indent: x\n", "\t- tab\n"])
def test_bad_yaml_is_one_line_and_exit_2(stdin, capsys):
    code, out = dry("-f", "-", stdin=stdin)
    err = capsys.readouterr().err
    assert code == 2 and out == ""
    assert err.startswith("error: <stdin>: invalid YAML") and err.count("\n") == 1


def test_missing_file_is_exit_2(tmp_path, capsys):
    code, _ = dry("-f", str(tmp_path / "nope.yaml"))
    assert code == 2 and "nope.yaml" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--dry-run"], ["--dry-run", "-A", "-f", "-"],
                                  ["-f", "x.yaml"], ["--dry-run", "-f", "-", "--runtimes", ","]])
def test_bad_usage_is_exit_2(argv, capsys):
    assert main(argv, stdin=io.StringIO(""), stdout=io.StringIO()) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_namespace_and_all_namespaces_exclude_each_other(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--namespace", "a", "--all-namespaces"])
    assert exc.value.code == 2


def test_entry_point_runs_as_a_module():
    proc = subprocess.run(
        [sys.executable, "-m", "controller", "--dry-run", "-f", "-"],
        input="a: [", capture_output=True, text=True, cwd=ROOT, timeout=60,
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and proc.stdout == ""


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_health_server_serves_metrics_and_probes():
    metrics = Metrics()
    metrics.reconciles.inc()
    state = {"live": True, "ready": False}
    server = HealthServer(metrics.registry, lambda: state["live"], lambda: state["ready"],
                          host="127.0.0.1", port=0).start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        status, body = get(base + "/metrics")
        assert status == 200 and "deft_controller_reconciles_total 1.0" in body
        assert 'deft_controller_models{priority="latency-critical"} 0.0' in body
        assert 'deft_controller_errors_total{kind="permanent"} 0.0' in body
        assert get(base + "/healthz")[0] == 200
        assert get(base + "/readyz")[0] == 503
        state.update(live=False, ready=True)
        assert get(base + "/healthz")[0] == 503
        assert get(base + "/readyz")[0] == 200
        assert get(base + "/nope")[0] == 404
    finally:
        server.close()


def test_importing_the_package_does_no_work():
    code = ("import sys, controller, controller.cli, controller.loop, controller.reconcile;"
            "assert 'kubernetes' not in sys.modules, 'kubernetes imported';"
            "import logging; assert not logging.getLogger().handlers, 'logging configured'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)
