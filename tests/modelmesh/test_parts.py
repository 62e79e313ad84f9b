"""The parts of ModelMesh mode on their own: the id rule, memory accounting, the stub
generator and the command line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from runtime.config import parse_args
from runtime.modelmesh import gen, memory
from runtime.modelmesh.ids import priority_name
from runtime.modelmesh.loading import source_for
from tests.modelmesh.support import WEIGHT_BYTES, Tiny, model_folder
from tests.runtime.helpers import served_mlp


@pytest.mark.parametrize("model_id,name", [
    ("detector__isvc-6b2eb0b8bf", "detector"),
    ("edge-gpu-2__isvc-0123456789", "edge-gpu-2"),
    ("a__isvc-x", "a"),
    ("detector", "detector"),  # registered with ModelMesh directly: its own id
    ("detector__ksp-6b2eb0b8bf", "detector__ksp-6b2eb0b8bf"),
    ("Detector__isvc-6b2eb0b8bf", "Detector__isvc-6b2eb0b8bf"),  # not an isvc name
    ("detector__isvc-", "detector__isvc-"),
    ("-bad__isvc-1234", "-bad__isvc-1234"),
    ("a__isvc-1__isvc-2", "a__isvc-1__isvc-2"),
])
def test_modelmesh_id_maps_to_the_inference_service_name(model_id, name):
    assert priority_name(model_id) == name


def test_capacity_on_cpu_is_the_budget():
    cpu = torch.device("cpu")
    assert memory.capacity_bytes(cpu) == 4096 * memory.MIB
    assert memory.capacity_bytes(cpu, 512) == 512 * memory.MIB


def test_capacity_on_cuda_is_a_fraction_of_the_device(monkeypatch):
    total = 80 * 1024 * memory.MIB
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (total // 2, total))
    cuda = torch.device("cuda")
    assert memory.capacity_bytes(cuda) == int(total * memory.CUDA_FRACTION)
    assert memory.capacity_bytes(cuda, 1024) == 1024 * memory.MIB
    assert memory.capacity_bytes(cuda, 10**9) == total


def test_margin():
    assert memory.with_margin(0) == memory.MIB
    assert memory.with_margin(100 * memory.MIB) == 120 * memory.MIB


def test_tensor_bytes_counts_each_storage_once():
    served, module = served_mlp()
    params = sum(p.numel() * p.element_size() for p in module.parameters())
    assert memory.tensor_bytes(served.segmented) == params
    assert memory.tensor_bytes(served) == params
    shared = torch.nn.Linear(4, 4)
    twice = torch.nn.Sequential(shared, shared)
    assert memory.tensor_bytes([twice, shared.weight, {"b": shared.bias}]) == 20 * 4
    assert memory.tensor_bytes(torch.empty(1000, device="meta")) == 0
    buffers = torch.nn.BatchNorm1d(8)  # weight, bias, running mean and var, a counter
    assert memory.tensor_bytes(buffers) == 4 * 8 * 4 + 8


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_tensor_bytes_of_a_loaded_export_and_a_script(tmp_path, tiny_pt2):
    from runtime import segments
    from runtime.modelmesh.loading import load_served

    served = load_served(source_for("m", str(model_folder(tmp_path, "m", tiny_pt2))), "cpu")
    assert memory.tensor_bytes(served.segmented) == WEIGHT_BYTES
    script = segments.from_script("s", torch.jit.script(Tiny()), ["x"], ["y"])
    assert memory.tensor_bytes(script) == WEIGHT_BYTES


def test_source_for_a_folder_a_nested_folder_and_a_file(tmp_path, tiny_pt2):
    folder = model_folder(tmp_path, "m", tiny_pt2, {"priority": "batch"})
    assert source_for("id", str(folder)).model_file == folder / "model.pt2"
    nested = model_folder(tmp_path / "outer", "id", tiny_pt2)
    assert source_for("id", str(tmp_path / "outer")).model_file == nested / "model.pt2"
    source = source_for("id", str(folder / "model.pt2"))
    assert source.name == "id" and source.config_file == folder / "config.yaml"
    assert source.problem is None


def test_generator_writes_stubs_and_notices_a_newer_proto(tmp_path):
    proto = tmp_path / "model_runtime.proto"
    proto.write_text(gen.PROTO.read_text())
    out = tmp_path / "out"
    assert gen.stale(out, proto)
    written = gen.generate(out, proto)
    assert sorted(p.name for p in written) == sorted([*gen.MODULES, "__init__.py"])
    assert not gen.stale(out, proto)
    earlier = proto.stat().st_mtime - 10  # the .proto changed after they were generated
    os.utime(written[0], (earlier, earlier))
    assert gen.stale(out, proto)
    gen.ensure_stubs(out, proto)
    assert not gen.stale(out, proto)
    assert not list(out.glob(".gen-*"))  # no temporary folder left behind
    text = (out / "model_runtime_pb2_grpc.py").read_text()
    assert "from runtime.modelmesh._generated import model_runtime_pb2" in text
    proto.unlink()  # an installed package: stubs generated at build time, no .proto
    assert not gen.stale(out, proto)
    gen.ensure_stubs(out, proto)
    with pytest.raises(gen.StubGenerationError, match="no ModelMesh stubs"):
        gen.ensure_stubs(tmp_path / "elsewhere", proto)


def test_stubs_are_generated_on_first_import_in_a_clean_checkout(tmp_path):
    """A copy of the package without _generated/ imports (the stubs appear on import)."""
    import shutil

    root = tmp_path / "checkout"
    package = root / "runtime" / "modelmesh"
    package.parent.mkdir(parents=True)
    (root / "runtime" / "__init__.py").write_text("")
    shutil.copytree(gen.HERE, package,
                    ignore=shutil.ignore_patterns("_generated", "__pycache__"))
    code = ("from runtime.modelmesh.stubs import pb, SERVICE; "
            "print(pb.RuntimeStatusResponse.READY, SERVICE, pb.__file__)")
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(root)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[:2] == ["1", "mmesh.ModelRuntime"]
    assert done.stdout.split()[2].startswith(str(package / "_generated"))


def test_an_installed_copy_uses_its_stubs_without_the_proto(tmp_path):
    """What an image holds: the stubs generated at build time, and no .proto."""
    import shutil

    gen.ensure_stubs()
    root = tmp_path / "site"
    package = root / "runtime" / "modelmesh"
    package.parent.mkdir(parents=True)
    (root / "runtime" / "__init__.py").write_text("")
    shutil.copytree(gen.HERE, package, ignore=shutil.ignore_patterns("proto", "__pycache__"))
    stamps = {p: p.stat().st_mtime for p in (package / "_generated").iterdir()}
    code = "from runtime.modelmesh.stubs import pb; print(pb.RuntimeStatusResponse.READY)"
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(root)})
    assert done.returncode == 0, done.stderr
    assert {p: p.stat().st_mtime for p in stamps} == stamps  # used as they were
    assert done.stdout.strip() == "1"


def test_flags():
    cfg, _ = parse_args(["--model_dir", "/m"])
    assert cfg.modelmesh_port == 0 and cfg.memory_budget_mb is None
    cfg, _ = parse_args(["--model_dir", "/m", "--modelmesh_port", "8085",
                         "--memory_budget_mb", "2048"])
    assert cfg.modelmesh_port == 8085 and cfg.memory_budget_mb == 2048.0
    for bad in (["--modelmesh_port", "70000"], ["--memory_budget_mb", "0"]):
        with pytest.raises(SystemExit):
            parse_args(["--model_dir", "/m", *bad])
