"""Profiling: the profile's shape, the cache, the progress bar and `python -m runtime profile`."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from runtime import profile_cli, profiler, segments


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh())
        self.out = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.layers(x))


@pytest.fixture(scope="module")
def program() -> torch.export.ExportedProgram:
    torch.manual_seed(0)
    batch = torch.export.Dim("batch", min=1, max=4)
    return torch.export.export(
        Small().eval(), (torch.randn(2, 6),), dynamic_shapes={"x": {0: batch}}
    )


@pytest.fixture(scope="module")
def model_file(program, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("small") / "model.pt2"
    torch.export.save(program, path)
    return path


def _inputs_for(batch: int) -> dict[str, torch.Tensor]:
    return {"x": torch.randn(batch, 6, generator=torch.Generator().manual_seed(batch))}


@pytest.mark.parametrize(
    ("limit", "sizes"),
    [(1, (1,)), (2, (1, 2)), (6, (1, 2, 4, 6)), (8, (1, 2, 4, 8)), (9, (1, 2, 4, 8, 9))],
)
def test_batch_sizes_up_to(limit, sizes):
    assert profiler.batch_sizes_up_to(limit) == sizes


def test_time_units_gives_one_median_per_unit(program):
    model = segments.split("small", program, max_units=3)
    passes = []
    times = profiler.time_units(
        model, _inputs_for(2), warmup=2, repeats=3, on_pass=lambda: passes.append(1)
    )
    assert len(passes) == 5
    assert len(times) == model.num_units == 3
    assert all(isinstance(t, float) and t > 0 for t in times)
    with pytest.raises(ValueError):
        profiler.time_units(model, _inputs_for(1), repeats=0)


def test_on_cuda_units_are_timed_back_to_back_with_events(monkeypatch):
    # no GPU here: a model whose units take known device times on a fake CUDA timeline
    clock = {"ms": 0.0, "syncs": 0}
    unit_ms = [0.05, 0.2, 0.01]

    class Event:
        def __init__(self, enable_timing: bool = False) -> None:
            assert enable_timing
            self.at = None

        def record(self) -> None:
            self.at = clock["ms"]

        def elapsed_time(self, end: Event) -> float:
            return end.at - self.at

    class Model:
        device = torch.device("cuda")
        num_units = 3

        def start(self, inputs):
            return {}

        def run(self, state, start, end):
            clock["ms"] += call_ms + sum(unit_ms[start:end])

        def finish(self, state):
            return state

    def synchronize(device=None):
        clock["syncs"] += 1
        clock["ms"] += 0.03  # a host sync's latency: not a unit's time

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "synchronize", synchronize)
    call_ms = 0.0
    times = profiler.time_units(Model(), {}, warmup=1, repeats=3)
    assert times == pytest.approx([50.0, 200.0, 10.0])
    # one sync before and one after each pass (units, then the whole run), not per unit
    assert clock["syncs"] == 2 * 2 * 4

    # launch-bound: each call's host work (30 us) holds the GPU up, once per call; the units
    # are scaled to add up to the whole run in one call (290 us), not 3 calls' worth (350)
    call_ms = 0.03
    times = profiler.time_units(Model(), {}, warmup=1, repeats=3)
    assert sum(times) == pytest.approx(290.0, abs=0.2)
    assert times == pytest.approx([u * 290.0 / 350.0 for u in (80.0, 230.0, 40.0)], abs=0.1)


def test_profile_has_the_simulator_shape(program):
    model = segments.split("small", program, max_units=2)
    result = profiler.profile(model, _inputs_for, [1, 4], warmup=0, repeats=1)
    assert list(result) == ["1", "4"]
    assert all(len(row) == model.num_units for row in result.values())
    json.dumps(result)


def test_progress_bar_only_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    quiet, loud = io.StringIO(), Terminal()
    for stream in (quiet, loud):
        bar = profiler.Progress("profiling m", 2, stream=stream)
        bar.step("batch 1")
        bar.step("batch 2")
        bar.close()
    assert quiet.getvalue() == ""
    assert "profiling m [" in loud.getvalue() and "2/2" in loud.getvalue()
    assert loud.getvalue().endswith("\n")


def test_cache_round_trip_and_keys(tmp_path):
    cache = profiler.ProfileCache(tmp_path / "c")
    fields = {"model": "abc", "units": 3}
    assert cache.get("profile", fields) is None
    cache.put("profile", fields, {"1": [1.0, 2.0, 3.0]})
    assert cache.get("profile", fields) == {"1": [1.0, 2.0, 3.0]}
    assert cache.get("profile", {**fields, "units": 4}) is None
    assert cache.get("cuts", fields) is None
    [entry] = (tmp_path / "c").iterdir()
    entry.write_text("{not json")
    assert cache.get("profile", fields) is None


def test_unwritable_cache_is_not_an_error(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")
    cache = profiler.ProfileCache(blocker / "sub")
    cache.put("profile", {"a": 1}, {"1": [1.0]})
    cache.put("profile", {"a": 2}, {"1": [1.0]})
    assert cache.get("profile", {"a": 1}) is None
    assert sum("not writable" in r.message for r in caplog.records) == 1


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("DEFT_CACHE_DIR", str(tmp_path))
    assert profiler.default_cache_dir() == tmp_path / "profiles"
    monkeypatch.delenv("DEFT_CACHE_DIR")
    assert profiler.default_cache_dir() == Path.home() / ".cache" / "deft" / "profiles"


def test_cache_key_parts():
    assert profiler.device_name("cpu").startswith("cpu:")
    assert profiler.device_name("meta") == "meta"


def test_prepare_reuses_cuts_and_profiles(program, model_file, tmp_path):
    cache = profiler.ProfileCache(tmp_path)
    common = dict(
        max_units=3,
        model_file=model_file,
        device="cpu",
        input_names=["x"],
        output_names=["y"],
        cache=cache,
        warmup=0,
        repeats=1,
        progress=False,
        verify=False,  # one cold timing may well be stale; that check is tested below
        # one balancing batch size for every call: cuts balanced afresh at another size
        # follow microsecond timings, may differ, and then key a different profile
        balance_batch_size=2,
    )
    first = profiler.prepare("small", program, _inputs_for, batch_sizes=[1, 2], **common)
    assert not first.from_cache and list(first.profile) == ["1", "2"]
    assert first.model.output_names == ("y",)
    second = profiler.prepare("small", program, _inputs_for, batch_sizes=[2, 1], **common)
    assert second.from_cache and second.profile == first.profile
    assert second.model.cuts == first.model.cuts
    more = profiler.prepare("small", program, _inputs_for, batch_sizes=[1, 4], **common)
    assert not more.from_cache and more.profile["1"] == first.profile["1"]
    unmeasured = profiler.prepare(
        "small", program, _inputs_for, batch_sizes=[1], measure=False, **common
    )
    assert unmeasured.profile == {} and unmeasured.model.num_units == 3


def _repository(root: Path, model_file: Path) -> Path:
    good = root / "small"
    good.mkdir(parents=True)
    shutil.copy(model_file, good / "model.pt2")
    (good / "config.yaml").write_text(yaml.safe_dump({"max_batch_size": 4, "max_units": 2}))
    bad = root / "broken"
    bad.mkdir()
    (bad / "model.pt2").write_bytes(b"not an archive")
    return root


def test_profile_cli_writes_the_simulator_models_section(model_file, tmp_path, capsys):
    root = _repository(tmp_path / "models", model_file)
    out = tmp_path / "profile.json"
    argv = ["--model_dir", str(root), "--out", str(out), "--cache_dir", str(tmp_path / "c")]
    assert profile_cli.main([*argv, "--repeats", "1", "--warmup", "0"]) == 1  # one broken
    assert "model 'broken'" in capsys.readouterr().err
    data = json.loads(out.read_text())
    assert set(data) == {"models", "device", "torch"}
    assert list(data["models"]) == ["small"]
    profile = data["models"]["small"]["profile"]
    assert list(profile) == ["1", "2", "4"] and all(len(r) == 2 for r in profile.values())
    (root / "broken" / "model.pt2").unlink()
    (root / "broken").rmdir()
    assert profile_cli.main([*argv, "--batch_sizes", "2"]) == 0
    assert list(json.loads(out.read_text())["models"]["small"]["profile"]) == ["2"]


def test_profile_cli_to_stdout_and_bad_arguments(model_file, tmp_path, capsys):
    root = _repository(tmp_path / "models", model_file)
    shutil.rmtree(root / "broken")
    assert profile_cli.main(["--model_dir", str(root), "--no_cache", "--repeats", "1"]) == 0
    assert "small" in json.loads(capsys.readouterr().out)["models"]
    assert profile_cli.main(["--model_dir", str(tmp_path / "missing")]) == 2
    with pytest.raises(SystemExit):
        profile_cli.main(["--model_dir", str(root), "--batch_sizes", "0"])


def test_a_cached_profile_far_slower_than_the_model_is_measured_again(program, model_file,
                                                                         tmp_path):
    cache = profiler.ProfileCache(tmp_path)
    common = dict(max_units=3, model_file=model_file, device="cpu", input_names=["x"],
                  output_names=["y"], cache=cache, warmup=0, repeats=1, progress=False)
    first = profiler.prepare("small", program, _inputs_for, batch_sizes=[1, 2], **common)
    base = {"format": profiler.CACHE_FORMAT, "model": profiler.file_digest(model_file),
            "device": profiler.device_name("cpu"), "torch": torch.__version__}
    fields = {**base, "units": first.model.num_units, "cuts": list(first.model.cuts)}
    # as if profiled while the cores were busy: every unit 10 s
    cache.put("profile", fields, {b: [1e7] * first.model.num_units for b in ("1", "2")})
    again = profiler.prepare("small", program, _inputs_for, batch_sizes=[1, 2], **common)
    assert not again.from_cache
    assert all(sum(row) < 1e7 for row in again.profile.values())
    assert cache.get("profile", fields) == again.profile  # the cache holds the new one
    unchecked = profiler.prepare("small", program, _inputs_for, batch_sizes=[1, 2],
                                 verify=False, **common)
    assert unchecked.from_cache


def test_a_run_slower_than_the_cached_profile_keeps_the_profile(program, monkeypatch):
    monkeypatch.setattr(profiler, "STALE_MIN_US", 0.0)
    model = segments.split("small", program, max_units=2, input_names=["x"],
                           output_names=["y"])
    # a profile faster than anything this model can do: the machine is busier now
    assert not profiler._stale(model, _inputs_for, 2, [0.001] * model.num_units)
    assert profiler._stale(model, _inputs_for, 2, [1e7] * model.num_units)
    monkeypatch.setattr(profiler, "STALE_MIN_US", 2e8)
    assert not profiler._stale(model, _inputs_for, 2, [1e7] * model.num_units)


def test_each_cached_row_is_checked_and_only_the_stale_ones_measured_again(
        program, model_file, tmp_path, monkeypatch):
    monkeypatch.setattr(profiler, "STALE_MIN_US", 0.0)
    cache = profiler.ProfileCache(tmp_path)
    common = dict(max_units=3, model_file=model_file, device="cpu", input_names=["x"],
                  output_names=["y"], cache=cache, warmup=0, repeats=1, progress=False,
                  balance_batch_size=4)
    first = profiler.prepare("small", program, _inputs_for, batch_sizes=[1, 2, 4], **common)
    base = {"format": profiler.CACHE_FORMAT, "model": profiler.file_digest(model_file),
            "device": profiler.device_name("cpu"), "torch": torch.__version__}
    fields = {**base, "units": first.model.num_units, "cuts": list(first.model.cuts)}
    slow = [1e7] * first.model.num_units  # batch 1 timed while the cores were busy
    fast = [0.001] * first.model.num_units  # faster than any run: the machine is busier now
    faster = [0.002] * first.model.num_units
    cache.put("profile", fields, {"1": slow, "2": fast, "4": faster})
    again = profiler.prepare("small", program, _inputs_for, batch_sizes=[1, 2, 4], **common)
    assert sum(again.profile["1"]) < 1e7  # measured again
    assert again.profile["2"] == fast and again.profile["4"] == faster  # kept


def test_a_row_measured_slower_than_a_larger_batch_is_measured_again(program, model_file,
                                                                     monkeypatch):
    calls: list[list[int]] = []
    busy = {"left": 1}

    def fake_profile(model, inputs_for, sizes, **kw):
        calls.append(list(sizes))
        rows = {str(s): [100.0 * s] * model.num_units for s in sizes}
        if 1 in sizes and busy["left"]:
            busy["left"] -= 1
            rows["1"] = [9000.0] * model.num_units  # the first timing of batch 1: busy cores
        return rows

    monkeypatch.setattr(profiler, "profile", fake_profile)
    prepared = profiler.prepare(
        "small", program, _inputs_for, batch_sizes=[1, 2, 4], max_units=2,
        model_file=model_file, device="cpu", input_names=["x"], output_names=["y"],
        cache=None, warmup=0, repeats=1, progress=False, balance_batch_size=4)
    assert calls[-2:] == [[1, 2, 4], [1]]
    assert prepared.profile["1"] == [100.0] * prepared.model.num_units
    busy["left"] = 10  # busy every time: measured RETRIES more times, the fastest kept
    calls.clear()
    prepared = profiler.prepare(
        "small", program, _inputs_for, batch_sizes=[1, 2, 4], max_units=2,
        model_file=model_file, device="cpu", input_names=["x"], output_names=["y"],
        cache=None, warmup=0, repeats=1, progress=False, balance_batch_size=4)
    assert calls[-3:] == [[1, 2, 4], [1], [1]]
    assert prepared.profile["1"] == [9000.0] * prepared.model.num_units
