"""The model repository: config parsing, discovery, safe loading, failures that stay per model."""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from runtime import model_repository as repo
from runtime.errors import InvalidInput, ModelLoadError, ModelNotFound
from runtime.tensors import TensorSpec
from scheduler.priority import ModelSettings, Priority

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        hidden = torch.relu(self.fc1(features))
        return {"logits": self.fc2(hidden), "norm": hidden.norm(dim=1)}


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return Tiny().eval()


@pytest.fixture(scope="module")
def tiny_pt2(tmp_path_factory) -> Path:
    batch = torch.export.Dim("batch", min=1, max=8)
    program = torch.export.export(
        _tiny(), (torch.randn(2, 4),), dynamic_shapes={"features": {0: batch}}
    )
    path = tmp_path_factory.mktemp("export") / "model.pt2"
    torch.export.save(program, path)
    return path


def _folder(root: Path, name: str, model_file: Path | None, config: dict | str | None) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    if model_file is not None:
        shutil.copy(model_file, folder / model_file.name)
    if config is not None:
        text = config if isinstance(config, str) else yaml.safe_dump(config)
        (folder / "config.yaml").write_text(text)
    return folder


GOOD_CONFIG = {
    "priority": "latency-critical",
    "slo_ms": 20,
    "max_batch_size": 4,
    "max_queue_delay_ms": 2.5,
    "max_queue_size": 16,
    "max_units": 3,
    "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}],
    "outputs": [
        {"name": "logits", "datatype": "FP32", "shape": [-1, 3]},
        {"name": "norm", "datatype": "FP32", "shape": [-1]},
    ],
}


# --- configuration ------------------------------------------------------------------------------


def test_config_parses_into_frozen_dataclasses():
    config = repo.ModelConfig.from_dict("m", GOOD_CONFIG)
    assert config.settings == ModelSettings(Priority.LATENCY_CRITICAL, 20.0, 4)
    assert config.inputs == (TensorSpec("features", "FP32", (-1, 4)),)
    assert [s.name for s in config.outputs] == ["logits", "norm"]
    assert (config.max_queue_delay_ms, config.max_queue_size, config.max_units) == (2.5, 16, 3)
    assert config.batch_sizes == (1, 2, 4)
    with pytest.raises(AttributeError):
        config.max_units = 5  # type: ignore[misc]


def test_config_round_trips():
    config = repo.ModelConfig.from_dict("m", {**GOOD_CONFIG, "profile_batch_sizes": [4, 1]})
    assert config.profile_batch_sizes == (1, 4)
    assert repo.ModelConfig.from_dict("m", config.to_dict()) == config
    assert (
        repo.ModelConfig.from_dict("m", yaml.safe_load(yaml.safe_dump(config.to_dict()))) == config
    )
    empty = repo.ModelConfig.from_dict("m", None)
    assert empty == repo.ModelConfig("m")
    assert empty.settings.priority is Priority.BATCH and empty.max_batch_size == 1


@pytest.mark.parametrize(
    "path",
    [CONFIG_DIR / "model.example.yaml", *sorted((CONFIG_DIR / "demo").glob("*.yaml"))],
    ids=lambda p: p.name,
)
def test_shipped_model_configs_are_valid(path):
    config = repo.ModelConfig.from_dict(path.stem, yaml.safe_load(path.read_text()))
    assert config.inputs and config.outputs


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"priority": "urgent"}, "priority"),
        ({"slo_ms": -1}, "slo_ms"),
        ({"slo_ms": None}, "slo_ms"),
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"max_queue_delay_ms": -1}, "max_queue_delay_ms"),
        ({"max_queue_size": "many"}, "max_queue_size"),
        ({"max_units": 0}, "max_units"),
        ({"profile_batch_sizes": [1, 16]}, "profile_batch_sizes"),
        ({"colour": "blue"}, "colour"),
        ({"inputs": [{"name": "x", "datatype": "FP33", "shape": [1]}]}, "inputs[0].datatype"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 0]}]}, "inputs[0].shape"),
        ({"inputs": [{"name": "x", "datatype": "FP32"}]}, "inputs[0]"),
        ({"outputs": [{"name": "", "datatype": "FP32", "shape": [-1]}]}, "outputs[0].name"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4]}]}, "inputs 'x'"),
        ({"outputs": GOOD_CONFIG["outputs"] * 2}, "outputs names must be unique"),
    ],
)
def test_config_errors_name_the_field(change, field):
    data = {**GOOD_CONFIG, **change}
    if change.get("slo_ms", 0) is None:
        del data["slo_ms"]
    with pytest.raises(InvalidInput, match="config of model 'm'") as info:
        repo.ModelConfig.from_dict("m", data)
    assert field in str(info.value)


# --- discovery ----------------------------------------------------------------------------------


def test_discover_one_folder_per_model(tmp_path, tiny_pt2):
    _folder(tmp_path, "alpha", tiny_pt2, GOOD_CONFIG)
    _folder(tmp_path, "beta", tiny_pt2, None)
    (tmp_path / "gamma").mkdir()
    (tmp_path / "gamma" / "weights.pkl").write_bytes(b"not loaded")
    _folder(tmp_path, "delta", None, {"priority": "batch"})
    _folder(tmp_path, ".hidden", tiny_pt2, None)
    _folder(tmp_path, "..data", tiny_pt2, None)
    (tmp_path / "notes").mkdir()
    (tmp_path / "README.txt").write_text("ignored")
    sources = {s.name: s for s in repo.discover(tmp_path)}
    assert sorted(sources) == ["alpha", "beta", "delta", "gamma"]
    assert sources["alpha"].format == "pt2" and sources["alpha"].config_file is not None
    assert sources["beta"].config_file is None and sources["beta"].problem is None
    assert "refusing weights.pkl" in sources["gamma"].problem
    assert "no model file" in sources["delta"].problem
    assert repo.find(tmp_path, "alpha") == sources["alpha"]
    with pytest.raises(ModelNotFound):
        repo.find(tmp_path, "omega")


def test_discover_single_model_layout(tmp_path, tiny_pt2):
    shutil.copy(tiny_pt2, tmp_path / "model.pt2")
    [source] = repo.discover(tmp_path, "my-model")
    assert (source.name, source.directory, source.model_file) == (
        "my-model",
        tmp_path,
        tmp_path / "model.pt2",
    )
    [unnamed] = repo.discover(tmp_path)
    assert unnamed.name == tmp_path.name


def test_discover_prefers_model_pt2_and_reports_ambiguity(tmp_path, tiny_pt2):
    folder = _folder(tmp_path, "a", tiny_pt2, None)
    shutil.copy(tiny_pt2, folder / "other.pt2")
    assert repo.discover(tmp_path)[0].model_file == folder / "model.pt2"
    os.remove(folder / "model.pt2")
    shutil.copy(tiny_pt2, folder / "third.pt2")
    assert "several model files" in repo.discover(tmp_path)[0].problem


def test_discover_missing_directory(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        repo.discover(tmp_path / "nope")


# --- loading ------------------------------------------------------------------------------------


def test_load_with_config(tmp_path, tiny_pt2):
    _folder(tmp_path, "alpha", tiny_pt2, GOOD_CONFIG)
    loaded = repo.load(repo.find(tmp_path, "alpha"), profile=False)
    assert loaded.name == "alpha" and loaded.device == torch.device("cpu")
    assert loaded.config == repo.ModelConfig.from_dict("alpha", GOOD_CONFIG)
    assert 1 <= loaded.model.num_units <= 3 and loaded.profile == {}
    x = torch.randn(3, 4)
    out = loaded.model({"features": x})
    want = _tiny()(x)
    assert torch.allclose(out["logits"], want["logits"], atol=1e-6)
    assert torch.allclose(out["norm"], want["norm"], atol=1e-6)


def test_load_infers_the_signature_without_config(tmp_path, tiny_pt2):
    shutil.copy(tiny_pt2, tmp_path / "model.pt2")
    [source] = repo.discover(tmp_path, "solo")
    loaded = repo.load(source, profile=False)
    assert loaded.config.inputs == (TensorSpec("features", "FP32", (-1, 4)),)
    assert loaded.config.outputs == (
        TensorSpec("logits", "FP32", (-1, 3)),
        TensorSpec("norm", "FP32", (-1,)),
    )
    assert loaded.config.max_batch_size == 8  # the exported dynamic dimension's bound
    assert loaded.config.settings.priority is Priority.BATCH


def test_config_names_map_by_position_when_they_differ(tmp_path, tiny_pt2):
    config = {
        **GOOD_CONFIG,
        "inputs": [{"name": "INPUT__0", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [
            {"name": "OUTPUT__0", "datatype": "FP32", "shape": [-1, 3]},
            {"name": "OUTPUT__1", "datatype": "FP32", "shape": [-1]},
        ],
    }
    _folder(tmp_path, "m", tiny_pt2, config)
    model = repo.load(repo.find(tmp_path, "m"), profile=False).model
    assert model.input_names == ("INPUT__0",)
    assert set(model({"INPUT__0": torch.randn(1, 4)})) == {"OUTPUT__0", "OUTPUT__1"}


def test_config_names_map_by_name_in_any_order(tmp_path, tiny_pt2):
    config = {**GOOD_CONFIG, "outputs": GOOD_CONFIG["outputs"][::-1]}
    _folder(tmp_path, "m", tiny_pt2, config)
    out = repo.load(repo.find(tmp_path, "m"), profile=False).model({"features": torch.ones(2, 4)})
    assert out["logits"].shape == (2, 3) and out["norm"].shape == (2,)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"inputs": [{"name": "features", "datatype": "FP16", "shape": [-1, 4]}]}, "FP16"),
        ({"inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 5]}]}, "dimension 1"),
        ({"inputs": [{"name": "features", "datatype": "FP32", "shape": [-1]}]}, "rank"),
        ({"outputs": GOOD_CONFIG["outputs"][:1]}, "lists 1 outputs, the model has 2"),
        ("priority: [unclosed", "cannot read config.yaml"),
        ({"slo_ms": "fast"}, "slo_ms"),
    ],
)
def test_config_that_does_not_fit_the_model_fails_to_load(tmp_path, tiny_pt2, change, message):
    config = change if isinstance(change, str) else {**GOOD_CONFIG, **change}
    _folder(tmp_path, "m", tiny_pt2, config)
    with pytest.raises(ModelLoadError, match="model 'm'") as info:
        repo.load(repo.find(tmp_path, "m"), profile=False)
    assert message in str(info.value)


def test_static_batch_export_with_batching_config_is_refused(tmp_path):
    program = torch.export.export(_tiny(), (torch.randn(1, 4),))
    folder = tmp_path / "m"
    folder.mkdir()
    torch.export.save(program, folder / "model.pt2")
    (folder / "config.yaml").write_text(yaml.safe_dump(GOOD_CONFIG))
    with pytest.raises(ModelLoadError, match="fixed batch dimension"):
        repo.load(repo.find(tmp_path, "m"), profile=False)


def test_torchscript_loads_as_one_unit_and_needs_its_signature(tmp_path):
    class Plain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x)

    torch.manual_seed(0)
    module = Plain().eval()
    folder = tmp_path / "ts"
    folder.mkdir()
    torch.jit.save(torch.jit.trace(module, torch.randn(1, 4)), folder / "model.pt")
    with pytest.raises(ModelLoadError, match="TorchScript model needs inputs and outputs"):
        repo.load(repo.find(tmp_path, "ts"), profile=False)
    (folder / "config.yaml").write_text(
        yaml.safe_dump(
            {
                "max_batch_size": 2,
                "inputs": [{"name": "INPUT__0", "datatype": "FP32", "shape": [-1, 4]}],
                "outputs": [{"name": "OUTPUT__0", "datatype": "FP32", "shape": [-1, 2]}],
            }
        )
    )
    loaded = repo.load(repo.find(tmp_path, "ts"), profile=False)
    assert loaded.source.format == "torchscript" and loaded.model.num_units == 1
    x = torch.randn(2, 4)
    assert torch.allclose(loaded.model({"INPUT__0": x})["OUTPUT__0"], module(x), atol=1e-6)


def test_one_failure_does_not_stop_the_others(tmp_path, tiny_pt2):
    _folder(tmp_path, "good", tiny_pt2, GOOD_CONFIG)
    _folder(tmp_path, "bad-config", tiny_pt2, {"priority": "latency-critical"})
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "model.pth").write_bytes(b"\x80\x04N.")
    loaded, failed = repo.load_all(tmp_path, profile=False)
    assert [m.name for m in loaded] == ["good"]
    assert sorted(failed) == ["bad-config", "pickled"]
    assert "slo_ms is required" in str(failed["bad-config"])
    assert "refusing model.pth" in str(failed["pickled"])


def test_profiles_are_cached_by_model_file(tmp_path, tiny_pt2):
    _folder(tmp_path, "m", tiny_pt2, GOOD_CONFIG)
    cache = tmp_path / "cache"
    # one cold timing may be stale (the check is tested in tests/test_profiler.py)
    first = repo.load(repo.find(tmp_path, "m"), cache_dir=cache, warmup=0, repeats=1,
                      verify_profile=False)
    assert not first.profile_from_cache
    assert sorted(first.profile, key=int) == ["1", "2", "4"]
    assert all(len(row) == first.model.num_units for row in first.profile.values())
    again = repo.load(repo.find(tmp_path, "m"), cache_dir=cache, warmup=0, repeats=1,
                      verify_profile=False)
    assert again.profile_from_cache and again.profile == first.profile
    assert again.model.cuts == first.model.cuts
    fewer = repo.load(repo.find(tmp_path, "m"), cache_dir=cache, batch_sizes=[2],
                      verify_profile=False)
    assert fewer.profile == {"2": first.profile["2"]} and fewer.profile_from_cache


# --- nothing is unpickled -----------------------------------------------------------------------


class _Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _rewrite_archive(source: Path, target: Path, edit) -> None:
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            data = edit(info.filename, old.read(info))
            if data is not None:
                new.writestr(info, data)


def _evil_torch_save(marker: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save({"x": _Payload(marker)}, buffer)
    return buffer.getvalue()


def _weight_as_pickle(marker: Path):
    def edit(name: str, data: bytes) -> bytes:
        if name.endswith("model_weights_config.json"):
            config = json.loads(data)
            first = next(iter(config["config"].values()))
            first["use_pickle"] = True
            return json.dumps(config).encode()
        if name.endswith("/data/weights/weight_0"):
            return _evil_torch_save(marker)
        return data

    return edit


def _sample_inputs_as_pickle(marker: Path):
    def edit(name: str, data: bytes) -> bytes:
        return _evil_torch_save(marker) if "/data/sample_inputs/" in name else data

    return edit


def _opaque_constant(marker: Path):
    def edit(name: str, data: bytes) -> bytes:
        if name.endswith("model_constants_config.json"):
            entry = {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True}
            return json.dumps({"config": {"thing": entry}}).encode()
        return data

    return edit


@pytest.mark.parametrize(
    ("file_name", "make", "message"),
    [
        ("model.pkl", "raw", "refusing model.pkl"),
        ("model.pth", "torch_save", "refusing model.pth"),
        ("model.pt2", "raw", "not a torch.export archive"),
        ("model.pt2", "torch_save", "not a torch.export archive"),
        ("model.pt", "raw", "not a TorchScript archive"),
        ("model.pt", "torch_save", "not a TorchScript archive"),
        ("model.pt2", _weight_as_pickle, "holds objects beyond tensors"),
        ("model.pt2", _sample_inputs_as_pickle, "holds objects beyond tensors"),
        ("model.pt2", _opaque_constant, "opaque Python object"),
    ],
)
def test_malicious_pickles_are_refused_without_running(
    tmp_path, tiny_pt2, file_name, make, message
):
    marker = tmp_path / "pwned"
    folder = tmp_path / "repo" / "evil"
    folder.mkdir(parents=True)
    target = folder / file_name
    if make == "raw":
        target.write_bytes(pickle.dumps(_Payload(marker)))
    elif make == "torch_save":
        target.write_bytes(_evil_torch_save(marker))
    else:
        _rewrite_archive(tiny_pt2, target, make(marker))
    pickle.loads(pickle.dumps(_Payload(tmp_path / "control")))  # the payload really works ...
    assert (tmp_path / "control").exists()
    loaded, failed = repo.load_all(tmp_path / "repo", profile=False)
    assert loaded == [] and message in str(failed["evil"])
    assert not marker.exists()  # ... but loading never ran it


@pytest.mark.parametrize("make", [None, _opaque_constant])
def test_archive_check_works_on_torch_without_the_opaque_object_constant(
    tmp_path, tiny_pt2, monkeypatch, make
):
    # torch 2.11 (a CUDA image's) has no OPAQUE_OBJ_FILENAME_PREFIX: loading must not break,
    # and an opaque object in an archive from a newer torch is still refused
    from torch.export.pt2_archive import constants

    monkeypatch.delattr(constants, "OPAQUE_OBJ_FILENAME_PREFIX", raising=False)
    folder = tmp_path / "repo" / "m"
    folder.mkdir(parents=True)
    if make is None:
        shutil.copy(tiny_pt2, folder / "model.pt2")
    else:
        _rewrite_archive(tiny_pt2, folder / "model.pt2", make(tmp_path / "pwned"))
    loaded, failed = repo.load_all(tmp_path / "repo", profile=False)
    if make is None:
        assert [m.name for m in loaded] == ["m"] and failed == {}
    else:
        assert loaded == [] and "opaque Python object" in str(failed["m"])


def test_programs_load_from_several_threads_at_once(tmp_path, tiny_pt2):
    # torch.export.load is not reentrant (a module global): unserialized, most of these fail
    import threading

    folder = _folder(tmp_path, "m", tiny_pt2, None)
    source = repo.find(tmp_path, "m")
    assert source.model_file is not None and folder.is_dir()
    errors: list[BaseException] = []

    def load_some() -> None:
        for _ in range(5):
            try:
                repo.load_program(source)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

    threads = [threading.Thread(target=load_some) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def _with_an_evil_twin(source: Path, target: Path, marker: Path, rename=lambda n: n) -> None:
    """``source`` with a pickle that runs a command written first under the name (as
    ``rename`` gives it) of its sample inputs: torch's reader takes the first of two entries
    of one name (and matches names without regard to case), Python's the last."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        infos = old.infolist()
        twin = next(i.filename for i in infos if "/data/sample_inputs/" in i.filename)
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zipfile warns of the duplicate name
            new.writestr(rename(twin), _evil_torch_save(marker))
            for info in infos:
                new.writestr(info, old.read(info))


@pytest.mark.parametrize("rename", [lambda n: n, str.upper], ids=["same", "other-case"])
def test_an_archive_with_two_entries_of_one_name_is_refused_without_running(
        tmp_path, tiny_pt2, rename):
    marker = tmp_path / "pwned"
    folder = tmp_path / "repo" / "evil"
    folder.mkdir(parents=True)
    _with_an_evil_twin(tiny_pt2, folder / "model.pt2", marker, rename)
    loaded, failed = repo.load_all(tmp_path / "repo", profile=False)
    assert loaded == [] and "two entries named" in str(failed["evil"])
    assert not marker.exists()


def test_an_archive_entry_that_inflates_like_a_bomb_is_refused_before_it_is_read(
        tmp_path, tiny_pt2, monkeypatch):
    folder = tmp_path / "repo" / "bomb"
    folder.mkdir(parents=True)
    with zipfile.ZipFile(tiny_pt2) as old, \
            zipfile.ZipFile(folder / "model.pt2", "w", zipfile.ZIP_DEFLATED) as new:
        for info in old.infolist():
            data = old.read(info)
            if info.filename.endswith("/archive_format"):
                data += b" " * (8 << 20)  # 8 MiB of spaces in a few kilobytes
            new.writestr(info.filename, data)
    reads = []
    real = zipfile.ZipFile.read
    monkeypatch.setattr(zipfile.ZipFile, "read",
                        lambda self, name, pwd=None: reads.append(name) or real(self, name, pwd))
    loaded, failed = repo.load_all(tmp_path / "repo", profile=False)
    assert loaded == [] and "inflates from" in str(failed["bomb"])
    assert reads == []


def test_a_config_that_cannot_be_read_fails_its_model_instead_of_leaving_defaults(
        tmp_path, tiny_pt2):
    for name, make in (("folder", lambda p: p.mkdir()),
                       ("dangling", lambda p: p.symlink_to(tmp_path / "nowhere.yaml")),
                       ("latin1", lambda p: p.write_bytes(b"priority: b\xe4tch\n"))):
        folder = tmp_path / "repo" / name
        folder.mkdir(parents=True)
        shutil.copy(tiny_pt2, folder / "model.pt2")
        make(folder / "config.yaml")
    loaded, failed = repo.load_all(tmp_path / "repo", profile=False)
    assert loaded == [] and sorted(failed) == ["dangling", "folder", "latin1"]
    assert "config.yaml" in str(failed["folder"]) and "config.yaml" in str(failed["latin1"])


@pytest.mark.parametrize(("text", "fragment"), [
    # YAML aliases: eight lines that would print as hundreds of megabytes
    ("max_units:\n- &a [x, x, x, x, x, x, x, x, x]\n- &b [*a, *a, *a, *a, *a, *a, *a, *a]\n"
     "- &c [*b, *b, *b, *b, *b, *b, *b, *b]\n- &d [*c, *c, *c, *c, *c, *c, *c, *c]\n"
     "- &e [*d, *d, *d, *d, *d, *d, *d, *d]\n- [*e, *e, *e, *e, *e, *e, *e, *e]\n",
     "max_units must be"),
    ("inputs: [{name: x, datatype: [FP32], shape: [-1, 4]}]\n", "datatype must be one of"),
    ("inputs: [{name: x, datatype: FP32, shape: [-1, true]}]\n", "bad shape"),
    ("max_queue_delay_ms: .inf\n", "max_queue_delay_ms must be a number from 0 to"),
    ("priority: latency-critical\nslo_ms: .inf\n", "slo_ms must be a positive number"),
    ("slo_ms: 1" + "0" * 400 + "\n", "slo_ms must be a positive number"),
    ("inputs: [{name: x, datatype: FP32, shape: [-1, 4], 1: 2}]\n", "config.yaml"),
])
def test_odd_configs_fail_their_model_with_a_short_reason(tmp_path, tiny_pt2, text, fragment):
    folder = tmp_path / "repo" / "odd"
    folder.mkdir(parents=True)
    shutil.copy(tiny_pt2, folder / "model.pt2")
    (folder / "config.yaml").write_text(text)
    loaded, failed = repo.load_all(tmp_path / "repo", profile=False)
    assert loaded == [] and fragment in str(failed["odd"]) and len(str(failed["odd"])) < 500


class _Table(nn.Module):
    """A TorchScript module whose code (a constant list) deflates many times over."""

    __constants__ = ["table"]

    def __init__(self) -> None:
        super().__init__()
        self.table = tuple(i % 7 for i in range(300_000))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + len(self.table)


def test_a_torchscript_archive_whose_code_deflates_many_times_over_is_accepted(tmp_path):
    from runtime.archives import check_torchscript_archive

    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(_Table()), path)
    with zipfile.ZipFile(path) as archive:
        assert max(i.file_size / max(1, i.compress_size) for i in archive.infolist()) > 100
    check_torchscript_archive(path)
