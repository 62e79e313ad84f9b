"""Splitting models into units: running the units in any chunking equals the whole model."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from runtime import segments
from runtime.errors import InvalidInput


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.conv2(torch.relu(self.bn(self.conv1(x)))))


class ResidualCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.blocks = nn.Sequential(ResidualBlock(8), ResidualBlock(8), ResidualBlock(8))
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(tokens))


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(12, 32), nn.GELU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TwoHeads(nn.Module):
    """Tuple-returning ops (split), a skip from the input to an output, a dict result."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> dict[str, torch.Tensor]:
        left, right = torch.split(self.a(x), 4, dim=1)
        return {"mixed": self.b(left * scale) + right.sum(1, keepdim=True), "echo": x * 1.0}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # One intra-op thread: results do not depend on it, and parallel regions stall badly
    # when other processes share the cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _seeded(factory: type[nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    return factory().eval()


CASES = {
    "cnn": (ResidualCNN, {"x": (3, 3, 16, 16)}),
    "encoder": (Encoder, {"tokens": (3, 6, 16)}),
    "mlp": (MLP, {"x": (3, 12)}),
    "two_heads": (TwoHeads, {"x": (3, 8), "scale": (3, 4)}),
}


def _inputs(shapes: dict[str, tuple[int, ...]], seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) for k, s in shapes.items()}


def _reference(module: nn.Module, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    with torch.inference_mode():
        out = module(**inputs)
    return out if isinstance(out, dict) else {"output": out}


@pytest.fixture(scope="module")
def exported() -> dict[str, tuple[nn.Module, torch.export.ExportedProgram]]:
    programs = {}
    for name, (factory, shapes) in CASES.items():
        module = _seeded(factory)
        batch = torch.export.Dim("batch", min=1, max=16)
        dynamic = {k: {0: batch} for k in shapes}
        example = _inputs(shapes)
        programs[name] = (
            module,
            torch.export.export(module, (), kwargs=example, dynamic_shapes=dynamic),
        )
    return programs


def _assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(want)
    for key in want:
        assert torch.allclose(got[key], want[key], atol=1e-5, rtol=1e-5), key


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("max_units", [1, 2, 3, 5, 8, 1000])
def test_exported_units_equal_whole_model(exported, case, max_units):
    module, program = exported[case]
    inputs = _inputs(CASES[case][1], seed=2)
    model = segments.split(case, program, max_units=max_units)
    fine = len(segments.cut_points(program.module())) + 1
    assert 1 <= model.num_units <= min(max_units, fine)
    _assert_same(model(inputs), _reference(module, inputs))


@pytest.mark.parametrize("case", ["cnn", "mlp", "two_heads", "encoder"])
@pytest.mark.parametrize("max_units", [1, 4, 1000])
def test_traced_units_equal_whole_model(case, max_units):
    module = _seeded(CASES[case][0])
    inputs = _inputs(CASES[case][1], seed=3)
    model = segments.split(case, module, max_units=max_units)
    assert 1 <= model.num_units <= max_units
    _assert_same(model(inputs), _reference(module, inputs))


@pytest.mark.parametrize("case", sorted(CASES))
def test_arbitrary_chunks_and_interleaved_jobs(exported, case):
    module, program = exported[case]
    model = segments.split(case, program, max_units=1000)
    rng = random.Random(case)
    first, second = _inputs(CASES[case][1], seed=4), _inputs(CASES[case][1], seed=5)
    for _ in range(5):
        bounds = sorted(rng.sample(range(1, model.num_units), k=min(3, model.num_units - 1)))
        a, b = model.start(first), model.start(second)
        position = 0
        for end in [*bounds, model.num_units]:
            model.run(a, position, end)
            if position == 0:  # a preempts at its first sync point; it keeps its state
                model.run(b, 0, model.num_units)
            position = end
        assert a.next_unit == model.num_units
        _assert_same(model.finish(a), _reference(module, first))
        _assert_same(model.finish(b), _reference(module, second))


def test_micro_batches_concatenate_to_the_whole_batch(exported):
    module, program = exported["cnn"]
    model = segments.split("cnn", program, max_units=4)
    x = _inputs({"x": (7, 3, 16, 16)}, seed=6)["x"]
    parts = [model({"x": part})["output"] for part in torch.split(x, [3, 3, 1])]
    assert torch.allclose(torch.cat(parts), _reference(module, {"x": x})["output"], atol=1e-5)


def test_units_are_balanced_by_the_given_costs(exported):
    _, program = exported["mlp"]
    pieces = len(segments.cut_points(program.module())) + 1

    def costs(fine: segments.SegmentedModel) -> list[float]:
        assert fine.num_units == pieces
        return [100.0 if i == 0 else 1.0 for i in range(fine.num_units)]

    model = segments.split("mlp", program, max_units=2, piece_costs=costs)
    assert model.cuts == (segments.cut_points(program.module())[0],)


def test_cuts_never_separate_a_tuple_from_its_getitems():
    gm = segments.graph_module(_seeded(TwoHeads))
    nodes = [n for n in gm.graph.nodes if n.op in ("call_function", "call_method", "call_module")]
    split_at = next(i for i, n in enumerate(nodes) if n.target is torch.split)
    allowed = segments.cut_points(gm)
    assert split_at + 1 not in allowed and split_at + 2 not in allowed
    with pytest.raises(ValueError, match="not allowed"):
        segments.from_graph("two_heads", gm, [split_at + 1])


def test_outputs_are_named_after_a_returned_dict(exported):
    _, program = exported["two_heads"]
    model = segments.split("two_heads", program, max_units=3)
    assert model.input_names == ("x", "scale")
    assert model.output_names == ("mixed", "echo")
    renamed = segments.split(
        "two_heads", program, max_units=3, input_names=["a", "b"], output_names=["m", "e"]
    )
    out = renamed(_inputs({"a": (2, 8), "b": (2, 4)}))
    assert set(out) == {"m", "e"}


def test_state_keeps_only_what_later_units_need(exported):
    _, program = exported["cnn"]
    model = segments.split("cnn", program, max_units=1000)
    state = model.start(_inputs({"x": (2, 3, 16, 16)}))
    peak = 0
    for unit in range(model.num_units):
        model.run(state, unit, unit + 1)
        peak = max(peak, len(state._values))
    assert peak <= 2  # a residual block's input and its branch at most
    assert list(state._values) == ["linear"]


def test_misuse_of_states_is_refused(exported):
    _, program = exported["mlp"]
    model = segments.split("mlp", program, max_units=3)
    other = segments.split("mlp2", program, max_units=3)
    inputs = _inputs({"x": (1, 12)})
    with pytest.raises(InvalidInput, match="missing"):
        model.start({})
    with pytest.raises(InvalidInput, match="unknown"):
        model.start({**inputs, "y": inputs["x"]})
    state = model.start(inputs)
    with pytest.raises(ValueError, match="cannot run from 1"):
        model.run(state, 1, 2)
    with pytest.raises(ValueError, match="bad unit range"):
        model.run(state, 0, model.num_units + 1)
    with pytest.raises(ValueError, match="belongs to model"):
        other.run(state, 0, 1)
    with pytest.raises(ValueError, match="run the rest"):
        model.finish(state)
    model.finish(model.run(state, 0, model.num_units))
    with pytest.raises(ValueError, match="already finished"):
        model.finish(state)


def test_to_moves_parameters_and_inputs(exported):
    _, program = exported["two_heads"]
    model = segments.split("two_heads", program, max_units=3)
    cuts = model.cuts
    assert model.to("meta") is model
    assert model.device == torch.device("meta") and model.cuts == cuts
    out = model(_inputs({"x": (2, 8), "scale": (2, 4)}))
    assert {t.device.type for t in out.values()} == {"meta"}
    assert out["mixed"].shape == (2, 2)

    traced = segments.split("mlp", _seeded(MLP), max_units=2).to("meta")
    assert traced({"x": torch.randn(2, 12)})["output"].device.type == "meta"


def test_torchscript_runs_as_one_unit():
    module = _seeded(MLP)
    scripted = torch.jit.script(module)
    model = segments.from_script("mlp", scripted, ["x"], ["y"])
    x = torch.randn(2, 12)
    assert model.num_units == 1
    assert torch.allclose(model({"x": x})["y"], module(x), atol=1e-6)
    with pytest.raises(ValueError, match="returned 1 outputs, expected 2"):
        segments.from_script("mlp", scripted, ["x"], ["y", "z"])({"x": x})


@pytest.mark.parametrize(
    ("costs", "max_units", "cuts"),
    [
        ([1, 1, 1, 1, 1, 1], 3, [2, 4]),
        ([1, 1, 1, 1, 1, 1], 1, []),
        ([1, 1, 1], 10, [1, 2]),
        ([5], 4, []),
        ([], 4, []),
        ([1, 1, 1, 10, 1, 1, 1], 3, [3, 4]),
        ([10, 1, 1, 1, 1], 4, [1, 2, 3]),
        ([1, 1, 1, 1, 1, 1, 1, 1], 4, [2, 4, 6]),
        ([0.1, 10, 5, 5, 5, 5], 4, [2, 3, 4]),
        ([5, 5, 5, 5, 0.1], 3, [1, 3]),
        ([0, 0, 0, 0], 2, [2]),
    ],
)
def test_balance(costs, max_units, cuts):
    assert segments.balance(costs, max_units) == cuts


def test_balance_refuses_bad_arguments():
    with pytest.raises(ValueError):
        segments.balance([1, 2], 0)
    with pytest.raises(ValueError):
        segments.balance([1, -2], 2)
