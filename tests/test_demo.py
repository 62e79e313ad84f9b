"""The demo models: deterministic, written as a repository, and far apart in cost."""

from __future__ import annotations

import time

import pytest
import torch
import yaml

from runtime import demo
from runtime import model_repository as repo
from scheduler.priority import Priority


@pytest.fixture(autouse=True, scope="module")
def threads():
    # Timed on one intra-op thread: with two, every op waits at a barrier for a core that
    # other processes (parallel test runs) may hold, and ratios become noise.
    default = torch.get_num_threads()
    torch.set_num_threads(1)
    yield default
    torch.set_num_threads(default)


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    return demo.write_demo_repository(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def loaded(repository, tmp_path_factory):
    cache = tmp_path_factory.mktemp("profiles")
    began = time.perf_counter()
    models = {s.name: repo.load(s, "cpu", cache_dir=cache) for s in repo.discover(repository)}
    seconds = time.perf_counter() - began
    print(f"\ndemo load + split + profile: {seconds:.2f} s")
    return models, cache, seconds


def _best_ms(model, inputs, runs: int) -> float:
    model(inputs)
    best = float("inf")
    for _ in range(runs):
        began = time.perf_counter()
        model(inputs)
        best = min(best, time.perf_counter() - began)
    return best * 1000


def test_repository_layout_and_configs(repository):
    sources = {s.name: s for s in repo.discover(repository)}
    assert sorted(sources) == ["classifier", "detector"]
    for name, source in sources.items():
        assert source.format == "pt2" and source.problem is None
        shipped = yaml.safe_load((demo.DEMO_CONFIG_DIR / f"{name}.yaml").read_text())
        assert yaml.safe_load(source.config_file.read_text()) == shipped


def test_rewriting_skips_the_export(repository):
    files = [repository / name / "model.pt2" for name in demo.DEMO_MODELS]
    before = [f.stat().st_mtime_ns for f in files]
    began = time.perf_counter()
    demo.write_demo_repository(repository)
    assert time.perf_counter() - began < 1.0
    assert [f.stat().st_mtime_ns for f in files] == before


def test_models_are_deterministic():
    for name in demo.DEMO_MODELS:
        a, b = demo.build_model(name), demo.build_model(name)
        for (key, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            assert torch.equal(pa, pb), key


def test_loaded_demo_models(loaded):
    models, _, _ = loaded
    detector, classifier = models["detector"], models["classifier"]
    assert detector.config.settings.priority is Priority.LATENCY_CRITICAL
    assert detector.config.settings.slo_ms == 25
    assert classifier.config.settings.priority is Priority.BATCH
    assert classifier.config.max_batch_size == 8
    assert list(classifier.profile) == ["1", "2", "4", "8"]
    assert list(detector.profile) == ["1", "2", "4"]
    assert 8 <= classifier.model.num_units <= 16 and 1 <= detector.model.num_units <= 4

    image = detector.config.example_inputs(1)
    out = detector.model(image)
    assert out["boxes"].shape == (1, 16, 4) and out["scores"].shape == (1, 16)
    with torch.inference_mode():
        want = demo.build_model("detector")(image["image"])
    assert torch.allclose(out["boxes"], want["boxes"], atol=1e-5)

    batch = classifier.config.example_inputs(3)
    logits = classifier.model(batch)["logits"]
    assert logits.shape == (3, 1000)
    with torch.inference_mode():
        want = demo.build_model("classifier")(batch["image"])
    assert torch.allclose(logits, want, atol=1e-4)


def test_restart_uses_the_profile_cache(loaded, repository):
    models, cache, _ = loaded
    began = time.perf_counter()
    again = {s.name: repo.load(s, "cpu", cache_dir=cache) for s in repo.discover(repository)}
    print(f"\ndemo load from cache: {time.perf_counter() - began:.2f} s")
    for name, model in again.items():
        assert model.profile_from_cache
        assert model.profile == models[name].profile
        assert model.model.cuts == models[name].model.cuts


def _timings(detector, classifier) -> tuple[float, float, float]:
    return (
        _best_ms(detector.model, detector.config.example_inputs(1), runs=20),
        _best_ms(classifier.model, classifier.config.example_inputs(1), runs=3),
        _best_ms(classifier.model, classifier.config.example_inputs(8), runs=3),
    )


def test_classifier_batch_costs_many_detector_requests(loaded, threads):
    models, _, seconds = loaded
    detector, classifier = models["detector"], models["classifier"]
    units = f"units: detector {detector.model.num_units}, classifier {classifier.model.num_units}"
    print(f"\n{units}; load + split + profile {seconds:.2f} s")
    torch.set_num_threads(threads)
    try:
        default = _timings(detector, classifier)
    finally:
        torch.set_num_threads(1)
    single = _timings(detector, classifier)
    for label, (det, cls1, cls8) in ((f"{threads} threads", default), ("1 thread", single)):
        print(
            f"{label}: detector batch 1 {det:.2f} ms; classifier batch 1 {cls1:.1f} ms, "
            f"batch 8 {cls8:.1f} ms; ratio {cls8 / det:.0f}"
        )
    detector_ms, _, classifier_8_ms = single
    assert classifier_8_ms >= 20 * detector_ms
